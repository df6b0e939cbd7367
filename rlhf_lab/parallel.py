"""Independent runs side by side: forked worker processes, a few torch threads each.

The tiny models of the built-in task leave a 2-core CPU mostly idle inside one run (kernel launch
and Python overhead dominate), so two single-thread runs side by side finish ≈ 1.6–1.8× sooner than
the same runs one after another with two threads each. Workers are forked from the stage process,
so they share its imports (≈ 10 s each) instead of paying them again.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import wait
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlhf_lab.config import RuntimeConfig, UserError


@dataclass(frozen=True)
class Plan:
    workers: int  # processes at once; 1 = in this process, one run after another
    threads: int  # torch threads per worker


def plan(runtime: RuntimeConfig, jobs: int, cpus: int | None = None) -> Plan:
    """How many runs to do at once and with how many threads each.

    ``runtime.parallel_runs`` (0 = auto) caps the workers; auto means one worker per job on a
    single CPU device, with the cores shared out (at least one thread each: 3 runs on 2 cores still
    beat 2 + 1, the cores stay busy to the end). Accelerators and multi-process strategies run one
    job at a time: each run already owns every device it was given.
    """
    cpus = cpus or os.cpu_count() or 1
    single_cpu = runtime.accelerator == "cpu" and runtime.devices == 1 and runtime.num_nodes == 1
    if runtime.parallel_runs:
        workers = runtime.parallel_runs
    else:
        workers = jobs if single_cpu else 1
    workers = max(1, min(workers, jobs))
    threads = runtime.threads or max(1, cpus // workers)
    return Plan(workers, threads)


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: count as "threads started", so forkserver is used
        return 1 << 30


# The threads this process has once its modules are imported (importing torch starts a few).
_THREADS_AT_IMPORT = _os_threads()


def start_method() -> str:
    """``fork`` while no thread has started since the imports, else ``forkserver``.

    fork copies only the calling thread, so a child can inherit a lock or thread pool half-held by
    a thread that is not there: torch's OpenMP pool, started by the first parallel op, then hangs
    the child's first parallel op. A stage process forks before any torch work (fast: the child
    shares the imports); a process that already computed (a test session, a notebook) forks from a
    clean server process instead, which imports the job's module once.
    """
    return "fork" if _os_threads() <= _THREADS_AT_IMPORT else "forkserver"


class WorkerError(Exception):
    """A worker failed with something other than a UserError; carries its traceback text."""


def _forget_inherited_connections() -> None:
    """A forked child must not share the parent's pooled database connections (SQLAlchemy's fork
    recipe: dispose without closing). MLflow keeps one engine per SQLite/SQL store URI."""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in store.SqlAlchemyStore._engine_map.values():
            engine.dispose(close=False)


def _child(fn: Callable, job: Any, threads: int, conn) -> None:
    import torch

    from rlhf_lab.stage import configure_environment

    _forget_inherited_connections()
    configure_environment()  # a forkserver child starts from a fresh interpreter
    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(job)))
    except UserError as err:
        conn.send(("user", str(err)))
    except BaseException:  # noqa: BLE001 - everything reaches the parent as text
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_side_by_side(fn: Callable[[Any], Any], jobs: Sequence[Any], workers_plan: Plan) -> list:
    """``[fn(job) for job in jobs]``, ``workers_plan.workers`` at a time in forked processes.

    ``fn`` is a module-level function and each job picklable (forkserver sends them); results come
    back in job order. The first failure stops the rest: a UserError is raised again
    here as a UserError (one line for the user), anything else as a WorkerError with the
    worker's traceback. Ctrl-C ends every worker.
    """
    if workers_plan.workers == 1:
        import torch

        torch.set_num_threads(workers_plan.threads)
        return [fn(job) for job in jobs]
    method = start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([fn.__module__])
    results: list = [None] * len(jobs)
    pending = list(enumerate(jobs))
    running: dict = {}  # reader connection -> (index, process)
    try:
        while pending or running:
            while pending and len(running) < workers_plan.workers:
                index, job = pending.pop(0)
                reader, writer = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_child, args=(fn, job, workers_plan.threads, writer), daemon=True)
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
