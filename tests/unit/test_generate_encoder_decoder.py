"""Encoder-decoder generation: the cached decoder, EOS handling and span filling."""

from __future__ import annotations

import pytest
import torch

from pretrain.generate_encoder_decoder import fill_spans, generate_encoder_decoder
from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM

VOCAB, PAD = 200, 0


@pytest.fixture(scope="module")
def model() -> EncoderDecoderLM:
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(
        vocab_size=VOCAB,
        d_model=48,
        d_kv=12,
        n_heads=4,
        d_ff=96,
        n_layers=2,
        n_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,  # buckets past the distance are exercised too
    )
    return EncoderDecoderLM(cfg).eval()


def inputs(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_cached_decoding_equals_decoding_everything_at_once(model: EncoderDecoderLM) -> None:
    """One token per call through the cache gives each position the hidden state the whole
    sequence gives it (position bias at the right offset, causal over the cache)."""
    x = inputs(1, (2, 15))
    x[1, 9:] = PAD
    dec = inputs(2, (2, 20))
    mask = x != PAD
    with torch.no_grad():
        memory = model.encode(x)
        whole = model.decode(dec, memory, mask)
        cache = model.new_decoder_cache()
        first = model.decode(dec[:, :5], memory, mask, cache)  # several tokens, then one each
        steps = [first]
        steps += [model.decode(dec[:, t : t + 1], memory, mask, cache) for t in range(5, 20)]
    assert cache.length == 20
    assert (torch.cat(steps, dim=1) - whole).abs().max().item() < 1e-5


def test_generation_stops_each_row_at_eos(model: EncoderDecoderLM) -> None:
    x = inputs(3, (3, 10))
    free = generate_encoder_decoder(model, x, max_new_tokens=8, temperature=0)
    eos = int(free[1, 2])  # row 1 meets this "EOS" at step 3 (others maybe later or never)
    out = generate_encoder_decoder(model, x, max_new_tokens=8, temperature=0, eos_id=eos)
    for row in range(3):
        hits = (free[row] == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else 8
        assert torch.equal(out[row, :stop], free[row, :stop])  # the same until its EOS
        assert (out[row, stop:] == eos).all()  # then padded with EOS
    assert out.shape[1] <= 8


def test_sampling_is_seeded(model: EncoderDecoderLM) -> None:
    x = inputs(4, (10,))

    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate_encoder_decoder(model, x, 10, temperature=1.0, top_k=50, generator=g)

    assert sample(0).shape == (10,)
    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_fill_spans_puts_each_span_at_its_sentinel() -> None:
    s0, s1, s2 = 90, 91, 92
    filled = fill_spans([1, s0, 2, 3, s1, 4], [s0, 10, 11, s1, 12, 99], (s0, s1, s2))
    assert filled == [1, 10, 11, 2, 3, 12, 99, 4]
    # A sentinel without a span in the output stays; output before any sentinel is dropped.
    assert fill_spans([s0, 5, s1], [7, s1, 8], (s0, s1, s2)) == [s0, 5, 8]
