"""A probabilistic grammar of short film reviews, the built-in task's "world".

A review is one sentence of 1-3 clauses joined by "and"/"but", ended by "." and <eos>::

    clause := DET NOUN VERB [NEG] [INTENS] ADJ
    review := clause (CONJ clause)* "."

Adjectives carry real sentiment valences from the VADER lexicon; negations flip them and
intensifiers scale them, as VADER's rules do. Prompts are review openings (DET NOUN) and the model
continues them. Word classes make a finite automaton, so any token sequence can be checked for
grammaticality exactly; the gold reward (``rlhf_lab.task.gold``) uses that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DETS = ("the", "this", "that", "its")
NOUNS = (
    "plot", "acting", "story", "script", "cast", "ending", "music", "soundtrack", "direction",
    "dialogue", "pacing", "humor", "lead", "villain", "score", "editing", "finale", "premise",
    "visuals", "sequel", "director", "performance", "character", "setting", "tone", "atmosphere",
    "twist", "romance", "action", "camera", "costumes", "scenery", "narrator", "hero", "film",
    "movie", "opening", "climax", "writing", "casting",
)  # fmt: skip
VERBS = ("was", "is", "seemed", "felt", "looked", "remained", "became", "appeared", "sounded")
NEGATIONS = ("not", "never")
INTENSIFIERS = (
    "very", "extremely", "really", "incredibly", "absolutely", "so", "totally", "truly",
    "remarkably", "deeply", "quite", "slightly", "somewhat", "barely",
)  # fmt: skip
CONJUNCTIONS = ("and", "but")
PERIOD = "."
# Candidate adjectives; only those with a VADER valence are used (see ``lexicon``).
_ADJECTIVES = (
    "good", "great", "excellent", "brilliant", "wonderful", "amazing", "beautiful", "charming",
    "delightful", "elegant", "fantastic", "fun", "funny", "lovely", "nice", "perfect", "pleasant",
    "superb", "sweet", "terrific", "clever", "fresh", "gorgeous", "impressive", "inspiring",
    "outstanding", "powerful", "smart", "stunning", "strong", "thrilling", "warm", "witty",
    "engaging", "entertaining", "exciting", "fascinating", "hilarious", "enjoyable", "glorious",
    "graceful", "magnificent", "marvelous", "remarkable", "splendid", "brave", "bright", "cool",
    "creative", "fine", "genuine", "happy", "honest", "interesting", "joyful", "kind", "lively",
    "original", "popular", "romantic", "sincere", "solid", "successful", "tender", "vivid",
    "bad", "awful", "terrible", "horrible", "boring", "dull", "weak", "poor", "stupid", "ugly",
    "annoying", "disappointing", "mediocre", "messy", "painful", "pathetic", "ridiculous", "sad",
    "silly", "tedious", "unpleasant", "useless", "worthless", "awkward", "bland", "cheap",
    "clumsy", "confusing", "dreadful", "lame", "lousy", "miserable", "nasty", "shallow", "stale",
    "weird", "dumb", "gloomy", "grim", "harsh", "hollow", "hopeless", "empty", "failed", "foolish",
    "grotesque", "inferior", "insane", "irritating", "pointless", "offensive", "sloppy", "sick",
    "cruel", "dark", "depressing", "cold", "tragic", "vile", "wrong", "tired", "flawed",
)  # fmt: skip

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

# Word classes, the automaton's alphabet.
CLASSES = ("BOS", "DET", "NOUN", "VERB", "NEG", "INTENS", "ADJ", "CONJ", "PERIOD", "EOS")
# Allowed class bigrams. Anything else (an unknown word included) is an invalid transition.
ALLOWED = frozenset(
    {
        ("BOS", "DET"), ("DET", "NOUN"), ("NOUN", "VERB"),
        ("VERB", "NEG"), ("VERB", "INTENS"), ("VERB", "ADJ"),
        ("NEG", "INTENS"), ("NEG", "ADJ"), ("INTENS", "ADJ"),
        ("ADJ", "CONJ"), ("ADJ", "PERIOD"), ("CONJ", "DET"), ("PERIOD", "EOS"),
    }
)  # fmt: skip


@lru_cache(maxsize=1)
def lexicon() -> dict[str, float]:
    """VADER valences (-4..4) of the adjectives the grammar uses."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    valences = SentimentIntensityAnalyzer().lexicon
    return {w: float(valences[w]) for w in _ADJECTIVES if w in valences}


def adjectives() -> tuple[str, ...]:
    return tuple(lexicon())


@lru_cache(maxsize=1)
def word_classes() -> dict[str, str]:
    table = {BOS: "BOS", EOS: "EOS", PERIOD: "PERIOD"}
    for cls, words in (
        ("DET", DETS), ("NOUN", NOUNS), ("VERB", VERBS), ("NEG", NEGATIONS),
        ("INTENS", INTENSIFIERS), ("ADJ", adjectives()), ("CONJ", CONJUNCTIONS),
    ):  # fmt: skip
        table.update(dict.fromkeys(words, cls))
    return table


def vocabulary() -> list[str]:
    """Every word the grammar can produce (special tokens excluded)."""
    return [w for w in word_classes() if w not in (BOS, EOS)]


@dataclass(frozen=True)
class ReviewGrammar:
    """Sampler of reviews; deterministic given the numpy Generator it is handed."""

    min_clauses: int = 1
    max_clauses: int = 3
    negation_prob: float = 0.2
    intensifier_prob: float = 0.3

    def sample_words(self, rng: np.random.Generator) -> list[str]:
        n_clauses = int(rng.integers(self.min_clauses, self.max_clauses + 1))
        # Nouns and adjectives are drawn without replacement: fluent reviews don't repeat them,
        # so the gold's repetition term is zero on the data and only degenerate text pays it.
        nouns = rng.choice(len(NOUNS), n_clauses, replace=False)
        adjs = rng.choice(len(adjectives()), n_clauses, replace=False)
        words: list[str] = []
        for i in range(n_clauses):
            if i:
                words.append(CONJUNCTIONS[rng.integers(len(CONJUNCTIONS))])
            words += [DETS[rng.integers(len(DETS))], NOUNS[nouns[i]], VERBS[rng.integers(len(VERBS))]]
            if rng.random() < self.negation_prob:
                words.append(NEGATIONS[rng.integers(len(NEGATIONS))])
            if rng.random() < self.intensifier_prob:
                words.append(INTENSIFIERS[rng.integers(len(INTENSIFIERS))])
            words.append(adjectives()[adjs[i]])
        words.append(PERIOD)
        return words

    def sample(self, n: int, seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [" ".join(self.sample_words(rng)) for _ in range(n)]

    def sample_prompts(self, n: int, seed: int) -> list[str]:
        """Review openings, ``DET NOUN``: the policy writes the rest."""
        rng = np.random.default_rng(seed)
        return [f"{DETS[rng.integers(len(DETS))]} {NOUNS[rng.integers(len(NOUNS))]}" for _ in range(n)]


def invalid_transitions(words: list[str]) -> tuple[int, int]:
    """(number of forbidden class bigrams, number of bigrams) in BOS + words."""
    table = word_classes()
    classes = ["BOS"] + [table.get(w, "UNK") for w in words]
    pairs = list(zip(classes, classes[1:]))
    return sum(p not in ALLOWED for p in pairs), len(pairs)


def is_grammatical(words: list[str]) -> bool:
    """True when BOS + words is a complete review (ending in "." and, optionally, <eos>)."""
    bad, _ = invalid_transitions(words)
    ends = words[-1:] == [PERIOD] or words[-2:] == [PERIOD, EOS]
    return bad == 0 and ends
