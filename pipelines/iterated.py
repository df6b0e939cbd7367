"""Iterated RLHF (issue: remedies): one seed's run of a ``ppo_runs`` setting with ``ppo.rounds`` > 1,
called by the PPO stage in place of a single run.

Round r = 1 … R: preference pairs (round 1: the preference stage's, drawn from SFT; later rounds: drawn
from round r − 1's policy and labelled by gold as the preference stage labels, same temperature and
noise), a reward model trained on the pairs so far (``ppo.round_pairs: all``) or the round's own
(``new``), and the optimiser, which continues round r − 1's policy (``ppo.round_start: last``) or
restarts from SFT (``sft``) against the SFT reference, on the latest reward model
(``ppo.round_reward: latest``) or every round's as a mean ensemble (``ensemble``). The three choices are
Wolf, Kirk and Musolesi's (2025). Fair to one round: the label budget ``preferences.pairs`` and the
iteration cap ``ppo.iterations`` are split equally over the rounds; the KL budget bounds each round.

Writes, into the seed's folder, what a single run writes (the evaluations of all rounds in one history
with a ``round`` column, steps counted across rounds) and ``rounds.csv``: per round the pairs, the
reward model's held-out accuracy on SFT pairs and on pairs of the policy it trained (gold labels), and
the round's final gold, proxy and KL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pandas as pd

from pipelines import reward as reward_stage
from pipelines.preferences import make_pairs
from rlhf_lab.algorithms.bradley_terry import pairwise_accuracy
from rlhf_lab.config import Config, UserError
from rlhf_lab.data.files import read_jsonl, read_texts, write_json, write_jsonl
from rlhf_lab.engine.evaluation import run_metrics
from rlhf_lab.models.loading import load_causal_lm, load_tokenizer
from rlhf_lab.rewards.gold import gold_reward
from rlhf_lab.rewards.reward_model import load_frozen_reward
from rlhf_lab.runtime.stage import create_parent_run

PROBE_PAIRS = 256  # pairs drawn from the last round's policy only to measure its reward model


def split_budget(total: int, rounds: int) -> list[int]:
    """``total`` shared as equally as integers allow, the remainder to the first rounds."""
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def accuracy_on(model_path: Path, tokenizer, pairs: list[dict], max_length: int) -> float:
    """A reward model's accuracy on pairs, against their gold (not their possibly flipped labels)."""
    chosen, rejected = reward_stage.side_scores(load_frozen_reward(model_path), tokenizer, pairs, max_length)
    return pairwise_accuracy(chosen, rejected, reward_stage.gold_labels(pairs))


def train_reward(cfg: Config, pairs: list[dict], folder: Path, tokenizer, parent: str) -> dict:
    """One reward model on ``pairs`` (held-out pairs and normalisation samples: the condition's),
    saved as ``folder``/reward/member_0; returns its held-out quality."""
    prefs = folder / "preferences"
    prefs.mkdir(parents=True, exist_ok=True)
    write_jsonl(prefs / "train.jsonl", pairs)
    for name in ("eval.jsonl", "sft_samples.jsonl"):
        shutil.copy(Path(cfg.paths.preferences) / name, prefs / name)
    rcfg = cfg.replace(paths={"preferences": str(prefs), "reward": str(folder / "reward")})
    data = reward_stage.load_pair_data(rcfg)
    quality, _ = reward_stage.fit_member(rcfg, 0, data, tokenizer, parent, folder / "reward")
    return quality


