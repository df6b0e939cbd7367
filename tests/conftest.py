"""Shared fixtures: a tiny config in a temporary folder, and the stages run once per session."""

from __future__ import annotations

import os

import pytest

from rlhf_lab.config import Config
from rlhf_lab.runtime.stage import configure_environment

configure_environment()
os.environ.setdefault("GIT_AUTHOR_NAME", "rlhf-lab tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@example.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "rlhf-lab tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@example.invalid")


def tiny_config(root, tracking_uri: str, **overrides) -> Config:
    """A config whose every stage runs in seconds; outputs under ``root``."""
    paths = {k: str(root / v) for k, v in Config().paths.__dict__.items()}
    base = Config().replace(
        paths=paths,
        runtime={"threads": 2},
        tracking={"tracking_uri": tracking_uri, "experiment": "tests"},
        data={"train_samples": 2000, "val_samples": 200, "train_prompts": 256, "eval_prompts": 32},
        model={"n_layer": 2, "n_embd": 32, "n_head": 2},
        sft={"epochs": 2, "batch_size": 64, "lr": 3e-3, "warmup_steps": 10, "num_samples": 2},
        preferences={"pairs": 1000, "eval_pairs": 300, "sft_samples": 256},
        reward={"members": 2, "warm_members": 2, "epochs": 3, "batch_size": 32, "lr": 2e-3, "scaling_pairs": (250,)},
    )
    return base.replace(**overrides) if overrides else base


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def tiny_cfg(pipeline_root, tracking_uri) -> Config:
    return tiny_config(pipeline_root, tracking_uri)


@pytest.fixture(scope="session")
def data_stage(tiny_cfg):
    from pipelines import data

    return data.run(tiny_cfg)


@pytest.fixture(scope="session")
def sft_stage(tiny_cfg, data_stage):
    from pipelines import sft

    return sft.run(tiny_cfg)


@pytest.fixture(scope="session")
def preferences_stage(tiny_cfg, sft_stage):
    from pipelines import preferences

    return preferences.run(tiny_cfg)


@pytest.fixture(scope="session")
def reward_stage(tiny_cfg, preferences_stage):
    from pipelines import reward

    return reward.run(tiny_cfg)
