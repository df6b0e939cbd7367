"""Typed, frozen configuration loaded from ``params.yaml``.

``params.yaml`` is the single source of truth: one section per stage, each loaded into a frozen
dataclass. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
key (``ppo.beta: expected a number >= 0, got -1``) before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class UserError(Exception):
    """An error caused by the user's input; printed as one line, without a traceback."""


class ConfigError(UserError):
    pass


class _FieldError(Exception):
    """Raised by ``__post_init__`` checks; the loader adds the section name."""

    def __init__(self, name: str, message: str):
        super().__init__(name, message)
        self.name, self.message = name, message


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise _FieldError(name, message)


def seed_list(seeds, name: str) -> tuple[int, ...]:
    """A seeds param as a tuple: a count n means (0, …, n−1); a list must be distinct integers >= 0."""
    if isinstance(seeds, int):
        _check(seeds >= 1, name, "expected a count >= 1 or a list of seeds")
        return tuple(range(seeds))
    _check(len(seeds) >= 1, name, "expected a count >= 1 or a non-empty list of seeds")
    _check(all(s >= 0 for s in seeds), name, "expected seeds >= 0")
    _check(len(set(seeds)) == len(seeds), name, "expected distinct seeds")
    return tuple(seeds)


def _check_dataset(value: Any, name: str) -> None:
    """A dataset param: a path or hub name, or a mapping of path, split and subset (rlhf_lab/data/layouts.py)."""
    if isinstance(value, str):
        _check(bool(value), name, "expected a path or dataset name")
        return
    unknown = sorted(set(value) - {"path", "split", "subset"})
    _check(not unknown, name, "a dataset mapping has the keys path, split and subset only")
    _check(isinstance(value.get("path"), str) and bool(value["path"]), name, "a dataset mapping needs a path")
    for key in ("split", "subset"):
        _check(value.get(key) is None or isinstance(value[key], str), name, f"{key} must be a string")


LORA_KEYS = {"r": int, "alpha": (int, float), "dropout": (int, float), "target_modules": (str, list)}


def _check_lora(value: dict | None, name: str) -> None:
    """LoRA settings (peft): r (rank), alpha, dropout, target_modules ("all-linear" or a list of names)."""
    if value is None:
        return
    unknown = sorted(set(value) - set(LORA_KEYS))
    _check(not unknown, name, f"LoRA keys are {', '.join(LORA_KEYS)}")
    for key, kind in LORA_KEYS.items():
        if key in value:
            _check(isinstance(value[key], kind) and not isinstance(value[key], bool), name, f"{key} has the wrong type")
    _check(value.get("r", 8) >= 1, name, "r must be >= 1")
    _check(0 <= value.get("dropout", 0) < 1, name, "dropout must be in [0, 1)")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    """Where every stage writes; dvc.yaml reads these same keys through ``${paths.*}``."""

    data: str = "data/task"
    sft: str = "models/sft"
    preferences: str = "data/preferences"
    reward: str = "models/reward"
    ppo: str = "runs/ppo"
    best_of_n: str = "runs/best_of_n"
    sweep: str = "runs/sweep"
    report: str = "reports"


