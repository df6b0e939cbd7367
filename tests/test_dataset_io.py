"""Datasets from files, save_to_disk folders and (refused offline) hub names, in every TRL layout."""

from __future__ import annotations

import pytest

from rlhf_lab.data.layouts import DataError, Rows, join_text, shared_prefix
from tests.byo import CHAT_TEMPLATE, layout_rows, review_pairs, word_tokenizer, write_dataset

PAIRS = review_pairs(12)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return word_tokenizer([f"{p} {c}" for p, c in PAIRS], CHAT_TEMPLATE)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", ""])
def test_every_file_format_reads_the_same_rows(tmp_path, suffix):
    path = write_dataset(layout_rows("prompt_completion", PAIRS), tmp_path / f"data{suffix}")
    rows = Rows(str(path))
    assert rows.layout == "prompt-completion"
    assert [(d.prompt, d.completion) for d in rows.demonstrations()] == PAIRS


def test_save_to_disk_dataset_dict_picks_the_split(tmp_path):
    import datasets

    train = datasets.Dataset.from_list(layout_rows("prompt", PAIRS[:5]))
    test = datasets.Dataset.from_list(layout_rows("prompt", PAIRS[5:]))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    assert Rows({"path": str(tmp_path / "dd"), "split": "test"}).prompts() == [p for p, _ in PAIRS[5:]]
    with pytest.raises(DataError, match="no split 'validation'; splits: train, test"):
        Rows({"path": str(tmp_path / "dd"), "split": "validation"})


def test_standard_layouts(tmp_path):
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    text = Rows(str(write_dataset(layout_rows("text", PAIRS), tmp_path / "text.jsonl")))
    assert text.layout == "language modeling"
    assert [d.completion for d in text.demonstrations()] == [f"{p} {c}" for p, c in PAIRS]
    assert all(d.prompt == "" for d in text.demonstrations())  # the loss is on the whole text
    assert text.prompts(prompt_words=2) == prompts
    with pytest.raises(DataError, match="data.prompt_words"):
        text.prompts()
    only = Rows(str(write_dataset(layout_rows("prompt", PAIRS), tmp_path / "prompt.jsonl")))
    assert only.layout == "prompt-only" and only.prompts() == prompts
    with pytest.raises(DataError, match="no completions"):
        only.demonstrations()
    explicit = Rows(str(write_dataset(layout_rows("preference", PAIRS), tmp_path / "pref.jsonl")))
    implicit = Rows(str(write_dataset(layout_rows("implicit", PAIRS), tmp_path / "implicit.jsonl")))
    assert implicit.layout == "implicit prompt preference"
    # The implicit prompt is split off on a word boundary; the replies keep their leading space.
    for a, b in zip(explicit.pairs(), implicit.pairs()):
        assert join_text(a["prompt"], a["chosen"]) == join_text(b["prompt"], b["chosen"])
        assert join_text(a["prompt"], a["rejected"]) == join_text(b["prompt"], b["rejected"])
    assert [d.completion for d in explicit.demonstrations()] == completions  # SFT on the chosen


def test_conversational_layouts_render_with_the_chat_template(tmp_path, chat_tokenizer):
    p, c = PAIRS[0]
    head = f"<|user|> review: {p} <|assistant|> "
    read = lambda name: Rows(str(write_dataset(layout_rows(name, PAIRS), tmp_path / f"{name}.jsonl")),
                             chat_tokenizer)
    assert read("prompt_conv").prompts()[0] == head  # the generation prompt: the assistant answers
    demo = read("prompt_completion_conv").demonstrations()[0]
    assert (demo.prompt, demo.completion) == (head, f"{c} ")
    assert read("text_conv").demonstrations()[0].completion == head + f"{c} "
    assert read("text_conv").prompts()[0] == head  # up to the last assistant turn
    explicit, implicit = read("preference_conv").pairs(), read("implicit_conv").pairs()
    assert explicit == implicit  # the shared messages are the prompt
    assert explicit[0]["prompt"] == head and explicit[0]["chosen"] == f"{c} "


def test_conversational_rows_without_a_chat_template_name_both(tmp_path):
    path = write_dataset(layout_rows("prompt_conv", PAIRS), tmp_path / "conv.jsonl")
    plain = word_tokenizer(["a b"])
    with pytest.raises(DataError, match=r"conv.jsonl: conversational rows need a chat template, and the word "
                                        r"tokenizer has none"):
        Rows(str(path), plain, "the word tokenizer")


def test_unknown_layout_lists_the_columns_and_the_layouts(tmp_path):
    path = write_dataset([{"question": "a", "answer": "b"}], tmp_path / "qa.jsonl")
    with pytest.raises(DataError) as err:
        Rows(str(path))
    message = str(err.value)
    assert "columns found: question, answer" in message
    assert "prompt-completion (prompt, completion)" in message and "implicit prompt preference" in message


def test_malformed_rows_name_the_file_and_the_row(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    with pytest.raises(DataError, match=r"bad.jsonl: cannot read the dataset \(JSON parse error.*at line 2\)"):
        Rows(str(bad_json))
    empty = write_dataset([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}],
                          tmp_path / "empty.jsonl")  # fmt: skip
    with pytest.raises(DataError, match=r"empty.jsonl: row 2: 'completion' is not a non-empty string"):
        Rows(str(empty)).demonstrations()
    gold = write_dataset([{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_gold": "high"}],
                         tmp_path / "gold.jsonl")  # fmt: skip
    with pytest.raises(DataError, match="row 1: chosen_gold must be a number"):
        Rows(str(gold)).pairs()


def test_missing_files_and_offline_hub_names_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"nope.parquet: file not found"):
        Rows(str(tmp_path / "nope.parquet"))
    with pytest.raises(DataError, match="not a dataset file"):
        Rows(str(tmp_path / "notes.txt.gz"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="trl-lib/tldr: not a local file or folder, and hub datasets need HF_HUB_OFFLINE=0"):
        Rows("trl-lib/tldr")


def test_shared_prefix_splits_on_words_and_messages():
    assert shared_prefix(["the food was great", "the food was awful"], False) == ("the food was", [" great", " awful"])
    assert shared_prefix(["it is good", "it is great"], False) == ("it is", [" good", " great"])
    user, a, b = {"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}
    assert shared_prefix([[user, a], [user, b]], True) == ([user], [[a], [b]])


def test_join_text_adds_one_space_only_where_none_is():
    assert join_text("the food", "was great") == "the food was great"  # word tokenizers decode bare words
    assert join_text("This movie", " was fun") == "This movie was fun"  # BPE responses carry their space
    assert join_text("<|assistant|> ", "fine") == "<|assistant|> fine"
    assert join_text("", "text") == "text"


def test_a_file_without_rows_says_so(tmp_path):
    (tmp_path / "prefs.jsonl").write_text("")
    with pytest.raises(DataError, match=r"prefs.jsonl: the file is empty \(no rows\)$"):
        Rows(str(tmp_path / "prefs.jsonl"))
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"pairs.csv: no rows \(only a header\?\)$"):
        Rows(str(tmp_path / "pairs.csv"))
