"""Tokenizers and causal LMs: a tiny GPT-2 built from params, or any Hugging Face model by path."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_lab.config import ModelConfig, UserError
from rlhf_lab.models.generation import pad_sequences
from rlhf_lab.task.grammar import BOS, EOS, PAD, SPECIAL_TOKENS, UNK


def train_word_tokenizer(texts: list[str]):
    """A word-level tokenizer (``tokenizers``) over whitespace-separated words of ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None
    # transformers would save this with the tokenizer. It only records whether the hub was offline
    # at load time, so the same tokenizer would hash differently under `make repro` and `dvc repro`.
    tokenizer.init_kwargs.pop("local_files_only", None)
    if tokenizer.eos_token_id is None:
        raise UserError(f"{path}: the tokenizer has no eos token; generation could never stop")
    if tokenizer.pad_token_id is None:  # GPT-2 and many others ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def build_policy(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A causal LM: ``cfg.name_or_path`` loaded with ``from_pretrained``, else a fresh GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.name_or_path:
        return load_causal_lm(cfg.name_or_path)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        # A small-vocab GPT2Config still says 50256 unless told: keep ids inside the vocabulary.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # The exact (erf) GELU, not GPT-2's tanh approximation: the model is trained from scratch, so
        # either serves, and on a CPU torch's tanh kernel is 4-5x slower (a quarter of a reward pass).
        activation_function="gelu",
    )
    return GPT2LMHeadModel(config)


def load_causal_lm(path: str | Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load a causal LM ({str(err).splitlines()[0]})") from None


def fuse_tanh_gelu(model: torch.nn.Module) -> None:
    """Swap GPT-2's ``NewGELUActivation`` (six elementwise kernels) for ``nn.GELU("tanh")``: the
    same function, one fused kernel: ~7 % of a CPU PPO iteration on the benchmark configuration.
    (The built-in model uses the exact GELU, faster still: see :func:`build_policy`.)"""
    from transformers.activations import NewGELUActivation

    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, torch.nn.GELU(approximate="tanh"))


def use_fast_kernels(models, attention: str, device: torch.device) -> None:
    """The faster kernels for the same functions: GPT-2's tanh GELU fused (:func:`fuse_tanh_gelu`)
    and the attention implementation ``attention`` means on ``device`` (rlhf_lab/models/attention.py)."""
    from rlhf_lab.models.attention import use_attention

    for model in models:
        fuse_tanh_gelu(model)
    use_attention(models, attention, device)


def prepare_for_training(model: torch.nn.Module, runtime) -> None:
    """``runtime.gradient_checkpointing``: recompute activations in backward (memory for compute)."""
    if runtime.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


def encode_completions(tokenizer, prompts: list[str], completions: list[str], max_length: int):
    """Right-padded ``<bos> prompt completion <eos>`` ids, attention mask and loss mask (1 on the
    completion and its <eos> only), each (B, T). Prompt and completion are tokenized apart, as the
    policy sees them: a prompt, then the tokens it generates."""
    ids, loss = [], []
    for prompt, completion in zip(prompts, completions):
        head = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
        tail = tokenizer.encode(completion, add_special_tokens=False)[: max(0, max_length - len(head) - 1)]
        tail.append(tokenizer.eos_token_id)
        ids.append((head + tail)[-max_length:])
        loss.append(([0] * len(head) + [1] * len(tail))[-max_length:])
    padded, mask = pad_sequences(ids, tokenizer.pad_token_id)
    loss_mask, _ = pad_sequences(loss, 0)
    return padded, mask, loss_mask


def encode_texts(tokenizer, texts: list[str], max_length: int, ended: list[bool] | None = None):
    """Right-padded ``<bos> text [<eos>]`` ids and attention mask, each (B, T).

    ``ended[i]`` says whether text i gets its <eos> (all do by default); truncation to
    ``max_length`` keeps the <eos>, so a reward model still sees where the response ended.
    """
    ended = [True] * len(texts) if ended is None else ended
    ids = [
        ([tokenizer.bos_token_id] + tokenizer.encode(t, add_special_tokens=False))[: max_length - int(e)]
        + ([tokenizer.eos_token_id] if e else [])
        for t, e in zip(texts, ended)
    ]
    return pad_sequences(ids, tokenizer.pad_token_id)
