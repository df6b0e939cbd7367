"""Bradley–Terry reward-model training as a Lightning module (the math: rlhf_lab/algorithms/bradley_terry.py)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from rlhf_lab.algorithms.bradley_terry import bradley_terry_loss
from rlhf_lab.engine.sft_module import check_finite
from rlhf_lab.rewards.reward_model import last_token_scores


class RewardModule(pl.LightningModule):
    """Bradley–Terry training. Batches: (chosen_ids, chosen_mask, rejected_ids, rejected_mask)."""

    def __init__(self, model, lr: float, weight_decay: float, margin: float, total_steps: int,
                 label_smoothing: float = 0.0, center_coef: float = 0.0):  # fmt: skip
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.margin, self.total_steps = lr, weight_decay, margin, total_steps
        self.label_smoothing, self.center_coef = label_smoothing, center_coef

    def _rewards(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        c_ids, c_mask, r_ids, r_mask = batch
        width = max(c_ids.shape[1], r_ids.shape[1])
        pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
        # One forward for both sides: (2B, T)
        scores = last_token_scores(
            self.model, torch.cat([pad(c_ids), pad(r_ids)]), torch.cat([pad(c_mask), pad(r_mask)])
        )
        return scores.chunk(2)

    def training_step(self, batch, batch_idx):
        chosen, rejected = self._rewards(batch)
        loss = bradley_terry_loss(chosen, rejected, self.margin, self.label_smoothing, self.center_coef)
        check_finite(loss, f"reward model step {self.global_step}")
        self.log("rm/train_loss", loss, prog_bar=True)
        self.log("rm/train_accuracy", (chosen > rejected).float().mean())
        return loss

    def validation_step(self, batch, batch_idx):
        chosen, rejected = self._rewards(batch)
        self.log("rm/val_loss", bradley_terry_loss(chosen, rejected), prog_bar=True)
        self.log("rm/val_accuracy", (chosen > rejected).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # Linear decay to zero, the usual reward-model schedule (Ouyang et al. 2022).
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / max(1, self.total_steps))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
