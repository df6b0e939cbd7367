"""Benchmark (not a test): our PPO loop vs TRL 0.29.1's PPOTrainer on the identical configuration.

Both sides: 2-layer d=128 GPT-2 policy, reference, value and reward models (four separate
models), vocab 512, batch 64, prompt 8, response 32, 4 PPO epochs x 1 minibatch, lr 1e-4,
temperature 1, random initialisation, CPU. The first iteration is warm-up; the rest are timed.
TRL runs in its own environment (``make bench`` creates ``.venv-trl``) through the peer script
``benchmarks/peers/trl_ppo_peer.py`` (the project's own). The last line printed is JSON with ``ours_samples_per_s``,
``trl_samples_per_s`` and ``ratio`` (medians over ``--repeats`` alternating runs of the two sides).

usage: python benchmarks/ppo_vs_trl.py [--iters 6] [--trl-python .venv-trl/bin/python]
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
from rlhf_lab.engine.ppo_module import PPOModule
from rlhf_lab.runtime.stage import apply_runtime, configure_environment, make_trainer

ROOT = Path(__file__).resolve().parents[1]


class Stamps(Callback):
    """The end time and rollout share of every PPO iteration (one training batch)."""

    def __init__(self):
        self.times, self.rollout_fraction = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter())
        self.rollout_fraction.append(float(trainer.callback_metrics["perf/rollout_fraction"]))


def ours(a) -> dict:
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    runtime = RuntimeConfig(accelerator=a.accelerator, precision=a.precision, devices=a.devices,
                            strategy=a.strategy, threads=a.threads)  # fmt: skip
    apply_runtime(runtime)  # threads and seed, as every stage does
    per_process = a.batch // a.devices  # data-parallel processes each roll out their share of the batch
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=128, n_embd=a.dim, n_layer=a.layers, n_head=4,
                     bos_token_id=2, eos_token_id=2, pad_token_id=0)  # fmt: skip
    ccfg = GPT2Config(**{**cfg.to_dict(), "num_labels": 1})
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reward, value = GPT2ForSequenceClassification(ccfg), GPT2ForSequenceClassification(ccfg)
    ppo = PPOConfig(iterations=a.iters, batch_size=per_process, ppo_epochs=a.epochs, minibatches=a.minibatches,
                    max_new_tokens=a.resp, lr=1e-4, temperature=1.0, beta=0.05, compile=a.compile,
                    attention=a.attention)  # fmt: skip
    module = PPOModule(ppo, policy, ref, [reward], value, eos_token_id=2, pad_token_id=0)
    prompts = torch.randint(3, a.vocab, (a.batch * a.iters, a.prompt))
    data = torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts))
    loader = torch.utils.data.DataLoader(data, batch_size=per_process)
    stamps = Stamps()
    steps = a.iters * a.epochs * a.minibatches  # Lightning counts optimizer steps
    trainer = make_trainer(runtime, logger=False, max_steps=steps, callbacks=[stamps], enable_progress_bar=False)
    trainer.fit(module, loader)
    dts = [b - c for c, b in zip(stamps.times, stamps.times[1:])]
    return {
        "samples_per_s": round(a.batch / (sum(dts) / len(dts)), 2),
        "iters_timed": len(dts),
        "rollout_fraction": round(sum(stamps.rollout_fraction[1:]) / len(dts), 3),
        "threads": torch.get_num_threads(),
    }


def trl(a) -> dict:
    peer = Path(a.peer)
    if not Path(a.trl_python).is_file() or not peer.is_file():
        raise SystemExit(f"TRL side needs {a.trl_python} (make bench creates it) and {peer}")
    cmd = [a.trl_python, str(peer), "--layers", str(a.layers), "--dim", str(a.dim), "--batch", str(a.batch),
           "--resp", str(a.resp), "--prompt", str(a.prompt), "--epochs", str(a.epochs),
           "--minibatches", str(a.minibatches), "--iters", str(a.iters), "--vocab", str(a.vocab)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt", type=int, default=8)
    p.add_argument("--resp", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    p.add_argument("--peer", default=str(ROOT / "benchmarks" / "peers" / "trl_ppo_peer.py"))
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; medians are reported")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--devices", type=int, default=1, help="our side: processes (CPU) or GPUs, data-parallel")
    p.add_argument("--strategy", default="auto", help="our side: Lightning strategy (ddp for --devices > 1)")
    p.add_argument("--threads", type=int, default=0, help="our side: torch threads per process (0: default)")
    p.add_argument("--compile", action="store_true", help="ppo.compile: torch.compile the update (warm-up untimed)")
    p.add_argument("--attention", default="auto", help="ppo.attention for our side (auto, bmm, sdpa, eager)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator for our side (cpu, gpu)")
    p.add_argument("--precision", default="32-true", help="Lightning precision for our side (32-true, bf16-mixed)")
    a = p.parse_args()
    configure_environment()
    if a.accelerator != "cpu":
        a.skip_trl = True  # the peer script is CPU-only
    # The machine's speed drifts by ±10 % over minutes, so the two sides alternate and each ratio
    # compares runs taken back to back; the figures reported are medians over the repeats.
    runs = []
    for repeat in range(a.repeats):
        run = {"ours": ours(a)}
        print(f"[{repeat + 1}/{a.repeats}] ours: {run['ours']}", file=sys.stderr)
        if not a.skip_trl:
            run["trl"] = trl(a)
            run["ratio"] = run["ours"]["samples_per_s"] / run["trl"]["samples_per_s"]
            print(f"[{repeat + 1}/{a.repeats}] trl:  {run['trl']}  ratio {run['ratio']:.2f}", file=sys.stderr)
        runs.append(run)
    ours_sps = statistics.median(r["ours"]["samples_per_s"] for r in runs)
    trl_sps = statistics.median(r["trl"]["samples_per_s"] for r in runs) if not a.skip_trl else None
    ratios = [round(r["ratio"], 2) for r in runs if "ratio" in r]
    print(json.dumps({
        "ours_samples_per_s": round(ours_sps, 2),
        "trl_samples_per_s": round(trl_sps, 2) if trl_sps else None,
        "ratio": round(statistics.median(ratios), 2) if ratios else None,
        "ratios": ratios,
        "ours_rollout_fraction": statistics.median(r["ours"]["rollout_fraction"] for r in runs),
        "device": torch.cuda.get_device_name() if a.accelerator == "gpu" else "cpu",
        "precision": a.precision,
        "compile": a.compile,
        "attention": a.attention,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
