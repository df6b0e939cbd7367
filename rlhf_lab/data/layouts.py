"""Datasets from anywhere, in TRL's layouts: the one place every stage reads external data.

A dataset param (``data.source``, ``data.prompts``, ``reward.dataset``) is a local ``.jsonl`` /
``.json`` / ``.parquet`` / ``.csv`` file (or ``.txt``: one ``text`` a line), a folder written by ``Dataset.save_to_disk``, or a hub
name (read only when ``HF_HUB_OFFLINE=0``); as a mapping it may add ``split`` and ``subset``:
``{path: trl-lib/ultrafeedback_binarized, split: train}``. Reading goes through ``datasets``.

Layouts (TRL's dataset types, each standard or conversational — lists of ``{"role", "content"}``):

==================  ===============================  ===================================
layout              columns                          used as
==================  ===============================  ===================================
language modeling   ``text`` / ``messages``          demonstrations (loss on all of it)
prompt-only         ``prompt``                       prompts
prompt-completion   ``prompt``, ``completion``       demonstrations (loss on the completion)
preference          ``prompt``, ``chosen``,          pairs; demonstrations (the chosen)
                    ``rejected``
implicit prompt     ``chosen``, ``rejected``         as preference, the prompt being the
                                                     longest shared prefix
==================  ===============================  ===================================

Conversational rows are rendered to text with the tokenizer's chat template, the prompt with the
generation prompt appended, so the policy continues as the assistant.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.data.files import DataError

LAYOUTS = {  # name: the columns that identify it, most specific first
    "preference": ("prompt", "chosen", "rejected"),
    "implicit prompt preference": ("chosen", "rejected"),
    "prompt-completion": ("prompt", "completion"),
    "prompt-only": ("prompt",),
    "language modeling": ("text",),
    "conversational language modeling": ("messages",),
}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset comes from: a file, a ``save_to_disk`` folder or a hub name (+ split, subset)."""

    path: str
    split: str = "train"
    subset: str | None = None

    @classmethod
    def of(cls, value: str | dict | DatasetRef) -> DatasetRef:
        if isinstance(value, DatasetRef):
            return value
        if isinstance(value, str):
            return cls(value)
        return cls(**value)

    def __str__(self) -> str:
        extra = [f"split {self.split}"] if self.split != "train" else []
        extra += [f"subset {self.subset}"] if self.subset else []
        return self.path + (f" ({', '.join(extra)})" if extra else "")


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or "Failed to load" log lines: failures become one DataError line."""
    import datasets

    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reason(err: BaseException) -> str:
    """The first line of the innermost cause, with pyarrow's 0-based "in row N" as a 1-based line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"in row (\d+)", lambda m: f"at line {int(m.group(1)) + 1}", text)


def load(value: str | dict | DatasetRef):
    """The ``datasets.Dataset`` a dataset param names; every failure is one DataError line."""
    import datasets

    ref = DatasetRef.of(value)
    path = Path(ref.path)
    with _quiet_datasets():
        try:
            if path.is_dir():
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    if ref.split not in loaded:
                        raise DataError(f"{ref}: no split {ref.split!r}; splits: {', '.join(loaded)}")
                    loaded = loaded[ref.split]
                return loaded
            if path.suffix in FILE_BUILDERS:
                if not path.is_file():
                    raise DataError(f"{path}: file not found")
                if path.stat().st_size < 1 << 16 and not path.read_bytes().strip():
                    raise DataError(f"{path}: the file is empty (no rows)")  # the builders say only StopIteration
                try:
                    loaded = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
                except ValueError as err:  # a header and nothing under it
                    if "corresponds to no data" not in str(err):
                        raise
                    loaded = []
                if len(loaded) == 0:
                    raise DataError(f"{path}: no rows (only a header?)")
                return loaded
            if path.suffix or path.exists() or ref.path.startswith((".", "/")):
                known = ", ".join(FILE_BUILDERS)
                raise DataError(f"{ref.path}: not a dataset file ({known}), a save_to_disk folder or a hub name")
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise DataError(f"{ref.path}: not a local file or folder, and hub datasets need HF_HUB_OFFLINE=0")
            return datasets.load_dataset(ref.path, ref.subset, split=ref.split)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - datasets/pyarrow/fsspec raise many types; all mean "cannot read it"
            raise DataError(f"{ref}: cannot read the dataset ({_reason(err)})") from None


# ------------------------------------------------------------------------------------ layouts


def detect_layout(columns: list[str], where: str) -> str:
    for layout, needed in LAYOUTS.items():
        if all(c in columns for c in needed):
            return layout
    accepted = "; ".join(f"{name} ({', '.join(cols)})" for name, cols in LAYOUTS.items())
    raise DataError(f"{where}: unknown layout; columns found: {', '.join(columns) or 'none'}; accepted: {accepted}")


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


@dataclass(frozen=True)
class Demonstration:
    """SFT data: the loss is on ``completion``; ``prompt`` is "" for language-modeling rows."""

    prompt: str
    completion: str


