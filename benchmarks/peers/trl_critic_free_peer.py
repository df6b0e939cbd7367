"""TRL's side of ``benchmarks/critic_free_vs_trl.py``: TRL's GRPOTrainer or RLOOTrainer on the shapes our
side runs. Runs in ``.venv-trl`` (``make bench`` creates it), never in the project's environment.

GPT-2 policy, reference and reward model (random initialisation, saved to disk and passed by path: with
β > 0 the trainers load the reference from the policy's path), a word-level tokenizer over ``--vocab``
words, random prompts of ``--prompt`` words, ``--batch`` completions a rollout as ``--batch / --k`` prompts ×
``--k``, each rollout reused for ``--epochs`` optimiser steps (TRL's ``num_iterations``), β 0.05, lr 1e-4,
temperature 1, CPU. The first rollout is warm-up; the last line printed is JSON with ``samples_per_s``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from trl_common import StepTimes, word_tokenizer  # beside this script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=("grpo", "rloo"), default="grpo")
    for name, default in (("layers", 2), ("dim", 128), ("vocab", 512), ("batch", 64), ("k", 4), ("prompt", 8),
                          ("resp", 32), ("epochs", 4), ("iters", 4)):  # fmt: skip
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    if a.algo == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=128, n_embd=a.dim, n_layer=a.layers, n_head=4,
                     bos_token_id=2, eos_token_id=2, pad_token_id=0)  # fmt: skip
    tokenizer = word_tokenizer(a.vocab)
    rollouts = a.iters + 1  # the first is warm-up
    words = torch.randint(3, a.vocab, (a.batch // a.k * rollouts, a.prompt)).tolist()
    prompts = Dataset.from_dict({"prompt": [" ".join(f"w{t}" for t in row) for row in words]})
    times = StepTimes()
    with tempfile.TemporaryDirectory() as tmp:
        policy_path, reward_path = Path(tmp) / "policy", Path(tmp) / "reward"
        GPT2LMHeadModel(cfg).save_pretrained(policy_path)
        GPT2ForSequenceClassification(GPT2Config(**{**cfg.to_dict(), "num_labels": 1})).save_pretrained(reward_path)
        tokenizer.save_pretrained(policy_path)
        args = Config(output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                      generation_batch_size=a.batch, num_generations=a.k, num_iterations=a.epochs,
                      max_completion_length=a.resp, max_steps=rollouts * a.epochs, learning_rate=1e-4, beta=0.05,
                      temperature=1.0, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                      shuffle_dataset=False, bf16=False, seed=0)  # fp32 as ours: no bf16 units on a CPU  # fmt: skip
        trainer = Trainer(model=str(policy_path), reward_funcs=str(reward_path), args=args, train_dataset=prompts,
                          processing_class=tokenizer, reward_processing_classes=tokenizer, callbacks=[times])  # fmt: skip
        trainer.train()
    # Each rollout ends after its `epochs` optimiser steps; time the rollouts after the first.
    ends = times.times[a.epochs - 1 :: a.epochs]
    seconds = (ends[-1] - ends[0]) / (len(ends) - 1)
    print(json.dumps({"samples_per_s": round(a.batch / seconds, 2), "rollouts_timed": len(ends) - 1,
                      "threads": torch.get_num_threads()}))  # fmt: skip


if __name__ == "__main__":
    main()