@dataclass(frozen=True)
class RuntimeConfig:
    """Hardware and reproducibility settings shared by all training stages."""

    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    accelerator: str = "cpu"  # Lightning accelerator: cpu | gpu | cuda | auto ...
    devices: Any = 1  # Lightning devices: an int, a list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy: auto | ddp | ddp_spawn | fsdp ...
    precision: str = "32-true"  # Lightning precision: 32-true | bf16-mixed | 16-mixed ...
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    # Independent runs (a PPO setting's seeds) done at once in forked workers;
    # 0 = auto: all of them on one CPU device, one at a time on accelerators (rlhf_lab/runtime/parallel.py).
    parallel_runs: int = 0

    def __post_init__(self):
        _check(self.threads >= 0, "threads", "expected an integer >= 0")
        _check(self.parallel_runs >= 0, "parallel_runs", "expected an integer >= 0")
        _check(self.num_nodes >= 1, "num_nodes", "expected an integer >= 1")
        ok = self.devices == "auto" or isinstance(self.devices, (int, list))
        _check(ok, "devices", "expected an integer, a list of device ids or 'auto'")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: embedded SQLite store by default, a server when a URI is given."""

    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "rlhf-lab"


@dataclass(frozen=True)
class TaskConfig:
    """The built-in review task and its gold reward (see README, "The built-in task")."""

    min_clauses: int = 1
    max_clauses: int = 3
    negation_prob: float = 0.2
    intensifier_prob: float = 0.3
    # Gold = sentiment - grammar_weight * invalid_transition_fraction
    #        - repetition_weight * repeated_word_fraction - no_eos_penalty * [no <eos>]
    grammar_weight: float = 2.0
    repetition_weight: float = 1.0
    no_eos_penalty: float = 1.0
    # The gold reward (rlhf_lab/rewards/gold.py): builtin | none | a sequence-classification model (path or
    # hub name) | module:function. None: builtin with the built-in data, none with your own.
    gold: Optional[str] = None
    gold_label: int | str | None = None  # a gold model's logit (index or label name); None: its only one
    gold_batch_size: int = 64
    gold_max_length: int = 512

    def __post_init__(self):
        _check(self.gold_batch_size >= 1, "gold_batch_size", "expected an integer >= 1")
        _check(self.gold_max_length >= 1, "gold_max_length", "expected an integer >= 1")
        _check(self.min_clauses >= 1, "min_clauses", "expected an integer >= 1")
        _check(self.max_clauses >= self.min_clauses, "max_clauses", "expected >= task.min_clauses")
        for name in ("negation_prob", "intensifier_prob"):
            _check(0 <= getattr(self, name) <= 1, name, "expected a probability in [0, 1]")
        for name in ("grammar_weight", "repetition_weight", "no_eos_penalty"):
            _check(getattr(self, name) >= 0, name, "expected a number >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Demonstrations and prompts: the built-in task, or any dataset (rlhf_lab/data/layouts.py)."""

    # "builtin", or a dataset: a .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a hub
    # name, or a mapping {path, split, subset}; any TRL layout with completions.
    source: str | dict = "builtin"
    prompts: str | dict | None = None  # a dataset of prompts; None: data.source's own prompts
    prompt_words: int = 0  # language-modeling (text) rows as prompts: their first N words
    train_samples: int = 20000
    val_samples: int = 1000
    train_prompts: int = 4096
    eval_prompts: int = 256

    def __post_init__(self):
        for name in ("train_samples", "val_samples", "train_prompts", "eval_prompts"):
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.prompt_words >= 0, "prompt_words", "expected an integer >= 0")
        if self.source != "builtin":
            _check_dataset(self.source, "source")
        if self.prompts is not None:
            _check_dataset(self.prompts, "prompts")


@dataclass(frozen=True)
class ModelConfig:
    """The policy: a tiny GPT-2 built from this config, or any HF causal LM by path/name."""

    name_or_path: Optional[str] = None
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 64
    # LoRA (peft) for the policy in SFT and PPO: {r, alpha, dropout, target_modules}; None = full
    # fine-tuning. With LoRA, PPO's reference is the policy with its adapter switched off.
    lora: Optional[dict] = None

    def __post_init__(self):
        _check_lora(self.lora, "lora")
        for name in ("n_layer", "n_embd", "n_head", "n_positions"):
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.n_embd % self.n_head == 0, "n_head", "must divide model.n_embd")


@dataclass(frozen=True)
class SFTConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_length: int = 40
    num_samples: int = 8  # generations logged after every validation

    def __post_init__(self):
        _check(self.epochs >= 1, "epochs", "expected an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", "expected an integer >= 1")
        _check(self.lr > 0, "lr", "expected a number > 0")
        _check(self.max_length >= 4, "max_length", "expected an integer >= 4")


@dataclass(frozen=True)
class PreferencesConfig:
    """Pairs of SFT-policy responses labelled from the gold reward (Bradley–Terry, optional noise)."""

    pairs: int = 4000  # training pairs; over-optimisation depends strongly on this
    eval_pairs: int = 1000  # held-out pairs with noise-free gold labels
    sft_samples: int = 1024  # fresh SFT samples: reward normalisation and proxy-gold correlation
    label_temperature: float = 0.0  # T in P(a > b) = sigmoid((g_a - g_b) / T); 0 = deterministic
    flip_fraction: float = 0.0  # share of training labels flipped at random
    sample_temperature: float = 1.0
    max_new_tokens: int = 24

    def __post_init__(self):
        for name in ("pairs", "eval_pairs", "sft_samples", "max_new_tokens"):
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.label_temperature >= 0, "label_temperature", "expected a number >= 0")
        _check(0 <= self.flip_fraction <= 0.5, "flip_fraction", "expected a fraction in [0, 0.5]")
        _check(self.sample_temperature > 0, "sample_temperature", "expected a number > 0")


