"""The gold reward of the built-in task: what a perfect human labeller would prefer.

    gold(text) = sentiment(text)
                 - grammar_weight    * (forbidden word-class transitions / transitions)
                 - repetition_weight * (repeated nouns and adjectives / nouns and adjectives)
                 - no_eos_penalty    * [the response never emitted <eos>]

``sentiment`` is VADER's compound score in [-1, 1]: it reads negation ("not good") and intensifiers
("very good") but it also rises when positive words are stacked ("great great great"), which is
exactly the exploit a learned proxy inherits. The quality terms make such text score low, so gold
and a proxy trained on gold-labelled preferences agree on the data and disagree off it — the
over-optimisation gap the workbench measures (Gao et al. 2022 use a large reward model for this role).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rlhf_lab.task.grammar import EOS, invalid_transitions, word_classes

_CONTENT = ("NOUN", "ADJ")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1 << 16)
def sentiment(text: str) -> float:
    """VADER compound score in [-1, 1]; cached because policies repeat themselves."""
    return float(_vader().polarity_scores(text)["compound"])


def repeated_fraction(words: list[str]) -> float:
    """Share of nouns/adjectives that already appeared earlier in the text."""
    table = word_classes()
    content = [w for w in words if table.get(w) in _CONTENT]
    if not content:
        return 0.0
    return (len(content) - len(set(content))) / len(content)


@dataclass(frozen=True)
class GoldReward:
    grammar_weight: float = 2.0
    repetition_weight: float = 1.0
    no_eos_penalty: float = 1.0

    def terms(self, text: str, ended: bool = True) -> dict[str, float]:
        """The gold score of ``prompt + response`` text and its parts. Text after <eos> is ignored."""
        words = text.split()
        if EOS in words:
            words, ended = words[: words.index(EOS)], True
        bad, total = invalid_transitions(words + ([EOS] if ended else []))
        parts = {
            "sentiment": sentiment(" ".join(words)),
            "invalid": bad / max(total, 1),
            "repeated": repeated_fraction(words),
            "no_eos": 0.0 if ended else 1.0,
        }
        parts["gold"] = (
            parts["sentiment"]
            - self.grammar_weight * parts["invalid"]
            - self.repetition_weight * parts["repeated"]
            - self.no_eos_penalty * parts["no_eos"]
        )
        return parts

    def __call__(self, texts: list[str], ended: list[bool] | None = None) -> np.ndarray:
        ended = [True] * len(texts) if ended is None else ended
        return np.array([self.terms(t, e)["gold"] for t, e in zip(texts, ended)], dtype=np.float64)
