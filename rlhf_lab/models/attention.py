"""Attention computed with two batched matmuls, registered with transformers as ``"bmm"``.

The same function as every other attention implementation: softmax(q·kᵀ·scale + mask)·v. On a CPU
with the short sequences of RLHF on small models, PyTorch's fused CPU kernel (``sdpa``) spends far
more than the few MFLOP of the product on setting up its blocks (forward and backward of one
benchmark layer: 5.5 ms against 3.0 ms). In whole PPO iterations of the benchmark, run by run,
``bmm`` made no difference measurable above this machine's noise eagerly, and ≈ 10 % more samples/s
under ``torch.compile``, which fuses the scale, mask and softmax around the matmuls (median of 10
paired runs). It materialises the (B, H, T, S) scores, so long sequences and GPUs should keep a
fused kernel: ``attention: auto`` picks ``bmm`` only on CPU.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from rlhf_lab.config import UserError

BMM = "bmm"


def bmm_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                  **kwargs):  # fmt: skip
    """(B, H, T, D) queries over (B, H_kv, S, D) keys and values: (B, T, H, D) outputs, no weights.

    ``attention_mask`` arrives in the format ``sdpa`` gets (boolean, True = attend, or None when
    the mask is only causal), so both read the same masks; masked scores get the dtype's lowest
    finite value rather than -inf, so a fully masked row (a left-padding query) stays finite.
    """
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"attention 'bmm' does not support {unsupported}; use 'eager' or 'sdpa'")
    B, H, T, D = query.shape
    S = key.shape[2]
    if key.shape[1] != H:  # grouped-query attention: each key/value head serves H / H_kv query heads
        key = key.repeat_interleave(H // key.shape[1], dim=1)
        value = value.repeat_interleave(H // value.shape[1], dim=1)
    scale = D**-0.5 if scaling is None else scaling
    q, k, v = query.reshape(B * H, T, D), key.reshape(B * H, S, D), value.reshape(B * H, S, D)
    bias = _score_bias(module, attention_mask, is_causal, query, B, H, T, S)
    if bias is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    else:  # the mask is added inside the matmul
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
    probs = scores.softmax(dim=-1).to(v.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    return torch.bmm(probs, v).view(B, H, T, D).transpose(1, 2), None


def _score_bias(module, attention_mask, is_causal, query, B, H, T, S) -> torch.Tensor | None:
    """The additive mask: (B·H, T, S), (T, S) for a causal mask alone, or None for no mask."""
    lowest = torch.finfo(query.dtype).min
    if attention_mask is None:
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if not causal or T == 1:
            return None
        # Query i is the (S - T + i)-th position: it sees every key up to its own.
        allowed = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
        return torch.zeros(T, S, dtype=query.dtype, device=query.device).masked_fill_(~allowed, lowest)
    if attention_mask.dtype == torch.bool:
        bias = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
        bias.masked_fill_(~attention_mask, lowest)
    else:
        bias = attention_mask.to(query.dtype)
    return bias.expand(B, H, T, S).reshape(B * H, T, S)


AttentionInterface.register(BMM, bmm_attention)
AttentionMaskInterface.register(BMM, sdpa_mask)  # without it, the model would build another mask format


def resolve_attention(choice: str, device: torch.device) -> str | None:
    """The implementation ``choice`` means on ``device``; None keeps the model's own."""
    if choice == "auto":
        return BMM if device.type == "cpu" else None
    return choice


def use_attention(models, choice: str, device: torch.device) -> None:
    """Switch the transformers models in ``models`` to the implementation ``choice`` means on ``device``."""
    from transformers import PreTrainedModel

    name = resolve_attention(choice, device)
    if name is None:
        return
    for model in models:
        if isinstance(model, PreTrainedModel):
            try:
                model.set_attn_implementation(name)
            except (ImportError, ValueError) as err:  # a kernel not installed, or one the model lacks
                raise UserError(f"attention {name!r} cannot run {type(model).__name__}: {err}") from None
