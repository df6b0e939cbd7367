import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_lab.models.generation import next_token_logits, position_ids, response_mask_from_ids, sample


def tiny_lm(vocab=20, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def test_response_mask_keeps_tokens_up_to_first_eos():
    ids = torch.tensor([[5, 3, 7, 3], [5, 6, 7, 8], [3, 4, 4, 4]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(response_mask_from_ids(ids, eos_token_id=3), expected)


def test_left_padding_does_not_change_the_next_token_distribution():
    model = tiny_lm()
    prompt = torch.tensor([[2, 5, 6]])
    padded = torch.tensor([[0, 0, 2, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    plain = model(prompt).logits[:, -1]
    with_pad = model(padded, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1]
    torch.testing.assert_close(plain, with_pad, atol=1e-5, rtol=1e-5)


def test_cached_sampling_matches_full_recompute_greedy():
    model = tiny_lm()
    ids = torch.tensor([[0, 2, 5], [2, 7, 8]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = sample(model, ids, mask, max_new_tokens=6, eos_token_id=3, pad_token_id=0, temperature=0)
    # Recompute greedily without a cache, one row at a time, from the unpadded prompt.
    for row, start in ((0, 1), (1, 0)):
        seq = ids[row, start:].tolist()
        for t in range(out.response_ids.shape[1]):
            if not out.response_mask[row, t]:
                break
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            assert nxt == int(out.response_ids[row, t])
            seq.append(nxt)


def test_sampling_stops_and_pads_after_eos():
    model = tiny_lm(vocab=6)  # <eos> is one of 6 tokens: most rows end within 12 steps
    g = torch.Generator().manual_seed(0)
    ids = torch.full((16, 2), 2)
    mask = torch.ones_like(ids)
    out = sample(model, ids, mask, 12, eos_token_id=3, pad_token_id=0, generator=g)
    for r, m, ended in zip(out.response_ids, out.response_mask, out.ended):
        n = int(m.sum())
        assert (r[n:] == 0).all()
        assert bool(ended) == bool((r[:n] == 3).any())
        if ended:
            assert int(r[n - 1]) == 3
    assert out.ended.sum() >= 8


def test_categorical_sampler_matches_the_distribution_and_skips_zero_mass():
    from rlhf_lab.models.generation import sample_categorical

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    n = 200000
    draws = sample_categorical(probs.expand(n, -1), g)
    freq = torch.bincount(draws, minlength=5).double() / n
    se = torch.sqrt(probs.double() * (1 - probs.double()) / n)
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-12).all(), freq
    assert freq[1] == 0 and freq[4] == 0


def test_static_cache_step_samples_what_the_growing_cache_samples():
    """The path ppo.compile takes (a preallocated cache; the step uncompiled here) with padded prompts."""
    model = tiny_lm()
    ids = torch.tensor([[0, 0, 2, 5], [2, 7, 8, 9], [0, 2, 4, 4]])
    mask = (ids != 0).long()
    runs = []
    for step in (None, next_token_logits):
        generator = torch.Generator().manual_seed(3)
        runs.append(sample(model, ids, mask, 8, eos_token_id=3, pad_token_id=0, generator=generator,
                           compiled_step=step))  # fmt: skip
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=1e-5)


def test_kept_distributions_are_the_ones_sampled_from():
    model = tiny_lm()
    ids, mask = torch.tensor([[0, 2, 5], [2, 7, 8]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    generator = torch.Generator().manual_seed(0)
    out = sample(model, ids, mask, 5, eos_token_id=3, pad_token_id=0, temperature=0.7, generator=generator,
                 keep_distributions=True)  # fmt: skip
    assert out.distributions.shape == (2, out.response_ids.shape[1], 20)
    torch.testing.assert_close(out.distributions.exp().sum(-1), torch.ones(out.response_ids.shape))
    kept_at_tokens = out.distributions.gather(-1, out.response_ids[..., None]).squeeze(-1) * out.response_mask
    torch.testing.assert_close(kept_at_tokens, out.logprobs)
    # ... and they are the model's own next-token distributions at temperature 0.7.
    full = model(out.sequence_ids, attention_mask=out.sequence_mask,
                 position_ids=position_ids(out.sequence_mask)).logits  # fmt: skip
    R = out.response_ids.shape[1]
    expected = torch.log_softmax(full[:, -R - 1 : -1] / 0.7, dim=-1)
    real = out.response_mask.bool()
    torch.testing.assert_close(out.distributions[real], expected[real], atol=1e-5, rtol=1e-5)
    assert sample(model, ids, mask, 5, 3, 0, temperature=0.7).distributions is None  # not kept by default