def train_rounds(cfg: Config, out: Path, train_one: Callable[[Config, Path], dict]) -> dict:
    """One seed's rounds; ``train_one`` is the PPO stage's single run (config, folder) -> metrics."""
    p, name, seed = cfg.ppo, cfg.ppo.run_name, cfg.ppo.seed
    gold = gold_reward(cfg)
    if gold is None:
        raise UserError(f"ppo_runs.{name}.rounds: iterated RLHF labels new pairs with the gold reward; there is none")
    tokenizer = load_tokenizer(cfg.paths.sft)
    prompts = read_texts(Path(cfg.paths.data) / "prompts_train.jsonl", "prompt")
    first_pairs = reward_stage.load_pairs(Path(cfg.paths.preferences) / "train.jsonl")
    labels = split_budget(cfg.preferences.pairs, p.rounds)
    iterations = split_budget(p.iterations, p.rounds)
    work = out / "rounds"
    parent = create_parent_run(cfg, f"reward-{name}-seed{seed}-rounds", "reward")
    policy, pairs_so_far, reward_dirs, histories, samples, table = None, [], [], [], [], []
    new, step0, cost = first_pairs[: labels[0]], 0, {"wall_s": 0.0, "responses_generated": 0}
    for r in range(1, p.rounds + 1):
        folder = work / f"round_{r}"
        pairs_so_far += new
        trained_on = pairs_so_far if p.round_pairs == "all" else new
        quality = train_reward(cfg, trained_on, folder, tokenizer, parent)
        reward_dirs.append(folder / "reward" / "member_0")
        rewards = folder / "rewards_used"  # the members this round's policy optimises
        used = reward_dirs if p.round_reward == "ensemble" else reward_dirs[-1:]
        for k, path in enumerate(used):
            shutil.copytree(path, rewards / f"member_{k}", dirs_exist_ok=True)
        start = policy if p.round_start == "last" else None
        rcfg = cfg.replace(paths={"reward": str(rewards)},
                           ppo={"run_name": f"{name}-round{r}", "iterations": iterations[r - 1], "rounds": 1,
                                "init_policy": str(start) if start else None, "members": None,
                                "reward_objective": "mean" if len(used) > 1 else "single"})  # fmt: skip
        metrics = train_one(rcfg, folder / "ppo")
        policy = folder / "ppo" / "policy"
        spent = json.loads((folder / "ppo" / "cost.json").read_text())
        cost = {k: cost[k] + spent[k] for k in cost}
        history = pd.read_csv(folder / "ppo" / "eval_history.csv").assign(round=r)
        history["step"] += step0
        step0 = int(history["step"].max())
        histories.append(history)
        samples += [{**row, "round": r} for row in read_jsonl(folder / "ppo" / "samples.jsonl")]
        # The next round's pairs come from this policy; they also measure this round's reward model on
        # the policy it trained (the last round draws a few pairs for that alone).
        wanted = labels[r] if r < p.rounds else min(PROBE_PAIRS, labels[-1])
        new = make_pairs(cfg, load_causal_lm(policy), tokenizer, gold, prompts, wanted, cfg.preferences.label_temperature,
                         cfg.preferences.flip_fraction, seed=cfg.runtime.seed * 10 + 1 + 7919 * r + 104729 * seed)  # fmt: skip
        table.append({"round": r, "pairs": len(trained_on),
                      "rm_accuracy_sft_pairs": quality["rm/accuracy"],
                      "rm_accuracy_policy_pairs": accuracy_on(reward_dirs[-1], tokenizer, new, cfg.reward.max_length),
                      "gold": metrics.get("gold_final"), "proxy": metrics["proxy_final"], "kl": metrics["kl_final"],
                      "iterations": iterations[r - 1]})  # fmt: skip
    history = pd.concat(histories, ignore_index=True)
    last = work / f"round_{p.rounds}" / "ppo"
    history.to_csv(out / "eval_history.csv", index=False)
    pd.DataFrame(table).to_csv(out / "rounds.csv", index=False)
    write_jsonl(out / "samples.jsonl", samples)
    shutil.copy(last / "final_samples.jsonl", out / "final_samples.jsonl")
    shutil.copytree(last / "policy", out / "policy")
    metrics = run_metrics(history.to_dict("records"))
    write_json(out / "metrics.json", metrics)
    described = json.loads((last / "run.json").read_text())  # the last round's, as the whole run
    write_json(out / "run.json", {**described, "setting": name, "condition": Path(cfg.paths.reward).name,
                                  "objective": p.reward_objective, "rounds": p.rounds, "round_pairs": p.round_pairs,
                                  "round_reward": p.round_reward, "round_start": p.round_start})  # fmt: skip
    write_json(out / "cost.json", {**cost, "models_in_memory": json.loads((last / "cost.json").read_text())["models_in_memory"]})
    return metrics
