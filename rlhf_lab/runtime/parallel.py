"""Independent runs side by side: forked worker processes, a few torch threads each.

The tiny models of the built-in task leave a 2-core CPU mostly idle inside one run (kernel launch
and Python overhead dominate), so single-thread runs side by side finish ≈ 1.6–1.8× sooner than the
same runs one after another with two threads each. Workers are forked from the stage process before
it does any torch work, so they share its imports (≈ 10 s each) instead of paying them again.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

from rlhf_lab.config import RuntimeConfig, UserError
from rlhf_lab.runtime.tracking import close_open_runs, forget_inherited_runs


@dataclass(frozen=True)
class Plan:
    workers: int  # processes at once; 1 = in this process, one run after another
    threads: int  # torch threads per worker


def plan(runtime: RuntimeConfig, jobs: int, cpus: int | None = None, can_fork: bool | None = None) -> Plan:
    """How many runs to do at once and with how many threads each.

    ``runtime.parallel_runs`` (0 = auto) caps the workers. Auto, on a single CPU device: one worker
    per job up to one more than the cores (3 runs on 2 cores, one thread each, beat 2 + 1: the cores
    stay busy to the end, and while a worker loads models or writes files), the cores shared out.
    Accelerators and multi-process strategies run one job at a time: each run already owns every
    device it was given; so does a process where forking is not safe (``can_fork``, default
    :func:`fork_is_safe`).
    """
    cpus = cpus or os.cpu_count() or 1
    if not (fork_is_safe() if can_fork is None else can_fork):
        return Plan(1, runtime.threads or cpus)
    single_cpu = runtime.accelerator == "cpu" and runtime.devices == 1 and runtime.num_nodes == 1
    if runtime.parallel_runs:
        workers = runtime.parallel_runs
    else:
        workers = min(jobs, cpus + 1) if single_cpu else 1
    workers = max(1, min(workers, jobs))
    threads = runtime.threads or max(1, cpus // workers)
    return Plan(workers, threads)


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: never counted as safe to fork
        return 1 << 30


_fork_safe_threads: int | None = None  # the thread count when mark_fork_safe was called


def mark_fork_safe() -> None:
    """Called by a stage's entry point before any work: this process may fork workers while no
    thread has started since (see :func:`fork_is_safe`)."""
    global _fork_safe_threads
    _fork_safe_threads = _os_threads()


def fork_is_safe() -> bool:
    """True in a stage process that has started no thread since :func:`mark_fork_safe`.

    fork copies only the calling thread, so a child can inherit a lock or thread pool half-held by
    a thread that is not there: torch's OpenMP pool, which starts (adding threads) at the first
    parallel op, then hangs the child's first parallel op. A stage forks its workers before any
    torch work; a process that has computed (a test session, a notebook) runs its jobs in turn.
    """
    return _fork_safe_threads is not None and _os_threads() <= _fork_safe_threads


class WorkerError(Exception):
    """A worker failed with something other than a UserError; carries its traceback text."""


def _forget_inherited_connections() -> None:
    """A forked child must not share the parent's pooled database connections (SQLAlchemy's fork
    recipe: dispose without closing). MLflow keeps one engine per SQLite/SQL store URI."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in store.SqlAlchemyStore._engine_map.values():
            engine.dispose(close=False)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this worker SIGTERM when the stage process dies, even by SIGKILL,
    so no orphan runs on into the stage's ``.partial`` folder (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the stage died before the request was in place
            os._exit(1)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # terminated by the stage (or its death): unwind, closing the runs


def _child(fn: Callable, job: Any, threads: int, conn, parent: int) -> None:
    import torch

    forget_inherited_runs()
    signal.signal(signal.SIGTERM, _stop)
    _die_with_parent(parent)
    _forget_inherited_connections()
    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(job)))
    except UserError as err:
        close_open_runs("FAILED")
        conn.send(("user", str(err)))
    except (KeyboardInterrupt, SystemExit):
        close_open_runs("KILLED")
        conn.send(("error", "worker stopped"))
    except BaseException:  # noqa: BLE001 - everything reaches the parent as text
        close_open_runs("FAILED")
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_side_by_side(fn: Callable[[Any], Any], jobs: Sequence[Any], workers_plan: Plan) -> list:
    """``[fn(job) for job in jobs]``, ``workers_plan.workers`` at a time in forked processes.

    With one worker the jobs run here, one after another. Results come back in job order. The
    first failure stops the rest: a UserError is raised again here as a UserError (one line for
    the user), anything else as a WorkerError with the worker's traceback. Ctrl-C ends every worker.
    """
    if workers_plan.workers == 1:
        import torch

        torch.set_num_threads(workers_plan.threads)
        return [fn(job) for job in jobs]
    ctx = mp.get_context("fork")
    results: list = [None] * len(jobs)
    pending = list(enumerate(jobs))
    running: dict = {}  # reader connection -> (index, process)
    try:
        while pending or running:
            while pending and len(running) < workers_plan.workers:
                index, job = pending.pop(0)
                reader, writer = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_child, args=(fn, job, workers_plan.threads, writer, os.getpid()),
                                      daemon=True)  # fmt: skip
                process.start()
                writer.close()
                running[reader] = (index, process)
            for reader in wait(list(running)):
                index, process = running.pop(reader)
                try:
                    kind, value = reader.recv()
                except EOFError:  # died without a word: killed, or out of memory
                    process.join()
                    kind, value = "error", f"worker exited with code {process.exitcode}"
                process.join()
                if kind == "user":
                    raise UserError(value)
                if kind == "error":
                    raise WorkerError(value)
                results[index] = value
    finally:
        for _, process in running.values():
            process.terminate()
            process.join()
    return results
