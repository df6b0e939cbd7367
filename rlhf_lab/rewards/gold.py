"""The gold reward, behind one small interface: ``gold(prompts, responses, ended) -> scores``.

Gold stands in for the humans a proxy reward model is trained to imitate (Gao et al. 2022 use a
large reward model). ``task.gold`` picks the kind:

- ``builtin``: the built-in task's exact score (``rlhf_lab/task/gold.py``);
- a path or hub name of an ``AutoModelForSequenceClassification`` model: it scores prompt +
  response with its own tokenizer, batched, on the accelerator; ``task.gold_label`` picks the logit
  (index or label name) when it has more than one;
- ``module:function``: a Python callable taking (prompts, responses) and returning one score each;
- ``none``: no gold; every stage still runs and reports what it can.

``null`` (the default) is ``builtin`` with the built-in data and ``none`` with your own.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from rlhf_lab.config import Config, ConfigError, TaskConfig, UserError
from rlhf_lab.data.layouts import join_text

CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Gold(Protocol):
    description: str

    def __call__(self, prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> np.ndarray: ...


class BuiltinGold:
    """The built-in task's gold: sentiment minus grammar, repetition and missing-<eos> penalties."""

    description = "builtin"

    def __init__(self, t: TaskConfig):
        from rlhf_lab.task.gold import GoldReward

        self.reward = GoldReward(t.grammar_weight, t.repetition_weight, t.no_eos_penalty)

    def __call__(self, prompts, responses, ended=None):
        return self.reward([join_text(p, r) for p, r in zip(prompts, responses)], ended)


class CallableGold:
    """A user's ``module:function``; it must return one finite number per response."""

    def __init__(self, spec: str):
        module_name, name = spec.split(":")
        try:
            function = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"task.gold: cannot import {spec} ({err})") from None
        if not callable(function):
            raise ConfigError(f"task.gold: {spec} is not callable")
        self.function: Callable = function
        self.description = spec

    def __call__(self, prompts, responses, ended=None):
        try:
            scores = np.asarray(self.function(list(prompts), list(responses)), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise UserError(f"task.gold: {self.description} did not return numbers ({err})") from None
        if scores.shape != (len(responses),) or not np.isfinite(scores).all():
            raise UserError(f"task.gold: {self.description} must return {len(responses)} finite scores, "
                            f"got shape {scores.shape}")  # fmt: skip
        return scores


class ModelGold:
    """A sequence-classification model as gold: one logit of ``prompt + response`` per response."""

    def __init__(self, path: str, label: int | str | None, batch_size: int, max_length: int, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).eval().to(device)
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.gold: {path}: cannot load a sequence-classification model "
                              f"({str(err).splitlines()[0]})") from None  # fmt: skip
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label = self._label_index(path, label)
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.description = path if self.model.config.num_labels == 1 else f"{path} (logit {self.label})"
        self._torch = torch

    def _label_index(self, path: str, label: int | str | None) -> int:
        n = self.model.config.num_labels
        if label is None:
            if n != 1:
                names = ", ".join(str(v) for v in self.model.config.id2label.values())
                raise ConfigError(f"task.gold_label: {path} has {n} logits ({names}); say which one is gold")
            return 0
        if isinstance(label, str):
            by_name = {str(v): int(k) for k, v in self.model.config.id2label.items()}
            if label not in by_name:
                raise ConfigError(f"task.gold_label: {path} has no label {label!r}; labels: {', '.join(by_name)}")
            return by_name[label]
        if not 0 <= label < n:
            raise ConfigError(f"task.gold_label: {label} is not a logit index of {path} (0 … {n - 1})")
        return label

    def __call__(self, prompts, responses, ended=None):
        texts = [join_text(p, r) for p, r in zip(prompts, responses)]
        out = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)  # fmt: skip
                out.append(self.model(**batch).logits[:, self.label].float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def gold_kind(cfg: Config) -> str:
    """``builtin``, ``none``, ``callable`` or ``model``: what ``task.gold`` asks for."""
    spec = cfg.task.gold
    if spec is None:
        return "builtin" if cfg.data.source == "builtin" else "none"
    if spec in ("builtin", "none"):
        return spec
    if CALLABLE.match(spec) and not Path(spec).exists():
        return "callable"
    return "model"


def gold_reward(cfg: Config) -> Gold | None:
    """The gold reward ``task.gold`` names, or None when there is none (loaded once per process)."""
    return _load(gold_kind(cfg), cfg.task, accelerator_device(cfg))


@lru_cache(maxsize=2)
def _load(kind: str, task: TaskConfig, device: str) -> Gold | None:
    if kind == "none":
        return None
    if kind == "builtin":
        return BuiltinGold(task)
    if kind == "callable":
        return CallableGold(task.gold)
    return ModelGold(task.gold, task.gold_label, task.gold_batch_size, task.gold_max_length, device)


def accelerator_device(cfg: Config) -> str:
    """Where a frozen scorer runs: the first GPU when ``runtime.accelerator`` asks for one and there is one."""
    import torch

    wants_gpu = cfg.runtime.accelerator in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"
