"""Bring your own model, data and gold: the whole pipeline on models and datasets built here.

Gold-model pipeline: a tiny Llama policy with a chat template and LoRA, conversational
prompt-completion demonstrations (parquet) and prompts (a save_to_disk folder), a sequence-classification
gold model with its own tokenizer, and reward models on a backbone of another tokenizer (LoRA too):
data → sft → preferences (gold-labelled) → reward → ppo → best_of_n → sweep → report.
No-gold pipeline: implicit-prompt preference pairs (JSONL) as the only data, on the built-in tiny GPT-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlhf_lab.data.files import read_jsonl
from tests.byo import (
    layout_rows,
    review_pairs,
    save_tiny_gold,
    save_tiny_gpt2_backbone,
    save_tiny_llama,
    write_dataset,
)
from tests.conftest import tiny_config

SMALL = dict(
    data={"train_samples": 1000, "val_samples": 100, "train_prompts": 128, "eval_prompts": 16},
    sft={"epochs": 2, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "num_samples": 2, "max_length": 40},
    preferences={"pairs": 300, "eval_pairs": 100, "sft_samples": 64, "max_new_tokens": 12},
    reward={"members": 2, "epochs": 2, "batch_size": 32, "lr": 2e-3, "scaling_pairs": []},
    ppo={"iterations": 4, "batch_size": 16, "eval_every": 2, "max_new_tokens": 12, "seeds": 2, "checkpoint_every": 2},
    ppo_runs={"beta0": {"beta": 0.0}, "beta01": {"beta": 0.1}},
    best_of_n={"prompts": 8, "samples_per_prompt": 8, "max_n": 4},
    sweep={"n_trials": 2, "iterations": 2},
    report={"default_run": "beta01", "hacking_run": "beta0", "samples": 2, "title": "bring your own"},
)


def run_all(cfg) -> dict:
    from pipelines import best_of_n, data, ppo, preferences, report, reward, sft, sweep

    out = {"data": data.run(cfg), "sft": sft.run(cfg), "preferences": preferences.run(cfg), "reward": reward.run(cfg)}
    out["ppo"] = {name: ppo.run(cfg, run_name=name) for name in cfg.ppo_runs}
    out |= {"best_of_n": best_of_n.run(cfg), "sweep": sweep.run(cfg), "report": report.run(cfg)}
    return out


@pytest.fixture(scope="module")
def gold_model_pipeline(tmp_path_factory, tracking_uri):
    root = tmp_path_factory.mktemp("byo")
    pairs = review_pairs(1200)
    words = [f"review: {p} {c} bad" for p, c in pairs]
    inputs = root / "inputs"
    policy = save_tiny_llama(inputs / "tiny-llama", words)
    gold = save_tiny_gold(inputs / "gold-rm", words)
    backbone = save_tiny_gpt2_backbone(inputs / "rm-backbone", words)
    demos = write_dataset(layout_rows("prompt_completion_conv", pairs), inputs / "demos.parquet")
    prompts = write_dataset(layout_rows("prompt_conv", review_pairs(300, seed=1)), inputs / "prompts")
    cfg = tiny_config(root, tracking_uri, **SMALL).replace(
        data={"source": str(demos), "prompts": {"path": str(prompts), "split": "train"}},
        model={"name_or_path": str(policy), "lora": {"r": 8, "alpha": 16}},
        sft={"lr": 1e-2},
        task={"gold": str(gold), "gold_label": "POS"},
        reward={"backbone": str(backbone), "lora": {"r": 4, "alpha": 8}},
        ppo={"value_model": "shared"},  # a value model copied from the RM could not read the policy's tokens
    )
    return cfg, run_all(cfg)


def test_chat_template_reaches_the_policy(gold_model_pipeline):
    cfg, _ = gold_model_pipeline
    data = Path(cfg.paths.data)
    row = read_jsonl(data / "train.jsonl")[0]
    assert row["prompt"].startswith("<|user|> review: ") and row["prompt"].endswith("<|assistant|> ")
    assert read_jsonl(data / "prompts_eval.jsonl")[0]["prompt"].endswith("<|assistant|> ")
    assert set(read_jsonl(Path(cfg.paths.sft) / "samples.jsonl")[0]) >= {"prompt", "response", "gold"}


def test_sft_learns_the_completions_and_saves_adapter_and_merged_weights(gold_model_pipeline):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.sft import loader, read_demonstrations
    from rlhf_lab.engine.sft_module import CausalLMModule
    from rlhf_lab.models.loading import load_tokenizer

    cfg, _ = gold_model_pipeline
    sft = Path(cfg.paths.sft)
    merged = AutoModelForCausalLM.from_pretrained(sft)  # plain transformers reads the merged weights
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    val = loader(load_tokenizer(sft), read_demonstrations(Path(cfg.paths.data) / "val.jsonl"), 40, 100, False)
    batch = next(iter(val))
    assert len(batch) == 3 and (batch[2] < batch[1]).any()  # a loss mask: no loss on the chat prompt

    def completion_loss(model) -> float:
        with torch.no_grad():
            return CausalLMModule(model.eval(), 1e-3, 0.0, 0, 1)._loss(batch).item()

    assert completion_loss(merged) < completion_loss(base) - 0.5  # LoRA alone lowered the completion loss
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path),
                                             sft / "adapter")  # peft reads the adapter onto the base  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(merged(batch[0]).logits, with_adapter(batch[0]).logits, atol=1e-4)


def test_gold_model_labels_the_pairs(gold_model_pipeline):
    cfg, results = gold_model_pipeline
    prefs = cfg.for_condition()
    rows = read_jsonl(Path(prefs.paths.preferences) / "train.jsonl")
    assert all(r["chosen_gold"] >= r["rejected_gold"] for r in rows)  # noise-free Bradley–Terry, T = 0
    assert np.mean([r["chosen_gold"] > r["rejected_gold"] for r in rows]) > 0.9  # ties only where gold ties
    assert results["preferences"]["preferences/gold"].endswith("gold-rm (logit 1)")


def test_reward_models_of_another_tokenizer_learn_the_gold_preferences(gold_model_pipeline):
    from transformers import AutoModelForSequenceClassification

    cfg, results = gold_model_pipeline
    assert results["reward"]["ensemble"]["rm/accuracy"] > 0.6
    member = Path(cfg.for_condition().paths.reward) / "member_0"
    AutoModelForSequenceClassification.from_pretrained(member)  # LoRA merged: plain transformers loads it


def test_ppo_measures_gold_against_proxy_on_the_real_model_path(gold_model_pipeline):
    cfg, results = gold_model_pipeline
    for name, metrics in results["ppo"].items():
        assert metrics["gold_final"]["n"] == 2 and np.isfinite(metrics["gold_final"]["mean"])
        hist = pd.read_csv(Path(cfg.paths.ppo) / name / "eval_history.csv")
        assert {"gold", "proxy", "kl"} <= set(hist) and hist["gold"].notna().all()
    policy = Path(cfg.paths.ppo) / "beta0" / "seeds" / "seed_0" / "policy"
    assert (policy / "adapter" / "adapter_config.json").is_file() and (policy / "model.safetensors").is_file()


def test_best_of_n_sweep_and_report_show_gold_vs_proxy(gold_model_pipeline):
    cfg, results = gold_model_pipeline
    assert np.isfinite(results["best_of_n"]["bon/gold_n1"])
    assert results["sweep"]["sweep.n_trials"] == 2
    report = (Path(cfg.paths.report) / "report.html").read_text()
    assert "gold is the reward model" in report and "gold-rm" in report
    metrics = json.loads((Path(cfg.paths.report) / "metrics.json").read_text())
    assert metrics["beta.0.gold_final.n"] == 2


@pytest.fixture(scope="module")
def no_gold_pipeline(tmp_path_factory, tracking_uri):
    root = tmp_path_factory.mktemp("nogold")
    pairs = write_dataset(layout_rows("implicit", review_pairs(1200)), root / "inputs" / "pairs.jsonl")
    cfg = tiny_config(root, tracking_uri, **SMALL).replace(
        data={"source": str(pairs)}, reward={"dataset": str(pairs)}, report={"title": "no gold"},
    )
    return cfg, run_all(cfg)


def test_without_gold_every_stage_runs_and_the_report_says_so(no_gold_pipeline):
    cfg, results = no_gold_pipeline
    assert results["reward"]["ensemble"]["rm/accuracy"] > 0.6  # held-out human pairs, the only measure left
    assert "gold_final" not in results["ppo"]["beta0"] and results["ppo"]["beta0"]["kl_final"]["n"] == 2
    assert results["sweep"]["sweep.n_trials"] == 0
    bon = pd.read_csv(Path(cfg.paths.best_of_n) / "bon.csv")
    assert bon["gold"].isna().all() and bon["proxy"].notna().all()
    report = (Path(cfg.paths.report) / "report.html").read_text()
    assert "Gold is absent" in report
    assert results["report"]["gold"] == "none" and "rm.clean.ensemble.accuracy" in results["report"]


def test_a_value_model_that_cannot_read_the_policy_tokens_is_refused(gold_model_pipeline):
    from pipelines.ppo import check_inputs
    from rlhf_lab.config import ConfigError
    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.rewards.reward_model import same_vocabulary

    cfg, _ = gold_model_pipeline
    policy_tokenizer = load_tokenizer(cfg.paths.sft)
    member = Path(cfg.for_condition().paths.reward) / "member_0"
    assert not same_vocabulary(policy_tokenizer, load_tokenizer(member))  # the RMs did read re-encoded text
    with pytest.raises(ConfigError, match=r"ppo.value_model: separate copies reward member 0 .* use shared"):
        check_inputs(cfg.for_condition().replace(ppo={"value_model": "separate"}))
