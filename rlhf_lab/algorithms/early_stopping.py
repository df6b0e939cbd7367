"""Early stopping against over-optimisation: watch a signal at each evaluation, stop once it has not
improved for ``patience`` evaluations, and return the policy of its best evaluation.

Two rules differ only in the signal they read (issue: remedies):

- proxy-only, no gold: the reward members held out of the training objective. The policy climbs the
  members it optimises; members it never saw (trained on the same pairs, other seeds) stop agreeing
  once it exploits the trained member's own errors.
- small gold budget: gold on a few probe prompts, every ``check_every`` evaluations; the budget spent
  is probe prompts × checks.

A rule reads the history only up to its stop, so applied to a finished run's history it gives exactly
what it would have given online; returning the best evaluation's policy needs a checkpoint per
evaluation (restore-best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Stop:
    stop: int  # index of the evaluation where the rule fired (the last one when it never did)
    chosen: int  # index of the evaluation whose policy the rule returns
    fired: bool
    checks: int  # evaluations at which the signal was read, up to the stop


def patience_stop(signal: Sequence[float], patience: int, check_every: int = 1, min_delta: float = 0.0) -> Stop:
    """Read ``signal`` at evaluations 0, check_every, 2·check_every, …; stop at the first read that
    comes ``patience`` reads after the best so far without beating it by more than ``min_delta``.
    NaN reads are skipped (an evaluation without the signal)."""
    if patience < 1 or check_every < 1:
        raise ValueError("patience and check_every must be >= 1")
    best, best_i, since, checks = -math.inf, 0, 0, 0
    reads = range(0, len(signal), check_every)
    for i in reads:
        value = float(signal[i])
        checks += 1
        if math.isnan(value):
            continue
        if value > best + min_delta:
            best, best_i, since = value, i, 0
            continue
        since += 1
        if since >= patience:
            return Stop(i, best_i, True, checks)
    return Stop(len(signal) - 1, best_i, False, checks)


def held_out_members(members: np.ndarray, trained: Sequence[int]) -> np.ndarray:
    """Mean score per evaluation of the members outside the training objective. ``members`` is
    (evaluations, K) of member means; ``trained`` the members the objective reads."""
    members = np.asarray(members, dtype=np.float64)
    rest = [k for k in range(members.shape[1]) if k not in set(trained)]
    if not rest:
        raise ValueError("every member is in the training objective: no held-out member to watch")
    return members[:, rest].mean(axis=1)


def stop_endpoints(gold: Sequence[float], kl: Sequence[float], stop: Stop, probe_prompts: int = 0) -> dict:
    """What a rule's stop is worth: the gold and KL of the returned policy, the best gold reached up
    to the stop, the regret against the run's own peak (over its whole history) and the gold queries
    spent (``probe_prompts`` per check; 0 for a rule that reads no gold)."""
    gold, kl = np.asarray(gold, dtype=np.float64), np.asarray(kl, dtype=np.float64)
    return {
        "gold_final": float(gold[stop.chosen]),
        "kl_final": float(kl[stop.chosen]),
        "gold_peak": float(np.nanmax(gold[: stop.stop + 1])),
        "regret": float(np.nanmax(gold) - gold[stop.chosen]),
        "stop_index": stop.stop,
        "fired": stop.fired,
        "gold_queries": probe_prompts * stop.checks,
    }
