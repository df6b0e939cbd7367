"""End-to-end: data and SFT stages on a tiny config, and the external-model path."""

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from rlhf_lab.data.files import DataError, read_jsonl
from rlhf_lab.models.loading import encode_texts, train_word_tokenizer
from rlhf_lab.task.grammar import is_grammatical
from tests.conftest import tiny_config


def test_data_stage_writes_splits_and_tokenizer(tiny_cfg, data_stage):
    data = Path(tiny_cfg.paths.data)
    assert data_stage["data/train"] == 2000
    rows = read_jsonl(data / "train.jsonl", required=("text",))
    assert all(is_grammatical(r["text"].split()) for r in rows[:100])
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    assert tok.unk_token_id not in tok.encode(rows[0]["text"])
    assert (data / "config.yaml").is_file()


def test_the_built_in_policy_uses_the_exact_gelu():
    from rlhf_lab.config import ModelConfig
    from rlhf_lab.models.loading import build_policy

    model = build_policy(ModelConfig(), train_word_tokenizer(["a good film", "a bad film"]))
    x = torch.linspace(-4, 4, 101)
    act = model.transformer.h[0].mlp.act
    torch.testing.assert_close(act(x), torch.nn.functional.gelu(x))  # erf; the tanh form differs by up to 1e-3
    assert (act(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() > 1e-4


def test_sft_loss_falls_and_model_reloads(tiny_cfg, sft_stage):
    out = Path(tiny_cfg.paths.sft)
    vocab = json.loads((Path(tiny_cfg.paths.data) / "stats.json").read_text())["data/vocab_size"]
    # Uniform guessing costs ln(vocab) nats; SFT must be far below that.
    assert sft_stage["sft/val_loss"] < 0.6 * math.log(vocab)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["sft/val_loss"] == sft_stage["sft/val_loss"]

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    prompt = torch.tensor([[tok.bos_token_id] + tok.encode("the plot", add_special_tokens=False)])
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > prompt.shape[1]
    # A trained model continues "the plot" with a verb of the grammar.
    first = tok.decode(generated[0, prompt.shape[1]]).strip()
    assert first in ("was", "is", "seemed", "felt", "looked", "remained", "became", "appeared", "sounded")


def test_sft_run_is_in_mlflow(tiny_cfg, sft_stage):
    run_id = (Path(tiny_cfg.paths.sft) / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(tiny_cfg.tracking.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params["sft.lr"] == str(tiny_cfg.sft.lr)
    assert "sft/val_loss" in run.data.metrics and "sft/train_loss" in run.data.metrics
    history = client.get_metric_history(run_id, "sft/train_loss")
    assert len(history) >= 3 and history[-1].value < history[0].value
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "samples.jsonl", "config.yaml", "samples"} <= artifacts


def test_external_model_and_text_files(tmp_path, tracking_uri):
    """A user's HF model (saved here with save_pretrained) and local text files run the same stages."""
    from pipelines import data, sft

    texts = [f"item {i} is {'good' if i % 2 else 'bad'} and cheap" for i in range(300)]
    (tmp_path / "demos.txt").write_text("\n".join(texts))
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": f"item {i}"}) for i in range(40)))
    tok = train_word_tokenizer(texts)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "user_model")
    tok.save_pretrained(tmp_path / "user_model")

    config = tiny_config(
        tmp_path / "run", tracking_uri,
        data={"source": str(tmp_path / "demos.txt"), "prompts": str(tmp_path / "prompts.jsonl")},
        model={"name_or_path": str(tmp_path / "user_model")},
        sft={"epochs": 1, "max_length": 16, "warmup_steps": 2, "num_samples": 2},
    )  # fmt: skip
    stats = data.run(config)
    assert "gold/demonstrations_mean" not in stats  # no gold reward for external data
    metrics = sft.run(config)
    assert math.isfinite(metrics["sft/val_loss"]) and "gold/score" not in metrics
    reloaded = AutoModelForCausalLM.from_pretrained(config.paths.sft)
    assert reloaded.config.n_embd == 16


def test_corrupt_dataset_line_names_file_and_line(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"demos.jsonl:2: not valid JSON"):
        read_jsonl(path, required=("text",))
    path.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    with pytest.raises(DataError, match=r"demos.jsonl:2: missing string field 'text'"):
        read_jsonl(path, required=("text",))


def test_encode_texts_pads_right_and_masks():
    tok = train_word_tokenizer(["a b c", "a"])
    ids, mask = encode_texts(tok, ["a b c", "a"], max_length=10)
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert ids[1, 3:].tolist() == [tok.pad_token_id] * 2
    assert ids[0, 0] == tok.bos_token_id and ids[0, 4] == tok.eos_token_id


def test_a_loaded_tokenizer_saves_the_same_bytes_online_or_offline(tmp_path, monkeypatch):
    """`make repro` runs offline and a bare `dvc repro` may not: the stages' outputs, and so DVC's
    hashes of everything downstream, must not depend on it."""
    import huggingface_hub.constants

    from rlhf_lab.models.loading import load_tokenizer

    train_word_tokenizer(["a b c", "b c d"]).save_pretrained(tmp_path / "source")
    saved = {}
    for offline in (True, False):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        load_tokenizer(tmp_path / "source").save_pretrained(tmp_path / str(offline))
        saved[offline] = (tmp_path / str(offline) / "tokenizer_config.json").read_bytes()
    assert saved[True] == saved[False]
