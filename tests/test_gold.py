"""The gold reward's kinds behind one interface: builtin, a sequence-classification model, a callable."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_lab.config import Config, ConfigError, UserError
from rlhf_lab.rewards.gold import gold_kind, gold_reward
from tests.byo import review_pairs, save_tiny_gold

PROMPTS, RESPONSES = ["the food", "the staff"], ["was great", "was rude and cold"]


def with_gold(**task) -> Config:
    return Config().replace(task=task)


def test_kinds_follow_task_gold():
    assert gold_kind(Config()) == "builtin"  # the default with the built-in data
    assert gold_kind(Config().replace(data={"source": "reviews.jsonl"})) == "none"  # your own data: none unless told
    assert gold_kind(with_gold(gold="none")) == "none" and gold_reward(with_gold(gold="none")) is None
    assert gold_kind(with_gold(gold="tests.gold_functions:positive_words")) == "callable"
    assert gold_kind(with_gold(gold="OpenAssistant/reward-model-deberta-v3-base")) == "model"


def test_builtin_gold_scores_the_joined_text_as_before():
    from rlhf_lab.task import GoldReward

    expected = GoldReward()(["the food was great", "the staff was rude and cold"], [True, False])
    assert np.allclose(gold_reward(Config())(PROMPTS, RESPONSES, [True, False]), expected)


def test_callable_gold_and_its_errors():
    gold = gold_reward(with_gold(gold="tests.gold_functions:positive_words"))
    assert gold(PROMPTS, RESPONSES).tolist() == [1.0, -2.0]
    with pytest.raises(UserError, match=r"task.gold: tests.gold_functions:wrong_length must return 2 finite scores"):
        gold_reward(with_gold(gold="tests.gold_functions:wrong_length"))(PROMPTS, RESPONSES)
    with pytest.raises(ConfigError, match=r"task.gold: cannot import tests.gold_functions:missing"):
        gold_reward(with_gold(gold="tests.gold_functions:missing"))


def test_model_gold_reads_its_label_with_its_own_tokenizer(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = save_tiny_gold(tmp_path / "gold", [f"{p} {c}" for p, c in review_pairs(50)] + PROMPTS + RESPONSES)
    with pytest.raises(ConfigError, match=r"task.gold_label: .* has 2 logits \(NEG, POS\); say which one is gold"):
        gold_reward(with_gold(gold=str(path)))
    with pytest.raises(ConfigError, match="has no label 'GOOD'; labels: NEG, POS"):
        gold_reward(with_gold(gold=str(path), gold_label="GOOD"))
    gold = gold_reward(with_gold(gold=str(path), gold_label="POS", gold_batch_size=1))
    scores = gold(PROMPTS, RESPONSES)
    # By hand: the model's POS logit of each joined text, one at a time through plain transformers.
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        expected = [model(**tokenizer(f"{p} {r}", return_tensors="pt")).logits[0, 1].item()
                    for p, r in zip(PROMPTS, RESPONSES)]  # fmt: skip
    assert np.allclose(scores, expected, atol=1e-5)
    batched = gold_reward(with_gold(gold=str(path), gold_label=1, gold_batch_size=64))(PROMPTS, RESPONSES)
    assert np.allclose(batched, expected, atol=1e-5)  # padding in a batch changes no score
    with pytest.raises(ConfigError, match=r"task.gold: .*nowhere: cannot load a sequence-classification model"):
        gold_reward(with_gold(gold=str(tmp_path / "nowhere")))
