"""The built-in task: a review grammar with an exactly computable gold reward."""

from __future__ import annotations

from rlhf_lab.config import Config
from rlhf_lab.task.gold import GoldReward
from rlhf_lab.task.grammar import ReviewGrammar

__all__ = ["GoldReward", "ReviewGrammar", "grammar", "is_builtin"]


def is_builtin(cfg: Config) -> bool:
    return cfg.data.source == "builtin"


def grammar(cfg: Config) -> ReviewGrammar:
    t = cfg.task
    return ReviewGrammar(t.min_clauses, t.max_clauses, t.negation_prob, t.intensifier_prob)
