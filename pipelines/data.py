"""Data stage: demonstrations, prompts and a tokenizer, from the built-in task or local files.

Outputs (``paths.data``): ``train.jsonl``/``val.jsonl`` ({"text"}), ``prompts_train.jsonl``/
``prompts_eval.jsonl`` ({"prompt"}), ``tokenizer/`` (``save_pretrained``), ``stats.json``,
``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_lab import config as config_lib
from rlhf_lab.config import Config, ConfigError
from rlhf_lab.data import read_texts, write_json, write_jsonl
from rlhf_lab.models import load_tokenizer, train_word_tokenizer
from rlhf_lab.stage import replacing_dir, stage_main
from rlhf_lab.task import gold_reward, grammar, is_builtin


def make_splits(cfg: Config) -> dict[str, list[str]]:
    d, seed = cfg.data, cfg.runtime.seed
    if is_builtin(cfg):
        g = grammar(cfg)
        # One seed per split, so growing one split never changes another.
        return {
            "train": g.sample(d.train_samples, seed=[seed, 0]),
            "val": g.sample(d.val_samples, seed=[seed, 1]),
            "prompts_train": g.sample_prompts(d.train_prompts, seed=[seed, 2]),
            "prompts_eval": g.sample_prompts(d.eval_prompts, seed=[seed, 3]),
        }
    if d.prompts is None:
        raise ConfigError("data.prompts: required when data.source is a file (a .txt or .jsonl of prompts)")
    texts = read_texts(d.source, field="text")
    prompts = read_texts(d.prompts, field="prompt")
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


def run(cfg: Config) -> dict:
    splits = make_splits(cfg)
    with replacing_dir(cfg.paths.data) as out:
        for name, rows in splits.items():
            key = "prompt" if name.startswith("prompts") else "text"
            write_jsonl(out / f"{name}.jsonl", ({key: r} for r in rows))
        if cfg.model.name_or_path:
            tokenizer = load_tokenizer(cfg.model.name_or_path)
        else:
            tokenizer = train_word_tokenizer(splits["train"] + splits["prompts_train"])
        tokenizer.save_pretrained(out / "tokenizer")
        stats = {f"data/{name}": len(rows) for name, rows in splits.items()}
        stats["data/vocab_size"] = len(tokenizer)
        gold = gold_reward(cfg)
        if gold is not None:
            scores = gold(splits["val"])
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
