"""Best-of-n stage: gold and proxy of the proxy-best of n SFT samples, against KL_bon.

For each held-out prompt, N samples from the SFT policy are scored by gold and every reward
member of every reward condition's ensemble (and its WARM weight average, where the reward stage
saved one); unbiased estimators over all N give E[gold], E[proxy] of best-of-n for n = 1, 2, 4 …
max_n, for each condition and reward objective (single, mean, wco, uwo, warm) and for the gold
oracle itself, with a percentile-bootstrap interval over prompts for gold.
Without a gold reward (``task.gold``) the gold columns are empty and proxy and KL remain.

Outputs (``paths.best_of_n``): ``bon_prompts.csv`` (each prompt's gold at the largest n, per condition
and objective), ``bon.csv`` (one row per condition, n and objective: condition, n,
objective, kl_bound, kl_exact, gold, gold_ci_low, gold_ci_high, prompts, proxy), ``metrics.json``,
``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rlhf_lab import config as config_lib
from rlhf_lab.algorithms.best_of_n import expected_best_of_n, kl_best_of_n_bound, kl_best_of_n_exact
from rlhf_lab.analysis.intervals import bootstrap_mean_interval
from rlhf_lab.config import Config
from rlhf_lab.data.files import read_texts, write_json
from rlhf_lab.models.generation import decode_responses, left_pad, sample
from rlhf_lab.models.loading import load_causal_lm, load_tokenizer, use_fast_kernels
from rlhf_lab.rewards.ensemble import OBJECTIVES, aggregate
from rlhf_lab.rewards.gold import gold_reward
from rlhf_lab.rewards.reward_model import (
    last_token_scores,
    load_frozen_reward,
    member_paths,
    normalised,
    reward_inputs,
    warm_path,
)
from rlhf_lab.runtime.stage import apply_runtime, replacing_dir, stage_main


def powers_of_two(max_n: int) -> list[int]:
    return [2**k for k in range(int(np.log2(max_n)) + 1)]


@torch.no_grad()
def sample_and_score(cfg: Config, prompts: list[str], batch_size: int = 1024):
    """(gold (P, N) or None without a gold reward, {condition: member rewards (K, P, N)},
    {condition: WARM rewards (P, N)} for the conditions that have a weight average) for N samples of
    each prompt, scored by the ensemble of every reward condition."""
    N = cfg.best_of_n.samples_per_prompt
    tokenizer = load_tokenizer(cfg.paths.sft)
    policy = load_causal_lm(cfg.paths.sft).eval()
    conditions = list(cfg.reward_conditions)
    paths = {c: member_paths(cfg.for_condition(c)) for c in conditions}
    members = {c: [load_frozen_reward(p) for p in ps] for c, ps in paths.items()}
    warm = {c: load_frozen_reward(warm_path(cfg.for_condition(c))) for c in conditions
            if warm_path(cfg.for_condition(c)).is_dir()}  # fmt: skip
    # A condition whose reward models have another tokenizer reads re-encoded text.
    retokenize = {c: reward_inputs(tokenizer, ps[0], cfg.reward.max_length) for c, ps in paths.items()}
    # PPO's kernels, the same functions (≈ 25 % sooner here when the built-in model used the tanh GELU).
    use_fast_kernels([policy, *(m for ms in members.values() for m in ms), *warm.values()], cfg.ppo.attention,
                     policy.device)  # fmt: skip
    gold = gold_reward(cfg)
    flat = [p for p in prompts for _ in range(N)]
    generator = torch.Generator().manual_seed(cfg.runtime.seed + 777)
    golds, rewards = [], []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        ids, mask = left_pad(tokenizer, chunk)
        out = sample(policy, ids, mask, cfg.ppo.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                     temperature=cfg.ppo.temperature, generator=generator)  # fmt: skip
        if gold is not None:
            golds.append(gold(chunk, decode_responses(tokenizer, out), out.ended.tolist()))
        batch = {}
        for c, ms in members.items():
            seq, seq_mask = out.sequence_ids, out.sequence_mask
            if retokenize[c] is not None:
                seq, seq_mask = retokenize[c](seq, seq_mask, ids.shape[1])
            batch[c] = torch.stack([normalised(m, last_token_scores(m, seq, seq_mask)) for m in ms])
            if c in warm:
                batch[f"{c}/warm"] = normalised(warm[c], last_token_scores(warm[c], seq, seq_mask))
        rewards.append(batch)
    P = len(prompts)
    scores = {c: torch.cat([r[c] for r in rewards], dim=1).reshape(len(members[c]), P, N) for c in conditions}
    warm_scores = {c: torch.cat([r[f"{c}/warm"] for r in rewards]).reshape(P, N).numpy() for c in warm}
    return (np.concatenate(golds).reshape(P, N) if golds else None), scores, warm_scores


def proxies_of(members: torch.Tensor, warm: np.ndarray | None, b) -> dict[str, np.ndarray]:
    """Each objective's reward of every sample, (P, N): the ensemble's aggregates and WARM's own."""
    proxies = {obj: aggregate(members, obj, b.uwo_lambda).numpy() for obj in OBJECTIVES}
    if warm is not None:
        proxies["warm"] = warm
    return proxies


