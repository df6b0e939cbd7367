"""Sweep stage and CLI: an Optuna study of the KL coefficient β (log scale) and the PPO clip ε.

Each trial is ``sweep.seeds`` PPO runs (``ppo`` section, ``sweep.iterations`` iterations). The
objective is their mean final gold (``sweep.objective: gold``; its standard error over seeds is the
trial's ``gold_final_se`` user attribute), or gold ↑ and KL ↓ together (``gold_kl``, a Pareto
front). Poor trials are pruned from their intermediate gold scores (median pruner). Every trial
is an MLflow run nested under the study's run.

Storage: ``sqlite:///<paths.sweep>/optuna.db`` by default (``<paths.sweep>.live/`` while the sweep
runs: an interrupted sweep keeps its finished trials and a rerun continues the study to
``sweep.n_trials``); ``sweep.storage`` (or ``--storage``) takes any database URL Optuna accepts, so
several workers on several machines share one study. Optuna's heartbeat marks a trial whose worker
died as failed, and it is retried with its parameters (``sweep.heartbeat_interval``, ``max_retry``)::

    python -m pipelines.sweep --storage postgresql+psycopg2://user:pw@host/db --n-trials 10   # on each worker

Outputs (``paths.sweep``): ``trials.csv``, ``metrics.json`` (best β and ε, n_trials), ``config.yaml``,
``optuna.db`` (default storage), ``trials/`` (each trial's PPO outputs).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from lightning.pytorch.callbacks import Callback

from rlhf_lab import config as config_lib
from rlhf_lab.config import Config
from rlhf_lab.data.files import write_json
from rlhf_lab.engine.evaluation import Evaluation
from rlhf_lab.rewards.gold import gold_kind
from rlhf_lab.runtime.stage import create_parent_run, replacing_dir, stage_main, tracking_uri


class GoldPruning(Callback):
    """Reports each new evaluation's gold score to the trial and prunes it when Optuna says so.

    (optuna-integration's PyTorchLightningPruningCallback reports at validation end per epoch; PPO
    evaluates inside its training loop every ``eval_every`` iterations, so this reads the history of
    the run's :class:`~rlhf_lab.engine.evaluation.Evaluation` callback.)
    """

    def __init__(self, trial: optuna.Trial):
        self.trial, self.reported = trial, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        history = next(c for c in trainer.callbacks if isinstance(c, Evaluation)).history
        while self.reported < len(history):
            row = history[self.reported]
            self.reported += 1
            self.trial.report(row["gold"], step=row["step"])
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"gold {row['gold']:.3f} at iteration {row['step']}")


METRIC_NAMES = {"gold": ["gold_final"], "gold_kl": ["gold_final", "kl_final"]}


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir / 'optuna.db'}"


def live_dir(cfg: Config) -> Path:
    """Where the study and its trials live until the sweep has finished: ``<paths.sweep>.live``."""
    path = Path(cfg.paths.sweep)
    live = path.with_name(path.name + ".live")
    live.mkdir(parents=True, exist_ok=True)
    return live


def finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=FINISHED)


def _study_config(cfg: Config) -> str:
    """What makes trials comparable: every section but the sweep's trial count and the report."""
    data = cfg.to_dict()
    data["sweep"] = {k: v for k, v in data["sweep"].items() if k != "n_trials"}
    for key in ("report", "ppo_runs"):
        data.pop(key)
    return json.dumps(data, sort_keys=True)


def forget_another_configs_study(live: Path, url: str, study_name: str, config: str) -> None:
    """A leftover local study from an interrupted sweep under other params is not continued."""
    if not (live / "optuna.db").is_file():
        return
    try:
        old = optuna.load_study(study_name=study_name, storage=url)
        same = old.user_attrs.get("config") == config
    except KeyError:  # no such study in the file
        same = False
    if not same:
        (live / "optuna.db").unlink()
        shutil.rmtree(live / "trials", ignore_errors=True)


def heartbeat_storage(cfg: Config, url: str) -> optuna.storages.RDBStorage:
    """The study's storage with Optuna's heartbeat: a trial whose worker died (no heartbeat for two
    intervals) is marked FAIL by the next trial to start, and retried with the same parameters."""
    s = cfg.sweep
    with warnings.catch_warnings():  # heartbeat and retry: "experimental" since 2.8, and what we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=s.max_retry)

    def stale_trial(study: optuna.Study, trial) -> None:
        retry(study, trial)
        close_trial_runs(cfg, study, trial.number)

    # SQLite: a writer waits up to 30 s for another's lock (the heartbeat thread, a dashboard, a
    # second worker) instead of failing the trial with "database is locked" after Python's 5 s.
    engine = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=s.heartbeat_interval,
                                          grace_period=2 * s.heartbeat_interval,
                                          heartbeat_stale_trial_callback=stale_trial)  # fmt: skip