@dataclass(frozen=True)
class RewardConfig:
    """Bradley–Terry reward model(s); ``members > 1`` trains a seed ensemble."""

    members: int = 5
    bootstrap: bool = False  # each member trains on a bootstrap resample of the pairs
    backbone: Optional[str] = None  # None: initialise from the SFT model; else any HF model path
    dataset: str | dict | None = None  # preference pairs (any dataset, TRL layout); None: the preference stage's
    lora: Optional[dict] = None  # LoRA (peft) for the reward models: {r, alpha, dropout, target_modules}
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    margin: float = 0.0
    # Regularisers against over-optimisation (issue: remedies): a conservative Bradley–Terry target
    # (the chosen response wins with probability 1 − ε) and Eisenstein et al.'s reward centering η.
    label_smoothing: float = 0.0
    center_coef: float = 0.0
    # Where each member starts (issue: remedies): `sft`, the SFT policy for every member (they differ in
    # head init and data order: fine-tune seeds), or `pretrain-seed`, each member from a backbone of its
    # own, trained from scratch on the demonstrations with another seed (Eisenstein et al. 2023).
    member_init: Literal["sft", "pretrain-seed"] = "sft"
    # WARM (Ramé et al. 2024), saved as <reward>/warm: the weights of `warm_members` fits averaged. Weight
    # averaging needs one initialisation, head included, and the members' heads start apart, so WARM's
    # fits share member 0's head and SFT backbone and differ in data order (member 0 is one of them).
    warm: bool = True
    warm_members: int = 3
    max_length: int = 64
    # Accuracy vs number of pairs: one extra model per count, trained on a subset of the pairs.
    scaling_pairs: tuple[int, ...] = (250, 500, 1000, 2000)

    def __post_init__(self):
        for name in ("members", "epochs", "batch_size", "max_length"):
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.warm_members >= 2 or not self.warm, "warm_members", "expected an integer >= 2 (an average of one fit is that fit)")
        _check(self.lr > 0, "lr", "expected a number > 0")
        _check(self.margin >= 0, "margin", "expected a number >= 0")
        _check(0 <= self.label_smoothing < 0.5, "label_smoothing", "expected a number in [0, 0.5)")
        _check(self.center_coef >= 0, "center_coef", "expected a number >= 0")
        _check(self.member_init == "sft" or self.backbone is None, "member_init",
               "pretrain-seed trains each member's backbone from scratch: reward.backbone must be null")  # fmt: skip
        _check(all(n >= 2 for n in self.scaling_pairs), "scaling_pairs", "expected integers >= 2")
        if self.dataset is not None:
            _check_dataset(self.dataset, "dataset")
        _check_lora(self.lora, "lora")


DEFAULT_K = {"rloo": 4, "grpo": 4}  # Ahmadian et al. 2024 found RLOO k = 4 ahead of PPO
# Keys that belong to some algorithms: setting one on another algorithm's run is an error.
ALGORITHM_KEYS = {"scale_rewards": ("grpo",), "loss_type": ("grpo",), "clip_eps_high": ("grpo",)}


