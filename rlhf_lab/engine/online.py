"""The online-policy loop every on-policy optimiser shares, as a Lightning module (manual
optimisation): rollout and scoring, the update over epochs × minibatches, logging, data-parallel
means, checkpoints and the random state for an exact resume. An algorithm (PPO in rlhf_lab/engine/ppo_module.py,
RLOO and GRPO in :mod:`rlhf_lab.engine.critic_free`) supplies its advantages and its minibatch loss.

One ``training_step`` is one iteration: 1 rollout (k responses per prompt), 2 score, 3 advantages
(the algorithm's), 4 K epochs × M minibatches of the algorithm's loss.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from rlhf_lab.algorithms import ppo as pm
from rlhf_lab.algorithms.reward_shaping import preference_as_reward
from rlhf_lab.config import PPOConfig
from rlhf_lab.engine.sft_module import check_finite
from rlhf_lab.models.generation import Samples, next_token_logits, position_ids, sample
from rlhf_lab.models.loading import use_fast_kernels
from rlhf_lab.models.lora import adapters_disabled
from rlhf_lab.rewards.ensemble import aggregate
from rlhf_lab.rewards.reward_model import last_token_scores, normalised


@dataclass
class Rollout:
    """One iteration's experience; response-aligned tensors are (B, R), B = prompts · k."""

    samples: Samples
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    scores: torch.Tensor  # (B,) the training score (objective, penalties, whitening applied)
    member_scores: torch.Tensor  # (K, B) normalised rewards of the members the objective reads
    advantages: torch.Tensor  # (B, R) for PPO, (B,) for the sequence-level algorithms
    kl_exact: torch.Tensor | None  # (B, R) per-token KL from full distributions (small vocabularies)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # the algorithm's own, sliced per minibatch


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's ratio π/π_old must compare the same deterministic function (Huang et al. 2024)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def response_logits(model, seq: torch.Tensor, mask: torch.Tensor, R: int) -> torch.Tensor:
    """Logits predicting each of the last R tokens: (B, R, V).

    ``logits_to_keep`` skips the LM head on prompt positions; R + 1 positions are kept because the
    logit at position t predicts token t + 1.
    """
    out = model(input_ids=seq, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=R + 1)
    return out.logits[:, :-1]


def make_kl_controller(cfg: PPOConfig):
    if cfg.adaptive_kl:
        return pm.AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon)
    return pm.FixedKLController(cfg.beta)


# Up to this vocabulary size the rollout keeps the sampling distributions (B·R·V floats) and logs
# the exact KL to the reference next to its sampled estimates.
EXACT_KL_MAX_VOCAB = 4096


