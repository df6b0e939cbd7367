"""The skeleton every DVC stage shares: environment, config, errors, outputs, MLflow, Trainer."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rlhf_lab import config as config_lib
from rlhf_lab.config import Config, RuntimeConfig, TrackingConfig, UserError

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


def configure_environment() -> None:
    """The environment defaults, and transformers' logging quietened."""
    set_environment_defaults()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown the stage's own output
    hf_logging.set_verbosity_error()


def apply_runtime(runtime: RuntimeConfig, seed_offset: int = 0) -> None:
    import lightning.pytorch as pl
    import torch

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    pl.seed_everything(runtime.seed + seed_offset, workers=True, verbose=False)


def tracking_uri(tracking: TrackingConfig) -> str:
    """params.yaml's ``tracking.tracking_uri``, else $MLFLOW_TRACKING_URI, else the embedded store."""
    return tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mlflow_logger(cfg: Config, stage: str, run_name: str | None = None, tags: dict | None = None):
    """Lightning's MLflow logger for one stage run; params are the run's whole resolved config."""
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=run_name or stage,
        tracking_uri=tracking_uri(cfg.tracking),
        tags={"stage": stage, **(tags or {})},
    )
    logger.log_hyperparams(flatten(cfg.to_dict()))
    return logger


def create_parent_run(cfg: Config, run_name: str, stage: str) -> str:
    """An MLflow run that nested runs point at (tag ``mlflow.parentRunId``); returns its id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg.tracking))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    return client.create_run(experiment_id, run_name=run_name, tags={"stage": stage}).info.run_id


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def make_trainer(runtime: RuntimeConfig, logger, **kwargs):
    """A Lightning Trainer whose hardware comes from params.yaml's ``runtime`` section."""
    import lightning.pytorch as pl

    kwargs.setdefault("enable_checkpointing", False)
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


def stage_main(run: Callable[..., dict], description: str, options: dict[str, str] | None = None) -> None:
    """Command-line entry of a stage: ``python -m pipelines.<stage> [--params params.yaml]``.

    ``options`` adds string options (name -> help), passed to ``run`` as keyword arguments.
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
    try:
        cfg = config_lib.load(params)
        metrics = run(cfg, **args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(metrics, indent=2, sort_keys=True))
