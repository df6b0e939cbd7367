"""MLflow tracking, apart from the stage skeleton so that the worker pool (rlhf_lab/runtime/parallel.py) and the
pre-flight checks (rlhf_lab/runtime/preflight.py) can use it without importing the stage: the store's URI, the
Lightning logger for a run (new or continued), the lock that serialises opening an SQLite store, and
the runs a stopped stage must close."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlhf_lab.config import Config, TrackingConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

def tracking_uri(tracking: TrackingConfig) -> str:
    """params.yaml's ``tracking.tracking_uri``, else $MLFLOW_TRACKING_URI, else the embedded store."""
    return tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

# (tracking URI, run id) of every MLflow run this process opened: a stage that stops on an error or
# Ctrl-C marks those still RUNNING as FAILED or KILLED (close_open_runs), never leaves them open.
_OPEN_RUNS: list[tuple[str, str]] = []

def mlflow_logger(cfg: Config, stage: str, run_name: str | None = None, tags: dict | None = None,
                  run_id: str | None = None):  # fmt: skip
    """Lightning's MLflow logger for one stage run; params are the run's whole resolved config.
    With ``run_id`` it continues that run (a resumed PPO run keeps one metric history)."""
    from lightning.pytorch.loggers import MLFlowLogger

    with store_lock(tracking_uri(cfg.tracking)):
        return _open_logger(MLFlowLogger, cfg, stage, run_name, tags, run_id)

def preload_tracking() -> None:
    """Import MLflow's client and SQL store before forking workers, so they share the imports
    instead of each paying ≈ 2.5 s for them (one after another, as they open the store under
    :func:`store_lock`). Importing starts no thread, so forking stays safe."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from lightning.pytorch.loggers import MLFlowLogger  # noqa: F401

@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """One process at a time opens an SQLite tracking store: seeds forked side by side onto a new
    store would otherwise race to create its tables ("duplicate column name")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield

def _open_logger(MLFlowLogger, cfg: Config, stage: str, run_name: str | None, tags: dict | None, run_id: str | None):
    kwargs = dict(experiment_name=cfg.tracking.experiment, run_name=run_name or stage,
                  tracking_uri=tracking_uri(cfg.tracking), tags={"stage": stage, **(tags or {})})  # fmt: skip
    if run_id is None:
        logger = MLFlowLogger(**kwargs)
        logger.log_hyperparams(flatten(cfg.to_dict()))
    else:
        logger = _continued_logger(MLFlowLogger)(run_id=run_id, **kwargs)
        logger.experiment.update_run(run_id, status="RUNNING")  # it was KILLED, or left RUNNING by a SIGKILL
    _OPEN_RUNS.append((tracking_uri(cfg.tracking), logger.run_id))
    return logger

def _continued_logger(base: type) -> type:
    """An MLflow logger continuing a run: steps the run already has (redone after a resume, with the
    same values) are not logged twice, so each metric's history stays one point per step."""

    class ContinuedMLFlowLogger(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            client, run_id = self.experiment, self.run_id
            self._logged = {key: max(m.step for m in client.get_metric_history(run_id, key))
                            for key in client.get_run(run_id).data.metrics}  # fmt: skip

        def log_metrics(self, metrics, step=None):
            if step is not None:
                metrics = {k: v for k, v in metrics.items() if step > self._logged.get(k, -1)}
            if metrics:
                super().log_metrics(metrics, step)

    return ContinuedMLFlowLogger

def forget_inherited_runs() -> None:
    """In a forked worker: the parent's runs are the parent's to close."""
    _OPEN_RUNS.clear()

def close_open_runs(status: str) -> None:
    """Mark this process's MLflow runs that are still RUNNING with ``status`` (FAILED, KILLED)."""
    from mlflow import MlflowClient

    for uri, run_id in _OPEN_RUNS:
        try:
            client = MlflowClient(uri)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - closing is best effort; the stage's own error is what matters
            pass
    _OPEN_RUNS.clear()

def create_parent_run(cfg: Config, run_name: str, stage: str) -> str:
    """An MLflow run that nested runs point at (tag ``mlflow.parentRunId``); returns its id."""
    from mlflow import MlflowClient

    with store_lock(tracking_uri(cfg.tracking)):
        client = MlflowClient(tracking_uri(cfg.tracking))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
        run_id = client.create_run(experiment_id, run_name=run_name, tags={"stage": stage}).info.run_id
    _OPEN_RUNS.append((tracking_uri(cfg.tracking), run_id))
    return run_id

def flatten(data: dict, prefix: str = "", interval_leaves: bool = False) -> dict:
    """Nested mappings as dotted keys; with ``interval_leaves``, {mean, ci_low, ci_high, n} stays whole."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not (interval_leaves and {"mean", "ci_low", "ci_high", "n"} <= set(value)):
            out.update(flatten(value, name + ".", interval_leaves))
        else:
            out[name] = value
    return out

def runs_page_url(cfg: Config, server: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's table of this experiment's training runs (the UI would open on its GenAI
    overview page otherwise); the experiment is created if no stage has run yet."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg.tracking))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    return f"{server}/#/experiments/{experiment_id}/runs"