def condition_rows(condition: str, gold: np.ndarray | None, members: torch.Tensor, warm: np.ndarray | None, b,
                   seed: int) -> list[dict]:  # fmt: skip
    """bon.csv rows of one reward condition: each n and objective (and the gold oracle), with a
    95 % percentile-bootstrap interval over prompts for gold (NaN without a gold reward)."""
    proxies = proxies_of(members, warm, b)
    if gold is not None:
        proxies["oracle"] = gold  # best-of-n by gold itself: the ceiling
    P = members.shape[1]
    rows = []
    for n in powers_of_two(b.max_n):
        kl_exact = float(np.mean([kl_best_of_n_exact(proxies["single"][i], n) for i in range(P)]))
        for name, proxy in proxies.items():
            row = {"condition": condition, "n": n, "objective": name, "kl_bound": kl_best_of_n_bound(n),
                   "kl_exact": kl_exact, "gold": np.nan, "gold_ci_low": np.nan, "gold_ci_high": np.nan,
                   "prompts": P}  # fmt: skip
            if gold is not None:
                gold_ci = bootstrap_mean_interval([expected_best_of_n(proxy[i], gold[i], n) for i in range(P)], seed=seed)
                row.update(gold=gold_ci.mean, gold_ci_low=gold_ci.ci_low, gold_ci_high=gold_ci.ci_high)
            row["proxy"] = float(np.mean([expected_best_of_n(proxy[i], proxy[i], n) for i in range(P)]))
            rows.append(row)
    return rows


def prompt_rows(condition: str, gold: np.ndarray, members: torch.Tensor, warm: np.ndarray | None, b) -> list[dict]:
    """bon_prompts.csv rows of one reward condition: each prompt's expected gold of best-of-n at the
    largest n under each objective, for the paired comparisons of the report (same prompts, same samples)."""
    n = powers_of_two(b.max_n)[-1]
    return [{"condition": condition, "objective": obj, "n": n, "prompt": i,
             "gold": expected_best_of_n(proxy[i], gold[i], n)}
            for obj, proxy in proxies_of(members, warm, b).items() for i in range(members.shape[1])]  # fmt: skip


def run(cfg: Config) -> dict:
    apply_runtime(cfg.runtime)
    b = cfg.best_of_n
    prompts = read_texts(Path(cfg.paths.data) / "prompts_eval.jsonl", "prompt")[: b.prompts]
    gold, scores, warm = sample_and_score(cfg, prompts)
    frame = pd.DataFrame([row for condition, members in scores.items()
                          for row in condition_rows(condition, gold, members, warm.get(condition), b, cfg.runtime.seed)])  # fmt: skip
    first_condition = next(iter(scores))  # the headline keys of one-condition reports read the first
    first = frame[frame["condition"] == first_condition]
    top = first[first["n"] == first["n"].max()].set_index("objective")
    metrics = {} if gold is None else {
        "bon/gold_n1": float(first[(first["n"] == 1) & (first["objective"] == "single")]["gold"].iloc[0]),
        **{f"bon/gold_max_n.{obj}": float(top.loc[obj, "gold"]) for obj in top.index},
        **{f"bon.{c}.{obj}.gold_max_n": float(row["gold"]) for (c, obj), row in
           frame[frame["n"] == frame["n"].max()].set_index(["condition", "objective"]).iterrows()},
    }
    metrics |= {
        "bon/proxy_max_n": float(top.loc["single", "proxy"]),
        "bon/kl_exact_max_n": float(top["kl_exact"].iloc[0]),
        "bon/kl_bound_max_n": float(top["kl_bound"].iloc[0]),
        "bon/distinct_fraction": float(np.mean([len(np.unique(g)) / g.size for g in scores[first_condition][0].numpy()])),
    }
    with replacing_dir(cfg.paths.best_of_n) as out:
        frame.to_csv(out / "bon.csv", index=False)
        if gold is not None:
            pd.DataFrame([row for condition, members in scores.items() for row in prompt_rows(condition, gold, members, warm.get(condition), b)]
                         ).to_csv(out / "bon_prompts.csv", index=False)  # fmt: skip
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], services=("hardware",))


if __name__ == "__main__":
    main()
