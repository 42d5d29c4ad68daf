"""Generation with a KV cache: same tokens as full recomputation, reproducible sampling."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from pretrain.generate import generate, sample_next
from pretrain.models.decoder import DecoderConfig, DecoderLM

VOCAB = 320
STYLES = {
    "llama-gqa": dict(style="llama", n_kv_heads=2),
    "llama-qknorm": dict(style="llama", qk_norm=True, tie_embeddings=False),
    "gpt2": dict(style="gpt2"),
}


def make_model(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=48)
    return DecoderLM(DecoderConfig(**{**kw, **overrides}))


@pytest.fixture(params=list(STYLES), ids=list(STYLES))
def model(request) -> DecoderLM:
    return make_model(**STYLES[request.param])


def prompt(batch: int = 2, length: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_kv_cache_greedy_equals_full_recomputation(model: DecoderLM) -> None:
    x = prompt()
    out = generate(model, x, max_new_tokens=20, temperature=0)
    seq = x
    with torch.no_grad():
        for _ in range(20):
            nxt = model.logits(model.forward_tokens(seq))[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert out.shape == (2, 25)
    assert torch.equal(out, seq)


def test_cached_chunks_equal_one_full_forward(model: DecoderLM) -> None:
    """Several new tokens at an offset attend causally to the cache (bottom-right mask)."""
    x = prompt(length=16)
    with torch.no_grad():
        full = model.forward_tokens(x)
        cache = model.new_kv_cache(2, 16)
        parts = [
            model.forward_tokens(x[:, a:b], kv_cache=cache) for a, b in ((0, 5), (5, 6), (6, 16))
        ]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_seeded_sampling_is_reproducible(model: DecoderLM) -> None:
    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompt(), 16, temperature=1.5, top_k=50, top_p=0.95, generator=g)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_k_1_is_greedy(model: DecoderLM) -> None:
    greedy = generate(model, prompt(), 12, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt(), 12, temperature=2.0, top_k=1, generator=g), greedy)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt(), 12, top_p=1e-6, generator=g), greedy)


def test_eos_stops_and_pads_finished_rows() -> None:
    model = make_model(tie_embeddings=False)  # untied: greedy does not just repeat the prompt
    x = prompt(batch=1)
    free = generate(model, x, 15, temperature=0)[0, 5:]
    eos = int(free[3])
    first = int((free == eos).nonzero()[0])
    assert first >= 2  # precondition of this seed: a stop in mid-generation
    stopped = generate(model, x, 15, temperature=0, eos_id=eos)
    assert stopped.shape == (1, 5 + first + 1)  # stops right after the first eos
    assert torch.equal(stopped[0, 5:], free[: first + 1])

    # Two rows: row 0 stops early, row 1 (which never emits eos) runs on; row 0 is padded.
    x2 = torch.cat([x, prompt(batch=1, seed=7)])
    both = generate(model, x2, 15, temperature=0, eos_id=eos)
    row1_free = generate(model, x2[1:], 15, temperature=0)[0, 5:]
    assert not (row1_free == eos).any()  # precondition of this seed
    assert both.shape == (2, 20)
    assert torch.all(both[0, 5 + first :] == eos)
    assert torch.equal(both[1, 5:], row1_free)


def test_one_dimensional_prompt_and_mode_restored() -> None:
    model = make_model().train()
    out = generate(model, prompt(batch=1)[0], 4, temperature=0)
    assert out.shape == (9,)
    assert model.training  # eval only for the duration of the call


def test_learned_positions_refuse_to_run_past_max_seq_len() -> None:
    model = make_model(style="gpt2")
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, prompt(length=40), max_new_tokens=10)
    # the 9th new token is sampled from position 47 and never fed back: it fits
    out = generate(model, prompt(length=40), max_new_tokens=9, temperature=0)
    assert out.shape == (2, 49)
    with torch.no_grad():  # the same tokens as one forward over the 48 positions
        hidden = model.forward_tokens(out[:, :-1])
    assert torch.equal(model.logits(hidden)[:, 39:].argmax(-1), out[:, 40:])


def test_rope_generates_past_max_seq_len_consistently() -> None:
    """RoPE positions past the table are computed on the fly, same as recomputing them."""
    model = make_model(max_seq_len=8)
    x = prompt(length=6)
    out = generate(model, x, 6, temperature=0)
    with torch.no_grad():
        hidden = model.forward_tokens(out[:, :-1], position_ids=None)
    assert torch.equal(model.logits(hidden)[:, 5:].argmax(-1), out[:, 6:])


def test_rope_past_the_table_keeps_float32_angles_in_a_bf16_model() -> None:
    """A model cast to bf16 rounds its frequency buffer; angles past the table are still those
    of the exact frequencies (bf16 rounding of the result only)."""
    rope = make_model(max_seq_len=8).rope
    exact_cos, _ = rope.to(torch.float64)(4000, offset=0)
    cos, _ = rope.to(torch.bfloat16)(4000, offset=0)
    assert rope.inv_freq.dtype == torch.bfloat16
    assert float((cos.double() - exact_cos).abs().max()) < 4e-3  # bf16: 2**-8 near 1


def test_top_p_one_keeps_every_token() -> None:
    """A float cumulative sum reaches 1.0 before the tail ends; top_p=1 must drop nothing."""
    logits = 3 * torch.randn(4, 50_257, generator=torch.Generator().manual_seed(0))
    with mock.patch("torch.multinomial", wraps=torch.multinomial) as multinomial:
        sample_next(logits, top_p=1.0, generator=torch.Generator().manual_seed(0))
    probs = multinomial.call_args.args[0]
    assert (probs > 0).all()  # no token was dropped


def test_sample_next_support() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(200, 4)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.45, generator=g).tolist()) == {0}
    assert set(sample_next(logits, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.9, generator=g).tolist()) == {0, 1, 2}
    assert sample_next(logits, temperature=0).eq(0).all()
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, top_k=-1)
    assert set(sample_next(logits, top_k=0, generator=g).tolist()) == {0, 1, 2, 3}  # 0: off


def test_a_prefix_prompt_decodes_as_a_prefix_lm_computes_the_whole_sequence(model: DecoderLM):
    """With ``prefix=True`` each step's logits are those of one full forward of the sequence
    so far with the prompt bidirectional (AttentionSpec prefix = prompt length): what a prefix
    LM computes in training. Attended causally, the prompt gives other logits."""
    import pretrain.generate as generate_mod
    from pretrain.objectives.base import AttentionSpec

    x = prompt(length=6)
    seen = []
    real = generate_mod.sample_next

    def recording(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    with mock.patch.object(generate_mod, "sample_next", recording):
        out = generate(model, x, max_new_tokens=10, temperature=0, prefix=True)
    lengths = torch.full((2,), 6)
    with torch.no_grad():
        for step, logits in enumerate(seen):
            seq = out[:, : 6 + step]
            spec = AttentionSpec(kind="prefix", prefix_lengths=lengths)
            full = model.logits(model.forward_tokens(seq, attention=spec))[:, -1]
            torch.testing.assert_close(logits, full, rtol=0, atol=1e-4)
            causal = model.logits(model.forward_tokens(seq))[:, -1]
            assert (logits - causal).abs().max() > 1e-3