@dataclass(frozen=True)
class PPOConfig:
    """One PPO run (Ziegler et al. 2019; Huang et al. 2024 for the implementation details)."""

    run_name: str = "default"
    seed: int = 0  # added to runtime.seed: repeats of one setting differ only here
    # The seeds a PPO stage runs for its setting (each one a `seed` above): a count n (seeds
    # 0 … n−1) or a list of distinct integers >= 0. Normalised to a tuple.
    seeds: int | tuple[int, ...] = 3
    reward_condition: Optional[str] = None  # an entry of reward_conditions; None = the first
    # The optimiser (rlhf_lab/algorithms): ppo (value model, GAE); rloo and grpo (k responses per
    # prompt, no value model); dpo and ipo (offline, from the condition's preference pairs).
    algorithm: Literal["ppo", "rloo", "grpo", "dpo", "ipo"] = "ppo"
    samples_per_prompt: Optional[int] = None  # k; None = the algorithm's default (ppo 1, rloo/grpo 4)
    # GRPO only (TRL's names; null = TRL's default): advantage scaling, loss aggregation, upper clip ε
    scale_rewards: Optional[Literal["group", "batch", "none"]] = None  # null = group
    loss_type: Optional[Literal["grpo", "bnpo", "dr_grpo", "dapo"]] = None  # null = dapo
    clip_eps_high: Optional[float] = None  # null = clip_eps
    iterations: int = 200  # the cap; with kl_budget a run usually ends earlier
    # Where the policy starts (a saved causal LM); None: paths.sft. The reference is always paths.sft.
    init_policy: Optional[str] = None
    # Iterated RLHF (pipelines/iterated.py): rounds > 1 splits the label budget (preferences.pairs) and the
    # iteration cap equally over the rounds; each later round labels pairs drawn from the last policy.
    rounds: int = 1
    round_pairs: Literal["all", "new"] = "all"  # a round's reward model learns every round's pairs, or its own
    round_reward: Literal["latest", "ensemble"] = "latest"  # the policy optimises the latest RM, or all rounds' (mean)
    round_start: Literal["last", "sft"] = "last"  # a round continues the last round's policy, or restarts from SFT
    # Stop at the first evaluation whose KL to the reference (nats per response) reaches this: runs
    # then end at one distance from SFT, whatever their speed. None: run every iteration.
    kl_budget: Optional[float] = None
    batch_size: int = 64  # prompts (= responses) per iteration, in each data-parallel process
    ppo_epochs: int = 2
    minibatches: int = 2
    # reward
    reward_objective: Literal["single", "mean", "wco", "uwo", "warm"] = "single"
    uwo_lambda: float = 0.5  # mean - lambda * variance across members
    members: Optional[int] = None  # use the first N ensemble members; None = all
    whiten_rewards: bool = False
    # Policy-side reward shaping (rlhf_lab/algorithms/reward_shaping.py): par trains on σ(r − r_ref), r_ref
    # the objective's reward of a reference-policy response to the same prompt (one more sample per prompt).
    reward_shaping: Literal["none", "par"] = "none"
    missing_eos_penalty: Optional[float] = None  # subtracted from the score of unfinished responses
    # KL penalty
    beta: float = 0.02  # initial beta when adaptive
    adaptive_kl: bool = False
    target_kl: float = 6.0  # nats per response, for the adaptive controller
    kl_horizon: int = 10000  # responses
    # losses and optimisation
    clip_eps: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    lr: float = 3.0e-4
    lr_schedule: Literal["constant", "linear"] = "constant"
    max_grad_norm: float = 1.0
    value_model: Literal["separate", "shared"] = "separate"  # separate: init from reward member 0
    compile: bool = False  # torch.compile the update, the frozen rollout passes and the decoding step
    # The attention kernel of the four models and of best-of-n (see rlhf_lab/models/attention.py): auto =
    # bmm on CPU, the models' own (sdpa) on GPUs; or any transformers attn_implementation.
    attention: Literal[
        "auto", "bmm", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"
    ] = "auto"
    # generation
    temperature: float = 1.0
    max_new_tokens: int = 24
    # evaluation and checkpoints
    eval_every: int = 10
    eval_texts: int = 4
    # Gold on the first N evaluation prompts, logged beside the full gold: the small gold budget an
    # early-stopping rule may spend (issue: remedies). Reading it changes nothing in the run.
    gold_probe: int = 32
    # Early stopping online (rlhf_lab/engine/early_stopping.py): end the run by a rule over its own
    # evaluations and return the policy of the rule's best evaluation. proxy: the reward members held out
    # of a single-RM objective (members 1…K−1; no gold read); gold: gold on the gold_probe prompts.
    early_stop: Optional[Literal["proxy", "gold"]] = None
    early_stop_patience: int = 2  # evaluations without improvement before the stop
    checkpoint_every: int = 25

    def __post_init__(self):
        object.__setattr__(self, "seeds", seed_list(self.seeds, "seeds"))
        _check(self.gold_probe >= 0, "gold_probe", "expected an integer >= 0")
        _check(self.early_stop_patience >= 1, "early_stop_patience", "expected an integer >= 1")
        _check(self.rounds >= 1, "rounds", "expected an integer >= 1")
        _check(self.rounds == 1 or self.online, "rounds", f"iterated RLHF samples from the policy: {self.algorithm} is offline")
        _check(self.rounds <= self.iterations, "rounds", f"more rounds than iterations ({self.iterations}) to share")
        for name in ("iterations", "batch_size", "ppo_epochs", "minibatches", "max_new_tokens",
                     "eval_every", "checkpoint_every", "kl_horizon"):  # fmt: skip
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.batch_size % self.minibatches == 0, "minibatches", "must divide ppo.batch_size")
        _check(self.members is None or self.members >= 1, "members", "expected null or an integer >= 1")
        for name in ("beta", "clip_value", "vf_coef", "entropy_coef", "uwo_lambda", "max_grad_norm"):
            _check(getattr(self, name) >= 0, name, "expected a number >= 0")
        _check(0 < self.clip_eps < 1, "clip_eps", "expected a number in (0, 1)")
        _check(self.target_kl > 0, "target_kl", "expected a number > 0")
        _check(self.kl_budget is None or self.kl_budget > 0, "kl_budget", "expected null or a number > 0")
        _check(0 <= self.gamma <= 1, "gamma", "expected a number in [0, 1]")
        _check(0 <= self.lam <= 1, "lam", "expected a number in [0, 1]")
        _check(self.lr > 0, "lr", "expected a number > 0")
        _check(self.temperature > 0, "temperature", "expected a number > 0")
        for name, owners in ALGORITHM_KEYS.items():
            _check(getattr(self, name) is None or self.algorithm in owners, name,
                   f"a key of {' and '.join(owners)}, set on a {self.algorithm} setting")  # fmt: skip
        k = self.k
        if self.algorithm in ("rloo", "grpo"):
            _check(k >= 2, "samples_per_prompt", f"{self.algorithm} needs k >= 2 responses per prompt, got {k}")
        else:
            _check(k == 1, "samples_per_prompt", f"{self.algorithm} samples one response per prompt")
        _check(self.batch_size % k == 0, "batch_size", f"must be a multiple of samples_per_prompt ({k})")
        _check(self.clip_eps_high is None or self.clip_eps_high > 0, "clip_eps_high", "expected null or a number > 0")
        _check(self.algorithm != "ipo" or self.beta > 0, "beta", "IPO's target 1/(2β) needs β > 0")
        _check(self.reward_shaping == "none" or self.online, "reward_shaping",
               f"shapes the reward of sampled responses: {self.algorithm} learns from pairs")  # fmt: skip

    @property
    def k(self) -> int:
        """Responses sampled per prompt: ``samples_per_prompt``, or the algorithm's default."""
        return self.samples_per_prompt or DEFAULT_K.get(self.algorithm, 1)

    @property
    def online(self) -> bool:
        """Does the algorithm sample from the policy as it trains (not dpo/ipo)?"""
        return self.algorithm in ("ppo", "rloo", "grpo")


