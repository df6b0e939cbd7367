"""Iterated RLHF through the PPO stage on the tiny config: the budget split, where each round's pairs
come from, and what carries over between rounds."""

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.iterated import split_budget
from rlhf_lab.data.files import read_jsonl


def test_split_budget_shares_equally_and_gives_the_remainder_to_the_first_rounds():
    assert split_budget(10, 3) == [4, 3, 3] and split_budget(9, 3) == [3, 3, 3] and sum(split_budget(4000, 7)) == 4000


@pytest.fixture(scope="module")
def iterated(tiny_cfg, reward_stage):
    from pipelines import ppo

    cfg = tiny_cfg.replace(ppo={"iterations": 4, "batch_size": 16, "eval_every": 2, "checkpoint_every": 2,
                                "max_new_tokens": 16, "seeds": [0], "rounds": 2, "run_name": "iterated"})  # fmt: skip
    ppo.run(cfg)
    return cfg, Path(cfg.paths.ppo) / "iterated" / "seeds" / "seed_0"


def test_rounds_share_the_label_budget_and_the_iterations(iterated):
    cfg, out = iterated
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["iterations"].tolist() == [2, 2]
    assert rounds["pairs"].tolist() == [500, 1000]  # 1000 labels in two rounds; round 2 learns both rounds'
    assert rounds["rm_accuracy_policy_pairs"].between(0, 1).all()
    assert json.loads((out / "run.json").read_text())["rounds"] == 2


def test_a_later_round_labels_pairs_from_the_last_policy_and_continues_it(iterated):
    cfg, out = iterated
    history = pd.read_csv(out / "eval_history.csv")
    assert history["round"].tolist() == [1, 1, 2, 2] and history["step"].tolist() == [0, 2, 2, 4]
    # Round 2 starts from round 1's policy: its first evaluation (same prompts, same sampling seed)
    # sees the distribution round 1 ended with.
    assert history["kl"].iloc[2] == pytest.approx(history["kl"].iloc[1], rel=1e-5)
    assert history["gold"].iloc[2] == pytest.approx(history["gold"].iloc[1], rel=1e-5)
    second = read_jsonl(out / "rounds" / "round_2" / "preferences" / "train.jsonl")
    first = read_jsonl(Path(cfg.for_condition().paths.preferences) / "train.jsonl")
    assert second[:500] == first[:500]  # round 1's pairs: the preference stage's, from SFT
    assert second[500:] != first[500:1000]  # round 2's: drawn from round 1's policy, labelled by gold
    assert all(r["chosen_gold"] >= r["rejected_gold"] for r in second[500:])  # the tiny config's labels are noise-free
    assert (out / "policy" / "model.safetensors").is_file() and (out / "final_samples.jsonl").is_file()
