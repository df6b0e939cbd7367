"""Benchmark (not a test): the same PPO runs one after another vs side by side.

Both sides run one PPO stage (``python -m pipelines.ppo``, a whole process, imports counted) of
``--seeds`` seeds of the ``beta0`` setting as params.yaml runs it (its ``ppo.seeds``, ``ppo.iterations``
cap and ``ppo.kl_budget``, unless ``--seeds``/``--iterations`` say otherwise), on the pipeline's own
data, SFT policy and clean reward ensemble (run ``dvc repro reward@clean`` first):

- sequential: ``runtime.parallel_runs: 1``, the seeds one after another, all cores each;
- parallel: ``runtime.parallel_runs: 0`` (auto), the seeds side by side in forked workers, the
  cores shared out (rlhf_lab/runtime/parallel.py).

The two sides alternate ``--repeats`` times (this machine's speed drifts over minutes) and the
figures are medians. The last line printed is JSON with ``sequential_runs_per_hour``,
``parallel_runs_per_hour`` and ``ratio`` (parallel / sequential), with every pair's times.

usage: python benchmarks/grid_throughput.py [--seeds N] [--iterations N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage_seconds(params: dict, workdir: Path, name: str) -> float:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.ppo", "--params", str(path), "--run-name", "beta0"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"error: the {name} PPO stage failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seeds", type=int, default=None, help="default: the count of ppo.seeds")
    parser.add_argument("--iterations", type=int, default=None, help="default: ppo.iterations")
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    base = yaml.safe_load(Path(a.params).read_text())
    # The workload the pipeline runs: its own seeds and iteration cap (and KL budget), unless told otherwise.
    seeds = base["ppo"]["seeds"]
    a.seeds = a.seeds or (seeds if isinstance(seeds, int) else len(seeds))
    a.iterations = a.iterations or base["ppo"]["iterations"]
    if not (ROOT / base["paths"]["reward"] / "clean" / "member_0").is_dir():
        sys.exit("error: no clean reward ensemble: run `dvc repro reward@clean` first")
    sides = {"sequential": {"parallel_runs": 1, "threads": 0}, "parallel": {"parallel_runs": 0, "threads": 0}}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for repeat in range(a.repeats):
            for name, runtime in sides.items():
                params = {
                    **base,
                    "paths": {**base["paths"], "ppo": str(workdir / name)},
                    "runtime": {**base["runtime"], **runtime},
                    "tracking": {**base.get("tracking", {}), "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}"},
                    "ppo": {**base["ppo"], "iterations": a.iterations, "seeds": a.seeds},
                }
                seconds[name].append(stage_seconds(params, workdir, name))
                print(f"repeat {repeat}: {name} {seconds[name][-1]:.1f} s for {a.seeds} runs", flush=True)
    per_hour = {name: a.seeds * 3600 / statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({
        "runs": a.seeds, "iterations": a.iterations, "repeats": a.repeats,
        "sequential_runs_per_hour": round(per_hour["sequential"], 1),
        "parallel_runs_per_hour": round(per_hour["parallel"], 1),
        "ratio": round(per_hour["parallel"] / per_hour["sequential"], 3),
        "pair_ratios": [round(s / p, 3) for s, p in zip(seconds["sequential"], seconds["parallel"])],
        "seconds": {name: [round(x, 1) for x in values] for name, values in seconds.items()},
    }))


if __name__ == "__main__":
    main()
