"""Preference stage: pairs of SFT-policy responses labelled from the gold reward (``task.gold``).

``python -m pipelines.preferences [--condition NAME]``: one reward condition of ``reward_conditions``
(its overrides, e.g. label noise; default the first). Every condition draws its pairs with the same
seeds.

Outputs (``paths.preferences``/NAME), JSONL in the prompt/chosen/rejected convention of TRL and Hugging
Face preference datasets, gold scores alongside:
``train.jsonl`` (noisy labels as configured), ``eval.jsonl`` (noise-free gold labels),
``sft_samples.jsonl`` (fresh single samples with gold), ``stats.json``, ``config.yaml``. Without a
gold reward (your own pairs in ``reward.dataset``) only the fresh samples are written: the reward
stage normalises on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlhf_lab import config as config_lib
from rlhf_lab.algorithms.bradley_terry import label_pairs
from rlhf_lab.config import Config, ConfigError
from rlhf_lab.data.files import read_texts, write_json, write_jsonl
from rlhf_lab.models.generation import decode_responses, left_pad, sample
from rlhf_lab.models.loading import load_causal_lm, load_tokenizer
from rlhf_lab.rewards.gold import gold_reward
from rlhf_lab.runtime.stage import apply_runtime, replacing_dir, stage_main


def sample_responses(cfg: Config, model, tokenizer, prompts: list[str], seed: int, batch_size: int = 512):
    """One response per prompt: (responses, ended) lists."""
    p = cfg.preferences
    generator = torch.Generator().manual_seed(seed)
    responses, ended = [], []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(tokenizer, prompts[start : start + batch_size])
        out = sample(
            model, ids, mask, p.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
            temperature=p.sample_temperature, generator=generator,
        )  # fmt: skip
        responses += decode_responses(tokenizer, out)
        ended += out.ended.tolist()
    return responses, ended


def make_pairs(cfg, model, tokenizer, gold, prompts, n, temperature, flip_fraction, seed) -> list[dict]:
    """``n`` pairs of distinct responses to the same prompt, labelled from gold."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    round_ = 0
    while len(rows) < n:  # identical responses carry no preference: draw until n distinct pairs
        want = int((n - len(rows)) * 1.2) + 8
        chosen_prompts = [prompts[i] for i in rng.integers(len(prompts), size=want)]
        a, a_end = sample_responses(cfg, model, tokenizer, chosen_prompts, seed=seed * 1000 + 2 * round_)
        b, b_end = sample_responses(cfg, model, tokenizer, chosen_prompts, seed=seed * 1000 + 2 * round_ + 1)
        round_ += 1
        keep = [i for i in range(want) if a[i] != b[i]]
        kept = [chosen_prompts[i] for i in keep]
        g_a = gold(kept, [a[i] for i in keep], [a_end[i] for i in keep])
        g_b = gold(kept, [b[i] for i in keep], [b_end[i] for i in keep])
        a_wins, flipped = label_pairs(g_a, g_b, temperature, flip_fraction, rng)
        for j, i in enumerate(keep):
            w, l = ((a, a_end, g_a), (b, b_end, g_b)) if a_wins[j] else ((b, b_end, g_b), (a, a_end, g_a))
            rows.append({
                "prompt": chosen_prompts[i],
                "chosen": w[0][i], "rejected": l[0][i],
                "chosen_ended": w[1][i], "rejected_ended": l[1][i],
                "chosen_gold": round(float(w[2][j]), 5), "rejected_gold": round(float(l[2][j]), 5),
                "flipped": bool(flipped[j]),
            })  # fmt: skip
    return rows[:n]


def run(cfg: Config, condition: str | None = None) -> dict:
    """The preference stage for one reward condition (``reward_conditions``; default the first)."""
    cfg = cfg.for_condition(condition)
    gold = gold_reward(cfg)
    if gold is None and cfg.reward.dataset is None:
        raise ConfigError(
            "task.gold: no gold reward to label preference pairs with; set task.gold (a reward model or "
            "module:function), or give your own pairs in reward.dataset"
        )
    apply_runtime(cfg.runtime)
    p, seed = cfg.preferences, cfg.runtime.seed
    tokenizer = load_tokenizer(cfg.paths.sft)
    model = load_causal_lm(cfg.paths.sft)
    prompts_train = read_texts(Path(cfg.paths.data) / "prompts_train.jsonl", "prompt")
    prompts_eval = read_texts(Path(cfg.paths.data) / "prompts_eval.jsonl", "prompt")

    train = held_out = None
    if gold is not None:
        train = make_pairs(cfg, model, tokenizer, gold, prompts_train, p.pairs,
                           p.label_temperature, p.flip_fraction, seed=seed * 10 + 1)  # fmt: skip
        # Held-out pairs on held-out prompts, labelled by gold itself: the accuracy target.
        held_out = make_pairs(cfg, model, tokenizer, gold, prompts_eval, p.eval_pairs, 0.0, 0.0, seed=seed * 10 + 2)
    rng = np.random.default_rng(seed * 10 + 3)
    fresh_prompts = [prompts_eval[i] for i in rng.integers(len(prompts_eval), size=p.sft_samples)]
    responses, ended = sample_responses(cfg, model, tokenizer, fresh_prompts, seed=seed * 10 + 4)
    fresh = [{"prompt": q, "response": r, "ended": e} for q, r, e in zip(fresh_prompts, responses, ended)]
    stats = {"preferences/gold": gold.description if gold is not None else "none"}
    if gold is not None:
        scores = gold(fresh_prompts, responses, ended)
        for row, score in zip(fresh, scores):
            row["gold"] = round(float(score), 5)
        gap = np.array([r["chosen_gold"] - r["rejected_gold"] for r in train])
        stats.update({
            "preferences/train_pairs": len(train),
            "preferences/eval_pairs": len(held_out),
            "preferences/flipped": float(np.mean([r["flipped"] for r in train])),
            "preferences/agree_with_gold": float(np.mean(gap > 0)),
            "gold/sft_mean": float(scores.mean()),
            "gold/sft_std": float(scores.std()),
        })  # fmt: skip
    with replacing_dir(cfg.paths.preferences) as out:
        if train is not None:
            write_jsonl(out / "train.jsonl", train)
            write_jsonl(out / "eval.jsonl", held_out)
        write_jsonl(out / "sft_samples.jsonl", fresh)
        write_json(out / "stats.json", stats)
        config_lib.save(cfg, out / "config.yaml")
    return stats


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], options={"--condition": "a reward condition from params.yaml's reward_conditions"},
               services=("hardware",))


if __name__ == "__main__":
    main()
