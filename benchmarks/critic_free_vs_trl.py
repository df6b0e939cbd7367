"""Benchmark (not a test): our GRPO and RLOO loops vs TRL's GRPOTrainer and RLOOTrainer, same shapes.

Both sides: 2-layer d=128 GPT-2 policy, reference and reward model, vocab 512, 64 responses a
rollout (16 prompts × k 4), prompt 8, response 32, the rollout reused for 4 optimiser steps (our
``ppo_epochs`` 4 × 1 minibatch; TRL's ``num_iterations``), lr 1e-4, β 0.05, temperature 1, random
initialisation, CPU. The first rollout is warm-up. TRL runs in its own environment (``.venv-trl``:
TRL 0.29.1, the faster of 0.29.1 and 1.16.0 on this workload, measured 2026-12-05) through
``benchmarks/peers/trl_critic_free_peer.py`` (the project's own). The two sides alternate ``--repeats`` times; the last line
printed is JSON ``{"grpo": {"ours_samples_per_s", "trl_samples_per_s", "ratio"}, "rloo": {...}}``
(medians).

usage: python benchmarks/critic_free_vs_trl.py [--iters 4] [--repeats 3] [--skip-trl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from rlhf_lab.config import PPOConfig, RuntimeConfig
from rlhf_lab.engine.critic_free import GRPOModule, RLOOModule
from rlhf_lab.runtime.stage import apply_runtime, configure_environment, make_trainer

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"grpo": GRPOModule, "rloo": RLOOModule}


class Stamps(Callback):
    def __init__(self):
        self.times = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter())


def ours(a, algorithm: str) -> dict:
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    runtime = RuntimeConfig(threads=a.threads)
    apply_runtime(runtime)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=128, n_embd=a.dim, n_layer=a.layers, n_head=4,
                     bos_token_id=2, eos_token_id=2, pad_token_id=0)  # fmt: skip
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reward = GPT2ForSequenceClassification(GPT2Config(**{**cfg.to_dict(), "num_labels": 1}))
    # TRL's GRPO aggregates with dapo and scales by the group std by default; both are ours too.
    ppo = PPOConfig(algorithm=algorithm, samples_per_prompt=a.k, iterations=a.iters + 1, batch_size=a.batch,
                    ppo_epochs=a.epochs, minibatches=1, max_new_tokens=a.resp, lr=1e-4, temperature=1.0, beta=0.05)  # fmt: skip
    module = MODULES[algorithm](ppo, policy, ref, [reward], eos_token_id=2, pad_token_id=0)
    prompts = torch.randint(3, a.vocab, (a.batch // a.k * (a.iters + 1), a.prompt))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)),
                                         batch_size=a.batch // a.k)  # fmt: skip
    stamps = Stamps()
    trainer = make_trainer(runtime, logger=False, max_steps=(a.iters + 1) * a.epochs, callbacks=[stamps],
                           enable_progress_bar=False)  # fmt: skip
    trainer.fit(module, loader)
    dts = [b - c for c, b in zip(stamps.times, stamps.times[1:])]  # the first rollout is warm-up
    return {"samples_per_s": round(a.batch / (sum(dts) / len(dts)), 2), "rollouts_timed": len(dts)}


def trl(a, algorithm: str) -> dict:
    peer = Path(a.peer)
    if not Path(a.trl_python).is_file() or not peer.is_file():
        raise SystemExit(f"TRL side needs {a.trl_python} (make bench creates it) and {peer}")
    cmd = [a.trl_python, str(peer), "--algo", algorithm, "--layers", str(a.layers), "--dim", str(a.dim),
           "--batch", str(a.batch), "--k", str(a.k), "--resp", str(a.resp), "--prompt", str(a.prompt),
           "--epochs", str(a.epochs), "--iters", str(a.iters), "--vocab", str(a.vocab)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("layers", 2), ("dim", 128), ("vocab", 512), ("batch", 64), ("k", 4), ("prompt", 8),
                          ("resp", 32), ("epochs", 4), ("iters", 4), ("repeats", 3), ("threads", 0)):  # fmt: skip
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    p.add_argument("--peer", default=str(ROOT / "benchmarks" / "peers" / "trl_critic_free_peer.py"))
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--algorithms", default="grpo,rloo")
    a = p.parse_args()
    configure_environment()
    result = {}
    for algorithm in a.algorithms.split(","):
        runs = []
        for repeat in range(a.repeats):  # alternating, so each ratio compares runs taken back to back
            run = {"ours": ours(a, algorithm)}
            if not a.skip_trl:
                run["trl"] = trl(a, algorithm)
                run["ratio"] = run["ours"]["samples_per_s"] / run["trl"]["samples_per_s"]
            print(f"[{algorithm} {repeat + 1}/{a.repeats}] {run}", file=sys.stderr)
            runs.append(run)
        ours_sps = statistics.median(r["ours"]["samples_per_s"] for r in runs)
        trl_sps = statistics.median(r["trl"]["samples_per_s"] for r in runs) if not a.skip_trl else None
        ratios = [round(r["ratio"], 2) for r in runs if "ratio" in r]
        result[algorithm] = {"ours_samples_per_s": round(ours_sps, 2),
                             "trl_samples_per_s": round(trl_sps, 2) if trl_sps else None,
                             "ratio": round(statistics.median(ratios), 2) if ratios else None, "ratios": ratios}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
