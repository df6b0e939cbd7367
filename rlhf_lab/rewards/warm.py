"""WARM (Ramé et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models"): one reward
model whose weights are the element-wise mean of the members'.

Averaging weights (not predictions) works only for members fine-tuned from one initialisation, head
included, which stay in one linearly connected basin: the reward stage fits WARM's members so
(``fit_warm`` in pipelines/reward.py) and refuses members of different architectures.
"""

from __future__ import annotations

import torch


def average_weights(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The members' floating-point weights averaged; other tensors (integer buffers, masks) must be
    equal across members and are kept. Raises ValueError naming the member and weight that differ
    in name or shape (members of different architectures)."""
    if not state_dicts:
        raise ValueError("no members to average")
    first = state_dicts[0]
    for k, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != set(first):
            name = sorted(set(sd) ^ set(first))[0]
            raise ValueError(f"member {k} and member 0 differ in their weights ({name}): not one architecture")
        for name, tensor in sd.items():
            if tensor.shape != first[name].shape:
                raise ValueError(f"member {k}: {name} has shape {tuple(tensor.shape)}, member 0 "
                                 f"{tuple(first[name].shape)}: not one architecture")  # fmt: skip
    averaged = {}
    for name, tensor in first.items():
        if tensor.is_floating_point():
            averaged[name] = torch.stack([sd[name].float() for sd in state_dicts]).mean(0).to(tensor.dtype)
        elif all(torch.equal(sd[name], tensor) for sd in state_dicts[1:]):
            averaged[name] = tensor.clone()
        else:
            raise ValueError(f"{name}: a non-float tensor that differs between members cannot be averaged")
    return averaged
