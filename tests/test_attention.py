"""The "bmm" attention: the same function as PyTorch's fused kernel, on every mask a model meets."""

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from rlhf_lab.config import PPOConfig, RuntimeConfig, UserError
from rlhf_lab.engine.ppo_module import PPOModule
from rlhf_lab.models.attention import bmm_attention, resolve_attention, use_attention
from rlhf_lab.models.generation import next_token_logits, position_ids, sample
from rlhf_lab.runtime.stage import make_trainer


def gpt2():
    cfg = GPT2Config(vocab_size=20, n_positions=32, n_embd=16, n_layer=2, n_head=4, bos_token_id=2,
                     eos_token_id=3, pad_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(cfg)


def llama_gqa():
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(cfg)


def pair(make):
    """The same weights twice: PyTorch's fused kernel (sdpa) and bmm."""
    torch.manual_seed(0)
    fused = make()
    fused.set_attn_implementation("sdpa")
    bmm = copy.deepcopy(fused)
    bmm.config = copy.deepcopy(fused.config)  # the implementation is read from the config
    bmm.set_attn_implementation("bmm")
    return fused, bmm


MASKS = {
    "no mask": None,
    "left padding": [[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8, [0, 1, 1, 1, 1, 1, 1, 1]],
    "right padding": [[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8, [1, 1, 1, 1, 1, 1, 1, 0]],
}


@pytest.mark.parametrize("make", [gpt2, llama_gqa], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_bmm_attention_matches_the_fused_kernel_in_values_and_gradients(make, mask_name):
    fused, bmm = pair(make)
    ids = torch.randint(4, 20, (3, 8))
    mask = None if MASKS[mask_name] is None else torch.tensor(MASKS[mask_name])
    kwargs = {} if mask is None else {"attention_mask": mask, "position_ids": position_ids(mask)}
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    outputs = []
    for model in (fused, bmm):
        logits = model(input_ids=ids, **kwargs).logits
        assert torch.isfinite(logits).all()  # fully masked (padding) queries stay finite
        logits[keep].logsumexp(-1).sum().backward()
        outputs.append((logits[keep], {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-5, rtol=1e-5)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("static_cache", [False, True], ids=["growing cache", "static cache"])
def test_bmm_attention_samples_what_the_fused_kernel_samples(static_cache):
    """Decoding one query at a time against a KV cache (the static one is the path ppo.compile takes)."""
    fused, bmm = pair(gpt2)
    ids = torch.tensor([[0, 0, 2, 5], [2, 7, 8, 9], [0, 2, 4, 4]])
    runs = []
    for model in (fused, bmm):
        generator = torch.Generator().manual_seed(3)
        step = next_token_logits if static_cache else None
        runs.append(sample(model, ids, (ids != 0).long(), 10, eos_token_id=3, pad_token_id=0,
                           generator=generator, compiled_step=step))  # fmt: skip
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[1].logprobs, runs[0].logprobs, atol=1e-5, rtol=1e-5)


def test_auto_means_bmm_on_cpu_only():
    assert resolve_attention("auto", torch.device("cpu")) == "bmm"
    assert resolve_attention("auto", torch.device("cuda")) is None  # the model's own fused kernel
    assert resolve_attention("sdpa", torch.device("cpu")) == "sdpa"


def test_an_attention_that_cannot_run_is_a_clear_error():
    with pytest.raises(UserError, match="attention 'flash_attention_2' cannot run GPT2LMHeadModel"):
        use_attention([gpt2()], "flash_attention_2", torch.device("cpu"))  # flash-attn is not installed


@pytest.mark.parametrize("choice, expected", [("auto", "bmm"), ("sdpa", "sdpa")])
def test_ppo_switches_its_four_models_to_the_chosen_attention(choice, expected):
    torch.manual_seed(0)
    lm = dict(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=2, eos_token_id=3,
              pad_token_id=0)  # fmt: skip
    policy, ref = GPT2LMHeadModel(GPT2Config(**lm)), GPT2LMHeadModel(GPT2Config(**lm))
    reward = GPT2ForSequenceClassification(GPT2Config(**lm, num_labels=1))
    value = GPT2ForSequenceClassification(GPT2Config(**lm, num_labels=1))
    cfg = PPOConfig(iterations=1, batch_size=4, ppo_epochs=1, minibatches=1, max_new_tokens=3,
                    attention=choice)  # fmt: skip
    module = PPOModule(cfg, policy, ref, [reward], value, eos_token_id=3, pad_token_id=0)
    prompts = torch.full((4, 2), 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)),
                                         batch_size=4)  # fmt: skip
    make_trainer(RuntimeConfig(), logger=False, max_steps=1, enable_progress_bar=False).fit(module, loader)
    assert [m.config._attn_implementation for m in (policy, ref, reward, value)] == [expected] * 4


def test_bmm_attention_continues_a_cached_prefix_with_several_queries():
    """T queries after S - T cached positions, causal mask implied: query i sees keys 0 .. S - T + i."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    module = torch.nn.Module()  # the attention layer; only its is_causal and training are read
    out, _ = bmm_attention(module, q, k, v, attention_mask=None, is_causal=True)
    allowed = torch.arange(7)[None, :] <= torch.arange(3)[:, None] + 4
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
