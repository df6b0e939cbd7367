"""The skeleton every DVC stage shares: environment, config, errors, outputs, MLflow, Trainer."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rlhf_lab import config as config_lib
from rlhf_lab import preflight
from rlhf_lab.config import Config, ConfigError, RuntimeConfig, TrackingConfig, UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def set_environment_defaults() -> None:
    """Offline and quiet by default; a user's own setting of any of these wins.

    huggingface_hub and transformers read these once, when imported: this must run before any
    import of them (``pipelines/__init__.py`` calls it first thing).
    """
    for key, value in {
        "HF_HUB_OFFLINE": "1",  # set HF_HUB_OFFLINE=0 to let `model.name_or_path` be a hub name
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        os.environ.setdefault(key, value)


# Known-benign console lines, matched exactly enough to leave every other message alone.
BENIGN_LOG_LINES = re.compile(
    r"^(GPU available: |TPU available: |HPU available: |💡 Tip: |`Trainer\.fit` stopped: |"
    r"Using default `ModelCheckpoint`|Restoring states from the checkpoint path|Restored all states from the checkpoint|"
    r"Experiment with name .* not found\. Creating it\.)"
)
BENIGN_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode at the start of training",  # PPO's frozen models are meant to be
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of a torch API
    r"The '\w+_dataloader' does not have many workers",  # in-memory tensors: workers would only cost
    r"Checkpoint directory .* exists and is not empty",  # our resume folder, on purpose
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"You're resuming from a checkpoint that ended before the epoch ended",  # PPO reads its own prompt schedule
    r"`is_gradient_checkpointing` is deprecated",  # peft asking transformers; nothing of ours
    r"fan_in_fan_out is set to False but the target module is `Conv1D`",  # peft then sets it right for GPT-2
)


class _DropBenign(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not BENIGN_LOG_LINES.match(record.getMessage())


def quiet_console() -> None:
    """One progress bar and a short summary per stage: Lightning's tips and notices and the known
    benign warnings go; every other warning still shows."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.pytorch.loggers.mlflow"):  # fmt: skip
        logging.getLogger(name).addFilter(_DropBenign())
    for message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
    logging.getLogger("alembic").setLevel(logging.WARNING)


def configure_environment() -> None:
    """The environment defaults, and transformers' logging quietened."""
    set_environment_defaults()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the stage's own output
    hf_logging.set_verbosity_error()
    quiet_console()


def apply_runtime(runtime: RuntimeConfig, seed_offset: int = 0) -> None:
    import lightning.pytorch as pl
    import torch

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    pl.seed_everything(runtime.seed + seed_offset, workers=True, verbose=False)


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


def make_trainer(runtime: RuntimeConfig, logger, **kwargs):
    """A Lightning Trainer whose hardware comes from params.yaml's ``runtime`` section."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    kwargs.setdefault("enable_checkpointing", False)
    try:
        return pl.Trainer(
            accelerator=runtime.accelerator,
            devices=runtime.devices,
            num_nodes=runtime.num_nodes,
            strategy=runtime.strategy,
            precision=runtime.precision,
            logger=logger,
            enable_model_summary=False,
            deterministic=False,
            **kwargs,
        )
    except (MisconfigurationException, ValueError) as err:  # what Lightning says of hardware it cannot use
        raise ConfigError(f"runtime: {str(err).splitlines()[0]}") from None


@contextmanager
def replacing_dir(path: str | Path, merge: bool = False) -> Iterator[Path]:
    """Write a stage's output folder aside and swap it in only when the stage succeeded.

    A failed or interrupted run leaves whatever was at ``path`` before untouched. With ``merge``,
    only the entries the stage wrote are replaced; other files in ``path`` (a README) stay.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pairs = [(child, path / child.name) for child in tmp.iterdir()] if merge else [(tmp, path)]
    path.mkdir(parents=True, exist_ok=True)
    for new, target in pairs:
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        new.rename(target)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    if merge:
        tmp.rmdir()