def close_trial_runs(cfg: Config, study: optuna.Study, number: int) -> None:
    """The MLflow runs a dead worker left RUNNING for trial ``number``: KILLED."""
    from mlflow import MlflowClient

    parent = study.user_attrs.get("mlflow_run_id")
    client = MlflowClient(tracking_uri(cfg.tracking))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if parent is None or experiment is None:
        return
    query = f"tags.optuna_trial = '{number}' and tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment.experiment_id], query):
        client.set_terminated(run.info.run_id, "KILLED")


def make_study(cfg: Config, url: str, study_name: str, attempts: int = 5) -> optuna.Study:
    """Create or join the study (with the heartbeat storage). Workers starting together on an empty
    database race to create Optuna's tables (one gets a duplicate-object error): the loser waits and joins."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return _create_or_load(cfg, heartbeat_storage(cfg, url), study_name)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _create_or_load(cfg: Config, storage, study_name: str) -> optuna.Study:
    s = cfg.sweep
    sampler = optuna.samplers.TPESampler(seed=s.sampler_seed)
    if s.objective == "gold":
        # Early gold says little about final gold (over-optimisation comes late): judge from halfway,
        # and prune only the bottom quartile so a few lucky early trials don't cut everything else.
        # (Optuna's percentile is the share kept: 75 prunes the bottom quarter.)
        pruner = optuna.pruners.PercentilePruner(75.0, n_startup_trials=3, n_warmup_steps=s.iterations // 2)
        pruner = pruner if s.pruning else optuna.pruners.NopPruner()
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)  # fmt: skip
    else:
        # Multi-objective studies cannot prune (Trial.report raises): pruning is off here.
        study = optuna.create_study(study_name=study_name, storage=storage, directions=["maximize", "minimize"],
                                    sampler=sampler, load_if_exists=True)  # fmt: skip
    # Named objectives: optuna-dashboard shows "gold_final" (and "kl_final"), not "Objective 0".
    with warnings.catch_warnings():  # "experimental since 3.2": stable in practice, and known here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRIC_NAMES[s.objective])
    return study


def parent_run(cfg: Config, study: optuna.Study) -> str:
    """The study's MLflow run, shared by all workers through a study attribute."""
    run_id = study.user_attrs.get("mlflow_run_id")
    if run_id:
        return run_id
    run_id = create_parent_run(cfg, f"sweep-{study.study_name}", "sweep")
    study.set_user_attr("mlflow_run_id", run_id)
    return run_id


def objective_fn(cfg: Config, trials_dir: Path, parent: str):
    from pipelines import ppo

    s = cfg.sweep

    def objective(trial: optuna.Trial):
        beta = trial.suggest_float("beta", s.beta_min, s.beta_max, log=True)
        clip_eps = trial.suggest_float("clip_eps", s.clip_min, s.clip_max)
        trial_cfg = cfg.replace(
            paths={"ppo": str(trials_dir)},
            ppo={"beta": beta, "clip_eps": clip_eps, "iterations": s.iterations, "run_name": f"trial_{trial.number}",
                 "adaptive_kl": False, "checkpoint_every": s.iterations},
        ).for_condition()  # fmt: skip
        tags = {"mlflow.parentRunId": parent, "optuna_trial": str(trial.number)}
        finals = []
        for seed in range(s.seeds):
            # Pruning reads the first seed's intermediate gold: the later seeds only run for trials it keeps.
            callbacks = [GoldPruning(trial)] if s.objective == "gold" and s.pruning and seed == 0 else []
            out = trials_dir / f"trial_{trial.number}" / f"seed_{seed}"
            finals.append(ppo.train(trial_cfg.replace(ppo={"seed": seed}), out, callbacks=callbacks, tags=tags))
        # The policy a run leaves you: its last, or with ppo.early_stop the rule's best evaluation's.
        gold, kl = (np.array([m.get(f"{key}_returned", m[f"{key}_final"]) for m in finals]) for key in ("gold", "kl"))
        # Standard error of the mean over seeds (NaN with one seed): how far apart trials must be to differ.
        se = float(gold.std(ddof=1) / np.sqrt(len(gold))) if len(gold) > 1 else float("nan")
        trial.set_user_attr("gold_final_se", se)
        trial.set_user_attr("seeds", len(gold))
        trial.set_user_attr("kl_final", float(kl.mean()))
        trial.set_user_attr("gold_peak", float(np.mean([m["gold_peak"] for m in finals])))
        if s.objective == "gold":
            return float(gold.mean())
        return float(gold.mean()), float(kl.mean())

    return objective


