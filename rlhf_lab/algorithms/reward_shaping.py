"""Policy-side reward shaping against reward hacking (issue: remedies).

Preference as reward (PAR; Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF"): the
policy is trained on σ(r(x, y) − r(x, y_ref)), the probability under the Bradley–Terry model that its
response beats a response of the reference policy to the same prompt. The shaped reward is bounded
and flattens once the policy is clearly ahead of the reference, so pushing the proxy ever higher
(the hack) stops paying; centring on the reference's reward removes the prompt's own offset.
"""

from __future__ import annotations

import torch

SHAPINGS = ("none", "par")


def preference_as_reward(scores: torch.Tensor, reference_scores: torch.Tensor) -> torch.Tensor:
    """σ(r − r_ref), elementwise: (B,), (B,) -> (B,) in (0, 1)."""
    return torch.sigmoid(scores - reference_scores)
