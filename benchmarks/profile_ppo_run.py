"""Benchmark (not a test): where one default PPO run's time goes.

Runs one seed of a ``ppo_runs`` setting (default ``beta0``) as the PPO stage runs it (``pipelines.ppo.train``,
its real shapes, one torch thread unless ``--threads``), on the pipeline's own data, SFT policy and reward
models (run ``dvc repro reward@clean`` first), with wall-clock timers around the parts of a run:

- imports (the stage process's, measured in a fresh interpreter),
- set-up (tokenizer, models, MLflow run) until ``trainer.fit`` starts,
- per iteration: generation, the frozen passes (reference log-probs, value, reward members), the update,
- the evaluations (their generation, frozen passes, gold) and checkpoints, MLflow logging, output files.

Timers nest (the evaluation's own generation is counted under the evaluation, not under generation).
The last line printed is JSON: seconds and share of the run per part, iterations, evaluations.

usage: python benchmarks/profile_ppo_run.py [--setting beta0] [--seed 0] [--threads 1] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_stack: list[str] = []


@contextlib.contextmanager
def timed(name: str):
    """Wall time of a block, charged to ``name`` and not to the enclosing block (exclusive times)."""
    start = time.perf_counter()
    _stack.append(name)
    try:
        yield
    finally:
        _stack.pop()
        spent = time.perf_counter() - start
        SECONDS[name] += spent
        CALLS[name] += 1
        if _stack:
            SECONDS[_stack[-1]] -= spent


def wrap(owner, attribute: str, name: str) -> None:
    inner = getattr(owner, attribute)

    def timed_call(*args, **kwargs):
        with timed(name):
            return inner(*args, **kwargs)

    setattr(owner, attribute, timed_call)


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import pipelines.ppo; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()[-1])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="beta0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the stage gives each of 3 workers 1)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()
    imports = import_seconds()

    import lightning.pytorch as pl
    import torch

    from pipelines import ppo
    from rlhf_lab import config as config_lib
    from rlhf_lab.engine import evaluation, online
    from rlhf_lab.models import generation
    from lightning.pytorch.loggers import MLFlowLogger

    # Exclusive timers: an evaluation's generation and scoring are the evaluation's.
    wrap(evaluation.Evaluation, "__call__", "evaluation (generation, frozen passes, gold)")
    wrap(online, "sample", "generation (rollout)")
    wrap(evaluation, "sample", "evaluation (generation, frozen passes, gold)")
    wrap(online.OnlinePolicyModule, "score_rollout", "frozen passes (reference, value, members)")
    wrap(online.OnlinePolicyModule, "update", "update (PPO epochs, backward, optimiser)")
    wrap(pl.Trainer, "save_checkpoint", "checkpoints")
    wrap(MLFlowLogger, "log_metrics", "MLflow logging")
    wrap(ppo, "write_jsonl", "output files")
    wrap(ppo, "write_json", "output files")

    cfg = config_lib.load(args.params).ppo_run(args.setting).for_condition()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.replace(ppo={"seed": args.seed}, runtime={"threads": args.threads},
                          paths={"ppo": str(Path(tmp) / "ppo")},
                          tracking={"tracking_uri": f"sqlite:///{Path(tmp) / 'mlflow.db'}"})  # fmt: skip
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        with timed("set-up, Lightning loop and the rest"):
            metrics = ppo.train(cfg, Path(tmp) / "out")
        total = time.perf_counter() - start
    SECONDS["imports (fresh process)"] = imports
    total += imports
    width = max(len(k) for k in SECONDS)
    print(f"{'part':{width}}  seconds  share  calls")
    for name, seconds in sorted(SECONDS.items(), key=lambda kv: -kv[1]):
        print(f"{name:{width}}  {seconds:7.2f}  {seconds / total:5.1%}  {CALLS.get(name, 1):5d}")
    print(f"{'total':{width}}  {total:7.2f}")
    print(json.dumps({"setting": args.setting, "seed": args.seed, "threads": args.threads, "total_s": total,
                      "steps": metrics.get("steps"), "kl_final": metrics.get("kl_final"),
                      "parts": {k: {"seconds": round(v, 3), "share": round(v / total, 4), "calls": CALLS.get(k, 1)}
                                for k, v in SECONDS.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
