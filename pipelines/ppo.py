"""PPO stage: one RLHF run against the proxy reward, measured against gold as it trains.

``python -m pipelines.ppo [--run-name NAME]``: NAME picks an entry of ``ppo_runs`` in params.yaml (its keys
override the ``ppo`` section); without it the ``ppo`` section runs as it is, named ``ppo.run_name``.
The setting runs once per seed of ``ppo.seeds``, the seeds side by side (rlhf_lab/runtime/parallel.py).

Outputs (``paths.ppo``/NAME/seeds/seed_<s>, one folder per seed): ``policy/`` (save_pretrained),
``eval_history.csv`` (step, kl, gold, proxy, proxy_<k>, ...; with ``ppo.early_stop``, ``policy/`` is the
rule's best evaluation's and metrics.json says which: returned_step, gold_returned), ``samples.jsonl`` (a few texts per
evaluation), ``final_samples.jsonl`` (every held-out prompt's sample at the end, with every member's
score), ``metrics.json`` (gold_peak, gold_final, proxy_final, kl_final), ``run.json`` (what the run
was: algorithm, condition, objective, β, seed; the report reads it), ``cost.json`` (wall time,
responses generated, models held, peak memory), ``config.yaml``,
``mlflow_run_id``; beside them (``paths.ppo``/NAME) the seeds' summary: see :func:`run`. A killed
run resumes from ``paths.ppo``/.checkpoints/NAME/seed_<s> when rerun with the same config.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipelines.iterated import train_rounds
from rlhf_lab import config as config_lib
from rlhf_lab.analysis.intervals import bootstrap_mean_interval, t_interval
from rlhf_lab.config import Config, ConfigError, UserError
from rlhf_lab.data.files import read_texts, write_json, write_jsonl
from rlhf_lab.engine.critic_free import GRPOModule, RLOOModule
from rlhf_lab.engine.direct import DirectAlignmentModule, encode_pairs
from rlhf_lab.engine.early_stopping import EarlyStopping
from rlhf_lab.engine.evaluation import Evaluation, run_metrics
from rlhf_lab.engine.online import OnlinePolicyModule
from rlhf_lab.engine.ppo_module import PPOModule, iteration_of, optimizer_steps_per_iteration
from rlhf_lab.models.generation import left_pad
from rlhf_lab.models.loading import load_causal_lm, load_tokenizer, prepare_for_training
from rlhf_lab.models.lora import add_lora, save_adapter_and_merged
from rlhf_lab.rewards.reward_model import load_frozen_reward, member_paths, reward_inputs, warm_path
from rlhf_lab.runtime import parallel
from rlhf_lab.runtime.stage import (
    apply_runtime,
    checkpoint_callback,
    make_trainer,
    mlflow_logger,
    preload_tracking,
    replacing_dir,
    stage_main,
    unreadable_checkpoint,
)


def check_inputs(cfg: Config) -> tuple[list[str], list[str], list[dict] | None]:
    """The checks a run can fail on its inputs, made before it writes anything (a checkpoint folder,
    an MLflow run), so that a refused run leaves no trace: the reward members, the prompts and the
    batch size, a separate value model's vocabulary, DPO/IPO's preference pairs. Returns (training
    prompts, evaluation prompts, the training pairs of DPO/IPO or None)."""
    members = member_paths(cfg)
    algorithm = cfg.ppo.algorithm
    if (algorithm == "ppo" and cfg.ppo.value_model == "separate"
            and reward_inputs(load_tokenizer(cfg.paths.sft), members[0], 1) is not None):  # fmt: skip
        raise ConfigError(f"ppo.value_model: separate copies reward member 0 ({members[0]}), whose tokenizer "
                          "differs from the policy's, so it cannot read the policy's tokens; use shared")  # fmt: skip
    if cfg.ppo.reward_objective == "warm" and not warm_path(cfg).is_dir():
        raise UserError(f"ppo.reward_objective: warm needs {warm_path(cfg)} (reward.warm: true; "
                        f"`dvc repro reward@{Path(cfg.paths.reward).name}` makes it)")  # fmt: skip
    data = Path(cfg.paths.data)
    train_prompts = read_texts(data / "prompts_train.jsonl", "prompt")
    if cfg.ppo.online and len(train_prompts) < cfg.ppo.batch_size // cfg.ppo.k:
        raise UserError(f"ppo.batch_size: {cfg.ppo.batch_size} is larger than the number of training prompts "
                        f"({len(train_prompts)} in {data / 'prompts_train.jsonl'})")  # fmt: skip
    pairs = None
    if not cfg.ppo.online:  # DPO/IPO learn from the condition's own preference pairs
        from pipelines.reward import pair_datasets

        pairs, _ = pair_datasets(cfg)
        if len(pairs) < cfg.ppo.batch_size:
            where = cfg.reward.dataset or cfg.paths.preferences
            raise UserError(f"ppo.algorithm: {algorithm} needs preference pairs, and {where} has {len(pairs)} "
                            f"(fewer than ppo.batch_size {cfg.ppo.batch_size})")  # fmt: skip
    return train_prompts, read_texts(data / "prompts_eval.jsonl", "prompt"), pairs


MODULES = {"ppo": PPOModule, "rloo": RLOOModule, "grpo": GRPOModule, "dpo": DirectAlignmentModule,
           "ipo": DirectAlignmentModule}  # fmt: skip


def build_module(cfg: Config, tokenizer) -> tuple[OnlinePolicyModule, object | None]:
    """The algorithm's module and, with ``model.lora``, the policy's peft wrapper (it saves the adapter)."""
    members = member_paths(cfg)
    policy = load_causal_lm(cfg.ppo.init_policy or cfg.paths.sft)
    adapter, ref = None, None
    if cfg.model.lora:  # the reference is the policy with its adapter off: no second copy
        adapter = add_lora(policy, cfg.model.lora)
    else:
        ref = load_causal_lm(cfg.paths.sft)
    prepare_for_training(policy, cfg.runtime)
    # DPO/IPO train without them; they score the evaluations' samples (the proxy column) alike.
    rewards = [load_frozen_reward(p) for p in members]
    if cfg.ppo.reward_objective == "warm":  # the weight average first: the objective reads it, the
        rewards.insert(0, load_frozen_reward(warm_path(cfg)))  # evaluations read the members beside it
    retokenize = reward_inputs(tokenizer, members[0], cfg.reward.max_length)
    ids = (tokenizer.eos_token_id, tokenizer.pad_token_id)
    if cfg.ppo.algorithm != "ppo":
        module = MODULES[cfg.ppo.algorithm](cfg.ppo, policy, ref, rewards, *ids, reward_inputs=retokenize)
        return module, adapter
    value = None
    if cfg.ppo.value_model == "separate":  # check_inputs made sure it reads the policy's tokens
        # Value model initialised from the reward model (Huang et al. 2024); head kept.
        value = load_frozen_reward(members[0]).train().requires_grad_(True)
    module = PPOModule(cfg.ppo, policy, ref, rewards, value, *ids, reward_inputs=retokenize)
    return module, adapter


def train(cfg: Config, out: Path, callbacks: list | None = None, tags: dict | None = None) -> dict:
    """One PPO run of ``cfg`` (its ``ppo.seed``), written into the folder ``out``; returns its metrics.

    Checkpoints live in ``paths.ppo``/.checkpoints/<run_name>/seed_<seed>, every ``ppo.checkpoint_every``
    iterations: a killed run rerun with the same config resumes there, continues its MLflow run and
    ends with the evaluation history and metrics the uninterrupted run would have.
    """
    name, seed = cfg.ppo.run_name, cfg.ppo.seed
    apply_runtime(cfg.runtime, seed_offset=seed)
    tokenizer = load_tokenizer(cfg.paths.sft)
    train_prompts, eval_prompts, pairs = check_inputs(cfg)
    # Everything that can refuse (the models too) comes before the first file or MLflow run is made.
    evaluation = Evaluation(cfg, tokenizer, eval_prompts)
    module, adapter = build_module(cfg, tokenizer)

    ckpt_dir = Path(cfg.paths.ppo) / ".checkpoints" / name / f"seed_{seed}"
    resume = resumable_checkpoint(ckpt_dir, _config_text(cfg))
    run_id_file = ckpt_dir / "mlflow_run_id"
    run_id = run_id_file.read_text().strip() if resume and run_id_file.is_file() else None
    run_tags = {"ppo_run": name, "seed": str(seed), "reward_condition": Path(cfg.paths.reward).name, **(tags or {})}
    logger = mlflow_logger(cfg, "ppo", run_name=f"ppo-{name}-seed{seed}", tags=run_tags, run_id=run_id)
    run_id_file.write_text(logger.run_id + "\n")
    evaluation.logger = logger
    if pairs is not None:
        module.use_pairs(encode_pairs(tokenizer, pairs, cfg.ppo.max_new_tokens), seed=cfg.runtime.seed + seed)
    else:
        module.use_prompts(*left_pad(tokenizer, train_prompts), seed=cfg.runtime.seed + seed)

    steps = optimizer_steps_per_iteration(cfg.ppo)
    checkpoint = checkpoint_callback(ckpt_dir / "last.ckpt", cfg.ppo.checkpoint_every, cfg.ppo.iterations, steps)
    early = (EarlyStopping(evaluation, cfg.ppo.early_stop, cfg.ppo.early_stop_patience,
                           min(cfg.ppo.gold_probe, len(eval_prompts))) if cfg.ppo.early_stop else None)  # fmt: skip
    trainer = make_trainer(
        cfg.runtime, logger, max_steps=cfg.ppo.iterations * steps, max_epochs=-1,
        log_every_n_steps=1, callbacks=[evaluation, *([early] if early else []), checkpoint, *(callbacks or [])],
        # Seeds run side by side: one progress bar (the first seed's) for the stage, not one each.
        enable_progress_bar=seed == cfg.ppo.seeds[0],
    )  # fmt: skip
    # The batches are the module's prompt schedule; the loader only counts the iterations.
    iterations = DataLoader(TensorDataset(torch.arange(cfg.ppo.iterations)), batch_size=1,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    # weights_only: resuming unpickles tensors, containers and numbers only (unreadable_checkpoint probed it so).
    start = time.perf_counter()
    trainer.fit(module, iterations, ckpt_path=str(resume) if resume else None, weights_only=True)
    evaluation(module, iteration_of(module))  # the final evaluation (done already if a stop ended the run)
    metrics = run_metrics(evaluation.history)  # what the run reached: the same numbers when resumed
    if early is not None:  # the run returns the rule's best evaluation's policy, not its last
        early.observe(module)
        early.restore_best(module)
        metrics.update(early.summary())
    spent = cost(module, time.perf_counter() - start)  # what it cost: a measurement, kept apart
    if not trainer.is_global_zero:
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    if adapter is not None:  # policy/adapter loads with peft, policy/ with plain transformers
        save_adapter_and_merged(adapter, out / "policy", tokenizer)
    else:
        module.policy.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
    pd.DataFrame(evaluation.history).to_csv(out / "eval_history.csv", index=False)
    write_jsonl(out / "samples.jsonl", evaluation.samples_history)
    write_jsonl(out / "final_samples.jsonl", evaluation.last_rows)
    write_json(out / "metrics.json", metrics)
    write_json(out / "run.json", describe_run(cfg))
    write_json(out / "cost.json", spent)
    config_lib.save(cfg, out / "config.yaml")
    (out / "mlflow_run_id").write_text(logger.run_id + "\n")
    for artifact in ("eval_history.csv", "samples.jsonl", "metrics.json", "config.yaml"):
        logger.experiment.log_artifact(logger.run_id, str(out / artifact))
    logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics


def cost(module: OnlinePolicyModule, seconds: float) -> dict:
    """What the run cost (the optimisers' comparison, report §9): its wall time (this process's fit and
    final evaluation), the responses it generated to train on (DPO/IPO: none, they read pairs), the
    models it held (policy, reference, reward members, value model) and its peak resident memory."""
    online = module.cfg.online
    return {"wall_s": seconds, "responses_generated": iteration_of(module) * module.cfg.batch_size if online else 0,
            "models_in_memory": len(module.models()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def describe_run(cfg: Config) -> dict:
    """What a run was, written once beside its results (``run.json``): the report's sections filter
    on these fields rather than re-deriving them from the resolved config."""
    p = cfg.ppo
    return {"setting": p.run_name, "algorithm": p.algorithm, "condition": Path(cfg.paths.reward).name,
            "objective": p.reward_objective, "beta": p.beta, "adaptive": p.adaptive_kl, "seed": p.seed,
            "samples_per_prompt": p.k}  # fmt: skip


def resumable_checkpoint(ckpt_dir: Path, config_text: str) -> Path | None:
    """The checkpoint to resume from: one written under exactly this config that loads. Anything
    else empties the folder for a fresh start; a damaged checkpoint says so in one line."""
    resolved, last = ckpt_dir / "config.yaml", ckpt_dir / "last.ckpt"
    if last.is_file() and resolved.is_file() and resolved.read_text() == config_text:
        why = unreadable_checkpoint(last)
        if why is None:
            return last
        print(f"warning: {last} cannot be read ({why}); this run starts over", file=sys.stderr)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    resolved.write_text(config_text)
    return None


def train_job(job: tuple[Config, Path]) -> dict:
    """:func:`train` as a worker job: (config, output folder); iterated RLHF's rounds with ppo.rounds > 1."""
    if job[0].ppo.rounds > 1:
        return train_rounds(*job, train_one=train)
    return train(*job)


