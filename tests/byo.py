"""Bring-your-own material the tests build and save locally: a tiny Llama policy whose tokenizer has
a chat template, a tiny sequence-classification gold model with a tokenizer of its own, and
datasets in every TRL layout, standard and conversational."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
ROLE_WORDS = ["<|user|>", "<|assistant|>", "<|system|>", "review:"]


def review_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from the built-in grammar: the prompt is a review's first two words."""
    from rlhf_lab.task import ReviewGrammar

    texts = ReviewGrammar(1, 2, 0.2, 0.3).sample(n, seed=[seed, 9])
    return [(" ".join(t.split()[:2]), " ".join(t.split()[2:]) or "fine") for t in texts]


def word_tokenizer(texts: list[str], chat_template: str | None = None):
    from rlhf_lab.models.loading import train_word_tokenizer

    tokenizer = train_word_tokenizer(texts + [" ".join(ROLE_WORDS)])
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def other_word_tokenizer(texts: list[str]):
    """A word tokenizer of the same words under other ids: a filler word, most frequent, shifts them all."""
    return word_tokenizer(texts + ["<filler>"] * (len(texts) + 1000))


def save_tiny_llama(path: Path, texts: list[str]) -> Path:
    """A 2-layer Llama with grouped-query attention and a chat-templated word tokenizer.

    Initialised wide (std 0.3, not 0.02): behind its final RMSNorm, a frozen head of std 0.02 caps the
    logits near ±0.6, which no adapter can get past; a pretrained model's head is not so flat."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = word_tokenizer(texts, CHAT_TEMPLATE)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_gold(path: Path, texts: list[str], seed: int = 0) -> Path:
    """A random 1-layer GPT-2 sequence classifier with two labels (NEG, POS) and its own tokenizer
    (other ids than the policy's): a deterministic stand-in for a gold RM."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = other_word_tokenizer(texts)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=128, num_labels=2,
                        id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1},
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def messages(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def worse_reply(completion: str) -> str:
    """The rejected reply of a pair: the completion's words backwards (ungrammatical: learnable)."""
    backwards = " ".join(reversed(completion.split()))
    return backwards if backwards != completion else f"{completion} {completion}"


def layout_rows(layout: str, pairs: list[tuple[str, str]]) -> list[dict]:
    """Rows of one TRL layout built from (prompt, completion) pairs; conversational layouts end in _conv."""
    rows = []
    for prompt, completion in pairs:
        worse = worse_reply(completion)
        rows.append({
            "text": {"text": f"{prompt} {completion}"},
            "prompt": {"prompt": prompt},
            "prompt_completion": {"prompt": prompt, "completion": completion},
            "preference": {"prompt": prompt, "chosen": completion, "rejected": worse},
            "implicit": {"chosen": f"{prompt} {completion}", "rejected": f"{prompt} {worse}"},
            "text_conv": {"messages": messages("user", f"review: {prompt}") + messages("assistant", completion)},
            "prompt_conv": {"prompt": messages("user", f"review: {prompt}")},
            "prompt_completion_conv": {"prompt": messages("user", f"review: {prompt}"),
                                       "completion": messages("assistant", completion)},
            "preference_conv": {"prompt": messages("user", f"review: {prompt}"),
                                "chosen": messages("assistant", completion), "rejected": messages("assistant", worse)},
            "implicit_conv": {"chosen": messages("user", f"review: {prompt}") + messages("assistant", completion),
                              "rejected": messages("user", f"review: {prompt}") + messages("assistant", worse)},
        }[layout])  # fmt: skip
    return rows


def write_dataset(rows: list[dict], path: Path) -> Path:
    """``rows`` saved as ``path``'s format: .jsonl, .json, .parquet, .csv, or a save_to_disk folder (no suffix)."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        dataset = datasets.Dataset.from_list(rows)
        {".parquet": dataset.to_parquet, ".csv": dataset.to_csv}.get(path.suffix, dataset.save_to_disk)(str(path))
    return path


def save_tiny_gpt2_backbone(path: Path, texts: list[str]) -> Path:
    """A tiny GPT-2 causal LM whose word tokenizer gives the same words other ids: a reward backbone
    of another tokenizer than the policy's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = other_word_tokenizer(texts)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=128,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
