"""The built-in task: a review grammar with an exactly computable gold reward."""

from __future__ import annotations

from rlhf_lab.config import Config
from rlhf_lab.task.gold import GoldReward
from rlhf_lab.task.grammar import ReviewGrammar

__all__ = ["GoldReward", "ReviewGrammar", "gold_reward", "grammar"]


def is_builtin(cfg: Config) -> bool:
    return cfg.data.source == "builtin"


def grammar(cfg: Config) -> ReviewGrammar:
    t = cfg.task
    return ReviewGrammar(t.min_clauses, t.max_clauses, t.negation_prob, t.intensifier_prob)


def gold_reward(cfg: Config) -> GoldReward | None:
    """The gold reward, or None for external data (whose gold, if any, comes with the dataset)."""
    if not is_builtin(cfg):
        return None
    t = cfg.task
    return GoldReward(t.grammar_weight, t.repetition_weight, t.no_eos_penalty)