class OnlinePolicyModule(pl.LightningModule):
    """The shared loop. Subclasses set ``metric_prefix`` and implement :meth:`advantages` and
    :meth:`minibatch_losses`; PPO adds a value model through :meth:`rollout_values`,
    :meth:`extra_models` and :meth:`extra_parameters`."""

    metric_prefix = "online"

    def __init__(
        self,
        cfg: PPOConfig,
        policy: torch.nn.Module,
        ref_policy: torch.nn.Module | None,
        reward_models: list[torch.nn.Module],
        eos_token_id: int,
        pad_token_id: int,
        reward_inputs: Callable | None = None,
    ):
        """``ref_policy`` None: the policy carries LoRA adapters and its base weights are the reference.
        ``reward_inputs(seq, mask, prompt_len) -> (ids, mask)``: the reward models' own tokens for
        the policy's sequences, when their tokenizer differs (None: they read the policy's ids)."""
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints leave out the frozen models
        self.cfg = cfg
        self.k = cfg.k
        self.policy, self.ref_policy = policy, ref_policy
        self.reward_models = torch.nn.ModuleList(reward_models)
        self.reward_inputs = reward_inputs
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.kl_ctl = make_kl_controller(cfg)
        self.prompts: tuple[torch.Tensor, torch.Tensor] | None = None  # left-padded training prompts
        self.schedule_seed = 0
        self.schedule: list[torch.Tensor] | None = None  # each iteration's prompt indices (on_fit_start)
        self._resumed_rng: dict | None = None  # random states to restore before the first resumed step
        # The latest iteration's logged statistics. Lightning writes a step's metrics only after the
        # batch-end callbacks, so a kill just after a checkpoint loses them: a resumed run logs them.
        self.last_logged: dict | None = None
        self._unlogged: dict | None = None

    def finish_init(self) -> None:
        """The rest of construction, once the subclass has its own models: dropout off, frozen models
        frozen, and the compiled passes (torch.compile fuses the elementwise work around the matmuls
        of the update, the frozen rollout passes and the decoding step; a one-off compile of about
        2 min on a 2-core CPU with a cold cache)."""
        for model in self.models():
            disable_dropout(model)
        for frozen in (*([self.ref_policy] if self.ref_policy is not None else []), *self.reward_models):
            frozen.requires_grad_(False).eval()
        compile_ = self.cfg.compile
        self._losses = torch.compile(self.minibatch_losses) if compile_ else self.minibatch_losses
        self._score_rollout = torch.compile(self.score_rollout) if compile_ else self.score_rollout
        self._decode_step = torch.compile(next_token_logits, dynamic=True) if compile_ else None

    def use_prompts(self, ids: torch.Tensor, mask: torch.Tensor, seed: int) -> None:
        """Train on these prompts, iteration i taking the batch ``prompt_schedule`` deals it."""
        self.prompts, self.schedule_seed = (ids, mask), seed

    def models(self) -> list[torch.nn.Module]:
        """The policy, the reference, the reward members and the algorithm's own models."""
        ref = [self.ref_policy] if self.ref_policy is not None else []
        return [self.policy, *ref, *self.reward_models, *self.extra_models()]

    # ---------------------------------------------------------------- the algorithm's part
    def extra_models(self) -> list[torch.nn.Module]:
        return []

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def rollout_values(self, seq: torch.Tensor, seq_mask: torch.Tensor, prompt_len: int) -> torch.Tensor | None:
        """Values of the response tokens (B, R) for algorithms with a critic; None without."""
        return None

    def advantages(self, samples: Samples, scores: torch.Tensor, ref_logprobs: torch.Tensor,
                   values: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """3. (advantages, the algorithm's extra per-response tensors) from the scored rollout."""
        raise NotImplementedError

    def minibatch_losses(self, seq, seq_mask, P: int, response_ids, old_logprobs, ref_logprobs, advantages, mask,
                         **extra) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """4. The algorithm's loss on one minibatch and its statistics (named without the prefix)."""
        raise NotImplementedError

    def rollout_stats(self, ro: Rollout) -> dict[str, float]:
        """The algorithm's own statistics of a rollout (named without the prefix)."""
        return {}

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, seq: torch.Tensor, mask: torch.Tensor, prompt_len: int, members: int | None = None) -> torch.Tensor:
        """Normalised rewards of the first ``members`` members (default all): (K, B)."""
        if self.reward_inputs is not None:
            seq, mask = self.reward_inputs(seq, mask, prompt_len)
        return torch.stack(
            [normalised(rm, last_token_scores(rm, seq, mask).float()) for rm in self.reward_models[:members]]
        )

    def policy_logprobs(self, seq: torch.Tensor, seq_mask: torch.Tensor, response_ids: torch.Tensor):
        """The policy's tempered log-distributions over the response positions (B, R, V) and the
        log-probs of the response tokens (B, R)."""
        logits = response_logits(self.policy, seq, seq_mask, response_ids.shape[1])
        logp = pm.log_softmax_at_temperature(logits, self.cfg.temperature)
        return logp, pm.gather_tokens(logp, response_ids)

    # ---------------------------------------------------------------- 1-3: experience
    @torch.no_grad()
    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Rollout:
        cfg = self.cfg
        self.policy.eval()
        if self.k > 1:  # k responses per prompt, each prompt's group contiguous
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(self.k, 0), prompt_mask.repeat_interleave(self.k, 0)
        # 1. generate (log-probs of the sampled tokens come from the sampling distribution itself)
        samples = sample(
            self.policy, prompt_ids, prompt_mask, cfg.max_new_tokens, self.eos_token_id, self.pad_token_id,
            temperature=cfg.temperature, compiled_step=self._decode_step,
            keep_distributions=self.policy.config.vocab_size <= EXACT_KL_MAX_VOCAB,
        )  # fmt: skip
        seq, seq_mask, mask = samples.sequence_ids, samples.sequence_mask, samples.response_mask
        ref_logprobs, values, member_scores, kl_exact = self._score_rollout(
            seq, seq_mask, samples.response_ids, samples.distributions
        )
        ref_logprobs = ref_logprobs * mask
        # 2. the finished responses' training score
        scores = aggregate(member_scores, cfg.reward_objective, cfg.uwo_lambda)
        if cfg.reward_shaping == "par":
            scores = preference_as_reward(scores, self.reference_scores(prompt_ids, prompt_mask))
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~samples.ended).float()
        if cfg.whiten_rewards:
            scores = pm.masked_whiten(scores, torch.ones_like(scores), shift_mean=False)
        # 3. the algorithm's advantages
        advantages, extra = self.advantages(samples, scores, ref_logprobs, values)
        return Rollout(samples, samples.logprobs, ref_logprobs, scores, member_scores, advantages,
                       None if kl_exact is None else kl_exact * mask, extra)  # fmt: skip

    @torch.no_grad()
    def reference_scores(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """The objective's reward of one reference-policy response to each prompt (B,): PAR's r_ref."""
        cfg, reference = self.cfg, self.ref_policy if self.ref_policy is not None else self.policy
        with adapters_disabled(self.policy) if self.ref_policy is None else contextlib.nullcontext():
            ref = sample(reference, prompt_ids, prompt_mask, cfg.max_new_tokens, self.eos_token_id, self.pad_token_id,
                         temperature=cfg.temperature, compiled_step=self._decode_step)  # fmt: skip
        members = 1 if cfg.reward_objective in ("single", "warm") else None
        scored = self.score(ref.sequence_ids, ref.sequence_mask, prompt_ids.shape[1], members)
        return aggregate(scored, cfg.reward_objective, cfg.uwo_lambda)

    @torch.no_grad()
    def score_rollout(self, seq: torch.Tensor, seq_mask: torch.Tensor, response_ids: torch.Tensor,
                      distributions: torch.Tensor | None = None):  # fmt: skip
        """The frozen passes over the sampled sequences: reference log-probs (B, R), values (B, R) or
        None, every reward member's normalised score (K, B), and with the policy's sampling
        ``distributions`` (B, R, V) the exact per-token KL to the reference (B, R), else None."""
        ref_logprobs, kl_exact = self.reference_logprobs(seq, seq_mask, response_ids, distributions)
        P = seq.shape[1] - response_ids.shape[1]
        values = self.rollout_values(seq, seq_mask, P)
        # The single and WARM objectives read the first model only: the others are left to the evaluations.
        members = 1 if self.cfg.reward_objective in ("single", "warm") else None
        return ref_logprobs, values, self.score(seq, seq_mask, P, members), kl_exact

    @torch.no_grad()
    def reference_logprobs(self, seq: torch.Tensor, seq_mask: torch.Tensor, response_ids: torch.Tensor,
                           distributions: torch.Tensor | None = None):  # fmt: skip
        """The reference's tempered log-probs of the response tokens (B, R) and, given the policy's
        sampling log-``distributions`` (B, R, V), the exact per-token KL to the reference (B, R)."""
        return reference_logprobs(self.policy, self.ref_policy, self.cfg.temperature, seq, seq_mask, response_ids,
                                  distributions)  # fmt: skip

    # ---------------------------------------------------------------- 4: optimisation
    def update(self, ro: Rollout) -> dict[str, float]:
        cfg = self.cfg
        for model in (self.policy, *self.extra_models()):
            model.train()
        optimizer = self.optimizers()
        seq, seq_mask = ro.samples.sequence_ids, ro.samples.sequence_mask
        P = ro.samples.prompt_ids.shape[1]
        B = seq.shape[0]
        size = B // cfg.minibatches
        totals: dict[str, float] = {}
        n = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, device=seq.device)
            for start in range(0, B, size):
                idx = order[start : start + size]
                loss, stats = self._losses(
                    seq[idx], seq_mask[idx], P, ro.samples.response_ids[idx], ro.logprobs[idx], ro.ref_logprobs[idx],
                    ro.advantages[idx], ro.samples.response_mask[idx], **{k: v[idx] for k, v in ro.extra.items()},
                )  # fmt: skip
                check_finite(loss, f"{self.metric_prefix} iteration {self.global_step}")
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if cfg.max_grad_norm:
                    self.clip_gradients(optimizer, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value.item()
                n += 1
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return {f"{self.metric_prefix}/{key}": value / n for key, value in totals.items()}

    # ---------------------------------------------------------------- Lightning hooks
    def on_fit_start(self):
        # Here rather than in __init__: "auto" depends on the device the models were moved to.
        use_fast_kernels(self.models(), self.cfg.attention, self.device)
        if self.prompts is not None:
            world = self.trainer.world_size
            self.schedule = prompt_schedule(len(self.prompts[0]), self.cfg.batch_size // self.k * world,
                                            self.cfg.iterations, self.schedule_seed)  # fmt: skip

    def iteration_prompts(self, iteration: int, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of iteration ``iteration``'s prompts (the loader's batch without a schedule)."""
        if self.schedule is None:
            return batch
        rank, world = self.global_rank, self.trainer.world_size
        idx = self.schedule[iteration][rank::world]
        return self.prompts[0][idx].to(self.device), self.prompts[1][idx].to(self.device)

    def begin_iteration(self, iteration: int) -> bool:
        """Restore a resumed run's random state and unlogged metrics; False when the run ends here."""
        if self._resumed_rng is not None:  # continue the random streams exactly where the checkpoint left them
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        if self._unlogged is not None and self.logger is not None:  # a continued run skips steps it has
            self.logger.log_metrics(self._unlogged["metrics"], step=self._unlogged["step"])
            self._unlogged = None
        # The evaluation callback (rlhf_lab/engine/evaluation.py) ran before this step; when it found
        # the run's KL budget reached, the run ends here, before this iteration's update.
        return not self.trainer.should_stop

    def training_step(self, batch, batch_idx):
        iteration = iteration_of(self)
        prompt_ids, prompt_mask = self.iteration_prompts(iteration, batch)
        if not self.begin_iteration(iteration):
            return None
        start = time.perf_counter()
        ro = self.rollout(prompt_ids, prompt_mask)
        rollout_s = time.perf_counter() - start
        stats = self.update(ro)
        elapsed = time.perf_counter() - start
        mask = ro.samples.response_mask
        prefix = self.metric_prefix
        responses = mask.shape[0]
        stats.update({
            f"{prefix}/score": ro.scores.mean().item(),
            f"{prefix}/proxy": ro.member_scores.mean().item(),  # the members scored: member 0 for `single`
            f"{prefix}/kl": (pm.kl_k1(ro.logprobs, ro.ref_logprobs) * mask).sum(1).mean().item(),
            f"{prefix}/kl_k3": (pm.kl_k3(ro.logprobs, ro.ref_logprobs) * mask).sum(1).mean().item(),
            **({f"{prefix}/kl_exact": ro.kl_exact.sum(1).mean().item()} if ro.kl_exact is not None else {}),
            f"{prefix}/beta": self.kl_ctl.value,
            **{f"{prefix}/{k}": v for k, v in self.rollout_stats(ro).items()},
            f"{prefix}/response_length": mask.sum(1).float().mean().item(),
            f"{prefix}/eos_rate": ro.samples.ended.float().mean().item(),
            f"{prefix}/lr": self.optimizers().param_groups[0]["lr"],
            "perf/samples_per_s": responses / elapsed,
            "perf/rollout_fraction": rollout_s / elapsed,
        })  # fmt: skip
        stats = self._mean_over_processes(stats)
        world = self.trainer.world_size
        stats["perf/samples_per_s"] *= world  # every process rolled out its own batch
        # β must follow the KL of the whole batch: one controller per process would drift apart.
        self.kl_ctl.update(stats[f"{prefix}/kl"], responses * world)
        self.log_dict(stats, on_step=True, prog_bar=False)
        self.last_logged = {"step": iteration, "metrics": dict(stats)}
        self.log(f"{prefix}/score_pb", stats[f"{prefix}/score"], prog_bar=True, logger=False)
        self.log(f"{prefix}/kl_pb", stats[f"{prefix}/kl"], prog_bar=True, logger=False)

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over the data-parallel processes (one all-reduce); as is on one."""
        if self.trainer.world_size == 1:
            return stats
        values = torch.tensor(list(stats.values()), dtype=torch.float64, device=self.device)
        values = self.trainer.strategy.reduce(values, reduce_op="mean")
        return dict(zip(stats, values.tolist()))

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad] + list(self.extra_parameters())
        return make_optimizer(params, self.cfg, str(self.trainer.precision))

    def on_save_checkpoint(self, checkpoint):
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(("ref_policy.", "reward_models."))]:
            del state[key]  # frozen: rebuilt from their own folders on resume
        # (The evaluation history is the evaluation callback's state, saved beside this.)
        checkpoint["ppo_state"] = {"beta": self.kl_ctl.value, "rng": rng_state(), "last_logged": self.last_logged}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["ppo_state"]
        self.kl_ctl.value = state["beta"]
        self._resumed_rng = state.get("rng")
        self._unlogged = state.get("last_logged")


def reference_logprobs(policy, ref_policy, temperature: float, seq: torch.Tensor, seq_mask: torch.Tensor,
                       response_ids: torch.Tensor, distributions: torch.Tensor | None = None):  # fmt: skip
    """The reference's tempered log-probs of the response tokens (B, R) and, given the policy's
    log-``distributions`` (B, R, V), the exact per-token KL to the reference (B, R). ``ref_policy``
    None: the reference is ``policy`` with its LoRA adapters off."""
    if ref_policy is None:
        with adapters_disabled(policy):
            ref_logits = response_logits(policy, seq, seq_mask, response_ids.shape[1])
    else:
        ref_logits = response_logits(ref_policy, seq, seq_mask, response_ids.shape[1])
    ref_logp = pm.log_softmax_at_temperature(ref_logits, temperature)  # (B, R, V)
    kl_exact = None if distributions is None else pm.kl_between(distributions, ref_logp)
    return pm.gather_tokens(ref_logp, response_ids), kl_exact


def make_optimizer(params: list, cfg: PPOConfig, precision: str):
    """AdamW (ε 1e-5) at ``cfg.lr``, constant or linearly decayed over ``cfg.iterations``."""
    # fused: one kernel per step instead of a loop over the parameters (≈ 1 % of a CPU iteration).
    # Lightning refuses to clip the gradients of a fused optimizer under mixed precision.
    fused = precision in ("32-true", "64-true")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0, fused=fused)
    if cfg.lr_schedule == "constant":
        return optimizer
    total = cfg.iterations
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1 - i / total))
    return {"optimizer": optimizer, "lr_scheduler": schedule}


def prompt_schedule(n_prompts: int, batch_size: int, iterations: int, seed: int) -> list[torch.Tensor]:
    """Every iteration's prompt indices, reshuffled at each pass over the prompts exactly as a
    shuffling DataLoader seeded with ``seed`` deals them. Dealt up front, iteration i's batch depends
    on (seed, i) alone, so a resumed run trains on the batches an uninterrupted one does."""
    loader = DataLoader(TensorDataset(torch.arange(n_prompts)), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    schedule: list[torch.Tensor] = []
    while len(schedule) < iterations:
        for (indices,) in loader:
            schedule.append(indices)
            if len(schedule) == iterations:
                break
    return schedule


def rng_state() -> dict:
    """Every random stream a PPO iteration draws from (sampling, minibatch order), in types a
    ``weights_only`` checkpoint load accepts (tensors, lists, numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kl_budget_reached(history: list[dict], kl_budget: float | None) -> bool:
    """Has the latest evaluation's KL to the reference (nats per response) reached the budget?"""
    return kl_budget is not None and bool(history) and history[-1]["kl"] >= kl_budget


def optimizer_steps_per_iteration(cfg: PPOConfig) -> int:
    """Optimizer steps in one iteration: epochs × minibatches online, one for DPO/IPO (a batch of pairs)."""
    return cfg.ppo_epochs * cfg.minibatches if cfg.online else 1


def iteration_of(module) -> int:
    """Iterations done; Lightning's global_step counts optimizer steps."""
    return module.global_step // optimizer_steps_per_iteration(module.cfg)
