"""Independent runs side by side: the worker plan, results in order, failures as one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_lab.config import RuntimeConfig, UserError
from rlhf_lab.runtime import parallel


@pytest.mark.parametrize(
    "runtime, jobs, expected",
    [
        (RuntimeConfig(), 3, parallel.Plan(3, 1)),  # 3 seeds on 2 cores: all at once, a thread each
        (RuntimeConfig(), 9, parallel.Plan(3, 1)),  # capped at cores + 1
        (RuntimeConfig(), 1, parallel.Plan(1, 2)),  # a lone run gets every core
        (RuntimeConfig(parallel_runs=1), 3, parallel.Plan(1, 2)),  # one after another
        (RuntimeConfig(parallel_runs=2, threads=4), 3, parallel.Plan(2, 4)),  # as asked
        (RuntimeConfig(accelerator="gpu"), 3, parallel.Plan(1, 2)),  # a run owns its devices
        (RuntimeConfig(devices=2, strategy="ddp"), 3, parallel.Plan(1, 2)),
    ],
)
def test_plan(runtime, jobs, expected):
    assert parallel.plan(runtime, jobs, cpus=2, can_fork=True) == expected


def test_where_forking_is_unsafe_the_plan_is_one_run_at_a_time_on_every_core():
    assert parallel.plan(RuntimeConfig(), 3, cpus=2, can_fork=False) == parallel.Plan(1, 2)


def square_with_pid(x):
    return x * x, os.getpid()


def fail_on_two(x):
    if x == 2:
        raise UserError(f"ppo.members: job {x} asked for too many")
    return x


def die(x):
    os._exit(3)


@pytest.fixture
def fork_safe(monkeypatch):
    """As a stage's entry point marks its process; these jobs use no torch, so forking this test
    process (whose torch thread pool may be running) is safe for them."""
    monkeypatch.setattr(parallel, "_fork_safe_threads", None)
    parallel.mark_fork_safe()


def test_jobs_run_in_other_processes_and_come_back_in_order(fork_safe):
    results = parallel.run_side_by_side(square_with_pid, [1, 2, 3], parallel.Plan(2, 1))
    assert [r for r, _ in results] == [1, 4, 9]
    assert os.getpid() not in {pid for _, pid in results}


def test_one_worker_runs_in_process(fork_safe):
    results = parallel.run_side_by_side(square_with_pid, [2], parallel.Plan(1, 2))
    assert results == [(4, os.getpid())]


def test_a_user_error_in_a_worker_is_one_line_here(fork_safe):
    with pytest.raises(UserError, match=r"^ppo.members: job 2 asked for too many$"):
        parallel.run_side_by_side(fail_on_two, [1, 2, 3], parallel.Plan(3, 1))


def test_a_worker_that_dies_is_an_error_not_a_hang(fork_safe):
    with pytest.raises(parallel.WorkerError, match="exited with code 3"):
        parallel.run_side_by_side(die, [1, 2], parallel.Plan(2, 1))


def test_after_torch_work_forking_is_no_longer_safe():
    # A fresh process, as a stage's: this test session's own thread pool is already running.
    code = ("from rlhf_lab.runtime import parallel; import torch; parallel.mark_fork_safe(); assert parallel.fork_is_safe(); "
            "torch.randn(1000, 1000) @ torch.randn(1000, 1000); assert not parallel.fork_is_safe()")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_preloading_the_tracking_client_keeps_forking_safe(tmp_path):
    # The PPO stage imports MLflow before forking its seeds (after its own imports, as marked by
    # stage_main); opening a store starts no thread either.
    code = ("import pipelines.ppo; from rlhf_lab.runtime import parallel, stage; parallel.mark_fork_safe(); stage.preload_tracking(); "
            f"import mlflow; mlflow.MlflowClient('sqlite:///{tmp_path / 'm.db'}').search_experiments(); "
            "assert parallel.fork_is_safe()")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_unmarked_process_never_forks(monkeypatch):
    monkeypatch.setattr(parallel, "_fork_safe_threads", None)
    assert not parallel.fork_is_safe()


def test_a_stage_called_inside_another_program_does_not_mark_it(tmp_path, monkeypatch):
    from rlhf_lab.runtime.stage import stage_main

    monkeypatch.setattr(parallel, "_fork_safe_threads", None)
    (tmp_path / "params.yaml").write_text("")
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(tmp_path / "params.yaml")])
    stage_main(lambda cfg: {}, "test stage")
    assert not parallel.fork_is_safe()  # this pytest process has computed: forking it could hang a child


def sleep_long(x):
    import time

    time.sleep(60)


def test_workers_die_with_a_killed_stage_process(tmp_path):
    # A stage process (marked, forking) is killed with SIGKILL mid-run: its workers must not live on.
    code = ("import os, sys; sys.path.insert(0, os.getcwd()); from rlhf_lab.runtime import parallel; "
            "from tests.test_parallel import sleep_long; parallel.mark_fork_safe(); "
            "parallel.run_side_by_side(sleep_long, [1, 2], parallel.Plan(2, 1))")  # fmt: skip
    stage = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    import time

    deadline = time.time() + 60
    while time.time() < deadline and len(_children(stage.pid)) < 2:
        time.sleep(0.2)
    workers = _children(stage.pid)
    assert len(workers) == 2
    time.sleep(2)  # the workers are in their jobs now
    os.kill(stage.pid, 9)
    stage.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited, waiting to be reaped