def stage_main(run: Callable[..., dict], description: str, options: dict[str, str] | None = None,
               services: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Command-line entry of a stage: ``python -m pipelines.<stage> [--params params.yaml]``.

    ``options`` adds string options (name -> help), passed to ``run`` as keyword arguments.
    ``services`` are checked before ``run`` starts (rlhf_lab/preflight.py): tracking, storage, hardware.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    for option, help_text in (options or {}).items():
        parser.add_argument(option, default=None, help=help_text)
    args = vars(parser.parse_args())
    params = args.pop("params")
    configure_environment()
    from rlhf_lab import parallel

    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is not None and main_spec.name.startswith("pipelines."):
        # This process began as the stage's own command (python -m pipelines.<stage>): nothing has
        # computed yet, so it may fork its independent runs. A caller in a process that has (a
        # test, a notebook) is not marked and runs them in turn.
        parallel.mark_fork_safe()
    # A stage stopped from outside (Ctrl-C, SIGTERM) closes its runs and ends within a grace period.
    signal.signal(signal.SIGTERM, _stop_within_grace)
    signal.signal(signal.SIGINT, _stop_within_grace)
    cfg = None
    try:
        cfg = config_lib.load(params)
        preflight.check(cfg, services)
        if args.get("storage"):
            preflight.check_storage(args["storage"], "--storage")
        metrics = run(cfg, **args)
    except (UserError, FileNotFoundError) as err:
        close_open_runs("FAILED")
        if isinstance(err, FileNotFoundError):  # an input a stage run by hand needs, before its maker ran
            err = missing_input(cfg, err.filename) if cfg is not None and err.filename else err
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into exit(1)
        close_open_runs("KILLED")
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        print("interrupted: outputs from before this run are untouched", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        close_open_runs("FAILED")
        raise
    print(summary(metrics))


def maker_of(cfg: Config, path: Path | str) -> str | None:
    """The DVC stage that writes ``path`` (``sweep``, ``reward@noisy``, ``ppo@beta0``…), from the
    ``paths`` key it lies under; None outside them."""
    path = Path(path).resolve()
    per_item = {"preferences", "reward", "ppo"}  # foreach stages: one folder per condition or setting
    for key in ("data", "sft", "preferences", "reward", "ppo", "best_of_n", "sweep", "report"):
        root = Path(getattr(cfg.paths, key)).resolve()
        if path == root or root in path.parents:
            rest = path.relative_to(root).parts
            if key in per_item:
                return f"{key}@{rest[0]}" if rest and not rest[0].startswith(".") else key
            return key
    return None


def missing_input(cfg: Config, filename: str) -> UserError:
    """One line for a missing input: what is missing and the command that makes it."""
    stage = maker_of(cfg, filename)
    return UserError(f"{filename}: not found" + (f"; `dvc repro {stage}` makes it" if stage else ""))


# A graceful stop that has not ended in this many seconds ends the process outright: an interrupt
# raised while a progress bar's thread held its lock could otherwise wait on it forever.
SHUTDOWN_GRACE_S = 15


def _stop_within_grace(signum, frame) -> None:
    """Ctrl-C: unwind (runs closed, outputs untouched), and make sure the process ends."""
    watchdog = threading.Timer(SHUTDOWN_GRACE_S, os._exit, (130,))
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def summary(metrics: dict, limit: int = 12) -> str:
    """A stage's headline numbers, one a line (``name: mean [low, high] (n)`` for intervals); the
    rest are in its metrics.json."""
    lines = []
    for key, value in sorted(flatten({k: v for k, v in metrics.items() if k != "seeds"}, interval_leaves=True).items()):
        if isinstance(value, dict) and value["ci_low"] == value["ci_high"]:  # the same in every seed: no interval
            lines.append(f"{key}: {value['mean']:.4g} (all {value['n']})")
        elif isinstance(value, dict):
            lines.append(f"{key}: {value['mean']:.4g} [{value['ci_low']:.4g}, {value['ci_high']:.4g}] (n={value['n']})")
        elif isinstance(value, float):
            lines.append(f"{key}: {value:.4g}")
        elif isinstance(value, (int, str, bool)):
            lines.append(f"{key}: {value}")
    more = len(lines) - limit
    return "\n".join(lines[:limit] + ([f"… and {more} more (the stage's metrics.json)"] if more > 0 else []))


def checkpoint_callback(path: Path, every: int, last: int, steps_per_unit: int = 1):
    """A Lightning callback saving the whole training state to ``path`` after every ``every`` units
    of training (optimizer steps / ``steps_per_unit``: PPO iterations) before ``last``, written aside
    and renamed into place: a kill mid-write leaves the previous checkpoint whole."""
    from lightning.pytorch.callbacks import Callback

    class AtomicCheckpoint(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            done = trainer.global_step // steps_per_unit
            if done % every or done >= last:
                return
            partial = path.with_name(path.name + ".partial")
            trainer.save_checkpoint(partial, weights_only=False)
            if trainer.is_global_zero:
                os.replace(partial, path)
            trainer.strategy.barrier()

    return AtomicCheckpoint()


def unreadable_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (cut short, not a checkpoint, or carrying pickled objects
    beyond tensors, containers and numbers), or None if it loads. A checkpoint can come from
    elsewhere (a shared run folder): ``weights_only`` never runs the code a pickle carries."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def runs_page_url(cfg: Config, server: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's table of this experiment's training runs (the UI would open on its GenAI
    overview page otherwise); the experiment is created if no stage has run yet."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg.tracking))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    return f"{server}/#/experiments/{experiment_id}/runs"