class Rows:
    """A loaded dataset's rows in one layout, rendered to text (chat template for conversations)."""

    def __init__(self, value: str | dict | DatasetRef, tokenizer=None, template_owner: str = "the tokenizer"):
        self.ref = DatasetRef.of(value)
        self.dataset = load(self.ref)
        self.layout = detect_layout(list(self.dataset.column_names), str(self.ref))
        self.tokenizer, self.template_owner = tokenizer, template_owner
        first = self.dataset[0] if len(self.dataset) else {}
        self.conversational = self.layout == "conversational language modeling" or any(
            is_conversation(first.get(c)) for c in LAYOUTS[self.layout]
        )
        if len(self.dataset) == 0:
            raise DataError(f"{self.ref}: no rows")
        if self.conversational and not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{self.ref}: conversational rows need a chat template, and {template_owner} has none")

    # -- one field of one row, checked
    def _field(self, row: dict, number: int, column: str):
        value = row.get(column)
        if self.conversational:
            if not is_conversation(value):
                raise DataError(f"{self.ref}: row {number}: {column!r} is not a list of {{role, content}} messages")
        elif not isinstance(value, str) or not value.strip():
            raise DataError(f"{self.ref}: row {number}: {column!r} is not a non-empty string")
        return value

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _continuation(self, prompt: list[dict], reply: list[dict], number: int, column: str) -> str:
        """The text a conversation's reply adds after the rendered prompt (generation prompt included)."""
        head, whole = self._render(prompt, True), self._render(prompt + reply, False)
        if not whole.startswith(head):
            raise DataError(f"{self.ref}: row {number}: the chat template of {self.template_owner} does not render "
                            f"{column!r} as a continuation of the prompt")  # fmt: skip
        return whole[len(head):]

    def _prompt_and_replies(self, row: dict, number: int, replies: tuple[str, ...]) -> tuple[str, list[str]]:
        """(prompt text, reply texts) of a prompt-completion or preference row (implicit prompts split off)."""
        values = [self._field(row, number, c) for c in replies]
        if "prompt" in row and row["prompt"] is not None:
            prompt = self._field(row, number, "prompt")
        else:
            prompt, values = shared_prefix(values, self.conversational)
            if not prompt:
                raise DataError(f"{self.ref}: row {number}: {' and '.join(replies)} share no prompt")
        if not self.conversational:
            return prompt, values
        return self._render(prompt, True), [self._continuation(prompt, v, number, c) for v, c in zip(values, replies)]

    def rows(self) -> Iterator[tuple[int, dict]]:
        yield from enumerate(self.dataset, start=1)

    # -- what the stages ask for
    def demonstrations(self) -> list[Demonstration]:
        if self.layout == "prompt-only":
            raise DataError(f"{self.ref}: prompt-only rows have no completions to fine-tune on")
        out = []
        for number, row in self.rows():
            if self.layout in ("language modeling", "conversational language modeling"):
                column = LAYOUTS[self.layout][0]
                value = self._field(row, number, column)
                out.append(Demonstration("", self._render(value, False) if self.conversational else value))
            elif self.layout == "prompt-completion":
                prompt, (completion,) = self._prompt_and_replies(row, number, ("completion",))
                out.append(Demonstration(prompt, completion))
            else:  # preference rows: fine-tune on the chosen reply
                prompt, (chosen, _) = self._prompt_and_replies(row, number, ("chosen", "rejected"))
                out.append(Demonstration(prompt, chosen))
        return out

    def prompts(self, prompt_words: int = 0) -> list[str]:
        """Every row's prompt; language-modeling rows give their first ``prompt_words`` words."""
        out = []
        for number, row in self.rows():
            if self.layout == "language modeling":
                if prompt_words < 1:
                    raise DataError(f"{self.ref}: language-modeling rows have no prompt; set data.prompt_words "
                                    "to prompt with each text's first words")  # fmt: skip
                out.append(" ".join(self._field(row, number, "text").split()[:prompt_words]))
            elif self.layout == "conversational language modeling":
                messages = self._field(row, number, "messages")
                last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
                out.append(self._render(messages[:last] or messages, True))
            elif self.layout in ("prompt-only", "prompt-completion", "preference"):
                value = self._field(row, number, "prompt")
                out.append(self._render(value, True) if self.conversational else value)
            else:
                out.append(self._prompt_and_replies(row, number, ("chosen", "rejected"))[0])
        return out

    def pairs(self) -> list[dict]:
        """``{"prompt", "chosen", "rejected"}`` rows (plus numeric ``chosen_gold``/``rejected_gold`` if given)."""
        if not self.layout.endswith("preference"):
            raise DataError(f"{self.ref}: {self.layout} rows are not preference pairs (need chosen, rejected)")
        out = []
        for number, row in self.rows():
            prompt, (chosen, rejected) = self._prompt_and_replies(row, number, ("chosen", "rejected"))
            pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            for key in ("chosen_gold", "rejected_gold", "chosen_ended", "rejected_ended"):
                if row.get(key) is not None:
                    kind = bool if key.endswith("ended") else (int, float)
                    if not isinstance(row[key], kind) or (kind != bool and isinstance(row[key], bool)):
                        raise DataError(f"{self.ref}: row {number}: {key} must be "
                                        f"{'true or false' if kind is bool else 'a number'}")  # fmt: skip
                    pair[key] = row[key]
            out.append(pair)
        return out


def shared_prefix(values: list, conversational: bool) -> tuple[Any, list]:
    """Split replies that repeat their prompt (TRL's implicit prompt) into (prompt, the rest of each).

    Conversations split after the last message they share; strings at the last whitespace before
    the first character they differ in, so the prompt ends on a whole word and every reply keeps
    its leading space.
    """
    n = 0  # the length of the prefix all replies share (messages, or characters)
    while all(n < len(v) for v in values) and all(v[n] == values[0][n] for v in values):
        n += 1
    if conversational:
        return values[0][:n], [v[n:] for v in values]
    if any(n < len(v) for v in values):  # they differ at n: back off to the word boundary
        n = values[0].rfind(" ", 0, n + 1) if " " in values[0][:n + 1] else 0
    return values[0][:n].rstrip(), [v[n:] for v in values]


def join_text(prompt: str, response: str) -> str:
    """``prompt`` followed by ``response`` as one text, with one space between them unless either
    side already has it (word-level tokenizers decode without spaces; BPE responses carry theirs)."""
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"