@dataclass(frozen=True)
class BestOfNConfig:
    """Best-of-n on the SFT policy: N samples per prompt, unbiased estimates for n = 1, 2, 4 ... max_n."""

    prompts: int = 128  # held-out prompts used
    samples_per_prompt: int = 128  # N; the estimator needs N >= max_n
    max_n: int = 64
    uwo_lambda: float = 0.5

    def __post_init__(self):
        for name in ("prompts", "samples_per_prompt", "max_n"):
            _check(getattr(self, name) >= 1, name, "expected an integer >= 1")
        _check(self.samples_per_prompt >= self.max_n, "samples_per_prompt", "must be >= best_of_n.max_n")


@dataclass(frozen=True)
class SweepConfig:
    """Optuna study over the KL coefficient beta (log scale) and the PPO clip epsilon."""

    study_name: str = "ppo-beta-clip"
    storage: Optional[str] = None  # None: sqlite:///<paths.sweep>/optuna.db; or any database URL
    n_trials: int = 6
    objective: Literal["gold", "gold_kl"] = "gold"  # gold: maximise final gold; gold_kl: gold up, KL down
    beta_min: float = 0.003
    beta_max: float = 0.3
    clip_min: float = 0.05
    clip_max: float = 0.4
    iterations: int = 60  # PPO iterations per trial (other PPO keys come from the ppo section)
    seeds: int = 1  # PPO runs per trial (seeds 0 … n−1); the objective is their mean final gold
    pruning: bool = True  # percentile pruner on intermediate gold (single-objective only)
    sampler_seed: int = 0
    heartbeat_interval: int = 10  # seconds; a trial silent for two intervals is failed and retried
    max_retry: int = 2  # retries of a trial whose worker died

    def __post_init__(self):
        _check(self.heartbeat_interval >= 1, "heartbeat_interval", "expected an integer >= 1 (seconds)")
        _check(self.max_retry >= 0, "max_retry", "expected an integer >= 0")
        _check(self.n_trials >= 1, "n_trials", "expected an integer >= 1")
        _check(self.seeds >= 1, "seeds", "expected an integer >= 1")
        _check(0 < self.beta_min < self.beta_max, "beta_max", "expected 0 < sweep.beta_min < sweep.beta_max")
        _check(0 < self.clip_min < self.clip_max < 1, "clip_max", "expected 0 < clip_min < clip_max < 1")
        _check(self.iterations >= 1, "iterations", "expected an integer >= 1")


