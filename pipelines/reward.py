"""Reward stage: train ``reward.members`` Bradley–Terry reward models and measure their quality.

``python -m pipelines.reward [--condition NAME]``: one reward condition of ``reward_conditions`` (its
overrides of the preferences and reward sections; default the first).
Outputs (``paths.reward``/NAME): ``member_<k>/`` (each loads with AutoModelForSequenceClassification;
normalisation in its config.json), ``metrics.json`` (per member, for the ensemble mean, and held-out
accuracy vs number of pairs under ``scaling``), ``calibration.csv`` (the ensemble's reliability
bins), ``config.yaml``. MLflow: a parent run ``reward`` with one nested run per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from rlhf_lab import config as config_lib
from rlhf_lab.algorithms.bradley_terry import (
    calibration_bins,
    expected_calibration_error,
    normalisation,
    pairwise_accuracy,
    preference_log_loss,
    sigmoid,
    spearman,
)
from rlhf_lab.config import Config, UserError
from rlhf_lab.data.files import DataError, read_jsonl, write_json
from rlhf_lab.data.layouts import Rows, join_text
from rlhf_lab.engine.reward_module import RewardModule
from rlhf_lab.models.loading import encode_texts, load_tokenizer, prepare_for_training
from rlhf_lab.models.lora import add_lora
from rlhf_lab.rewards.reward_model import load_reward_backbone, score_texts
from rlhf_lab.rewards.warm import average_weights
from rlhf_lab.runtime.stage import (
    apply_runtime,
    create_parent_run,
    make_trainer,
    mlflow_logger,
    replacing_dir,
    stage_main,
    tracking_uri,
)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def load_pairs(path: Path) -> list[dict]:
    rows = read_jsonl(path, required=PAIR_FIELDS)
    for number, row in enumerate(rows, start=1):
        for key in ("chosen_gold", "rejected_gold"):
            if key in row and not isinstance(row[key], (int, float)):
                raise DataError(f"{path}:{number}: {key} must be a number")
    return rows


def pair_datasets(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs: the preference stage's, or ``reward.dataset`` split 90/10.

    A conversational dataset is rendered with the policy's chat template: the reward models must
    read text as the policy will write it."""
    if cfg.reward.dataset is None:
        prefs = Path(cfg.paths.preferences)
        return load_pairs(prefs / "train.jsonl"), load_pairs(prefs / "eval.jsonl")
    policy_tokenizer = load_tokenizer(cfg.paths.sft)
    rows = Rows(cfg.reward.dataset, policy_tokenizer, f"the policy tokenizer ({cfg.paths.sft})").pairs()
    order = np.random.default_rng(cfg.runtime.seed).permutation(len(rows))
    n_eval = max(1, len(rows) // 10)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def side(rows: list[dict], which: str) -> tuple[list[str], list[bool]]:
    """``prompt response`` texts and ended flags of the ``chosen`` or ``rejected`` side."""
    return [join_text(r["prompt"], r[which]) for r in rows], [r.get(f"{which}_ended", True) for r in rows]


def side_scores(model, tokenizer, rows: list[dict], max_length: int) -> list[np.ndarray]:
    """A reward model's raw scores of the chosen and of the rejected responses."""
    return [score_texts(model, tokenizer, *side(rows, s), max_length).numpy() for s in ("chosen", "rejected")]


def gold_labels(rows: list[dict]) -> np.ndarray:
    """Is the chosen response really better, by gold (not by a possibly flipped label)? Pairs without
    gold scores count as labelled."""
    return np.array([r.get("chosen_gold", 1) >= r.get("rejected_gold", 0) for r in rows], dtype=bool)


def encode_side(tokenizer, rows: list[dict], which: str, max_length: int):
    texts, ended = side(rows, which)
    return encode_texts(tokenizer, texts, max_length, ended)


def pair_loader(tokenizer, rows, max_length: int, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    c_ids, c_mask = encode_side(tokenizer, rows, "chosen", max_length)
    r_ids, r_mask = encode_side(tokenizer, rows, "rejected", max_length)
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(c_ids, c_mask, r_ids, r_mask)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def quality(prob: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, gold_labels: np.ndarray,
            sft_scores: np.ndarray | None, sft_gold: np.ndarray | None) -> dict:  # fmt: skip
    """Held-out accuracy, log-loss and calibration of ``prob`` = P(chosen ≻ rejected) on the
    Bradley–Terry scale, and the proxy–gold rank correlation on fresh SFT samples."""
    metrics = {
        "rm/accuracy": pairwise_accuracy(chosen, rejected, gold_labels),
        "rm/log_loss": preference_log_loss(prob, gold_labels),
        "rm/ece": expected_calibration_error(prob, gold_labels),
    }
    if sft_gold is not None:
        metrics["rm/spearman_sft"] = spearman(sft_scores, sft_gold)
    return metrics


def head_seed(cfg: Config, k: int) -> int:
    """The seed of member ``k``'s score head (members differ in it: fine-tune seeds)."""
    return cfg.runtime.seed * 1000 + k


def train_member(cfg: Config, k: int, train_rows, eval_rows, tokenizer, parent_run_id: str, name: str = "",
                 backbone: Path | None = None, shared_head: int | None = None):  # fmt: skip
    """Fit member ``k``: its data order (and bootstrap resample) and its head's initialisation come from
    ``k`` unless ``shared_head`` fixes the head's seed (WARM's fits share one initialisation)."""
    r = cfg.reward
    apply_runtime(cfg.runtime, seed_offset=k)
    rows = train_rows
    if r.bootstrap:
        pick = np.random.default_rng([cfg.runtime.seed, k]).integers(len(rows), size=len(rows))
        rows = [rows[i] for i in pick]
    train = pair_loader(tokenizer, rows, r.max_length, r.batch_size, True, seed=cfg.runtime.seed + k)
    val = pair_loader(tokenizer, eval_rows, r.max_length, 256, False, seed=0)
    model = load_reward_backbone(backbone or r.backbone or cfg.paths.sft,
                                 seed=head_seed(cfg, k) if shared_head is None else shared_head)  # fmt: skip
    adapter = add_lora(model, r.lora, task_type=None, trainable=("score",)) if r.lora else None
    prepare_for_training(model, cfg.runtime)
    module = RewardModule(model, r.lr, r.weight_decay, r.margin, total_steps=r.epochs * len(train),
                          label_smoothing=r.label_smoothing, center_coef=r.center_coef)  # fmt: skip
    logger = mlflow_logger(
        cfg, "reward", run_name=name or f"reward-member-{k}",
        tags={"mlflow.parentRunId": parent_run_id, "member": str(k)},
    )  # fmt: skip
    trainer = make_trainer(cfg.runtime, logger, max_epochs=r.epochs, log_every_n_steps=10)
    trainer.fit(module, train, val)
    if adapter is not None:  # merged, so a member loads with plain AutoModelForSequenceClassification
        model = adapter.merge_and_unload()
    return model, logger


def fit_member(cfg: Config, k: int, data: "PairData", tokenizer, parent: str, out: Path,
               backbone: Path | None = None) -> tuple[dict, tuple]:  # fmt: skip
    """Train member ``k`` (from ``backbone``, default the SFT policy), normalise it on SFT samples,
    save it under ``out``/member_<k>.

    Returns its held-out quality and (P(chosen ≻ rejected), normalised chosen, rejected, fresh scores).
    """
    model, logger = train_member(cfg, k, data.train, data.eval, tokenizer, parent, backbone=backbone)
    member, scores = normalise_and_save(cfg, model, data, tokenizer, out / f"member_{k}")
    logger.log_metrics(member)
    logger.experiment.set_tag(logger.run_id, "path", str(Path(cfg.paths.reward) / f"member_{k}"))
    logger.finalize("success")
    return member, scores


def normalise_and_save(cfg: Config, model, data: "PairData", tokenizer, path: Path) -> tuple[dict, tuple]:
    """Normalise a reward model on SFT samples (mean 0, std 1 there: the PPO starting distribution),
    measure it on the held-out pairs and save it (normalisation in its config.json)."""
    r = cfg.reward
    raw_fresh = score_texts(model, tokenizer, *data.calibration, r.max_length).numpy()
    gain, bias = normalisation(raw_fresh)
    model.config.reward_gain, model.config.reward_bias = gain, bias
    raw = side_scores(model, tokenizer, data.eval, r.max_length)
    # Calibration lives on the raw Bradley–Terry scale the model was trained on.
    prob = sigmoid(raw[0] - raw[1])
    scores = [gain * x + bias for x in (*raw, raw_fresh)]  # normalised: chosen, rejected, fresh
    measured = quality(prob, scores[0], scores[1], data.eval_labels, scores[2], data.sft_gold)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return measured, (prob, *scores)


def fit_warm(cfg: Config, data: "PairData", tokenizer, parent: str, out: Path) -> dict:
    """WARM: ``reward.warm_members`` fits from one initialisation (the SFT backbone and member 0's head),
    differing in data order and bootstrap resample as the members do, their weights averaged into one
    reward model, normalised and saved as ``out``/warm (the other fits as ``out``/warm_fit_<k>). With
    ``member_init: sft`` the ensemble's member 0 is that fit already and is reused."""
    from transformers import AutoModelForSequenceClassification

    r = cfg.reward
    models = []
    for k in range(r.warm_members):
        if k == 0 and r.member_init == "sft":
            models.append(AutoModelForSequenceClassification.from_pretrained(str(out / "member_0")).eval())
            continue
        model, logger = train_member(cfg, k, data.train, data.eval, tokenizer, parent, name=f"reward-warm-fit-{k}",
                                     shared_head=head_seed(cfg, 0))  # fmt: skip
        logger.finalize("success")
        model.save_pretrained(out / f"warm_fit_{k}")  # what the average is made of, there to inspect
        models.append(model.eval())
    try:
        averaged = average_weights([m.state_dict() for m in models])
    except ValueError as err:
        raise UserError(f"reward.warm: {err} ({out})") from None
    warm = models[0]
    warm.load_state_dict(averaged)
    measured, _ = normalise_and_save(cfg, warm, data, tokenizer, out / "warm")
    return {**measured, "rm/members": len(models)}


def pretrain_backbones(cfg: Config, out: Path) -> list[Path]:
    """``reward.member_init: pretrain-seed``: a backbone per member, trained from scratch on the
    demonstrations like the SFT policy but with a seed of its own (at this scale, SFT from scratch is
    the pre-training), so members differ in pre-training seed (Eisenstein et al. 2023)."""
    from pipelines import sft

    paths = []
    for k in range(cfg.reward.members):
        path = out / "backbones" / f"member_{k}"
        sft.run(cfg.replace(paths={"sft": str(path)}, runtime={"seed": cfg.runtime.seed + 7919 * (k + 1)}))
        paths.append(path)
    return paths


def fit_on_pairs(cfg: Config, n: int, data: "PairData", tokenizer, parent: str) -> float:
    """Held-out accuracy of one reward model trained on the first ``n`` pairs (accuracy vs data)."""
    model, logger = train_member(cfg, 0, data.train[:n], data.eval, tokenizer, parent, name=f"reward-pairs-{n}")
    raw = side_scores(model, tokenizer, data.eval, cfg.reward.max_length)
    accuracy = pairwise_accuracy(raw[0], raw[1], data.eval_labels)
    logger.log_metrics({"rm/accuracy": accuracy, "rm/pairs": n})
    logger.finalize("success")
    return accuracy


@dataclass(frozen=True)
class PairData:
    train: list[dict]
    eval: list[dict]
    eval_labels: np.ndarray  # gold label of each held-out pair (chosen really better)
    calibration: tuple[list[str], list[bool]]  # texts and ended flags the rewards are normalised on
    sft_gold: np.ndarray | None  # gold of the fresh SFT samples, when there are some


def load_pair_data(cfg: Config) -> PairData:
    train_rows, eval_rows = pair_datasets(cfg)
    eval_labels = gold_labels(eval_rows)
    fresh_path = Path(cfg.paths.preferences) / "sft_samples.jsonl"
    fresh = read_jsonl(fresh_path) if fresh_path.is_file() else None
    if fresh:
        calibration = ([join_text(x["prompt"], x["response"]) for x in fresh], [x["ended"] for x in fresh])
    else:
        calibration = side(train_rows, "chosen")
    sft_gold = np.array([row["gold"] for row in fresh]) if fresh and "gold" in fresh[0] else None
    return PairData(train_rows, eval_rows, eval_labels, calibration, sft_gold)


def run(cfg: Config, condition: str | None = None) -> dict:
    """The reward stage for one reward condition (``reward_conditions``; default the first)."""
    from mlflow import MlflowClient

    cfg = cfg.for_condition(condition)
    r = cfg.reward
    data = load_pair_data(cfg)
    client = MlflowClient(tracking_uri(cfg.tracking))
    parent = create_parent_run(cfg, f"reward-{Path(cfg.paths.reward).name}", "reward")
    pair_counts = [n for n in sorted(set(r.scaling_pairs)) if n < len(data.train)]
    tokenizer = load_tokenizer(r.backbone or cfg.paths.sft)

    metrics: dict = {}
    with replacing_dir(cfg.paths.reward) as out:
        # One fit after another, all cores each: reward batches (2 × 64 sequences of up to 64 tokens)
        # keep both cores busy, and side by side measured 12 % slower here (132 vs 113 s).
        member_scores = []  # normalised held-out rewards per member: (prob, chosen, rejected, fresh)
        backbones = pretrain_backbones(cfg, out) if r.member_init == "pretrain-seed" else [None] * r.members
        for k in range(r.members):
            metrics[f"member_{k}"], scores = fit_member(cfg, k, data, tokenizer, parent, out, backbones[k])
            member_scores.append(scores)
        # The ensemble's prediction averages member probabilities; its reward is the mean objective.
        prob, chosen, rejected, fresh_scores = (np.mean([s[i] for s in member_scores], axis=0) for i in range(4))
        metrics["ensemble"] = quality(prob, chosen, rejected, data.eval_labels, fresh_scores, data.sft_gold)
        metrics["ensemble"]["rm/members"] = r.members
        pd.DataFrame(calibration_bins(prob, data.eval_labels)).to_csv(out / "calibration.csv", index=False)
        scaling = {str(n): fit_on_pairs(cfg, n, data, tokenizer, parent) for n in pair_counts}
        scaling[str(len(data.train))] = metrics["member_0"]["rm/accuracy"]
        metrics["scaling"] = scaling
        if r.warm:  # warm_members - 1 more fits (≈ 7 s each here)
            metrics["warm"] = fit_warm(cfg, data, tokenizer, parent, out)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
        (out / "mlflow_run_id").write_text(parent + "\n")
    for key, value in metrics["ensemble"].items():
        client.log_metric(parent, f"ensemble/{key}", value)
    client.log_artifact(parent, str(Path(cfg.paths.reward) / "metrics.json"))
    client.set_terminated(parent)
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], options={"--condition": "a reward condition from params.yaml's reward_conditions"},
               services=("tracking", "hardware"))


if __name__ == "__main__":
    main()
