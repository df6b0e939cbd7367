import numpy as np
import pytest

from rlhf_lab.task import GoldReward, ReviewGrammar
from rlhf_lab.task.grammar import adjectives, invalid_transitions, is_grammatical, lexicon

GOLD = GoldReward()


def test_lexicon_has_a_few_hundred_words_with_both_polarities():
    values = np.array(list(lexicon().values()))
    assert len(values) >= 100
    assert (values > 0).sum() >= 40 and (values < 0).sum() >= 40


def test_grammar_samples_parse():
    for text in ReviewGrammar().sample(500, seed=1):
        assert is_grammatical(text.split()), text


def test_sampling_is_deterministic_per_seed():
    g = ReviewGrammar()
    assert g.sample(50, seed=3) == g.sample(50, seed=3)
    assert g.sample(50, seed=3) != g.sample(50, seed=4)
    assert g.sample_prompts(20, seed=3) == g.sample_prompts(20, seed=3)


def test_invalid_transitions_counted_by_hand():
    # BOS the plot was good good . -> (ADJ, ADJ) is the only forbidden bigram of 6
    assert invalid_transitions("the plot was good good .".split()) == (1, 6)
    assert invalid_transitions("the plot was good .".split()) == (0, 5)


def test_gold_ranks_fluent_positive_above_negative_and_degenerate():
    positive = GOLD(["the plot was very good ."])[0]
    negative = GOLD(["the plot was very bad ."])[0]
    degenerate = GOLD(["the plot was great great great great great ."])[0]
    looping = GOLD(["the plot was good . good . good . good ."])[0]
    assert positive > 0.3 > 0 > negative
    assert positive > degenerate and positive > looping
    # The attribute alone would prefer the degenerate text: that's the exploitable gap.
    assert GOLD.terms("the plot was great great great great great .")["sentiment"] > GOLD.terms(
        "the plot was very good ."
    )["sentiment"]


def test_gold_terms_by_hand():
    terms = GOLD.terms("the plot was good and the plot was good", ended=False)
    assert terms["no_eos"] == 1.0
    # content words: plot good plot good -> 2 of 4 repeat
    assert terms["repeated"] == pytest.approx(0.5)
    assert terms["invalid"] == 0.0  # a grammatical prefix: unfinished, not ungrammatical
    expected = terms["sentiment"] - 1.0 * 0.5 - 1.0
    # Ended after an adjective with no ".": (ADJ, EOS) is 1 forbidden bigram of 10.
    assert GOLD.terms("the plot was good and the plot was good", ended=True)["invalid"] == 0.1
    assert terms["gold"] == pytest.approx(expected)


def test_text_after_eos_is_ignored():
    assert GOLD(["the plot was good . <eos> bad bad bad"])[0] == pytest.approx(
        GOLD(["the plot was good ."])[0]
    )


def test_negation_flips_sentiment():
    assert GOLD(["the plot was not good ."])[0] < GOLD(["the plot was good ."])[0]


def test_adjectives_are_all_in_the_vader_lexicon():
    assert set(adjectives()) == set(lexicon())