@dataclass(frozen=True)
class ReportConfig:
    title: str = "rlhf-lab: reward over-optimisation on the built-in task"
    default_run: str = "beta005"  # the run shown in the training table
    hacking_run: str = "beta0"  # the run whose late samples show hacking
    samples: int = 4  # prompts shown in the reward-hacking table
    matched_kl: Optional[float] = None  # KL (nats) of the ensemble comparison; None: median KL of the gold peaks
    # The declared endpoints: gold where each run first reaches these distances d = √KL from SFT.
    d_grid: tuple[float, ...] = (2.0, 3.0, 4.0)
    alpha: float = 0.05  # family-wise error rate of the primary comparisons (Holm)
    overopt_drop: float = 0.2  # a run over-optimised: gold fell this far from its peak while proxy rose
    # Disjoint sets of seeds (e.g. [[0, …, 9], [10, …, 19]]): each primary verdict is also set from each
    # set alone, side by side, to show which replicate. None: no replication table.
    seed_sets: Optional[tuple[tuple[int, ...], ...]] = None
    # Remedies (report section 10). Early stopping is a rule over the β = 0 single-RM runs' own
    # evaluations: stop after `early_stop_patience` evaluations without improvement, return the best;
    # the gold-budget rule reads ppo.gold_probe prompts every `gold_probe_every` evaluations.
    # The rules measured: proxy (held-out members), gold (probe prompts). None: each rule the runs can feed;
    # a rule named here without what it reads is an error.
    early_stop: Optional[tuple[str, ...]] = None
    early_stop_patience: int = 2
    gold_probe_every: int = 1
    # Remedies that are settings of their own: {remedy: {setting: the β = 0 single-RM setting it is
    # compared with}}, e.g. {centering: {centered_beta0: beta0}}. Their runs stay out of sections 1-9.
    remedies: Optional[dict] = None

    def __post_init__(self):
        _check(self.early_stop_patience >= 1, "early_stop_patience", "expected an integer >= 1")
        _check(set(self.early_stop or ()) <= {"proxy", "gold"}, "early_stop", "expected a list of proxy and/or gold")
        _check(self.gold_probe_every >= 1, "gold_probe_every", "expected an integer >= 1")
        ok = self.remedies is None or (isinstance(self.remedies, dict) and all(
            isinstance(pairs, dict) and pairs and all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items())
            for pairs in self.remedies.values()))  # fmt: skip
        _check(ok, "remedies", "expected {remedy: {setting: baseline setting}}")
        _check(len(self.d_grid) >= 1 and all(d > 0 for d in self.d_grid), "d_grid", "expected numbers > 0")
        _check(0 < self.alpha < 1, "alpha", "expected a number in (0, 1)")
        _check(self.overopt_drop > 0, "overopt_drop", "expected a number > 0")
        sets = self.seed_sets or ()
        _check(all(len(one) >= 2 for one in sets), "seed_sets", "expected lists of at least two seeds")
        _check(sum(len(one) for one in sets) == len({s for one in sets for s in one}), "seed_sets",
               "the sets must be disjoint")  # fmt: skip


CONDITION_SECTIONS = ("preferences", "reward")  # the sections a reward condition may override

SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "runtime": RuntimeConfig,
    "tracking": TrackingConfig,
    "task": TaskConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "sft": SFTConfig,
    "preferences": PreferencesConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "best_of_n": BestOfNConfig,
    "sweep": SweepConfig,
    "report": ReportConfig,
}


@dataclass(frozen=True)
class Config:
    """All sections of params.yaml. Sections missing from the file take their defaults."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    preferences: PreferencesConfig = field(default_factory=PreferencesConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    best_of_n: BestOfNConfig = field(default_factory=BestOfNConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Named PPO settings for dvc.yaml's foreach: name -> overrides of the ``ppo`` section.
    ppo_runs: dict = field(default_factory=dict)
    # Reward-model conditions for dvc.yaml's foreach: name -> {"preferences": {...}, "reward": {...}}
    # overrides; each condition labels its own pairs and trains its own ensemble (for_condition).
    reward_conditions: dict = field(default_factory=lambda: {"clean": {}})

    def for_condition(self, name: str | None = None) -> "Config":
        """This config as one reward condition sees it: its overrides applied to the preferences
        and reward sections, and ``paths.preferences`` / ``paths.reward`` pointing at its own
        ``<path>/<name>`` folders. ``None`` is ``ppo.reward_condition``, else the first condition."""
        name = name or self.ppo.reward_condition or next(iter(self.reward_conditions))
        if name not in self.reward_conditions:
            defined = ", ".join(self.reward_conditions) or "none"
            raise ConfigError(f"reward_conditions.{name}: no such condition; defined conditions: {defined}")
        data = self.to_dict()
        overrides = self.reward_conditions[name]
        sections = {}
        for section in CONDITION_SECTIONS:
            where = f"reward_conditions.{name}.{section}"
            sections[section] = section_from_dict(SECTIONS[section], {**data[section], **overrides.get(section, {})}, where)
        paths = dataclasses.replace(
            self.paths, preferences=str(Path(self.paths.preferences) / name), reward=str(Path(self.paths.reward) / name)
        )
        return dataclasses.replace(self, paths=paths, **sections)

    def ppo_run(self, name: str) -> "Config":
        """This config with ``ppo_runs[name]`` applied to the ``ppo`` section and run_name set."""
        if name not in self.ppo_runs:
            raise ConfigError(f"ppo_runs.{name}: no such run; defined runs: {', '.join(self.ppo_runs) or 'none'}")
        overrides = {**self.ppo_runs[name], "run_name": name}
        ppo = section_from_dict(PPOConfig, {**self.to_dict()["ppo"], **overrides}, f"ppo_runs.{name}")
        # Only its own entry stays: the other settings' overrides were written for the ppo section,
        # not on top of this one (a beta: 0 entry on an IPO setting would be invalid). The report's
        # remedies name other settings: a run does not read them.
        report = dataclasses.replace(self.report, remedies=None)
        return dataclasses.replace(self, ppo=ppo, ppo_runs={name: self.ppo_runs[name]}, report=report)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides: dict) -> "Config":
        """A copy with some keys of some sections changed: ``cfg.replace(ppo={"beta": 0.1})``."""
        data = self.to_dict()
        for section, values in overrides.items():
            if section in NAMED_ENTRIES:
                data[section] = values
            else:
                data[section].update(values)
        # A derived config (one condition's or one setting's view) is not checked across settings: its
        # sections already carry one condition's overrides, so the other settings' conditions would not resolve.
        return from_dict(data, across_settings=False)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ValueError. Strict: no bool for int, no str for int."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg)
            except ValueError:
                pass
        raise ValueError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError
        (inner, *_) = typing.get_args(tp)
        return tuple(_coerce(v, inner) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "3e-4" (no dot) as a string: accept it, it is unambiguous.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ValueError from None
            if math.isfinite(number):
                return number
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError
    raise TypeError(f"unsupported config type {tp}")


def section_from_dict(cls: type, data: Any, section: str):
    """Build the dataclass ``cls`` from a mapping, naming ``section.key`` in every error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}: unknown key; allowed keys are: {', '.join(names)}"
        )
    values = {}
    for name, value in data.items():
        try:
            values[name] = _coerce(value, hints[name])
        except ValueError:
            raise ConfigError(
                f"{section}.{name}: expected {_describe(hints[name])}, got {value!r}"
            ) from None
    try:
        return cls(**values)
    except _FieldError as err:
        got = values.get(err.name, getattr(cls, err.name, None))
        raise ConfigError(f"{section}.{err.name}: {err.message}, got {got!r}") from None


