"""Gold rewards as Python callables (``task.gold: tests.gold_functions:NAME``) for the tests."""

from __future__ import annotations


def positive_words(prompts: list[str], responses: list[str]) -> list[float]:
    """+1 for each of a few positive words in the response, -1 for each negative one."""
    good, bad = {"great", "good", "tasty", "friendly"}, {"bad", "awful", "rude", "cold"}
    return [float(sum((w in good) - (w in bad) for w in r.split())) for r in responses]


def wrong_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]
