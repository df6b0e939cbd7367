"""Early stopping online, as a Lightning callback: a rule of :mod:`rlhf_lab.algorithms.early_stopping`
read on the evaluation callback's history as the run trains (``ppo.early_stop``). The run ends at
the rule's stop, and returns the policy of the rule's best evaluation, not its last."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from rlhf_lab.algorithms.early_stopping import Stop, held_out_members, patience_stop
from rlhf_lab.engine.evaluation import Evaluation


class EarlyStopping(Callback):
    """Reads ``rule`` (gold: the gold probe; proxy: the mean of the reward members held out of the
    objective, members 1…K−1 of a single-RM run) at each new evaluation; when the rule fires the run
    stops before that iteration's update. It keeps the trainable weights of the best evaluation's
    policy (the adapter alone under LoRA), in its checkpointed state, and :meth:`restore_best` puts
    them back at the end. List it after the evaluation callback, whose history it reads."""

    def __init__(self, evaluation: Evaluation, rule: str, patience: int, probe_prompts: int = 0):
        self.evaluation, self.rule, self.patience, self.probe_prompts = evaluation, rule, patience, probe_prompts
        self.best: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.read = 0  # evaluations read so far

    def signal(self) -> np.ndarray:
        history = self.evaluation.history
        if self.rule == "gold":
            return np.array([row["gold_probe"] for row in history], dtype=np.float64)
        members = sorted((key for key in history[0] if key.startswith("proxy_") and key[6:].isdigit()),
                         key=lambda key: int(key[6:]))  # fmt: skip
        return held_out_members(np.array([[row[m] for m in members] for row in history]), trained=[0])

    def stop(self) -> Stop:
        return patience_stop(self.signal(), self.patience)

    def observe(self, module) -> bool:
        """Read any new evaluation: keep the policy when it is the best so far; True when the rule fires."""
        history = self.evaluation.history
        if len(history) == self.read:
            return False
        self.read = len(history)
        stop = self.stop()
        if stop.chosen == len(history) - 1 and self.best_step != history[-1]["step"]:
            self.best_step = int(history[-1]["step"])
            self.best = {name: p.detach().to("cpu", copy=True) for name, p in module.policy.named_parameters()
                         if p.requires_grad}  # fmt: skip
        if stop.fired and self.stopped_step is None:
            self.stopped_step = int(history[-1]["step"])
        return stop.fired

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.observe(module):
            trainer.should_stop = True  # the module skips this iteration's update, as at the KL budget

    @torch.no_grad()
    def restore_best(self, module) -> None:
        """Put the best evaluation's weights back into the policy (a no-op when the last was the best)."""
        for name, p in module.policy.named_parameters():
            if self.best is not None and name in self.best:
                p.copy_(self.best[name].to(p.device))

    def summary(self) -> dict:
        """What the rule did, for the run's metrics: the step it stopped at (None: it never fired), the
        returned evaluation's step, gold and KL, and the gold queries it spent."""
        history, stop = self.evaluation.history, self.stop()
        chosen = history[stop.chosen]
        out = {"early_stop_rule": self.rule, "early_stop_step": self.stopped_step, "returned_step": int(chosen["step"]),
               "kl_returned": float(chosen["kl"]),
               "gold_queries": self.probe_prompts * stop.checks if self.rule == "gold" else 0}  # fmt: skip
        if "gold" in chosen:
            out["gold_returned"] = float(chosen["gold"])
        return out

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "stopped_step": self.stopped_step, "read": self.read}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.stopped_step, self.read = state["stopped_step"], state["read"]
