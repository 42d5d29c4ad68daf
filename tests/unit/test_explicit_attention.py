"""The explicit-GEMM attention path (bf16 on CPU) computes what SDPA computes, masks included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.common import explicit_attention as ea
from pretrain.models.common.attention import attention_mask
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from tests.helpers import assert_close_to_scale, count_explicit_attention_calls

B, H, T, HD = 2, 4, 12, 8


@pytest.fixture(autouse=True, params=["one block", "blocks of 5"])
def causal_block(request, monkeypatch) -> int:
    """Every test runs with causal attention in one block (T <= CAUSAL_BLOCK) and in query
    blocks of 5 (5, 5 and 2 rows for T = 12: :class:`_CausalBlockAttention`)."""
    block = ea.CAUSAL_BLOCK if request.param == "one block" else 5
    monkeypatch.setattr(ea, "CAUSAL_BLOCK", block)
    return block


def qkv(dtype: torch.dtype, kv_heads: int = H, t_keys: int = T, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, HD, generator=g, dtype=torch.float64).to(dtype)
    k, v = (
        torch.randn(B, kv_heads, t_keys, HD, generator=g, dtype=torch.float64).to(dtype)
        for _ in range(2)
    )
    return [t.requires_grad_() for t in (q, k, v)]


def document_mask() -> torch.Tensor:
    docs = torch.tensor([[0] * 5 + [1] * 7, [2] * 12])
    return attention_mask(AttentionSpec(document_ids=docs), T)  # (B, 1, T, T), causal


def run(fn, q, k, v, **kw):
    out = fn(q, k, v, **kw)
    # drawn in fp64 and rounded: every dtype gets the same upstream gradient
    g = torch.Generator().manual_seed(9)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    q_grad, k_grad, v_grad = torch.autograd.grad(out, (q, k, v), grad)
    return out, q_grad, k_grad, v_grad


CASES = {
    "causal": lambda: dict(is_causal=True),
    "bidirectional": lambda: {},
    "documents": lambda: dict(mask=document_mask()),
    "bidirectional documents": lambda: dict(
        mask=attention_mask(
            AttentionSpec(kind="bidirectional", document_ids=torch.tensor([[0] * 7 + [1] * 5] * 2)),
            T,
        )
    ),
    "prefix": lambda: dict(
        mask=attention_mask(AttentionSpec(kind="prefix", prefix_lengths=torch.tensor([4, 9])), T)
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_outputs_and_gradients_match_sdpa_in_fp64(case: str, kv_heads: int) -> None:
    kw = CASES[case]()
    q, k, v = qkv(torch.float64, kv_heads)
    ours = run(ea.explicit_attention, q, k, v, **kw)
    sdpa_kw = dict(kw, enable_gqa=kv_heads != H)
    if "mask" in sdpa_kw:
        sdpa_kw["attn_mask"] = sdpa_kw.pop("mask")
    ref = run(F.scaled_dot_product_attention, q, k, v, **sdpa_kw)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_queries_and_keys_of_different_lengths_use_the_boolean_mask() -> None:
    # Decoding with a KV cache: 12 new queries over 20 keys, the triangle aligned bottom-right.
    from pretrain.models.common.attention import cached_causal_mask

    q, k, v = qkv(torch.float64, t_keys=20)
    mask = cached_causal_mask(T, 8, "cpu")
    ours = run(ea.explicit_attention, q, k, v, mask=mask)
    ref = run(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["documents", "causal"])
def test_bf16_error_is_that_of_sdpa_in_bf16(case: str) -> None:
    q, k, v = qkv(torch.bfloat16)
    kw = dict(is_causal=True) if case == "causal" else dict(attn_mask=document_mask())
    exact = run(F.scaled_dot_product_attention, *(t.double() for t in (q, k, v)), **kw)
    ours_kw = dict(kw) if case == "causal" else dict(mask=kw["attn_mask"])
    ours = run(ea.explicit_attention, q, k, v, **ours_kw)
    sdpa = run(F.scaled_dot_product_attention, q, k, v, **kw)
    for name, e, a, b in zip(("out", "dq", "dk", "dv"), exact, ours, sdpa, strict=True):
        assert a.dtype == torch.bfloat16, name
        err_ours = (a.double() - e).abs().max().item()
        err_sdpa = (b.double() - e).abs().max().item()
        assert err_ours <= 2 * err_sdpa + 1e-2, (name, err_ours, err_sdpa)


def test_a_masked_key_has_no_influence_and_gets_no_gradient() -> None:
    q, k, v = qkv(torch.bfloat16)
    out = ea.explicit_attention(q, k, v, is_causal=True)
    # The last key is visible to the last query only: its gradients come from that row alone.
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, -1] += 5.0
    v2[:, :, -1] -= 5.0
    out2 = ea.explicit_attention(q, k2, v2, is_causal=True)
    assert torch.equal(out[:, :, :-1], out2[:, :, :-1])
    assert not torch.equal(out[:, :, -1], out2[:, :, -1])
    # Query 0 sees key 0 only: its output sends no gradient to any later key or value.
    k1, v1 = k.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    first = ea.explicit_attention(q.detach(), k1, v1, is_causal=True)[:, :, 0].float().sum()
    k_grad, v_grad = torch.autograd.grad(first, (k1, v1))
    assert torch.count_nonzero(k_grad[:, :, 1:]) == 0
    assert torch.count_nonzero(v_grad[:, :, 1:]) == 0
    assert torch.count_nonzero(v_grad[:, :, 0]) > 0


def test_causal_blocks_skip_the_keys_after_each_block(causal_block: int) -> None:
    """In blocks, query rows [s, e) keep probabilities for keys [0, e) only, and the path is
    taken exactly when the sequence is longer than one block."""
    q, k, v = qkv(torch.float64)
    out = ea.explicit_attention(q, k, v, is_causal=True)
    saved = out.grad_fn.saved_tensors[3:]  # q, k, v, then the probabilities
    blocks = [(s, min(s + causal_block, T)) for s in range(0, T, causal_block)]
    assert [p.shape[-2:] for p in saved] == [(e - s, e) for s, e in blocks]
    blocked = type(out.grad_fn).__name__.startswith("_CausalBlockAttention")
    assert blocked == (T > causal_block)
    if blocked:
        assert sum(p.numel() for p in saved) < B * H * T * T


def test_dispatch_rule() -> None:
    short = torch.zeros(1, 1, ea.MAX_KEYS, 8, dtype=torch.bfloat16)
    long = torch.zeros(1, 1, ea.MAX_KEYS + 1, 8, dtype=torch.bfloat16)
    assert ea.prefers_explicit(short, short)
    assert not ea.prefers_explicit(long, long)  # long sequences: the flash kernel
    assert not ea.prefers_explicit(short.float(), short.float())  # fp32: the flash kernel
    assert ea.prefers_explicit(short.float(), short.float(), causal=True)  # but blocked causal
    assert not ea.prefers_explicit(short.float()[:, :, :1], short.float(), causal=True)  # cache
    assert not ea.prefers_explicit(long.float(), long.float(), causal=True)
    assert not ea.prefers_explicit(short, short.float())  # q and k of different dtypes
    on_meta = short.to("meta")  # any device but the CPU: its own kernels
    assert not ea.prefers_explicit(on_meta, on_meta, causal=True)
    # fp32 with a float mask that needs a gradient: SDPA would run its math backend
    f32 = short.float()
    learned = torch.zeros(1, 1, ea.MAX_KEYS, ea.MAX_KEYS, requires_grad=True)
    assert ea.prefers_explicit(f32, f32, mask=learned)
    assert not ea.prefers_explicit(f32, f32, mask=learned.detach())  # the flash kernel
    assert not ea.prefers_explicit(f32, f32, mask=learned.detach() > 0)
    assert not ea.prefers_explicit(long.float(), long.float(), mask=learned)


def test_compiled_graphs_keep_sdpa(monkeypatch) -> None:
    short = torch.zeros(1, 1, 8, 8, dtype=torch.bfloat16)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not ea.prefers_explicit(short, short, causal=True)


def test_refuses_both_a_mask_and_is_causal() -> None:
    q, k, v = qkv(torch.float32)
    with pytest.raises(ValueError, match="not both"):
        ea.explicit_attention(q, k, v, mask=document_mask(), is_causal=True)


@pytest.mark.parametrize("bias_shape", [(1, H, T, T), (B, 1, 1, T), (B, H, T, T)])
def test_a_learned_float_bias_gets_the_gradient_sdpa_gives_it(bias_shape) -> None:
    # T5: no score scaling, a learned position bias (plus the padding mask) added to scores.
    q, k, v = qkv(torch.float64)
    g = torch.Generator().manual_seed(7)
    bias = torch.randn(bias_shape, generator=g, dtype=torch.float64).requires_grad_()
    grad = torch.randn(B, H, T, HD, generator=g, dtype=torch.float64)
    ours = ea.explicit_attention(q, k, v, mask=bias, scale=1.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(ours, (q, k, v, bias), grad)
    want = torch.autograd.grad(ref, (q, k, v, bias), grad)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def small_decoder(**overrides) -> DecoderLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return DecoderLM(DecoderConfig(**{**cfg, **overrides})).eval()


def bf16_logits(model: DecoderLM, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model.logits(model.forward_tokens(x, **kw)).float()


def test_decoder_in_bf16_takes_the_explicit_path_and_agrees_with_sdpa(monkeypatch) -> None:
    # init 0.1, not 0.02: attention then moves the logits enough for a wrong rotation to show
    model = small_decoder(init_std=0.1)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    calls = count_explicit_attention_calls(monkeypatch)
    explicit = bf16_logits(model, x)
    assert len(calls) == 2  # one per layer
    monkeypatch.setattr(ea, "MAX_KEYS", x.shape[1] - 1)  # one key too many: SDPA
    sdpa = bf16_logits(model, x)
    with torch.no_grad():  # fp32 through SDPA too (fp32 causal would take the explicit path)
        exact = model.logits(model.forward_tokens(x))
    assert len(calls) == 2
    assert (explicit - exact).abs().max() <= 2 * (sdpa - exact).abs().max()


@pytest.mark.parametrize("t", [1, 11, 23])
def test_decoder_in_bf16_stays_causal(t: int) -> None:
    model = small_decoder()
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(t))
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % 97
    a, b = bf16_logits(model, x), bf16_logits(model, y)
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3


def test_decoder_in_bf16_keeps_documents_apart() -> None:
    model = small_decoder()
    docs = torch.tensor([[0] * 10 + [1] * 14, [5] * 24])
    spec = AttentionSpec(document_ids=docs)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(4))
    y = x.clone()
    y[0, :10] = torch.randint(0, 97, (10,), generator=torch.Generator().manual_seed(5))
    a, b = bf16_logits(model, x, attention=spec), bf16_logits(model, y, attention=spec)
    assert torch.equal(a[0, 10:], b[0, 10:])
    assert torch.equal(a[1], b[1])


def test_sdpa_runs_its_math_backend_for_a_mask_that_needs_a_gradient() -> None:
    """Why fp32 attention with a learned bias takes the explicit path (``prefers_explicit``):
    PyTorch's CPU flash kernel has no mask gradient, so SDPA falls back to composite ops."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (t.float().requires_grad_() for t in qkv(torch.float32))
    for learned, kernel in ((True, "attention_math"), (False, "flash_attention_for_cpu")):
        bias = torch.zeros(1, H, T, T, requires_grad=learned)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias).sum().backward()
        ran = sorted(e.key for e in prof.key_averages() if "_scaled_dot_product" in e.key)
        assert f"aten::_scaled_dot_product_{kernel}" in ran, (learned, ran)


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float32])
def test_t5_takes_the_explicit_path_with_the_position_bias_learned(monkeypatch, precision) -> None:
    from pretrain.losses import cross_entropy_sum
    from pretrain.models.encoder_decoder import EncoderDecoderConfig, EncoderDecoderLM

    torch.manual_seed(0)
    cfg = EncoderDecoderConfig(vocab_size=97, d_model=32, d_kv=8, n_heads=4, d_ff=64, n_layers=2)
    model = EncoderDecoderLM(cfg)
    g = torch.Generator().manual_seed(1)
    x, dec, labels = (torch.randint(1, 97, (2, n), generator=g) for n in (20, 9, 9))
    x[1, 15:] = cfg.pad_id  # padding: the mask rides in the float bias

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        batch = ModelBatch(
            input_ids=x,
            labels=labels,
            decoder_input_ids=dec,
            attention=AttentionSpec("bidirectional"),
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            hidden = model(batch)
        total, count, _ = cross_entropy_sum(hidden, labels, model.output_weight)
        (total / count).backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = count_explicit_attention_calls(monkeypatch)
    explicit_loss, explicit_grads = step()
    # bf16: every attention; fp32: the encoder's and the decoder's self-attention, whose bias
    # is learned (cross-attention's pad mask is not: SDPA's flash kernel), two layers each
    assert len(calls) == (6 if precision == torch.bfloat16 else 4)
    monkeypatch.setattr(ea, "MAX_KEYS", 0)
    sdpa_loss, sdpa_grads = step()
    assert len(calls) == (6 if precision == torch.bfloat16 else 4)
    if precision == torch.float32:  # the same arithmetic as SDPA's math backend
        torch.testing.assert_close(explicit_loss, sdpa_loss, rtol=1e-6, atol=0)
        for name, grad in explicit_grads.items():
            assert_close_to_scale(grad, sdpa_grads[name], 1e-4, name)
        return
    torch.testing.assert_close(explicit_loss, sdpa_loss, rtol=2e-2, atol=0)
    for name in ("encoder_position_bias.embed.weight", "decoder_position_bias.embed.weight"):
        a, b = explicit_grads[name], sdpa_grads[name]
        assert a.abs().sum() > 0, name
        cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cosine > 0.99, (name, cosine)
        norm_ratio = a.norm() / b.norm()  # the same size too, not only the same direction
        assert abs(norm_ratio - 1) < 0.05, (name, norm_ratio)
