"""PPO end to end: a toy reward that PPO must raise, the stage on the tiny pipeline, resume."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf_lab import config as config_lib
from rlhf_lab.algorithms import ppo as pm
from rlhf_lab.config import PPOConfig, RuntimeConfig, UserError
from rlhf_lab.engine.ppo_module import PPOModule, response_logits
from rlhf_lab.models.generation import position_ids, sample
from rlhf_lab.runtime.stage import make_trainer

ROOT = Path(__file__).resolve().parents[1]
TARGET = 5  # the toy reward counts this token


class TokenCountReward(torch.nn.Module):
    """A stand-in reward model with the reward-model interface: score = count of TARGET tokens."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(reward_gain=1.0, reward_bias=0.0)
        self.score = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.ones_(self.score.weight)
        self.base_model = self._Counter()

    class _Counter(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids=None):
            hits = ((input_ids == TARGET) & (attention_mask == 1)).float()
            return SimpleNamespace(last_hidden_state=hits.cumsum(1)[..., None])


class History(Callback):
    def __init__(self, prefix: str = "ppo"):
        self.prefix = prefix
        self.scores, self.kls, self.exact_kls = [], [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.scores.append(float(metrics[f"{self.prefix}/score"]))
        self.kls.append(float(metrics[f"{self.prefix}/kl"]))
        self.exact_kls.append(float(metrics[f"{self.prefix}/kl_exact"]))


def test_ppo_raises_a_toy_reward_with_finite_kl():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    ref.load_state_dict(policy.state_dict())
    ppo = PPOConfig(iterations=30, batch_size=32, ppo_epochs=2, minibatches=2, beta=0.01, lr=3e-3,
                    value_model="shared", max_new_tokens=8, vf_coef=0.5)
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    module = PPOModule(ppo, policy, ref, [TokenCountReward()], None, eos_token_id=3, pad_token_id=0)
    prompts = torch.full((32 * 30, 1), 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)),
                                         batch_size=32)
    history = History()
    trainer = make_trainer(RuntimeConfig(), logger=False, max_steps=30 * 4, callbacks=[history],
                           enable_progress_bar=False)
    trainer.fit(module, loader)
    first, last = sum(history.scores[:5]) / 5, sum(history.scores[-5:]) / 5
    assert last > first + 1.0, (first, last)
    assert all(torch.isfinite(torch.tensor(history.kls)))
    assert history.kls[-1] > 0
    # Logged every iteration (vocabulary 8); ≥ 0 up to float rounding (at step 0 policy = reference,
    # read through the KV cache on one side and a full forward on the other).
    assert min(history.exact_kls) >= -1e-6 and history.exact_kls[-1] > 0
    # The frozen reference did not move; the policy did.
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(value, ref_before[key])
    assert not torch.equal(ref_before["transformer.wte.weight"], policy.transformer.wte.weight)


