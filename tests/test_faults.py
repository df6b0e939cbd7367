"""Faults: services that are down, hardware that is not there, members that were never trained,
a stage stopped from outside. Each gets one line naming the param (and address), in seconds."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_lab import config as config_lib

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(cfg, tmp_path, stage: str, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    params = tmp_path / "params.yaml"
    config_lib.save(cfg, params)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--params", str(params), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    return done, time.monotonic() - start


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def test_a_tracking_server_that_is_down_fails_in_seconds(tiny_cfg, tmp_path, data_stage):
    address = f"http://127.0.0.1:{free_port()}"
    cfg = tiny_cfg.replace(tracking={"tracking_uri": address}, paths={"sft": str(tmp_path / "sft")})
    done, seconds = run_stage(cfg, tmp_path, "sft")
    assert one_line(done) == f"error: tracking.tracking_uri: no MLflow server at {address} (Connection refused)"
    assert seconds < 30  # imports included; MLflow's own retries would take minutes
    assert not (tmp_path / "sft").exists()


def test_an_optuna_storage_that_is_down_is_one_line(tiny_cfg, tmp_path):
    url = f"postgresql+psycopg2://rlhf:secret@127.0.0.1:{free_port()}/optuna"
    cfg = tiny_cfg.replace(sweep={"storage": url})
    done, seconds = run_stage(cfg, tmp_path, "sweep")
    line = one_line(done)
    assert line.startswith("error: sweep.storage: cannot connect to postgresql+psycopg2://rlhf:***@127.0.0.1:")
    assert "secret" not in line and seconds < 30


def test_an_accelerator_this_machine_lacks_is_one_line(tiny_cfg, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done, _ = run_stage(tiny_cfg.replace(runtime={"accelerator": "gpu"}), tmp_path, "sft")
    assert one_line(done).startswith("error: runtime.accelerator: gpu, but this machine has no CUDA GPU")
    done, _ = run_stage(tiny_cfg.replace(runtime={"strategy": "no_such_strategy"}), tmp_path, "sft")
    assert one_line(done).startswith("error: runtime: ")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mlflow_runs_table(tracking_uri: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        return db.execute("SELECT run_uuid, name, status, end_time FROM runs ORDER BY run_uuid").fetchall()


def test_a_refused_stage_writes_nothing(tiny_cfg, tmp_path, reward_stage):
    """More members than were trained: one line, before any checkpoint folder or MLflow run is made;
    the outputs already there and the MLflow runs table stay byte for byte as they were."""
    out = tmp_path / "ppo"
    (out / "default").mkdir(parents=True)
    (out / "default" / "metrics.json").write_text('{"kept": true}\n')  # a user's earlier results
    cfg = tiny_cfg.replace(ppo={"members": 9}, paths={"ppo": str(out)})
    config_lib.save(cfg, tmp_path / "params.yaml")
    files, runs = snapshot(tmp_path), mlflow_runs_table(cfg.tracking.tracking_uri)
    done, _ = run_stage(cfg, tmp_path, "ppo")  # the ppo section itself, run name "default"
    assert one_line(done) == (f"error: ppo.members: 9 requested, but {cfg.paths.reward}/clean has 2 trained "
                              "members (reward.members)")  # fmt: skip
    assert snapshot(tmp_path) == files
    assert mlflow_runs_table(cfg.tracking.tracking_uri) == runs


def test_a_stage_stopped_from_outside_marks_its_runs_killed(tiny_cfg, tmp_path, data_stage):
    import mlflow

    cfg = tiny_cfg.replace(paths={"sft": str(tmp_path / "sft")}, sft={"epochs": 50},
                           tracking={"experiment": "stopped"})  # fmt: skip
    params = tmp_path / "params.yaml"
    config_lib.save(cfg, params)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.sft", "--params", str(params)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    deadline = time.time() + 120
    while time.time() < deadline and not mlflow.search_runs(experiment_names=["stopped"], output_format="list"):
        time.sleep(0.5)
    time.sleep(3)  # training under way
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    runs = mlflow.search_runs(experiment_names=["stopped"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"] or [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "sft").exists()  # nothing half-written


def test_the_mlflow_ui_address_opens_on_the_runs_table(tiny_cfg):
    from mlflow import MlflowClient

    from rlhf_lab.runtime.stage import runs_page_url

    url = runs_page_url(tiny_cfg)
    experiment = MlflowClient(tiny_cfg.tracking.tracking_uri).get_experiment_by_name(tiny_cfg.tracking.experiment)
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"


def test_the_console_drops_known_benign_lines_and_keeps_real_warnings(caplog):
    import logging
    import warnings

    from rlhf_lab.runtime.stage import configure_environment

    configure_environment()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        logger.info("GPU available: False, used: False")
        logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        logger.info("Something the user should read")
    assert [r.getMessage() for r in caplog.records] == ["Something the user should read"]
    with warnings.catch_warnings(record=True) as seen:
        from rlhf_lab.runtime.stage import quiet_console

        warnings.simplefilter("always")
        quiet_console()  # its filters go in front of "always"
        warnings.warn("Found 34 module(s) in eval mode at the start of training. This may lead to ...", UserWarning)
        warnings.warn("The learning rate is NaN", UserWarning)
    assert [str(w.message) for w in seen] == ["The learning rate is NaN"]


class _Payload:
    """A pickled object that would leave a mark if unpickling ran its code."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.write_text, (self.mark, "the checkpoint's code ran"))


def test_a_checkpoint_that_carries_code_is_not_run_and_the_run_starts_over(tmp_path, capsys):
    import torch

    from pipelines.ppo import resumable_checkpoint

    ckpt_dir, mark = tmp_path / "ckpt", tmp_path / "ran"
    ckpt_dir.mkdir()
    (ckpt_dir / "config.yaml").write_text("same config")
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload(mark)}, ckpt_dir / "last.ckpt")
    assert resumable_checkpoint(ckpt_dir, "same config") is None  # not resumed from
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {ckpt_dir / 'last.ckpt'} cannot be read (")
    assert lines[0].endswith("); this run starts over")
    assert not mark.exists() and not (ckpt_dir / "last.ckpt").exists()
