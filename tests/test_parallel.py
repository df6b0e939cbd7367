"""Independent runs side by side: the worker plan, results in order, failures as one line."""

import os

import pytest

from rlhf_lab import parallel
from rlhf_lab.config import RuntimeConfig, UserError


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
    assert parallel.plan(runtime, jobs, cpus=2) == expected


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


def test_after_torch_work_the_jobs_run_here_in_turn(fork_safe):
    import torch

    torch.randn(1000, 1000) @ torch.randn(1000, 1000)  # may start torch's thread pool: forking is unsafe now
    if parallel.fork_is_safe():
        pytest.skip("this torch build started no thread for the product")
    threads = torch.get_num_threads()
    try:
        results = parallel.run_side_by_side(square_with_pid, [1, 2], parallel.Plan(2, 1))
    finally:
        torch.set_num_threads(threads)
    assert results == [(1, os.getpid()), (4, os.getpid())]


def test_an_unmarked_process_never_forks(monkeypatch):
    monkeypatch.setattr(parallel, "_fork_safe_threads", None)
    assert not parallel.fork_is_safe()
