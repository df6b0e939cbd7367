"""Preference and reward stages end to end on the tiny config."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.data.files import DataError, read_jsonl
from rlhf_lab.models.loading import encode_texts
from rlhf_lab.rewards.reward_model import last_token_scores


def test_preference_pairs_follow_the_convention(tiny_cfg, preferences_stage):
    rows = read_jsonl(Path(tiny_cfg.for_condition().paths.preferences) / "train.jsonl", required=("prompt", "chosen", "rejected"))
    assert len(rows) == 1000
    assert all(r["chosen"] != r["rejected"] for r in rows)
    # Noise-free, deterministic labels: chosen never has the lower gold.
    assert all(r["chosen_gold"] >= r["rejected_gold"] for r in rows)


def test_reward_ensemble_beats_chance_clearly(tiny_cfg, reward_stage):
    for name in ("member_0", "member_1", "ensemble"):
        assert reward_stage[name]["rm/accuracy"] > 0.65, (name, reward_stage[name])
        assert reward_stage[name]["rm/spearman_sft"] > 0.3
    saved = json.loads((Path(tiny_cfg.for_condition().paths.reward) / "metrics.json").read_text())
    assert saved["ensemble"]["rm/accuracy"] == reward_stage["ensemble"]["rm/accuracy"]


def test_member_loads_with_plain_transformers_and_is_normalised(tiny_cfg, reward_stage):
    path = Path(tiny_cfg.for_condition().paths.reward) / "member_1"
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    rows = read_jsonl(Path(tiny_cfg.for_condition().paths.preferences) / "sft_samples.jsonl")
    texts = [f"{r['prompt']} {r['response']}" for r in rows]
    ids, mask = encode_texts(tok, texts, 64, [r["ended"] for r in rows])
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        ours = last_token_scores(model, ids, mask)
    torch.testing.assert_close(hf, ours, atol=1e-4, rtol=1e-4)
    z = model.config.reward_gain * ours.numpy() + model.config.reward_bias
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3


def test_members_differ_and_are_nested_runs_in_mlflow(tiny_cfg, reward_stage):
    a = AutoModelForSequenceClassification.from_pretrained(str(Path(tiny_cfg.for_condition().paths.reward) / "member_0"))
    b = AutoModelForSequenceClassification.from_pretrained(str(Path(tiny_cfg.for_condition().paths.reward) / "member_1"))
    assert not torch.equal(a.score.weight, b.score.weight)
    parent = (Path(tiny_cfg.for_condition().paths.reward) / "mlflow_run_id").read_text().strip()
    mlflow.set_tracking_uri(tiny_cfg.tracking.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[tiny_cfg.tracking.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name LIKE 'reward-member-%'",
        output_format="list",
    )
    assert len(runs) == 2
    assert all("rm/accuracy" in r.data.metrics for r in runs)


def test_external_preference_dataset_with_a_malformed_line(tmp_path, tiny_cfg, reward_stage):
    from pipelines import reward

    good = {"prompt": "the plot", "chosen": "was good .", "rejected": "was bad ."}
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "the plot", "chosen": "x"}) + "\n")
    cfg = tiny_cfg.replace(reward={"dataset": str(path)}, paths={"reward": str(tmp_path / "rm")})
    with pytest.raises(DataError, match=r"prefs.jsonl: row 2: 'rejected' is not a non-empty string"):
        reward.run(cfg)
    assert not (tmp_path / "rm" / "clean").exists()  # nothing half-written


def test_external_preference_dataset_trains(tmp_path, tiny_cfg, reward_stage):
    from pipelines import reward

    rng = np.random.default_rng(0)
    words = ["good", "great", "lovely", "bad", "awful", "dull"]
    rows = []
    for _ in range(200):
        pos, neg = rng.choice(words[:3]), rng.choice(words[3:])
        rows.append({"prompt": "the plot", "chosen": f"was {pos} .", "rejected": f"was {neg} ."})
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_cfg.replace(
        reward={"dataset": str(path), "members": 1, "epochs": 3}, paths={"reward": str(tmp_path / "rm")}
    )
    metrics = reward.run(cfg)
    assert metrics["ensemble"]["rm/accuracy"] > 0.9
    # Normalised on the preference stage's fresh SFT samples, whose built-in gold it is compared with.
    assert "rm/spearman_sft" in metrics["ensemble"]


def test_warm_averages_fits_from_one_initialisation_normalised_on_sft_samples(tiny_cfg, reward_stage):
    root = Path(tiny_cfg.for_condition().paths.reward)
    names = ("member_0", "warm_fit_1", "member_1", "warm")
    models = [AutoModelForSequenceClassification.from_pretrained(str(root / name)) for name in names]
    member_0, fit_1, member_1, warm = (dict(m.named_parameters()) for m in models)
    for name in member_0:  # WARM's fits: the ensemble's member 0 and one more (reward.warm_members = 2)
        torch.testing.assert_close(warm[name], (member_0[name] + fit_1[name]) / 2)
    # One initialisation: fit 1 starts from member 0's head and differs in data order only, so its head
    # ends far nearer member 0's than member 1's does, whose head started elsewhere.
    head = "score.weight"
    assert torch.dist(fit_1[head], member_0[head]) < 0.5 * torch.dist(member_1[head], member_0[head])
    assert reward_stage["warm"]["rm/members"] == 2 and reward_stage["warm"]["rm/accuracy"] > 0.65
    rows = read_jsonl(Path(tiny_cfg.for_condition().paths.preferences) / "sft_samples.jsonl")
    tok = AutoTokenizer.from_pretrained(str(root / "warm"))
    ids, mask = encode_texts(tok, [f"{r['prompt']} {r['response']}" for r in rows], 64, [r["ended"] for r in rows])
    with torch.no_grad():
        z = models[3].config.reward_gain * last_token_scores(models[3].eval(), ids, mask).numpy() + models[3].config.reward_bias
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3


def test_the_regularisers_reach_the_reward_models_loss(tiny_cfg, reward_stage):
    from pipelines.reward import pair_loader
    from rlhf_lab.algorithms.bradley_terry import bradley_terry_loss
    from rlhf_lab.engine.reward_module import RewardModule

    model = AutoModelForSequenceClassification.from_pretrained(str(Path(tiny_cfg.for_condition().paths.reward) / "member_0"))
    rows = read_jsonl(Path(tiny_cfg.for_condition().paths.preferences) / "train.jsonl")[:8]
    batch = next(iter(pair_loader(AutoTokenizer.from_pretrained(str(Path(tiny_cfg.paths.sft))), rows, 64, 8, False, 0)))
    module = RewardModule(model, 1e-3, 0.0, 0.0, total_steps=1, label_smoothing=0.2, center_coef=0.05)
    chosen, rejected = module._rewards(batch)
    expected = bradley_terry_loss(chosen, rejected, 0.0, 0.2, 0.05)
    assert module.training_step(batch, 0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(bradley_terry_loss(chosen, rejected).item(), rel=1e-3)


def test_pretrain_seed_members_start_from_backbones_of_their_own(tmp_path, tiny_cfg, reward_stage):
    from pipelines import reward

    cfg = tiny_cfg.replace(reward={"member_init": "pretrain-seed", "epochs": 1, "scaling_pairs": ()},
                           sft={"epochs": 1}, paths={"reward": str(tmp_path / "rm")})  # fmt: skip
    metrics = reward.run(cfg)
    root = Path(cfg.for_condition().paths.reward)
    weights = lambda path: AutoModelForSequenceClassification.from_pretrained(str(path)).transformer.wte.weight  # noqa: E731
    b0, b1, sft = weights(root / "backbones" / "member_0"), weights(root / "backbones" / "member_1"), weights(tiny_cfg.paths.sft)
    assert not torch.allclose(b0, b1) and not torch.allclose(b0, sft)  # other seeds, not the SFT policy
    # Each member fine-tuned from its own backbone: its embeddings are closer to it than to the other's.
    m0 = weights(root / "member_0")
    assert (m0 - b0).norm() < (m0 - b1).norm()
    assert metrics["member_1"]["rm/accuracy"] > 0.55
    # WARM needs one initialisation, which these members lack: it fits its own from the SFT policy.
    fit_0, fit_1, warm = (weights(root / name) for name in ("warm_fit_0", "warm_fit_1", "warm"))
    torch.testing.assert_close(warm, (fit_0 + fit_1) / 2)
    assert (fit_0 - sft).norm() < (fit_0 - b0).norm()
