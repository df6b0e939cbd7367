"""Reward models: a transformer backbone with a scalar head, read at the last non-padding token.

A reward model is a plain ``AutoModelForSequenceClassification`` with one label, so
``transformers`` loads a saved member as it is. Its normalisation constants are stored in its
``config.json`` (``reward_gain``, ``reward_bias``): normalised reward = gain · raw + bias.
For right-padded input whose pad token differs from <eos>, HF's own forward reads the same token
as :func:`last_token_scores`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from rlhf_lab.algorithms.ppo import last_token_index
from rlhf_lab.config import Config, UserError
from rlhf_lab.models.generation import position_ids
from rlhf_lab.models.loading import encode_texts, load_tokenizer


def load_reward_backbone(path: str | Path, seed: int) -> torch.nn.Module:
    """A sequence classifier with one label from a causal-LM (or classifier) checkpoint.

    Dropout is switched off (its noise biases the Bradley–Terry targets) and the head is drawn
    from N(0, 1/(d+1)) (Stiennon et al. 2020), seeded so ensemble members differ.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(str(path), num_labels=1)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load a reward backbone ({str(err).splitlines()[0]})") from None
    for name, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name):
            setattr(config, name, 0.0)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config)
    head = score_head(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        d = head.weight.shape[1]
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / math.sqrt(d + 1))
        if head.bias is not None:
            head.bias.zero_()
    return model


def member_paths(cfg: Config) -> list[Path]:
    """The reward stage's ``member_<k>`` folders in member order, the first ``ppo.members`` of them."""
    root = Path(cfg.paths.reward)
    paths = sorted(root.glob("member_*"), key=lambda p: int(p.name.split("_")[1]))
    if not paths:
        raise UserError(f"{root}: no reward model members; `dvc repro reward@{root.name}` trains them")
    if cfg.ppo.members and cfg.ppo.members > len(paths):
        raise UserError(f"ppo.members: {cfg.ppo.members} requested, but {root} has {len(paths)} trained "
                        f"members (reward.members)")  # fmt: skip
    return paths[: cfg.ppo.members] if cfg.ppo.members else paths


def warm_path(cfg: Config) -> Path:
    """Where the reward stage saves the members' weight average (WARM)."""
    return Path(cfg.paths.reward) / "warm"


def load_frozen_reward(path: Path):
    """A saved member, as plain transformers loads it, in eval mode (normalisation in its config)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path)).eval()


def score_head(model) -> torch.nn.Linear:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise UserError(f"{type(model).__name__}: expected a scalar `score` head (decoder-only model)")
    return head


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head applied at every position: (B, T). Used for rewards (last token) and values."""
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
    ).last_hidden_state
    return score_head(model)(hidden).squeeze(-1)


def last_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw rewards read at the last non-padding token: (B,)."""
    scores = token_scores(model, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


def normalised(model, raw: torch.Tensor) -> torch.Tensor:
    """gain · raw + bias with the constants saved in the model's config (identity if none)."""
    return getattr(model.config, "reward_gain", 1.0) * raw + getattr(model.config, "reward_bias", 0.0)


@torch.no_grad()
def score_texts(
    model, tokenizer, texts: list[str], ended: list[bool], max_length: int = 1024, batch_size: int = 256
) -> torch.Tensor:
    """Raw rewards of ``prompt response`` texts (<eos> appended where the response ended): (N,)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        ids, mask = encode_texts(tokenizer, texts[start:stop], max_length, ended[start:stop])
        out.append(last_token_scores(model, ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def score_samples(path: str | Path, rows: list[dict], max_length: int) -> np.ndarray:
    """Normalised rewards, by the reward model saved at ``path``, of sample rows (``prompt``,
    ``response``, ``ended``) as the PPO stage writes them: the text is re-encoded by the model's own
    tokenizer, so a member re-scores a run's samples to its recorded score (to float rounding) except
    where the policy put a special token inside a response: decoding drops it, and the text is scored."""
    from rlhf_lab.data.layouts import join_text

    model, tokenizer = load_frozen_reward(path), load_tokenizer(path)
    texts = [join_text(r["prompt"], r["response"]) for r in rows]
    return normalised(model, score_texts(model, tokenizer, texts, [r.get("ended", True) for r in rows], max_length)).numpy()


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers give every token the same id (then a model of one reads the other's ids)."""
    return a.get_vocab() == b.get_vocab() and (a.bos_token_id, a.eos_token_id) == (b.bos_token_id, b.eos_token_id)


def reward_inputs(policy_tokenizer, member: Path, max_length: int) -> Retokenizer | None:
    """How reward member ``member`` reads the policy's samples: None when it shares the policy's
    vocabulary (the ids as they are), else a :class:`Retokenizer` to its own tokens."""
    reward_tokenizer = load_tokenizer(member)
    if same_vocabulary(policy_tokenizer, reward_tokenizer):
        return None
    return Retokenizer(policy_tokenizer, reward_tokenizer, max_length)


class Retokenizer:
    """The policy's sampled sequences as a reward model of another tokenizer reads them: decoded to
    ``prompt`` and ``response`` text, joined as the reward stage joined them, encoded again."""

    def __init__(self, policy_tokenizer, reward_tokenizer, max_length: int):
        self.policy, self.reward, self.max_length = policy_tokenizer, reward_tokenizer, max_length

    def __call__(self, seq: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        from rlhf_lab.data.layouts import join_text

        texts, ended = [], []
        for ids, m in zip(seq.tolist(), mask.tolist()):
            prompt = [t for t, keep in zip(ids[:prompt_len], m[:prompt_len]) if keep][1:]  # without the <bos>
            response = [t for t, keep in zip(ids[prompt_len:], m[prompt_len:]) if keep]
            ended.append(bool(response) and response[-1] == self.policy.eos_token_id)
            texts.append(join_text(self.policy.decode(prompt), self.policy.decode(response, skip_special_tokens=True)))
        ids, new_mask = encode_texts(self.reward, texts, self.max_length, ended)
        return ids.to(seq.device), new_mask.to(seq.device)