NAMED_ENTRIES = ("ppo_runs", "reward_conditions")  # top-level mappings of named overrides


def from_dict(data: Any, across_settings: bool = True) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("params.yaml: expected a mapping of sections at the top level")
    unknown = sorted(set(data) - set(SECTIONS) - set(NAMED_ENTRIES))
    if unknown:
        allowed = ", ".join([*SECTIONS, *NAMED_ENTRIES])
        raise ConfigError(f"{unknown[0]}: unknown section; allowed sections are: {allowed}")
    cfg = Config(**{s: section_from_dict(cls, data.get(s), s) for s, cls in SECTIONS.items()})
    runs = data.get("ppo_runs") or {}
    if not isinstance(runs, dict) or not all(isinstance(v, dict) for v in runs.values()):
        raise ConfigError("ppo_runs: expected a mapping of run name -> mapping of ppo keys")
    given = data.get("reward_conditions", {"clean": {}})
    if not isinstance(given, dict) or not given:
        raise ConfigError("reward_conditions: expected a non-empty mapping of condition name -> overrides")
    conditions = {}
    for name, overrides in given.items():
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise ConfigError(f"reward_conditions.{name}: expected a mapping of section -> mapping of keys")
        unknown = sorted(set(overrides) - set(CONDITION_SECTIONS))
        if unknown:
            raise ConfigError(f"reward_conditions.{name}.{unknown[0]}: unknown section; a condition overrides "
                              f"{' and '.join(CONDITION_SECTIONS)}")  # fmt: skip
        conditions[str(name)] = overrides
    cfg = dataclasses.replace(cfg, ppo_runs={str(k): dict(v) for k, v in runs.items()},
                              reward_conditions=conditions)  # fmt: skip
    for name in cfg.reward_conditions:
        cfg.for_condition(name)  # validate every condition's overrides now
    for name in [None, *cfg.ppo_runs]:  # validate every run's overrides and its reward condition
        run = cfg.ppo_run(name) if name else cfg
        if run.ppo.reward_condition is not None and run.ppo.reward_condition not in cfg.reward_conditions:
            where = f"ppo_runs.{name}" if name else "ppo"
            raise ConfigError(f"{where}.reward_condition: {run.ppo.reward_condition!r} is not one of "
                              f"reward_conditions: {', '.join(cfg.reward_conditions)}")  # fmt: skip
    if across_settings:
        check_across_settings(cfg)
    return cfg


