"""The benchmarks run from a clone: their argument parsing and a one-iteration smoke path of our side
(``--skip-trl``: the TRL side needs its own environment, ``make bench``). They print figures; these
tests check only that they run and print what they promise, never a speed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--skip-trl", "--repeats", "1", "--iters", "2", "--layers", "1", "--dim", "16", "--vocab", "32",
        "--batch", "8", "--prompt", "3", "--resp", "4", "--epochs", "1"]  # fmt: skip


def run_main(name: str, argv: list[str], capsys, monkeypatch) -> dict:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module.main()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [TINY])
def test_ppo_vs_trl_runs_our_side_and_prints_its_json(argv, capsys, monkeypatch):
    result = run_main("ppo_vs_trl", argv, capsys, monkeypatch)
    assert result["ours_samples_per_s"] > 0 and result["trl_samples_per_s"] is None and result["ratio"] is None


def test_critic_free_vs_trl_runs_both_optimisers_of_our_side(capsys, monkeypatch):
    result = run_main("critic_free_vs_trl", [*TINY, "--k", "2"], capsys, monkeypatch)
    assert set(result) == {"grpo", "rloo"}
    assert all(r["ours_samples_per_s"] > 0 and r["trl_samples_per_s"] is None for r in result.values())
