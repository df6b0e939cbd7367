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
from rlhf_lab.config import Config, ConfigError, RuntimeConfig, UserError
from rlhf_lab.runtime import parallel, preflight
from rlhf_lab.runtime.tracking import (  # noqa: F401 - the stages import the MLflow plumbing from here too
    DEFAULT_TRACKING_URI,
    close_open_runs,
    create_parent_run,
    flatten,
    forget_inherited_runs,
    mlflow_logger,
    preload_tracking,
    runs_page_url,
    store_lock,
    tracking_uri,
)


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
    ``services`` are checked before ``run`` starts (rlhf_lab/runtime/preflight.py): tracking, storage, hardware.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    for option, help_text in (options or {}).items():
        parser.add_argument(option, default=None, help=help_text)
    args = vars(parser.parse_args())
    params = args.pop("params")
    configure_environment()
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


