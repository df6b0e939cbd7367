"""Supervised fine-tuning as a Lightning module: next-token loss on demonstrations."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from rlhf_lab.config import UserError


class NonFiniteLossError(UserError):
    pass


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop at the first NaN/inf loss with a message, instead of training on garbage."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{where}: loss is {loss.item()}; lower the learning rate or check the data"
        )


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Linear warm-up to the base rate, then cosine decay to 10 % of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class CausalLMModule(pl.LightningModule):
    """Wraps any HF causal LM; batches are (input_ids, attention_mask) right-padded."""

    def __init__(self, model, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def _loss(self, batch) -> torch.Tensor:
        input_ids, mask, *loss_mask = batch  # a third tensor: the loss is on completions only
        labels = input_ids.masked_fill((loss_mask[0] if loss_mask else mask) == 0, -100)  # nor on padding
        return self.model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        check_finite(loss, f"sft step {self.global_step}")
        self.log("sft/train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        # Token-weighted mean over the epoch, so perplexity is exp(mean NLL per token).
        tokens = (batch[1][:, 1:] == 1).sum()
        self.log("sft/val_loss", loss, batch_size=int(tokens), sync_dist=True, prog_bar=True)

    def on_validation_epoch_end(self):
        val_loss = self.trainer.callback_metrics.get("sft/val_loss")
        if val_loss is not None:
            self.log("sft/val_perplexity", torch.exp(val_loss), sync_dist=True)

    def configure_optimizers(self):
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.warmup_steps, self.total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
