"""Data stage: demonstrations, prompts and a tokenizer, from the built-in task or any dataset.

Your own data comes through ``rlhf_lab/data/layouts.py`` (files, ``save_to_disk`` folders, hub names;
every TRL layout; conversations rendered with the policy tokenizer's chat template).
Outputs (``paths.data``): ``train.jsonl``/``val.jsonl`` ({"text"}, or {"prompt", "completion"} when
the loss is on completions only), ``prompts_train.jsonl``/``prompts_eval.jsonl`` ({"prompt"}),
``tokenizer/`` (``save_pretrained``), ``stats.json``, ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_lab import config as config_lib
from rlhf_lab.config import Config
from rlhf_lab.data.files import write_json, write_jsonl
from rlhf_lab.data.layouts import Demonstration, Rows
from rlhf_lab.models.loading import load_tokenizer, train_word_tokenizer
from rlhf_lab.rewards.gold import gold_reward
from rlhf_lab.runtime.stage import replacing_dir, stage_main
from rlhf_lab.task import grammar, is_builtin


def make_splits(cfg: Config, tokenizer=None) -> dict[str, list]:
    """train/val demonstrations (:class:`Demonstration`) and train/eval prompts (strings).

    ``tokenizer`` (the policy's) renders conversational datasets with its chat template."""
    d, seed = cfg.data, cfg.runtime.seed
    if is_builtin(cfg):
        g = grammar(cfg)
        # One seed per split, so growing one split never changes another.
        return {
            "train": [Demonstration("", t) for t in g.sample(d.train_samples, seed=[seed, 0])],
            "val": [Demonstration("", t) for t in g.sample(d.val_samples, seed=[seed, 1])],
            "prompts_train": g.sample_prompts(d.train_prompts, seed=[seed, 2]),
            "prompts_eval": g.sample_prompts(d.eval_prompts, seed=[seed, 3]),
        }
    owner = f"model.name_or_path {cfg.model.name_or_path}" if cfg.model.name_or_path else \
        "the built-in word tokenizer (model.name_or_path: null)"
    source = Rows(d.source, tokenizer, owner)
    texts = source.demonstrations()
    prompts = (Rows(d.prompts, tokenizer, owner) if d.prompts is not None else source).prompts(d.prompt_words)
    rng = np.random.default_rng(seed)
    texts = [texts[i] for i in rng.permutation(len(texts))]
    n_val = min(d.val_samples, max(1, len(texts) // 10))
    n_eval = min(d.eval_prompts, max(1, len(prompts) // 4))
    return {
        "train": texts[n_val:][: d.train_samples],
        "val": texts[:n_val],
        "prompts_train": prompts[n_eval:][: d.train_prompts] or prompts,
        "prompts_eval": prompts[:n_eval],
    }


def demonstration_row(demo: Demonstration) -> dict:
    """A language-modeling row is {"text"}; one with a prompt keeps it apart (no loss on it)."""
    return {"prompt": demo.prompt, "completion": demo.completion} if demo.prompt else {"text": demo.completion}


def run(cfg: Config) -> dict:
    tokenizer = load_tokenizer(cfg.model.name_or_path) if cfg.model.name_or_path else None
    splits = make_splits(cfg, tokenizer)
    with replacing_dir(cfg.paths.data) as out:
        for name, rows in splits.items():
            if name.startswith("prompts"):
                write_jsonl(out / f"{name}.jsonl", ({"prompt": r} for r in rows))
            else:
                write_jsonl(out / f"{name}.jsonl", (demonstration_row(r) for r in rows))
        if tokenizer is None:
            words = [" ".join(filter(None, (r.prompt, r.completion))) for r in splits["train"]]
            tokenizer = train_word_tokenizer(words + splits["prompts_train"])
        tokenizer.save_pretrained(out / "tokenizer")
        stats = {f"data/{name}": len(rows) for name, rows in splits.items()}
        stats["data/vocab_size"] = len(tokenizer)
        gold = gold_reward(cfg)
        if gold is not None:
            val = splits["val"]
            scores = gold([r.prompt for r in val], [r.completion for r in val])
            stats["gold/demonstrations_mean"] = float(scores.mean())
            stats["gold/demonstrations_std"] = float(scores.std())
        write_json(out / "stats.json", stats)
        config_lib.save(cfg, out / "config.yaml")
    return stats


def tokenizer_path(cfg: Config) -> Path:
    return Path(cfg.paths.data) / "tokenizer"


def main() -> None:
    stage_main(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
