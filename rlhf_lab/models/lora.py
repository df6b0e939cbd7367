"""LoRA through peft: adapters on a policy or a reward model, switched off for the reference,
merged for saving (so every saved model still loads with plain ``transformers``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def lora_config(settings: dict, task_type: str, exclude: tuple[str, ...] = ()):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.get("r", 8),
        lora_alpha=settings.get("alpha", 16),
        lora_dropout=settings.get("dropout", 0.0),
        target_modules=settings.get("target_modules", "all-linear"),
        exclude_modules=list(exclude) or None,
        task_type=task_type,
    )


def add_lora(model: torch.nn.Module, settings: dict, task_type: str = "CAUSAL_LM",
             trainable: tuple[str, ...] = ()):  # fmt: skip
    """Inject LoRA adapters into ``model`` in place and freeze everything else except the
    ``trainable`` submodules (a reward model's fresh ``score`` head). Returns the peft wrapper,
    which saves the adapter and merges it; ``model`` itself keeps its transformers API."""
    from peft import get_peft_model

    wrapper = get_peft_model(model, lora_config(settings, task_type, exclude=trainable))
    for name in trainable:
        getattr(model, name).requires_grad_(True)
    return wrapper


def has_lora(model: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base weights alone: PPO's reference policy without a second copy of the model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def save_adapter_and_merged(wrapper, out: Path, tokenizer=None) -> torch.nn.Module:
    """``out``/adapter: the adapter (loads with ``peft`` onto the base model); ``out``: merged
    weights (load with plain ``transformers``). Returns the merged model; ``wrapper`` is spent."""
    wrapper.save_pretrained(out / "adapter")
    merged = wrapper.merge_and_unload()
    merged.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return merged
