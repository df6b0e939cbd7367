"""What both TRL peer scripts share: a word-level tokenizer over the benchmark's vocabulary and the wall
time at the end of every optimiser step. Runs in ``.venv-trl`` only."""

from __future__ import annotations

import time

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TrainerCallback


class StepTimes(TrainerCallback):
    """The wall time at the end of every step (for PPO, a rollout and its epochs of updates)."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """Words ``w0 … w<vocab-1>`` split on whitespace; pad w0, unknown w1, eos and bos w2 (ids as our side's)."""
    tokenizer = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(vocab)}, unk_token="w1"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="w0", unk_token="w1", eos_token="w2",
                                   bos_token="w2")  # fmt: skip
