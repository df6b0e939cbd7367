"""TRL's side of ``benchmarks/ppo_vs_trl.py``: TRL 0.29.1's PPOTrainer (``trl.experimental.ppo``, the last
release with one) on the shapes our side runs. Runs in ``.venv-trl`` (``make bench`` creates it), never in
the project's environment.

Four separate models as ours: GPT-2 policy, reference, value and reward (random initialisation, vocab
``--vocab``, ``--layers`` × ``--dim``), a word-level tokenizer over that vocabulary (pad 0, eos 2), random
prompts of ``--prompt`` tokens, responses of ``--resp``, β 0.05 (k1, TRL's default), lr 1e-4, temperature 1,
CPU. The first PPO batch is warm-up; the last line printed is JSON with ``samples_per_s``.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from trl_common import StepTimes, word_tokenizer  # beside this script
from trl.experimental.ppo import PPOConfig, PPOTrainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 2), ("dim", 128), ("vocab", 512), ("batch", 64), ("prompt", 8), ("resp", 32),
                          ("epochs", 4), ("minibatches", 1), ("iters", 6)):  # fmt: skip
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=128, n_embd=a.dim, n_layer=a.layers, n_head=4,
                     bos_token_id=2, eos_token_id=2, pad_token_id=0)  # fmt: skip
    scorer = GPT2Config(**{**cfg.to_dict(), "num_labels": 1})
    policy, reference = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reward, value = GPT2ForSequenceClassification(scorer), GPT2ForSequenceClassification(scorer)
    prompts = Dataset.from_dict({"input_ids": torch.randint(3, a.vocab, (a.batch * a.iters, a.prompt)).tolist()})
    times = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(output_dir=out, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
                         num_mini_batches=a.minibatches, num_ppo_epochs=a.epochs, response_length=a.resp,
                         total_episodes=a.batch * a.iters, learning_rate=1e-4, temperature=1.0, kl_coef=0.05,
                         local_rollout_forward_batch_size=a.batch, num_sample_generations=0, use_cpu=True,
                         report_to=[], save_strategy="no", logging_strategy="no", bf16=False, seed=0)  # fp32 as ours  # fmt: skip
        trainer = PPOTrainer(args=args, processing_class=word_tokenizer(a.vocab), model=policy, ref_model=reference,
                             reward_model=reward, value_model=value, train_dataset=prompts, callbacks=[times])  # fmt: skip
        trainer.train()
    gaps = [b - c for c, b in zip(times.times, times.times[1:])]  # the first batch is warm-up
    print(json.dumps({"samples_per_s": round(a.batch / (sum(gaps) / len(gaps)), 2), "iters_timed": len(gaps),
                      "threads": torch.get_num_threads()}))  # fmt: skip


if __name__ == "__main__":
    main()