def seed_summary(per_seed: dict[int, dict]) -> dict:
    """Each metric over the seeds: mean with its 95 % interval and n, plus every seed's value. KL cannot
    be negative, and its spread over seeds is wide and skewed: a percentile bootstrap of the mean keeps
    its interval inside the support, where a t interval reached below 0; the rest take Student's t."""
    names = sorted({k for m in per_seed.values() for k, v in m.items() if isinstance(v, (int, float))})
    interval = lambda name: bootstrap_mean_interval if "kl" in name.split("_") else t_interval  # noqa: E731
    metrics = {name: interval(name)([m[name] for m in per_seed.values() if name in m]).to_dict() for name in names}
    metrics["seeds"] = {str(seed): m for seed, m in sorted(per_seed.items())}
    return metrics


def run(cfg: Config, run_name: str | None = None) -> dict:
    """The PPO stage: one setting (``ppo_runs`` entry) under every seed of ``ppo.seeds``, side by side.

    Writes ``paths.ppo``/NAME: ``seeds/seed_<s>/`` (each run's outputs), ``eval_history.csv`` (all
    seeds, with a ``seed`` column), ``metrics.json`` (mean, 95 % CI and n of each metric over the
    seeds, and each seed's), ``config.yaml``.
    """
    if run_name is not None:
        cfg = cfg.ppo_run(run_name)
    cfg = cfg.for_condition()
    name, seeds = cfg.ppo.run_name, cfg.ppo.seeds
    check_inputs(cfg)  # refuse before any folder, worker or MLflow run exists
    preload_tracking()
    workers = parallel.plan(cfg.runtime, len(seeds))
    runtime = {"threads": workers.threads}
    with replacing_dir(Path(cfg.paths.ppo) / name) as out:
        jobs = [(cfg.replace(ppo={"seed": s}, runtime=runtime), out / "seeds" / f"seed_{s}") for s in seeds]
        per_seed = dict(zip(seeds, parallel.run_side_by_side(train_job, jobs, workers)))
        shutil.rmtree(Path(cfg.paths.ppo) / ".checkpoints" / name, ignore_errors=True)  # every seed is done
        histories = [pd.read_csv(out / "seeds" / f"seed_{s}" / "eval_history.csv").assign(seed=s) for s in seeds]
        pd.concat(histories, ignore_index=True).to_csv(out / "eval_history.csv", index=False)
        metrics = seed_summary(per_seed)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
    return metrics


def _config_text(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], options={"--run-name": "a run name from params.yaml's ppo_runs"},
               services=("tracking", "hardware"))


if __name__ == "__main__":
    main()