def test_preference_as_reward_trains_on_the_sigmoid_of_the_margin_over_a_reference_response():
    from rlhf_lab.algorithms.reward_shaping import preference_as_reward

    # By hand: σ(2 − 1) = 1 / (1 + e^−1) ≈ 0.731; σ(0) = 0.5; bounded however large the proxy grows.
    shaped = preference_as_reward(torch.tensor([2.0, 0.5, 100.0]), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(shaped, torch.tensor([1 / (1 + math.exp(-1)), 0.5, 1.0]))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    ref.load_state_dict(policy.state_dict())
    ppo = PPOConfig(batch_size=16, value_model="shared", max_new_tokens=8, reward_shaping="par")
    module = PPOModule(ppo, policy, ref, [TokenCountReward()], None, eos_token_id=3, pad_token_id=0)
    prompts = torch.full((16, 1), 2)
    real = module.rollout(prompts, torch.ones_like(prompts))  # the reference samples its own responses
    assert ((real.scores > 0) & (real.scores < 1)).all()
    # The training score is σ(member score − the reference response's score), response by response.
    reference = torch.arange(16, dtype=torch.float32) % 3
    module.reference_scores = lambda ids, mask: reference
    ro = module.rollout(prompts, torch.ones_like(prompts))
    torch.testing.assert_close(ro.scores, torch.sigmoid(ro.member_scores[0] - reference))


@pytest.fixture(scope="module")
def ppo_cfg(tiny_cfg, reward_stage):
    return tiny_cfg.replace(ppo={"iterations": 4, "batch_size": 16, "eval_every": 2, "checkpoint_every": 2,
                                 "max_new_tokens": 16, "reward_objective": "mean", "seeds": [0, 3]})


def test_ppo_stage_runs_every_seed_side_by_side_and_summarises(ppo_cfg):
    from pipelines import ppo

    metrics = ppo.run(ppo_cfg)  # in turn: this process has computed, so it does not fork
    out = Path(ppo_cfg.paths.ppo) / "default"
    finals = {}
    for seed in (0, 3):
        seed_out = out / "seeds" / f"seed_{seed}"
        frame = pd.read_csv(seed_out / "eval_history.csv")
        assert list(frame["step"]) == [0, 2, 4]
        assert {"step", "kl", "gold", "proxy", "proxy_0", "proxy_1", "disagreement"} <= set(frame.columns)
        assert frame["kl"].iloc[0] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
        seed_metrics = json.loads((seed_out / "metrics.json").read_text())
        assert seed_metrics["gold_final"] == pytest.approx(frame["gold"].iloc[-1])
        assert (seed_out / "policy" / "model.safetensors").is_file()
        finals[seed] = seed_metrics["gold_final"]
        row = json.loads((seed_out / "final_samples.jsonl").read_text().splitlines()[0])
        assert len(row["members"]) == 2  # every member's score of every final sample
    # Seeds differ in sampling and data order: different runs; the summary is their mean and t interval.
    assert finals[0] != finals[3]
    summary = metrics["gold_final"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx((finals[0] + finals[3]) / 2)
    half = 12.706205 * abs(finals[0] - finals[3]) / 2  # t_{1, 0.975} · s/√2 with s = |a − b|/√2
    assert summary["ci_high"] - summary["mean"] == pytest.approx(half, rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["seeds"]["3"]["gold_final"] == finals[3]
    assert sorted(pd.read_csv(out / "eval_history.csv")["seed"].unique()) == [0, 3]
    assert not (Path(ppo_cfg.paths.ppo) / ".checkpoints" / "default").exists()


def test_the_warm_objective_trains_on_the_weight_average_and_evaluates_every_member_beside_it(ppo_cfg):
    from pipelines import ppo

    cfg = ppo_cfg.replace(ppo={"reward_objective": "warm", "seeds": [0], "run_name": "warm", "iterations": 2})
    ppo.run(cfg)
    seed_out = Path(cfg.paths.ppo) / "warm" / "seeds" / "seed_0"
    frame = pd.read_csv(seed_out / "eval_history.csv")
    assert frame["proxy"].tolist() == pytest.approx(frame["proxy_0"].tolist())  # the objective reads WARM
    assert "proxy_2" in frame  # WARM, then members 0 and 1
    assert json.loads((seed_out / "run.json").read_text())["objective"] == "warm"
    missing = cfg.replace(paths={"reward": str(Path(cfg.paths.ppo) / "no_rewards")})
    shutil.copytree(Path(cfg.for_condition().paths.reward), Path(missing.for_condition().paths.reward),
                    ignore=shutil.ignore_patterns("warm"))  # fmt: skip
    with pytest.raises(UserError, match=r"ppo.reward_objective: warm needs .*no_rewards/clean/warm"):
        ppo.run(missing.replace(ppo={"run_name": "warm_missing"}))
    assert not (Path(cfg.paths.ppo) / "warm_missing").exists()


def test_early_stopping_callback_stops_on_its_rule_and_restores_the_best_evaluations_weights():
    from rlhf_lab.engine.early_stopping import EarlyStopping

    module = SimpleNamespace(policy=torch.nn.Linear(2, 2))
    module.policy.bias.requires_grad_(False)  # frozen weights are not kept (LoRA's base)
    evaluation = SimpleNamespace(history=[])
    early = EarlyStopping(evaluation, "gold", patience=2, probe_prompts=8)
    trainer = SimpleNamespace(should_stop=False)
    weights = []
    for step, probe in enumerate([0.1, 0.5, 0.3, 0.2, 0.9]):
        if trainer.should_stop:
            break
        with torch.no_grad():
            module.policy.weight.fill_(float(step))  # the policy at this evaluation
        weights.append(module.policy.weight.clone())
        evaluation.history.append({"step": step, "gold_probe": probe, "gold": probe + 0.01, "kl": float(step)})
        early.on_train_batch_start(trainer, module, None, 0)
        early.on_train_batch_start(trainer, module, None, 0)  # a second call reads no new evaluation
    # Best at step 1 (0.5); steps 2 and 3 do not beat it: the rule fires at step 3, before step 4.
    assert trainer.should_stop and len(evaluation.history) == 4
    assert set(early.best) == {"weight"}
    early.restore_best(module)
    torch.testing.assert_close(module.policy.weight, weights[1])
    assert early.summary() == {"early_stop_rule": "gold", "early_stop_step": 3, "returned_step": 1, "kl_returned": 1.0,
                               "gold_queries": 4 * 8, "gold_returned": pytest.approx(0.51)}  # fmt: skip
    # The proxy rule reads the members held out of a single-RM objective: members 1 and 2, not 0.
    proxy = EarlyStopping(SimpleNamespace(history=[{"proxy_0": 5.0 * i, "proxy_1": m, "proxy_2": m, "step": i}
                                                   for i, m in enumerate([0.0, 1.0, 0.5])]), "proxy", 1)  # fmt: skip
    assert proxy.signal().tolist() == [0.0, 1.0, 0.5] and proxy.stop().fired


def test_a_run_stopped_early_saves_the_policy_of_its_best_evaluation(ppo_cfg, tmp_path):
    from pipelines import ppo
    from rlhf_lab.data.files import read_texts
    from rlhf_lab.engine.evaluation import Evaluation
    from rlhf_lab.models.loading import load_tokenizer

    cfg = ppo_cfg.replace(ppo={"run_name": "stopped", "iterations": 30, "eval_every": 1, "reward_objective": "single",
                               "early_stop": "gold", "early_stop_patience": 2, "gold_probe": 8}).for_condition()  # fmt: skip
    metrics = ppo.train(cfg, tmp_path / "out")
    history = pd.read_csv(tmp_path / "out" / "eval_history.csv")
    probe = history["gold_probe"].to_numpy()
    # By hand: the first evaluation that comes 2 evaluations after the best so far without beating it.
    best, since, stop = 0, 0, None
    for i in range(1, len(probe)):
        best, since = (i, 0) if probe[i] > probe[best] else (best, since + 1)
        if since == 2:
            stop = i
            break
    assert stop is not None and len(history) == stop + 1 and metrics["steps"] == stop < 30  # it ended the run
    assert metrics["early_stop_step"] == stop and metrics["returned_step"] == best
    assert 0 < best < stop  # a trained policy that is not the last one (here: best 4, stop 6)
    assert metrics["gold_returned"] == pytest.approx(history["gold"][best]) and metrics["gold_queries"] == 8 * (stop + 1)
    # Online equals post hoc: the same run without the rule, read by the report's rule, stops alike.
    from rlhf_lab.algorithms.early_stopping import patience_stop

    unstopped = cfg.replace(ppo={"run_name": "unstopped", "early_stop": None, "iterations": stop + 2})
    ppo.train(unstopped, tmp_path / "unstopped")
    full = pd.read_csv(tmp_path / "unstopped" / "eval_history.csv")
    pd.testing.assert_frame_equal(full.iloc[: stop + 1], history)
    after = patience_stop(full["gold_probe"].to_numpy(), 2)
    assert (after.stop, after.chosen) == (stop, best)
    # The saved policy is the best evaluation's: the same fixed-seed evaluation of it gives that row again.
    tokenizer = load_tokenizer(cfg.paths.sft)
    again = cfg.replace(ppo={"init_policy": str(tmp_path / "out" / "policy")})
    module, _ = ppo.build_module(again, tokenizer)
    evaluation = Evaluation(again, tokenizer, read_texts(Path(cfg.paths.data) / "prompts_eval.jsonl", "prompt"))
    evaluation(module, 0)
    assert evaluation.history[0]["gold"] == pytest.approx(history["gold"][best], abs=1e-6)
    assert evaluation.history[0]["kl"] == pytest.approx(history["kl"][best], abs=1e-4)


def test_a_run_stops_at_the_first_evaluation_that_reaches_its_kl_budget(ppo_cfg):
    from pipelines import ppo

    cfg = ppo_cfg.replace(ppo={"iterations": 8, "kl_budget": 1e-4, "seeds": [0], "run_name": "budget"})
    metrics = ppo.run(cfg)
    frame = pd.read_csv(Path(cfg.paths.ppo) / "budget" / "seeds" / "seed_0" / "eval_history.csv")
    # Step 0 is the reference itself (KL 0 < budget); step 2's evaluation reaches the budget and the run
    # ends there, before that iteration's update, instead of running its 8 iterations.
    assert list(frame["step"]) == [0, 2]
    assert frame["kl"].iloc[-1] >= 1e-4
    assert metrics["steps"]["mean"] == 2 and metrics["kl_final"]["mean"] == pytest.approx(frame["kl"].iloc[-1])


def test_the_stage_process_runs_seeds_in_forked_workers_with_the_same_numbers(ppo_cfg, tmp_path):
    """`python -m pipelines.ppo` forks a worker per seed (one thread each); a seed's run there is the
    run this process makes of it with one thread: side by side changes nothing but the wall time."""
    from pipelines import ppo

    # A tracking store no stage has opened yet: the forked seeds must not race to create its tables.
    cfg = ppo_cfg.replace(paths={"ppo": str(tmp_path / "ppo")}, ppo={"seeds": [0, 3], "run_name": "forked"},
                          tracking={"tracking_uri": f"sqlite:///{tmp_path / 'fresh.db'}"})
    params = tmp_path / "params.yaml"
    config_lib.save(cfg, params)
    done = subprocess.run([sys.executable, "-m", "pipelines.ppo", "--params", str(params)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    runs = _mlflow_runs(cfg, "ppo-forked-seed%")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # side by side, one SQLite store
    forked = json.loads((tmp_path / "ppo" / "forked" / "seeds" / "seed_3" / "metrics.json").read_text())
    one_thread = cfg.replace(ppo={"seed": 3, "run_name": "again"}, runtime={"threads": 1})
    threads = torch.get_num_threads()
    try:
        here = ppo.train(one_thread.for_condition(), tmp_path / "again")
    finally:
        torch.set_num_threads(threads)
    assert here["gold_final"] == pytest.approx(forked["gold_final"], abs=1e-6)
    assert here["kl_final"] == pytest.approx(forked["kl_final"], rel=1e-4)


def _mlflow_runs(cfg, name_pattern: str):
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list",
                              filter_string=f"attributes.run_name LIKE '{name_pattern}'")  # fmt: skip


class Crash(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


class FirstStep(Callback):
    def on_train_start(self, trainer, module):
        self.step = trainer.global_step


def test_crashed_run_resumes_exactly_and_continues_its_mlflow_run(ppo_cfg, tmp_path):
    from pipelines import ppo

    cfg = ppo_cfg.replace(ppo={"run_name": "resumed", "iterations": 6}).for_condition()
    steps_per_iteration = cfg.ppo.ppo_epochs * cfg.ppo.minibatches
    whole = ppo.train(cfg.replace(ppo={"run_name": "never_stopped"}), tmp_path / "whole_out")
    out = Path(cfg.paths.ppo) / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        ppo.train(cfg, out, callbacks=[Crash(at_step=5 * steps_per_iteration)])
    assert not out.exists()  # no half-written run folder
    killed = _mlflow_runs(cfg, "ppo-resumed-seed0")
    assert len(killed) == 1
    first = FirstStep()
    metrics = ppo.train(cfg, out, callbacks=[first])
    assert first.step == 4 * steps_per_iteration  # from the iteration-4 checkpoint: 1 iteration redone
    # The same evaluations and final metrics as the run that was never interrupted.
    pd.testing.assert_frame_equal(pd.read_csv(out / "eval_history.csv"), pd.read_csv(tmp_path / "whole_out" / "eval_history.csv"))
    assert metrics == whole
    runs = _mlflow_runs(cfg, "ppo-resumed-seed0")
    assert [r.info.run_id for r in runs] == [killed[0].info.run_id]  # continued, not a second run
    assert runs[0].info.status == "FINISHED"
    history = _metric_steps(cfg, runs[0].info.run_id, "ppo/kl")
    assert history == list(range(6))  # every iteration logged, once


def test_a_damaged_checkpoint_warns_and_starts_over(ppo_cfg, tmp_path, capsys):
    from pipelines import ppo

    cfg = ppo_cfg.replace(paths={"ppo": str(tmp_path / "ppo")}, ppo={"run_name": "damaged"}).for_condition()
    steps_per_iteration = cfg.ppo.ppo_epochs * cfg.ppo.minibatches
    with pytest.raises(RuntimeError, match="simulated crash"):
        ppo.train(cfg, tmp_path / "out", callbacks=[Crash(at_step=3 * steps_per_iteration)])
    last = tmp_path / "ppo" / ".checkpoints" / "damaged" / "seed_0" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill in the middle of a plain write would leave
    first = FirstStep()
    metrics = ppo.train(cfg, tmp_path / "out", callbacks=[first])
    assert first.step == 0 and metrics["steps"] == 4  # a clean start, no crash
    err = capsys.readouterr().err
    assert f"warning: {last} cannot be read (" in err and "this run starts over" in err


def test_checkpoints_are_written_aside_and_renamed(tmp_path):
    from rlhf_lab.runtime.stage import checkpoint_callback

    saved = []

    class Trainer:
        is_global_zero = True
        global_step = 8
        strategy = type("S", (), {"barrier": lambda self: None})()

        def save_checkpoint(self, path, weights_only=None):
            saved.append(Path(path).name)
            Path(path).write_text("state")

    target = tmp_path / "last.ckpt"
    checkpoint_callback(target, every=2, last=10, steps_per_unit=4).on_train_batch_end(Trainer(), None, None, None, 0)
    assert saved == ["last.ckpt.partial"] and target.read_text() == "state"
    assert not (tmp_path / "last.ckpt.partial").exists()


def _metric_steps(cfg, run_id: str, key: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(cfg.tracking.tracking_uri).get_metric_history(run_id, key))


def test_compiled_loss_and_rollout_passes_match_eager():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy = GPT2LMHeadModel(cfg)
    ppo = PPOConfig(value_model="shared", compile=True, max_new_tokens=6)
    module = PPOModule(ppo, policy, GPT2LMHeadModel(cfg), [TokenCountReward()], None, 3, 0)
    seq = torch.randint(4, 8, (4, 8))
    # seq, seq mask, P, response ids, old and reference log-probs, advantages, mask, old values, returns
    args = (seq, torch.ones_like(seq), 2, seq[:, 2:], torch.randn(4, 6) - 2, torch.randn(4, 6) - 2, torch.randn(4, 6),
            torch.ones(4, 6), torch.randn(4, 6), torch.randn(4, 6))
    eager_loss, eager_stats = module.minibatch_losses(*args)
    compiled_loss, compiled_stats = module._losses(*args)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    for key in eager_stats:
        torch.testing.assert_close(compiled_stats[key], eager_stats[key], atol=1e-5, rtol=1e-5)
    compiled_loss.backward()
    assert policy.transformer.wte.weight.grad is not None
    # Sampling through the compiled step on its static cache draws the tokens the eager step draws.
    prompt, prompt_mask = seq[:, :2], torch.ones_like(seq[:, :2])
    runs = []
    for step in (None, module._decode_step):
        generator = torch.Generator().manual_seed(0)
        runs.append(sample(policy, prompt, prompt_mask, 6, 3, 0, generator=generator, compiled_step=step))
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    # The frozen rollout passes too.
    response, distributions = seq[:, 2:], torch.log_softmax(torch.randn(4, 6, 8), dim=-1)
    for eager, compiled in zip(module.score_rollout(seq, torch.ones_like(seq), response, distributions),
                               module._score_rollout(seq, torch.ones_like(seq), response, distributions)):  # fmt: skip
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


class FinalState(Callback):
    """Each process writes its β and a checksum of its policy weights (ddp_spawn leaves nothing in the parent)."""

    def __init__(self, folder: Path):
        self.folder, self.kls = folder, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.kls.append(float(trainer.callback_metrics["ppo/kl"]))

    def on_train_end(self, trainer, module):
        state = {"beta": module.kl_ctl.value, "kls": self.kls,
                 "weights": float(module.policy.transformer.wte.weight.double().sum())}  # fmt: skip
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_data_parallel_processes_share_beta_and_weights(tmp_path, value_model):
    """Two CPU processes (gloo): gradients are averaged and the adaptive β follows the global KL."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    ref.load_state_dict(policy.state_dict())
    value = None
    if value_model == "separate":
        value = GPT2ForSequenceClassification(GPT2Config(**{**cfg.to_dict(), "num_labels": 1}))
    ppo = PPOConfig(iterations=3, batch_size=8, ppo_epochs=1, minibatches=1, beta=0.1, adaptive_kl=True,
                    target_kl=0.01, kl_horizon=100, lr=1e-2, max_new_tokens=6, value_model=value_model)
    module = PPOModule(ppo, policy, ref, [TokenCountReward()], value, eos_token_id=3, pad_token_id=0)
    prompts = torch.randint(4, 8, (8 * 2 * 3, 2))  # 3 iterations of 8 prompts for each process
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)),
                                         batch_size=8)
    runtime = RuntimeConfig(strategy="ddp_spawn", devices=2, threads=1)
    trainer = make_trainer(runtime, logger=False, max_steps=3, callbacks=[FinalState(tmp_path)],
                           enable_progress_bar=False)
    trainer.fit(module, loader)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # The KL that is logged and drives β is the mean over both processes' samples, not each one's own.
    assert ranks[0]["kls"][-1] != 0  # the policy has moved away from the reference
    assert ranks[0]["kls"] == pytest.approx(ranks[1]["kls"], rel=1e-12)
    assert ranks[0]["beta"] != 0.1  # the controller moved β ...
    assert ranks[0]["beta"] == pytest.approx(ranks[1]["beta"], rel=1e-12)  # ... identically in both processes
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-9)  # one model, synchronised
    assert ranks[0]["weights"] != pytest.approx(float(ref.transformer.wte.weight.double().sum()), rel=1e-9)


def test_mixed_precision_run_clips_gradients_and_trains():
    """bf16 autocast (CPU here, GPUs in real use) with gradient clipping: the optimizer must not be the fused one."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    before = policy.transformer.wte.weight.detach().clone()
    ppo = PPOConfig(iterations=2, batch_size=8, ppo_epochs=1, minibatches=1, value_model="shared",
                    max_new_tokens=4, max_grad_norm=0.5)
    module = PPOModule(ppo, policy, ref, [TokenCountReward()], None, eos_token_id=3, pad_token_id=0)
    prompts = torch.randint(4, 8, (16, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)),
                                         batch_size=8)
    trainer = make_trainer(RuntimeConfig(precision="bf16-mixed"), logger=False, max_steps=2, enable_progress_bar=False)
    trainer.fit(module, loader)
    assert torch.isfinite(torch.tensor(float(trainer.callback_metrics["ppo/policy_loss"])))
    assert not torch.equal(before, policy.transformer.wte.weight)


def test_shared_value_head_reads_the_final_hidden_states():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy = GPT2LMHeadModel(cfg).eval()
    module = PPOModule(PPOConfig(value_model="shared"), policy, GPT2LMHeadModel(cfg), [TokenCountReward()], None, 3, 0)
    torch.nn.init.normal_(module.value_head.weight)
    seq = torch.randint(4, 8, (3, 9))
    mask = torch.ones_like(seq)
    mask[0, :2] = 0  # a left-padded prompt
    logits, values = module._response_logits_and_values(seq, mask, prompt_len=4)
    out = policy(input_ids=seq, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
    # Position t's state predicts token t + 1: the 5 response tokens are read from positions 3..7.
    torch.testing.assert_close(logits, out.logits[:, 3:8])
    torch.testing.assert_close(values, module.value_head(out.hidden_states[-1][:, 3:8]).squeeze(-1))


def test_rollout_logs_the_exact_kl_of_its_sampling_distributions():
    """With a small vocabulary the per-iteration KL is also computed exactly, from the full
    distributions the tokens were drawn from; it equals the KL of full forward passes."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)  # different weights: KL > 0
    ppo = PPOConfig(max_new_tokens=6, temperature=0.8, value_model="shared")
    module = PPOModule(ppo, policy, ref, [TokenCountReward()], None, eos_token_id=3, pad_token_id=0)
    prompt = torch.randint(4, 8, (16, 2))
    ro = module.rollout(prompt, torch.ones_like(prompt))
    seq, seq_mask, mask = ro.samples.sequence_ids, ro.samples.sequence_mask, ro.samples.response_mask
    with torch.no_grad():
        logits, ref_logits = (response_logits(m, seq, seq_mask, mask.shape[1]) for m in (policy, ref))
    logp, ref_logp = (pm.log_softmax_at_temperature(x, temperature=0.8) for x in (logits, ref_logits))
    expected = pm.kl_between(logp, ref_logp) * mask
    torch.testing.assert_close(ro.kl_exact, expected, atol=1e-5, rtol=1e-5)
    assert (ro.kl_exact.sum(1) > 0).all()


def test_a_stage_killed_with_sigkill_resumes_to_the_uninterrupted_numbers(ppo_cfg, tmp_path):
    """kill -9 of a real `python -m pipelines.ppo` after its first checkpoint; the rerun resumes
    and ends where a run of the same command that was never stopped ends."""
    import signal
    import time

    def command(name: str) -> list[str]:
        cfg = ppo_cfg.replace(paths={"ppo": str(tmp_path / name)},
                              ppo={"seeds": [0], "iterations": 8, "checkpoint_every": 2, "run_name": name})  # fmt: skip
        config_lib.save(cfg, tmp_path / f"{name}.yaml")
        return [sys.executable, "-m", "pipelines.ppo", "--params", str(tmp_path / f"{name}.yaml")]

    kill = command("killed")
    proc = subprocess.Popen(kill, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "killed" / ".checkpoints" / "killed" / "seed_0" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not checkpoint.exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpoint.exists() and not (tmp_path / "killed" / "killed").exists()
    done = subprocess.run(kill, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = subprocess.run(command("whole"), cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed = pd.read_csv(tmp_path / "killed" / "killed" / "eval_history.csv")
    never = pd.read_csv(tmp_path / "whole" / "whole" / "eval_history.csv")
    pd.testing.assert_frame_equal(resumed, never)
    runs = _mlflow_runs(ppo_cfg, "ppo-killed-seed0")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the SIGKILLed run, continued
    assert _metric_steps(ppo_cfg, runs[0].info.run_id, "ppo/kl") == list(range(8))
