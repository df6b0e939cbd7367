"""The evaluation every optimiser shares, as a Lightning callback: gold, proxy and KL on held-out
prompts, on the policy's own samples, every ``ppo.eval_every`` iterations."""

from __future__ import annotations

import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback

from rlhf_lab.algorithms import ppo as pm
from rlhf_lab.algorithms.bradley_terry import spearman
from rlhf_lab.config import Config
from rlhf_lab.engine.online import OnlinePolicyModule, iteration_of, kl_budget_reached
from rlhf_lab.models.generation import decode_responses, left_pad, sample
from rlhf_lab.rewards.ensemble import aggregate, disagreement
from rlhf_lab.rewards.gold import gold_reward


class Evaluation(Callback):
    """Every ``eval_every`` iterations, before the iteration's update: gold, every member's proxy,
    disagreement and KL on fixed held-out prompts, with a fixed sampling seed so successive
    evaluations are paired. It owns the run's evaluation history (saved in checkpoints with the
    callback's state) and ends the run at the first evaluation that reaches ``ppo.kl_budget``. Every
    optimiser's module is measured by it alike (it reads the policy, the reference log-probs, the
    members' scores and β); the sweep's pruning reads its history."""

    def __init__(self, cfg: Config, tokenizer, prompts: list[str], logger=None):
        self.cfg, self.tokenizer, self.prompts, self.logger = cfg, tokenizer, prompts, logger
        self.ids, self.mask = left_pad(tokenizer, prompts)
        self.gold = gold_reward(cfg)
        self.history: list[dict] = []  # one row per evaluation
        self.samples_history: list[dict] = []  # a few texts per evaluation
        self.last_rows: list[dict] = []  # every prompt's sample from the latest evaluation

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        iteration = iteration_of(module)
        if iteration % self.cfg.ppo.eval_every == 0:
            self(module, iteration)
            if kl_budget_reached(self.history, self.cfg.ppo.kl_budget):
                # A distance budget, not an iteration one: the run ends at the evaluation that first
                # reaches it; the module skips this iteration's update (every rank evaluates alike).
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"history": self.history, "samples_history": self.samples_history}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.samples_history = state["history"], state["samples_history"]

    @torch.no_grad()
    def __call__(self, module: OnlinePolicyModule, iteration: int) -> None:
        if self.history and self.history[-1]["step"] == iteration:
            return
        cfg = self.cfg.ppo
        device = module.device
        was_training = module.policy.training
        module.policy.eval()
        generator = torch.Generator(device=device).manual_seed(self.cfg.runtime.seed + 12345)
        ids, mask = self.ids.to(device), self.mask.to(device)
        # The exact KL compares the distributions the tokens were drawn from with the reference's.
        out = sample(module.policy, ids, mask, cfg.max_new_tokens, module.eos_token_id, module.pad_token_id,
                     temperature=cfg.temperature, generator=generator, keep_distributions=True)  # fmt: skip
        seq, seq_mask, rmask = out.sequence_ids, out.sequence_mask, out.response_mask
        ref_logprobs, kl_exact = module.reference_logprobs(seq, seq_mask, out.response_ids, out.distributions)
        members = module.score(seq, seq_mask, ids.shape[1])  # (K, B)
        proxy = aggregate(members, cfg.reward_objective, cfg.uwo_lambda)
        spread = members[1:] if cfg.reward_objective == "warm" else members  # the members, not their average
        per_seq = lambda x: (x * rmask).sum(1).mean().item()  # noqa: E731
        row = {
            "step": iteration,
            "kl": per_seq(kl_exact),
            "kl_k1": per_seq(pm.kl_k1(out.logprobs, ref_logprobs)),
            "kl_k3": per_seq(pm.kl_k3(out.logprobs, ref_logprobs)),
            "proxy": proxy.mean().item(),
            **{f"proxy_{k}": members[k].mean().item() for k in range(members.shape[0])},
            "disagreement": disagreement(spread).mean().item() if spread.shape[0] > 1 else 0.0,
            "length": rmask.sum(1).float().mean().item(),
            "eos_rate": out.ended.float().mean().item(),
            "beta": module.kl_ctl.value,
        }
        responses = decode_responses(self.tokenizer, out)
        gold = self.gold(self.prompts, responses, out.ended.tolist()) if self.gold is not None else None
        if gold is not None:
            row["gold"] = float(gold.mean())
            row["gold_se"] = float(gold.std() / len(gold) ** 0.5)
            if cfg.gold_probe:  # what a rule with a small gold budget would read (algorithms/early_stopping.py)
                row["gold_probe"] = float(gold[: cfg.gold_probe].mean())
            # Does the proxy still rank like gold on the policy's own samples?
            row["proxy_gold_spearman"] = spearman(members[0].cpu().numpy(), gold)
        self.history.append(row)
        # Every member's score too: is a hack shared by all members, or only by some (report §2)?
        self.last_rows = [
            {"prompt": p, "response": r, "ended": bool(e), "proxy": round(float(x), 4),
             "members": [round(v, 4) for v in m], **({"gold": round(float(g), 4)} if gold is not None else {})}
            for p, r, e, x, m, g in zip(self.prompts, responses, out.ended.tolist(), proxy.tolist(),
                                        members.T.tolist(), gold if gold is not None else [None] * len(responses))
        ]  # fmt: skip
        for i in range(min(cfg.eval_texts, len(responses))):
            self.samples_history.append({
                "step": iteration, "prompt": self.prompts[i], "response": responses[i],
                "ended": bool(out.ended[i]), "proxy": round(proxy[i].item(), 4),
                **({"gold": round(float(gold[i]), 4)} if gold is not None else {}),
            })  # fmt: skip
        if self.logger is not None and module.trainer is not None and module.trainer.is_global_zero:
            self.logger.log_metrics({f"eval/{k}": v for k, v in row.items() if k != "step"}, step=iteration)
        module.policy.train(was_training)


def run_metrics(history: list[dict]) -> dict:
    """What a run reached, from its evaluation history: final proxy, KL and step; with gold, its peak
    (value, step, KL), final and initial gold."""
    frame = pd.DataFrame(history)
    last = frame.iloc[-1]
    metrics = {"proxy_final": float(last["proxy"]), "kl_final": float(last["kl"]), "steps": int(last["step"])}
    if "gold" in frame:
        peak = frame.loc[frame["gold"].idxmax()]
        metrics.update({
            "gold_peak": float(peak["gold"]), "gold_peak_step": int(peak["step"]),
            "gold_peak_kl": float(peak["kl"]), "gold_final": float(last["gold"]),
            "gold_initial": float(frame.iloc[0]["gold"]),
        })  # fmt: skip
    return metrics
