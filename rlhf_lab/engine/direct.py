"""DPO and IPO as a module of the same loop: an iteration is one batch of preference pairs (the
condition's own, the pairs its reward models learned from) instead of a rollout, the policy and the
frozen reference score both responses, and the loss is :mod:`rlhf_lab.algorithms.dpo`'s. The
evaluations, the KL budget, checkpoints and logging are the online loop's, so offline runs land on
the same gold-vs-d axes, measured on the policy's own samples."""

from __future__ import annotations

import torch

from rlhf_lab.algorithms import dpo
from rlhf_lab.engine.online import OnlinePolicyModule, iteration_of, prompt_schedule
from rlhf_lab.engine.sft_module import check_finite
from rlhf_lab.models.generation import left_pad, pad_sequences
from rlhf_lab.models.loading import use_fast_kernels


def encode_pairs(tokenizer, rows: list[dict], max_new_tokens: int) -> tuple[torch.Tensor, ...]:
    """Preference pairs as the policy reads them: ``<bos> prompt`` left-padded (P, Lp) with its mask,
    and both responses (``response [<eos>]``, at most ``max_new_tokens``), right-padded to one width
    (P, R) with their masks: (prompt, prompt mask, chosen, chosen mask, rejected, rejected mask)."""
    prompt_ids, prompt_mask = left_pad(tokenizer, [r["prompt"] for r in rows])

    def response(row: dict, side: str) -> list[int]:
        ended = row.get(f"{side}_ended", True)
        ids = tokenizer.encode(row[side], add_special_tokens=False)[: max_new_tokens - int(ended)]
        return ids + ([tokenizer.eos_token_id] if ended else [])

    both = [response(r, s) for s in ("chosen", "rejected") for r in rows]
    ids, mask = pad_sequences(both, tokenizer.pad_token_id)
    n = len(rows)
    return prompt_ids, prompt_mask, ids[:n], mask[:n], ids[n:], mask[n:]


class DirectAlignmentModule(OnlinePolicyModule):
    """``cfg.algorithm`` dpo (−log σ(β h), summed log-probs) or ipo ((h − 1/(2β))², token-mean log-probs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_prefix = self.cfg.algorithm
        self.pairs: tuple[torch.Tensor, ...] | None = None
        self.finish_init()

    def use_pairs(self, pairs: tuple[torch.Tensor, ...], seed: int) -> None:
        """Train on these encoded pairs (:func:`encode_pairs`), iteration i taking the batch the
        schedule deals it (a fixed function of (seed, i): a resumed run sees the same batches)."""
        self.pairs, self.schedule_seed = pairs, seed

    def on_fit_start(self):
        use_fast_kernels(self.models(), self.cfg.attention, self.device)
        world = self.trainer.world_size
        self.schedule = prompt_schedule(len(self.pairs[0]), self.cfg.batch_size * world, self.cfg.iterations,
                                        self.schedule_seed)  # fmt: skip

    def minibatch_losses(self, prompt_ids, prompt_mask, chosen, chosen_mask, rejected, rejected_mask):
        """The loss on a batch of pairs: chosen and rejected in one forward pass of each model."""
        cfg, n = self.cfg, len(prompt_ids)
        seq = torch.cat([prompt_ids.repeat(2, 1), torch.cat([chosen, rejected])], dim=1)
        seq_mask = torch.cat([prompt_mask.repeat(2, 1), torch.cat([chosen_mask, rejected_mask])], dim=1)
        response_ids, response_mask = torch.cat([chosen, rejected]), torch.cat([chosen_mask, rejected_mask])
        _, logprobs = self.policy_logprobs(seq, seq_mask, response_ids)
        ref_logprobs, _ = self.reference_logprobs(seq, seq_mask, response_ids)
        average = cfg.algorithm == "ipo"  # IPO regresses the per-token mean log-ratio
        policy = dpo.sequence_logprob(logprobs, response_mask, average)
        ref = dpo.sequence_logprob(ref_logprobs, response_mask, average)
        margin = dpo.preference_margin(policy[:n], policy[n:], ref[:n], ref[n:])
        loss = dpo.ipo_loss(margin, cfg.beta) if average else dpo.dpo_loss(margin, cfg.beta)
        return loss, {"loss": loss.detach(), "margin": margin.mean().detach(),
                      "accuracy": dpo.implicit_reward_accuracy(margin.detach())}  # fmt: skip

    def training_step(self, batch, batch_idx):
        iteration = iteration_of(self)
        if not self.begin_iteration(iteration):
            return None
        rank, world = self.global_rank, self.trainer.world_size
        idx = self.schedule[iteration][rank::world]
        self.policy.train()
        loss, stats = self._losses(*(t[idx].to(self.device) for t in self.pairs))
        check_finite(loss, f"{self.metric_prefix} step {self.global_step}")
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.cfg.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        stats = {f"{self.metric_prefix}/{k}": v.item() for k, v in stats.items()}
        stats[f"{self.metric_prefix}/lr"] = optimizer.param_groups[0]["lr"]
        stats = self._mean_over_processes(stats)
        self.log_dict(stats, on_step=True, prog_bar=False)
        self.last_logged = {"step": iteration, "metrics": dict(stats)}
        self.log(f"{self.metric_prefix}/loss_pb", stats[f"{self.metric_prefix}/loss"], prog_bar=True, logger=False)
