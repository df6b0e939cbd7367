"""SFT stage: fine-tune the policy on demonstrations, log to MLflow, save with save_pretrained.

Outputs (``paths.sft``): the model and tokenizer (safetensors), ``metrics.json``,
``samples.jsonl`` (generations with gold scores), ``config.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from rlhf_lab import config as config_lib
from rlhf_lab.config import Config
from rlhf_lab.data.files import DataError, read_jsonl, read_texts, write_json, write_jsonl
from rlhf_lab.engine.sft_module import CausalLMModule
from rlhf_lab.models.generation import decode_responses, left_pad, sample
from rlhf_lab.models.loading import (
    build_policy,
    encode_completions,
    encode_texts,
    load_tokenizer,
    prepare_for_training,
)
from rlhf_lab.models.lora import add_lora, save_adapter_and_merged
from rlhf_lab.rewards.gold import gold_reward
from rlhf_lab.runtime.stage import apply_runtime, make_trainer, mlflow_logger, replacing_dir, stage_main


def generate_samples(cfg: Config, model, tokenizer, prompts: list[str], seed: int) -> list[dict]:
    """Sample one response per prompt; rows carry the gold score when the task has one."""
    device = next(model.parameters()).device
    ids, mask = left_pad(tokenizer, prompts)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = sample(
        model, ids.to(device), mask.to(device), cfg.sft.max_length - ids.shape[1],
        tokenizer.eos_token_id, tokenizer.pad_token_id, generator=generator,
    )  # fmt: skip
    model.train(was_training)
    responses = decode_responses(tokenizer, out)
    ended = out.ended.tolist()
    rows = [{"prompt": p, "response": r, "ended": e} for p, r, e in zip(prompts, responses, ended)]
    gold = gold_reward(cfg)
    if gold is not None:
        scores = gold(prompts, responses, ended)
        for row, score in zip(rows, scores):
            row["gold"] = round(float(score), 4)
    return rows


class SampleLogger(Callback):
    """After each validation, log a few generations as an MLflow text artifact."""

    def __init__(self, cfg: Config, tokenizer, prompts: list[str]):
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, prompts

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = generate_samples(self.cfg, module.model, self.tokenizer, self.prompts, seed=0)
        text = "\n".join(f"{r.get('gold', '')}\t{r['prompt']} | {r['response']}" for r in rows)
        logger = trainer.logger
        logger.experiment.log_text(logger.run_id, text, f"samples/epoch_{trainer.current_epoch}.txt")


def read_demonstrations(path: Path) -> list[dict]:
    """The data stage's rows: all {"text"}, or all {"prompt", "completion"}."""
    rows = read_jsonl(path)
    keys = ("prompt", "completion") if "completion" in rows[0] else ("text",)
    for number, row in enumerate(rows, start=1):
        if not all(isinstance(row.get(k), str) for k in keys):
            raise DataError(f"{path}:{number}: expected string fields {', '.join(keys)}")
    return rows


def loader(tokenizer, rows: list[dict], max_length: int, batch_size: int, shuffle: bool) -> DataLoader:
    """Batches of (ids, mask) for text rows, (ids, mask, loss mask) when only completions are learned."""
    if "completion" in rows[0]:
        tensors = encode_completions(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                                     max_length)  # fmt: skip
    else:
        tensors = encode_texts(tokenizer, [r["text"] for r in rows], max_length)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle)


def run(cfg: Config) -> dict:
    apply_runtime(cfg.runtime)
    data = Path(cfg.paths.data)
    tokenizer = load_tokenizer(data / "tokenizer")
    s = cfg.sft
    train = loader(tokenizer, read_demonstrations(data / "train.jsonl"), s.max_length, s.batch_size, True)
    val = loader(tokenizer, read_demonstrations(data / "val.jsonl"), s.max_length, s.batch_size, False)
    prompts = read_texts(data / "prompts_eval.jsonl", "prompt")

    model = build_policy(cfg.model, tokenizer)
    adapter = add_lora(model, cfg.model.lora) if cfg.model.lora else None
    prepare_for_training(model, cfg.runtime)
    total_steps = s.epochs * len(train)
    module = CausalLMModule(model, s.lr, s.weight_decay, s.warmup_steps, total_steps)
    logger = mlflow_logger(cfg, "sft")
    trainer = make_trainer(
        cfg.runtime, logger, max_epochs=s.epochs, log_every_n_steps=10,
        callbacks=[SampleLogger(cfg, tokenizer, prompts[: s.num_samples])],
    )  # fmt: skip
    trainer.fit(module, train, val)

    val_loss = float(trainer.callback_metrics["sft/val_loss"])
    rows = generate_samples(cfg, model, tokenizer, prompts, seed=cfg.runtime.seed)
    metrics = {
        "sft/val_loss": val_loss,
        "sft/val_perplexity": math.exp(val_loss),
        "sft/eos_rate": sum(r["ended"] for r in rows) / len(rows),
    }
    if "gold" in rows[0]:
        metrics["gold/score"] = sum(r["gold"] for r in rows) / len(rows)
    if not trainer.is_global_zero:
        return metrics
    with replacing_dir(cfg.paths.sft) as out:
        if adapter is not None:  # the adapter for peft, and merged weights for everything downstream
            save_adapter_and_merged(adapter, out, tokenizer)
        else:
            model.save_pretrained(out)  # safetensors by default
            tokenizer.save_pretrained(out)
        write_jsonl(out / "samples.jsonl", rows)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
        (out / "mlflow_run_id").write_text(logger.run_id + "\n")
        for name in ("metrics.json", "samples.jsonl", "config.yaml"):
            logger.experiment.log_artifact(logger.run_id, str(out / name))
    logger.log_metrics({k: v for k, v in metrics.items() if k != "sft/val_loss"})
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], services=("tracking", "hardware"))


if __name__ == "__main__":
    main()