def check_across_settings(cfg: Config) -> None:
    """The checks that read several settings or conditions at once: iterated RLHF's label budget and
    gold, WARM's members, the early-stopping rules' inputs, the remedies' settings."""
    for name in [None, *cfg.ppo_runs]:  # iterated RLHF labels its later rounds' pairs with gold
        run = cfg.ppo_run(name) if name else cfg
        if run.ppo.rounds > 1:
            where = f"ppo_runs.{name}" if name else "ppo"
            condition = cfg.for_condition(run.ppo.reward_condition)
            if condition.reward.dataset is not None or condition.task.gold == "none":
                raise ConfigError(f"{where}.rounds: iterated RLHF labels new pairs with the gold reward; its "
                                  "condition has none (reward.dataset or task.gold: none)")  # fmt: skip
            if condition.preferences.pairs < run.ppo.rounds:
                raise ConfigError(f"{where}.rounds: {run.ppo.rounds} rounds share a label budget of "
                                  f"preferences.pairs = {condition.preferences.pairs}: fewer labels than rounds")  # fmt: skip
            if cfg.model.lora and run.ppo.round_start == "last":
                raise ConfigError(f"{where}.round_start: last continues a saved policy, and with model.lora the "
                                  "reference would be that policy with its adapter off; use round_start: sft")  # fmt: skip
    for name in [None, *cfg.ppo_runs]:  # the reward stage saves WARM only where reward.warm is on
        run = cfg.ppo_run(name) if name else cfg
        if run.ppo.reward_objective == "warm":
            where = f"ppo_runs.{name}" if name else "ppo"
            if not cfg.for_condition(run.ppo.reward_condition).reward.warm:
                raise ConfigError(f"{where}.reward_objective: warm needs its condition's reward.warm: true "
                                  "(the reward stage then saves the weight average)")  # fmt: skip
    # An early-stopping rule needs what it reads: held-out reward members, or gold on probe prompts.
    for name in [None, *cfg.ppo_runs]:
        run = cfg.ppo_run(name) if name else cfg
        where = f"ppo_runs.{name}.early_stop" if name else "ppo.early_stop"
        members = run.ppo.members or cfg.for_condition(run.ppo.reward_condition).reward.members
        if run.ppo.early_stop == "proxy" and (run.ppo.reward_objective != "single" or members < 2):
            raise ConfigError(f"{where}: proxy reads the reward members held out of the objective, and "
                              + (f"the {run.ppo.reward_objective} objective reads every member"
                                 if run.ppo.reward_objective != "single" else f"the run has {members} member")
                              + "; use gold, or a single-RM objective with at least 2 members")  # fmt: skip
        if run.ppo.early_stop == "gold" and (run.ppo.gold_probe == 0 or cfg.task.gold == "none"):
            raise ConfigError(f"{where}: gold reads gold on ppo.gold_probe prompts, and "
                              + ("ppo.gold_probe is 0" if run.ppo.gold_probe == 0 else "task.gold is none"))  # fmt: skip
    if "proxy" in (cfg.report.early_stop or ()):
        for name in cfg.reward_conditions:
            if cfg.for_condition(name).reward.members < 2:
                raise ConfigError(f"report.early_stop: proxy reads the reward members held out of the training "
                                  f"objective, and reward_conditions.{name} trains reward.members = 1; drop proxy "
                                  "or train at least 2")  # fmt: skip
    if "gold" in (cfg.report.early_stop or ()) and (cfg.ppo.gold_probe == 0 or cfg.task.gold == "none"):
        raise ConfigError("report.early_stop: gold reads gold on ppo.gold_probe prompts, and "
                          + ("ppo.gold_probe is 0" if cfg.ppo.gold_probe == 0 else "task.gold is none")
                          + "; drop gold or give it a probe")  # fmt: skip
    for remedy, pairs in (cfg.report.remedies or {}).items():
        if remedy in ("early_stop_proxy", "early_stop_gold"):
            raise ConfigError(f"report.remedies.{remedy}: the name of the report's own early-stopping rule over the "
                              "β = 0 runs; name a setting run with ppo.early_stop otherwise, e.g. early_stop_online")  # fmt: skip
        for setting, baseline in pairs.items():
            for name in (setting, baseline):
                if name not in cfg.ppo_runs:
                    raise ConfigError(f"report.remedies.{remedy}: {name!r} is not a setting of ppo_runs")
            if cfg.ppo_run(baseline).ppo.beta != 0 or cfg.ppo_run(baseline).ppo.reward_objective != "single":
                raise ConfigError(f"report.remedies.{remedy}.{setting}: its baseline {baseline!r} must be a "
                                  "β = 0 single-RM setting")  # fmt: skip


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate ``params.yaml``; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save(config: Config, path: str | Path) -> None:
    """Write the resolved config (defaults filled in) next to a stage's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(config.to_dict()))  # tuples -> lists for safe_dump
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
