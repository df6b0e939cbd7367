"""Optuna sweep (pruning, shared storage across worker processes), best-of-n and report stages."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from pipelines.sweep import GoldPruning
from rlhf_lab import config as config_lib
from rlhf_lab.data.files import read_jsonl
from rlhf_lab.engine.evaluation import Evaluation
from rlhf_lab.rewards.reward_model import score_samples

ROOT = Path(__file__).resolve().parents[1]


def test_gold_pruning_prunes_a_trial_below_the_median():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for final in (0.8, 0.9):  # two finished trials with good intermediate gold
        trial = study.ask()
        trial.report(final, step=10)
        study.tell(trial, final)
    trial = study.ask()
    callback = GoldPruning(trial)
    evaluation = Evaluation.__new__(Evaluation)  # only its history is read
    evaluation.history = [{"step": 0, "gold": 0.5}]
    trainer = SimpleNamespace(callbacks=[callback, evaluation])
    with pytest.raises(optuna.TrialPruned):
        evaluation.history.append({"step": 10, "gold": 0.1})
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert callback.reported == 2


NOISY = {"preferences": {"flip_fraction": 0.25}, "reward": {"bootstrap": True, "scaling_pairs": []}}


@pytest.fixture(scope="module")
def experiment_cfg(tiny_cfg, reward_stage):
    return tiny_cfg.replace(
        ppo={"iterations": 4, "batch_size": 16, "eval_every": 2, "max_new_tokens": 16, "seeds": 2},
        ppo_runs={"beta0": {"beta": 0.0}, "beta01": {"beta": 0.1}, "beta0_wco": {"beta": 0.0, "reward_objective": "wco"},
                  "noisy_beta0": {"beta": 0.0, "reward_condition": "noisy"},
                  "noisy_beta0_wco": {"beta": 0.0, "reward_objective": "wco", "reward_condition": "noisy"},
                  # the other optimisers, on the same gold (section 9, the frontier)
                  "rloo0": {"algorithm": "rloo", "beta": 0.0}, "grpo0": {"algorithm": "grpo", "beta": 0.0},
                  "dpo01": {"algorithm": "dpo", "beta": 0.1}, "ipo05": {"algorithm": "ipo", "beta": 0.5}},
        reward_conditions={"clean": {}, "noisy": NOISY},
        best_of_n={"prompts": 8, "samples_per_prompt": 16, "max_n": 8},
        sweep={"n_trials": 3, "iterations": 4, "seeds": 2},
        report={"default_run": "beta01", "hacking_run": "beta0", "samples": 2},
    )


@pytest.fixture(scope="module")
def experiment(experiment_cfg):
    from pipelines import best_of_n, ppo, preferences, report, reward, sweep

    preferences.run(experiment_cfg, condition="noisy")  # the clean condition is the session's reward_stage
    reward.run(experiment_cfg, condition="noisy")
    for name in experiment_cfg.ppo_runs:
        ppo.run(experiment_cfg, run_name=name)
    bon = best_of_n.run(experiment_cfg)
    sweep_metrics = sweep.run(experiment_cfg)
    return bon, sweep_metrics, report.run(experiment_cfg)


def test_best_of_n_stage(experiment_cfg, experiment):
    bon = pd.read_csv(Path(experiment_cfg.paths.best_of_n) / "bon.csv")
    assert sorted(bon["n"].unique()) == [1, 2, 4, 8]
    assert set(bon["objective"]) == {"single", "mean", "wco", "uwo", "warm", "oracle"}  # warm: reward.warm's average
    assert set(bon["condition"]) == {"clean", "noisy"}
    for _, rows in bon.groupby("condition"):
        oracle = rows[rows["objective"] == "oracle"].set_index("n")["gold"]
        assert oracle.is_monotonic_increasing  # best-of-n by gold itself can only improve gold
    assert (bon["kl_exact"] <= bon["kl_bound"] + 1e-9).all()
    assert (bon["gold_ci_low"] <= bon["gold"]).all() and (bon["gold"] <= bon["gold_ci_high"]).all()
    # The same samples, different rankers: n = 1 (no choice) has the same gold under every objective.
    first = bon[bon["n"] == 1]["gold"]
    assert first.max() - first.min() < 1e-9


def test_sweep_stage(experiment_cfg, experiment):
    _, metrics, _ = experiment
    assert metrics["sweep.n_trials"] == 3
    trials = pd.read_csv(Path(experiment_cfg.paths.sweep) / "trials.csv")
    assert len(trials) == 3
    assert trials["params_beta"].between(experiment_cfg.sweep.beta_min, experiment_cfg.sweep.beta_max).all()
    study = optuna.load_study(study_name=experiment_cfg.sweep.study_name, storage=metrics["sweep.storage"])
    assert len(study.trials) == 3
    assert study.metric_names == ["gold_final"]  # what optuna-dashboard labels the objective
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:  # the objective is the mean over sweep.seeds
            finals = [json.loads((Path(experiment_cfg.paths.sweep) / "trials" / f"trial_{trial.number}" / f"seed_{s}"
                                  / "metrics.json").read_text())["gold_final"] for s in (0, 1)]  # fmt: skip
            assert trial.value == pytest.approx(sum(finals) / 2)
            assert trial.user_attrs["gold_final_se"] == pytest.approx(abs(finals[0] - finals[1]) / 2)
    import mlflow

    mlflow.set_tracking_uri(experiment_cfg.tracking.tracking_uri)
    nested = mlflow.search_runs(experiment_names=[experiment_cfg.tracking.experiment], output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{study.user_attrs['mlflow_run_id']}'")
    assert len(nested) == 6  # every trial's seeds are runs nested under the study's run


def test_report_stage(experiment_cfg, experiment):
    *_, metrics = experiment
    out = Path(experiment_cfg.paths.report)
    for key in ("overopt.rl.alpha", "overopt.rl.beta", "overopt.rl.r2", "overopt.rl.n_seeds", "overopt.rl.alpha_ci",
                "overopt.rl.beta_ci", "overopt.bon.alpha", "overopt.bon.beta", "overopt.bon.r2",
                "ensemble.single.gold_drop", "ensemble.wco.gold_drop", "sweep.best.beta", "sweep.best.clip_eps",
                "sweep.n_trials"):  # fmt: skip
        assert key in metrics, key
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sweep.n_trials"] == 3
    assert saved["overopt.rl.n_seeds"] == 2 and len(saved["overopt.rl.alpha_ci"]) == 2
    # The report's numbers are the runs' numbers: the mean over seeds and its Student t interval.
    runs = Path(experiment_cfg.paths.ppo)
    for condition, prefix in (("clean", ""), ("noisy", "noisy_")):
        drops = {}
        for objective, setting in (("single", f"{prefix}beta0"), ("wco", f"{prefix}beta0_wco")):
            seeds = [json.loads((runs / setting / "seeds" / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1)]
            drops[objective] = [m["gold_peak"] - m["gold_final"] for m in seeds]
            key = f"ensemble.{condition}.{objective}.gold_drop"
            assert saved[f"{key}.n"] == 2
            assert saved[f"{key}.mean"] == pytest.approx(sum(drops[objective]) / 2)
        diff = saved[f"ensemble.{condition}.wco.vs_single.diff"]
        assert diff == pytest.approx(sum(drops["wco"]) / 2 - sum(drops["single"]) / 2)
        assert saved[f"ensemble.{condition}.wco.vs_single.ci_low"] <= diff <= saved[f"ensemble.{condition}.wco.vs_single.ci_high"]
        assert 0 <= saved[f"ensemble.{condition}.wco.vs_single.p"] <= 1
        assert f"ensemble.{condition}.single.vs_single.diff" not in saved
    assert saved["ensemble.single.gold_drop"] == saved["ensemble.clean.single.gold_drop.mean"]
    # The primary endpoint: gold peak, each ensemble objective against the single RM, Holm over the family.
    for condition, prefix in (("clean", ""), ("noisy", "noisy_")):
        peaks = {objective: [json.loads((runs / setting / "seeds" / f"seed_{s}" / "metrics.json").read_text())["gold_peak"]
                             for s in (0, 1)] for objective, setting in (("single", f"{prefix}beta0"), ("wco", f"{prefix}beta0_wco"))}
        assert saved[f"ensemble.{condition}.wco.gold_peak.mean"] == pytest.approx(sum(peaks["wco"]) / 2)
        key = f"ensemble.{condition}.wco.gold_peak_vs_single"
        assert saved[f"{key}.diff"] == pytest.approx((sum(peaks["wco"]) - sum(peaks["single"])) / 2)
        assert saved[f"{key}.p"] <= saved[f"{key}.p_holm"] <= 1 and isinstance(saved[f"{key}.robust"], bool)
        assert f"power.ensemble.{condition}.wco.mde" in saved and f"power.ensemble.{condition}.wco.seeds_needed" in saved
    # 2 ensemble comparisons, 1 β, 2 × 3 best-of-n objectives (paired over prompts)
    assert saved["primary.family_size"] == 9
    assert saved["overopt.rl.seeds"] == 2 and 0 <= saved["overopt.rl.seeds_overoptimised"] <= 2
    for key in ("overopt.rl.per_seed_peak_in_range", "overopt.rl.r2_per_seed_min", "overopt.rl.r2_mean_curve"):
        assert key in saved, key
    for beta in ("0", "0.1"):
        assert saved[f"beta.{beta}.gold_final.n"] == 2
        assert saved[f"beta.{beta}.gold_final.ci_low"] <= saved[f"beta.{beta}.gold_final.mean"]
    page = (out / "report.html").read_text()
    for heading in ("1. Over-optimisation", "2. Reward-model ensembles", "3. β ablation", "4. Training table",
                    "5. Reward hacking", "6. Reward-model quality", "7. Optuna study", "Design and statistics.",
                    "<h2>Summary</h2>", "Holm p", "9 primary comparisons, Holm at 0.05", "Seeds that over-optimised",
                    "Wilson", "<h2>Every primary comparison</h2>",
                    "importances are not shown: 3 complete trials", "The best trial ("):
        assert heading in page, heading
    assert page.count("data:image/png;base64,") == 7 and "http" not in page.split("<body>")[1].split("Optuna")[0]
    assert page.index("<h2>Summary</h2>") < page.index("Design and statistics")  # the answers come first
    text = re.sub(r"<img[^>]*>", "", page)  # base64 can spell anything
    assert ">nan<" not in text.lower() and "NaN" not in text  # every empty cell says why
    assert "noisy_beta0_uwo" not in page.split("8. Every run")[0]  # settings by their readable names
    for key in ("primary.supported", "primary.supported_robust", "primary.verdicts_robust", "overopt.rl.peak_quoted",
                "overopt.rl.seeds_overoptimised.ci_low", "beta.0.1.gold_at_budget_vs_beta0.diff"):
        assert key in saved, key
    prompts = pd.read_csv(Path(experiment_cfg.paths.best_of_n) / "bon_prompts.csv")
    for condition in ("clean", "noisy"):  # WARM's pick against the single RM's, paired over the same prompts
        mine = prompts[prompts["condition"] == condition].pivot(index="prompt", columns="objective", values="gold")
        key = f"remedy.warm.{condition}.bon_gold_max_n_vs_single"
        assert saved[f"{key}.diff"] == pytest.approx((mine["warm"] - mine["single"]).mean())
        assert saved[f"{key}.p"] <= saved[f"{key}.p_holm"] <= min(1.0, 2 * saved[f"{key}.p"]) + 1e-12
    for name in ("ppo_curves.csv", "best_of_n.csv", "beta_ablation.csv"):
        assert (out / "plots" / name).is_file()
    # The frontier: every optimiser at its least-regularised setting, its numbers the runs' numbers.
    assert "9. Every optimiser on one gold" in page and "frontier.png" in str(list((out / "figures").iterdir()))
    assert "models held" in page and "responses generated" in page  # what each optimiser costs
    dpo_seed = json.loads((runs / "dpo01" / "seeds" / "seed_0" / "cost.json").read_text())
    ppo_seed = json.loads((runs / "beta0" / "seeds" / "seed_0" / "cost.json").read_text())
    steps = json.loads((runs / "beta0" / "seeds" / "seed_0" / "metrics.json").read_text())["steps"]
    assert dpo_seed["responses_generated"] == 0 and ppo_seed["responses_generated"] == steps * 16
    assert ppo_seed["models_in_memory"] == dpo_seed["models_in_memory"] + 1  # PPO's value model
    for algorithm, setting in (("ppo", "beta0"), ("rloo", "rloo0"), ("grpo", "grpo0"), ("dpo", "dpo01"), ("ipo", "ipo05")):
        peaks = [json.loads((runs / setting / "seeds" / f"seed_{s}" / "metrics.json").read_text())["gold_peak"] for s in (0, 1)]
        assert saved[f"frontier.{algorithm}.gold_peak.mean"] == pytest.approx(sum(peaks) / 2)
        assert saved[f"frontier.{algorithm}.gold_peak.n"] == 2
        for key in ("kl_at_peak.mean", "fit.alpha", "fit.beta", "fit.r2"):
            assert f"frontier.{algorithm}.{key}" in saved, (algorithm, key)
        if algorithm != "ppo":
            assert 0 <= saved[f"frontier.{algorithm}.gold_peak_vs_ppo.p"] <= saved[f"frontier.{algorithm}.gold_peak_vs_ppo.p_holm"]
    # Section 10: early stopping, two rules over the β = 0 single-RM runs' own evaluations.
    assert "10. Remedies against over-optimisation" in page
    assert "ensemble kind" in page and "fine-tune seed" in page  # the agreement table of each kind
    assert "of those, WARM > 0" in page  # the weight average scores the same samples
    # ... through a reader that re-scores a run's final samples to the scores the run recorded (read
    # from token ids), except where the barely trained policy put a special token that decoding drops
    final = read_jsonl(runs / "beta0" / "seeds" / "seed_0" / "final_samples.jsonl")
    clean_rewards = Path(experiment_cfg.for_condition("clean").paths.reward)
    rescored = score_samples(clean_rewards / "member_0", final, experiment_cfg.reward.max_length)
    assert np.isclose(rescored, [row["members"][0] for row in final], atol=2e-4).mean() >= 0.9
    histories = [pd.read_csv(runs / "beta0" / "seeds" / f"seed_{s}" / "eval_history.csv") for s in (0, 1)]
    for rule in ("early_stop_proxy", "early_stop_gold"):
        key = f"remedy.{rule}.clean.gold_at_budget"
        assert saved[f"{key}.n"] == 2
        p, p_holm = saved[f"{key}_vs_baseline.p"], saved[f"{key}_vs_baseline.p_holm"]
        if p is None:  # the rule returned the baseline's own run in every seed: identical, not tested
            assert saved[f"{key}_vs_baseline.diff"] == 0
        else:
            assert p <= p_holm <= 1
        # regret: each run's own peak gold minus the gold of the evaluation the rule returned
        peaks = sum(h["gold"].max() for h in histories) / 2
        assert saved[f"remedy.{rule}.clean.regret"] == pytest.approx(peaks - saved[f"{key}.mean"])
    queries = saved["remedy.early_stop_gold.clean.gold_queries"]  # 32 probe prompts per check
    assert 32 <= queries <= 32 * max(len(h) for h in histories) and queries % 16 == 0
    assert "remedy.early_stop_proxy.clean.gold_queries" in saved and saved["remedy.early_stop_proxy.clean.gold_queries"] == 0
    history = pd.read_csv(runs / "dpo01" / "eval_history.csv")  # DPO measured on its own samples as it trains
    assert list(history[history["seed"] == 0]["step"]) == [0, 2, 4] and history["kl"].iloc[-1] > 0


def test_a_report_over_a_partial_grid_renders_what_exists_and_says_what_it_skipped(tmp_path, experiment_cfg, experiment):
    """Only a β = 0.1 setting, no sweep, report.default_run/hacking_run naming settings that are not
    there: each section renders from what exists and says what it skipped and why."""
    from pipelines import report

    shutil.copytree(Path(experiment_cfg.paths.ppo) / "beta01", tmp_path / "ppo" / "beta01")
    cfg = experiment_cfg.replace(paths={"ppo": str(tmp_path / "ppo"), "sweep": str(tmp_path / "no_sweep"),
                                        "report": str(tmp_path / "report")},
                                 report={"default_run": "beta005", "hacking_run": "beta0"})  # fmt: skip
    metrics = report.run(cfg)
    page = (tmp_path / "report" / "report.html").read_text()
    for note in ("No β = 0 run with the single RM: the RL over-optimisation fit is skipped.",
                 "No β = 0 runs: the ensemble comparison is skipped.",
                 f"No sweep results ({tmp_path / 'no_sweep' / 'trials.csv'}): `dvc repro sweep` makes them.",
                 "report.default_run: beta005 is not among the runs; shown instead: beta01.",
                 "report.hacking_run: beta0 is not among the runs; shown instead: beta01."):
        assert note in page, note
    assert metrics["beta.0.1.gold_final.n"] == 2 and metrics["beta.0.1.gold_at_budget.n"] == 2
    assert "overopt.rl.alpha" not in metrics


def test_a_remedy_setting_is_measured_against_its_baseline_and_kept_out_of_the_study(tmp_path, experiment_cfg, experiment):
    from pipelines import ppo, report

    for setting in ("beta0", "beta01"):
        shutil.copytree(Path(experiment_cfg.paths.ppo) / setting, tmp_path / "ppo" / setting)
    cfg = experiment_cfg.replace(paths={"ppo": str(tmp_path / "ppo"), "sweep": str(tmp_path / "no_sweep"),
                                        "report": str(tmp_path / "report")},
                                 ppo_runs={**experiment_cfg.ppo_runs, "iterated": {"beta": 0.0, "rounds": 2}},
                                 report={"remedies": {"label_smoothing": {"beta01": "beta0"},
                                                      "iterated": {"iterated": "beta0"}}})  # fmt: skip
    ppo.run(cfg, run_name="iterated")
    metrics = report.run(cfg)
    iterated = [json.loads((tmp_path / "ppo" / "iterated" / "seeds" / f"seed_{k}" / "metrics.json").read_text())["gold_final"]
                for k in (0, 1)]  # fmt: skip
    assert metrics["remedy.iterated.clean.gold_at_budget.mean"] == pytest.approx(sum(iterated) / 2)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Iterated RLHF, per round" in page
    assert "refit R² (k = round)" in page  # round_start: last, the iterated form's premise
    finals = {s: [json.loads((tmp_path / "ppo" / s / "seeds" / f"seed_{k}" / "metrics.json").read_text())["gold_final"]
                  for k in (0, 1)] for s in ("beta0", "beta01")}  # fmt: skip
    key = "remedy.label_smoothing.clean.gold_at_budget"  # no budget in these runs: their last evaluation
    assert metrics[f"{key}.mean"] == pytest.approx(sum(finals["beta01"]) / 2)
    assert metrics[f"{key}_vs_baseline.diff"] == pytest.approx((sum(finals["beta01"]) - sum(finals["beta0"])) / 2)
    assert "beta.0.1.gold_final.n" not in metrics  # a remedy's runs are not the β grid's


def test_a_stage_run_before_its_inputs_exist_names_the_command_that_makes_them(tmp_path, experiment_cfg, experiment):
    cfg = experiment_cfg.replace(paths={"best_of_n": str(tmp_path / "bon"), "report": str(tmp_path / "report")})
    params = tmp_path / "params.yaml"
    config_lib.save(cfg, params)
    done = subprocess.run([sys.executable, "-m", "pipelines.report", "--params", str(params)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip() == f"error: {tmp_path / 'bon' / 'bon.csv'}: not found; `dvc repro best_of_n` makes it"
    assert not (tmp_path / "report").exists()


def test_the_stage_that_makes_a_path_is_named_from_the_paths_keys(experiment_cfg):
    from rlhf_lab.runtime.stage import maker_of

    paths = experiment_cfg.paths
    assert maker_of(experiment_cfg, Path(paths.sweep) / "trials.csv") == "sweep"
    assert maker_of(experiment_cfg, Path(paths.reward) / "noisy" / "member_0" / "config.json") == "reward@noisy"
    assert maker_of(experiment_cfg, Path(paths.ppo) / "beta0" / "metrics.json") == "ppo@beta0"
    assert maker_of(experiment_cfg, Path(paths.data) / "prompts_eval.jsonl") == "data"
    assert maker_of(experiment_cfg, "/elsewhere/file.csv") is None


@pytest.mark.skipif(not os.environ.get("RLHF_LAB_TEST_POSTGRES_URL"),
                    reason="needs RLHF_LAB_TEST_POSTGRES_URL (.ci/run starts a local PostgreSQL)")
def test_two_workers_share_one_study_on_postgres(tmp_path, experiment_cfg, experiment):
    url = os.environ["RLHF_LAB_TEST_POSTGRES_URL"]
    name = f"two-workers-{os.getpid()}"
    procs = []
    for worker in (0, 1):
        cfg = experiment_cfg.replace(paths={"sweep": str(tmp_path / f"worker{worker}")}, sweep={"pruning": False})
        params = tmp_path / f"params{worker}.yaml"
        config_lib.save(cfg, params)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--storage", url,
             "--study-name", name, "--n-trials", "2"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 4
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # Each worker's summary sees the whole shared study.
    for worker in (0, 1):
        assert json.loads((tmp_path / f"worker{worker}" / "metrics.json").read_text())["sweep.n_trials"] >= 2


def test_multi_objective_summary_picks_the_pareto_trial_with_most_gold():
    from pipelines.sweep import summarise

    study = optuna.create_study(directions=["maximize", "minimize"])
    for beta, clip, gold, kl in ((0.01, 0.2, 0.8, 20.0), (0.1, 0.1, 0.6, 3.0), (0.05, 0.3, 0.5, 10.0)):
        trial = study.ask()
        trial.suggest_float("beta", 0.001, 1.0, log=True)
        trial.suggest_float("clip_eps", 0.05, 0.4)
        study.tell(trial, (gold, kl))
    metrics, frame = summarise(study, "gold_kl")
    assert metrics["sweep.pareto_size"] == 2  # (0.5 gold, 10 KL) is dominated by (0.6, 3)
    assert metrics["sweep.best.gold"] == 0.8
    assert metrics["sweep.best.beta"] == study.trials[0].params["beta"]
    assert frame["pareto"].tolist() == [True, True, False]


def test_a_killed_sweep_keeps_its_trials_and_a_rerun_retries_the_one_that_died(tmp_path, experiment_cfg, experiment):
    import signal
    import time

    cfg = experiment_cfg.replace(paths={"sweep": str(tmp_path / "sweep")},
                                 sweep={"n_trials": 3, "iterations": 24, "pruning": False, "seeds": 1,
                                        "heartbeat_interval": 1, "study_name": "killed"})  # fmt: skip
    params = tmp_path / "params.yaml"
    config_lib.save(cfg, params)
    command = [sys.executable, "-m", "pipelines.sweep", "--params", str(params)]
    live = f"sqlite:///{tmp_path / 'sweep.live' / 'optuna.db'}"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)

    def trial_runs(study, number: int) -> list:
        return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{study.user_attrs.get('mlflow_run_id')}' "
                                                f"and tags.optuna_trial = '{number}'")  # fmt: skip

    deadline = time.time() + 300
    states = []
    while time.time() < deadline and proc.poll() is None:  # kill while a later trial trains
        try:
            study = optuna.load_study(study_name="killed", storage=live)
            states = [t.state for t in study.trials]
        except Exception:  # noqa: BLE001 - the database is still being created
            states = []
        # A later trial caught running (the second, unless it finished between two polls: then the third)
        if len(states) >= 2 and states[-1] == optuna.trial.TrialState.RUNNING and trial_runs(study, len(states) - 1):
            break
        time.sleep(1.0)  # each poll reads the sweep's live databases: not so often that its writes wait
    if proc.poll() is not None:
        pytest.fail(f"the sweep ended (code {proc.returncode}) before a later trial was caught running: "
                    f"{proc.communicate()[1][-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    dead_trial = len(states) - 1
    assert states == [optuna.trial.TrialState.COMPLETE] * dead_trial + [optuna.trial.TrialState.RUNNING]
    before = optuna.load_study(study_name="killed", storage=live).trials
    assert not (tmp_path / "sweep").exists()  # the output folder appears only when the sweep is done
    time.sleep(2.5)  # past the heartbeat's grace period: the dead worker's trial is stale
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    by_state = {s: [t for t in study.trials if t.state == s] for s in optuna.trial.TrialState}
    assert len(by_state[optuna.trial.TrialState.COMPLETE]) == 3  # sweep.n_trials finished in all
    assert by_state[optuna.trial.TrialState.COMPLETE][0].params == before[0].params  # kept, not rerun
    failed = by_state[optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [dead_trial]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead_trial]  # RetryHeartbeatStaleTrialCallback's mark
    assert len(retried) == 1 and retried[0].params == failed[0].params  # the dead worker's trial, again
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    assert not (tmp_path / "sweep.live").exists()
    dead = trial_runs(study, dead_trial)
    assert [r.info.status for r in dead] == ["KILLED"]  # the dead worker's run is not left RUNNING
