"""Checks a stage makes before any training work, so a service that is down or hardware that is not
there costs seconds and one line naming the param, not minutes of retries or a traceback."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from rlhf_lab.config import Config, ConfigError, RuntimeConfig, UserError
from rlhf_lab.runtime.tracking import tracking_uri

CONNECT_TIMEOUT_S = 3.0


class ServiceError(UserError):
    pass


def _reachable(host: str, port: int) -> str | None:
    """None when something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__


def redact(url: str) -> str:
    """``url`` without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def check_tracking(cfg: Config) -> None:
    """An MLflow tracking server named by ``tracking.tracking_uri`` or ``$MLFLOW_TRACKING_URI`` answers."""
    uri = tracking_uri(cfg.tracking)
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return  # a local store (sqlite, file) needs no server
    param = "tracking.tracking_uri" if cfg.tracking.tracking_uri else "MLFLOW_TRACKING_URI"
    why = _reachable(parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80))
    if why is not None:
        raise ServiceError(f"{param}: no MLflow server at {redact(uri)} ({why})")
    # Up now: fail in seconds, not after MLflow's default 7 retries with backoff, if it goes away later.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_storage(url: str, param: str = "sweep.storage") -> None:
    """An Optuna storage database (anything but SQLite) accepts a connection."""
    if url.startswith("sqlite"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout_args(url), poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except sqlalchemy.exc.ArgumentError as err:
        raise ServiceError(f"{param}: {redact(url)} is not a database URL ({err})") from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ServiceError(f"{param}: cannot connect to {redact(url)} ({reason})") from None


def _timeout_args(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_timeout": int(CONNECT_TIMEOUT_S)}
    if url.startswith("mysql"):
        return {"connect_timeout": int(CONNECT_TIMEOUT_S)}
    return {}


def check_hardware(runtime: RuntimeConfig) -> None:
    """The accelerator and device count ``runtime`` asks for exist on this machine."""
    import torch

    accelerator = runtime.accelerator
    if accelerator in ("gpu", "cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"runtime.accelerator: {accelerator}, but this machine has no CUDA GPU "
                              f"(it has {os.cpu_count()} CPU cores; use cpu or auto)")  # fmt: skip
        wanted = runtime.devices if isinstance(runtime.devices, int) else len(runtime.devices) \
            if isinstance(runtime.devices, list) else count  # fmt: skip
        if wanted > count:
            raise ConfigError(f"runtime.devices: {runtime.devices}, but this machine has {count} CUDA GPU(s)")
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("runtime.accelerator: mps, but this machine has no Apple GPU")
    if "bf16" in runtime.precision and accelerator in ("gpu", "cuda") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"runtime.precision: {runtime.precision}, but this GPU has no bf16 support; use 16-mixed")


def check(cfg: Config, services: tuple[str, ...]) -> None:
    """Every check ``services`` names: ``tracking``, ``storage``, ``hardware``."""
    if "hardware" in services:
        check_hardware(cfg.runtime)
    if "tracking" in services:
        check_tracking(cfg)
    if "storage" in services and cfg.sweep.storage:
        check_storage(cfg.sweep.storage)