def summarise(study: optuna.Study, objective: str) -> tuple[dict, "object"]:
    frame = study.trials_dataframe()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    metrics = {
        "sweep.n_trials": len(study.trials),
        "sweep.n_complete": len(complete),
        "sweep.n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }
    if not complete:
        return metrics, frame
    if objective == "gold":
        best = study.best_trial
        metrics["sweep.best.gold"] = best.value
    else:  # the Pareto trial with the highest gold
        best = max(study.best_trials, key=lambda t: t.values[0])
        metrics["sweep.best.gold"] = best.values[0]
        metrics["sweep.pareto_size"] = len(study.best_trials)
        frame["pareto"] = frame["number"].isin([t.number for t in study.best_trials])
    metrics["sweep.best.beta"] = best.params["beta"]
    metrics["sweep.best.clip_eps"] = best.params["clip_eps"]
    metrics["sweep.best.trial"] = best.number
    return metrics, frame


def run(cfg: Config, n_trials: str | None = None, storage: str | None = None, study_name: str | None = None) -> dict:
    if gold_kind(cfg) == "none":  # the objective is gold: nothing to optimise, say so and go on
        with replacing_dir(cfg.paths.sweep) as out:
            pd.DataFrame(columns=["number", "state"]).to_csv(out / "trials.csv", index=False)
            metrics = {"sweep.n_trials": 0, "sweep.skipped": "no gold reward (task.gold: none)"}
            write_json(out / "metrics.json", metrics)
            config_lib.save(cfg, out / "config.yaml")
        return metrics
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = cfg.sweep
    study_name = study_name or s.study_name
    # The study and the trials' outputs live beside the output folder while the sweep runs, so an
    # interrupted sweep keeps its finished trials and a rerun continues it; they move in at the end.
    live = live_dir(cfg)
    url = storage or s.storage or default_storage(live)
    if url == default_storage(live):
        forget_another_configs_study(live, url, study_name, _study_config(cfg))
    study = make_study(cfg, url, study_name)
    study.set_user_attr("config", _study_config(cfg))
    parent = parent_run(cfg, study)
    objective = objective_fn(cfg, live / "trials", parent)
    if n_trials is not None:  # one worker of several: its own count
        study.optimize(objective, n_trials=int(n_trials), catch=())
    else:  # the study's count: finished trials are kept, the rest run (and retried ones again)
        remaining = s.n_trials - len(finished(study))
        if remaining > 0:
            study.optimize(objective, catch=(), callbacks=[optuna.study.MaxTrialsCallback(s.n_trials, states=FINISHED)])
    with replacing_dir(cfg.paths.sweep) as out:
        shutil.rmtree(live / "trials" / ".checkpoints", ignore_errors=True)
        metrics, frame = summarise(study, s.objective)
        frame.to_csv(out / "trials.csv", index=False)
        final_url = default_storage(Path(cfg.paths.sweep)) if url == default_storage(live) else url
        metrics["sweep.storage"] = final_url
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
        for name in ("optuna.db", "trials"):
            if (live / name).exists():
                (live / name).rename(out / name)
    shutil.rmtree(live, ignore_errors=True)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(cfg.tracking))
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            client.log_metric(parent, key, value)
    client.log_artifact(parent, str(Path(cfg.paths.sweep) / "trials.csv"))
    client.set_terminated(parent)
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], options={
        "--n-trials": "trials for this worker (default: sweep.n_trials)",
        "--storage": "Optuna storage URL shared by workers (default: sweep.storage, else SQLite)",
        "--study-name": "study name (default: sweep.study_name)",
    }, services=("tracking", "hardware", "storage"))  # fmt: skip


if __name__ == "__main__":
    main()
