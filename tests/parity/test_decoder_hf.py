"""DecoderLM against Hugging Face LlamaForCausalLM / GPT2LMHeadModel (DESIGN.md §7)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pretrain.generate import generate
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.models.decoder.hf import from_hf, hf_config, to_hf
from tests.helpers import count_explicit_attention_calls, perturb_norms_and_biases

transformers = pytest.importorskip("transformers")

VOCAB = 384
CASES = {
    "llama-gqa-tied": dict(style="llama", n_heads=4, n_kv_heads=2, tie_embeddings=True),
    "llama-mqa-untied": dict(style="llama", n_heads=4, n_kv_heads=1, tie_embeddings=False),
    "llama-bias-untied": dict(style="llama", n_heads=4, bias=True, tie_embeddings=False),
    "gpt2-tied": dict(style="gpt2", n_heads=4, tie_embeddings=True),
    "gpt2-untied": dict(style="gpt2", n_heads=4, tie_embeddings=False, d_ff=96),
    "mixtral-gqa-untied": dict(style="llama", n_heads=4, n_kv_heads=2, tie_embeddings=False,
                               d_ff=48, n_experts=4, experts_per_token=2),
}  # fmt: skip


def make_model(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    # init 0.1, not 0.02: activations large enough that e.g. a tanh vs erf GELU shows > 1e-5
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, max_seq_len=64, init_std=0.1)
    if overrides.get("style") == "llama":
        kw["rope_theta"] = 5000.0  # not the default, so a dropped theta shows
    model = DecoderLM(DecoderConfig(**{**kw, **overrides}))
    return perturb_norms_and_biases(model).eval()


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request) -> DecoderLM:
    return make_model(**CASES[request.param])


def test_logits_match_hf(case: DecoderLM) -> None:
    hf = to_hf(case)
    expected_cls = "LlamaForCausalLM" if case.cfg.style == "llama" else "GPT2LMHeadModel"
    if case.cfg.n_experts:
        expected_cls = "MixtralForCausalLM"
    assert type(hf).__name__ == expected_cls
    x = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = case.logits(case.forward_tokens(x))
        theirs = hf(x).logits
    assert ours.shape == theirs.shape == (3, 40, VOCAB)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_mixture_of_experts_routes_and_balances_as_mixtral() -> None:
    """Router logits of every layer, and the load-balancing loss, equal HF Mixtral's."""
    model = make_model(**CASES["mixtral-gqa-untied"])
    hf = to_hf(model)
    x = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.forward_tokens(x)
        routed = [block.mlp.router_logits for block in model.blocks]
        ours = model.router_aux_loss()
        theirs = hf(x, output_router_logits=True)
    for a, b in zip(routed, theirs.router_logits, strict=True):
        assert (a - b).abs().max().item() < 1e-5
    coef = model.cfg.router_aux_loss_coef
    assert abs(ours.item() - coef * theirs.aux_loss.item()) < 1e-6 * coef
    assert model.router_aux_loss() is None  # read once: the routing is let go


def test_explicit_positions_match_hf(case: DecoderLM) -> None:
    """Positions not starting at zero go through the RoPE gather / learned-table lookup."""
    hf = to_hf(case)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(7, 23).expand(2, 16)
    with torch.no_grad():
        ours = case.logits(case.forward_tokens(x, position_ids=pos))
        theirs = hf(x, position_ids=pos).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_greedy_generation_matches_hf(case: DecoderLM) -> None:
    hf = to_hf(case)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    ours = generate(case, prompt, max_new_tokens=12, temperature=0)
    # A plain greedy loop on HF: full recompute each step, independent of HF's own cache.
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = hf(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(ours, seq)


def test_round_trip_is_exact(case: DecoderLM) -> None:
    back = from_hf(to_hf(case))
    assert back.cfg == case.cfg
    ours, theirs = case.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(case.forward_tokens(x), back.forward_tokens(x))


def test_hf_model_has_the_same_parameter_count(case: DecoderLM) -> None:
    hf = to_hf(case)
    assert sum(p.numel() for p in hf.parameters()) == case.num_params()
    assert hf.config.tie_word_embeddings == case.cfg.tie_embeddings


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(style="llama", qk_norm=True), "qk_norm"),
        (dict(style="gpt2", qk_norm=True), "qk_norm"),
        (dict(style="gpt2", n_kv_heads=2), "n_kv_heads"),
        (dict(style="gpt2", bias=False), "bias=False"),
    ],
)
def test_options_without_hf_equivalent_are_refused(overrides: dict, named: str) -> None:
    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=1, n_heads=4, **overrides)
    with pytest.raises(ValueError, match=named):
        hf_config(cfg)
    with pytest.raises(ValueError, match=named):
        to_hf(DecoderLM(cfg))


def _hf_llama(**overrides) -> object:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**kw, **overrides}))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(attention_bias=True, mlp_bias=False), "attention_bias"),
        (
            dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
            "rope_type",
        ),
    ],
)
def test_from_hf_refuses_what_it_cannot_express(overrides: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        from_hf(_hf_llama(**overrides))


def test_from_hf_refuses_other_architectures() -> None:
    fake = SimpleNamespace(config=SimpleNamespace(model_type="mistral"))
    with pytest.raises(ValueError, match="mistral"):
        from_hf(fake)


def test_from_hf_reads_an_hf_initialized_model() -> None:
    """A model HF built itself (its own init, its own tied head) converts to the same logits."""
    hf = _hf_llama(num_key_value_heads=2, tie_word_embeddings=True).eval()
    ours = from_hf(hf)
    assert ours.cfg.n_kv_heads == 2 and ours.cfg.tie_embeddings
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (ours.logits(ours.forward_tokens(x)) - hf(x).logits).abs().max().item() < 1e-5


def test_from_hf_upcasts_bf16_checkpoints_to_fp32_master_weights() -> None:
    hf = _hf_llama().to(torch.bfloat16)
    assert from_hf(hf).embed.weight.dtype == torch.float32
    kept = from_hf(hf, dtype=None)
    assert kept.embed.weight.dtype == torch.bfloat16
    assert torch.equal(kept.embed.weight, hf.model.embed_tokens.weight)


@pytest.mark.parametrize("name", ["llama-gqa-tied", "gpt2-tied"])
def test_sequences_longer_than_a_causal_block_match_hf(monkeypatch, name: str) -> None:
    """Past ``CAUSAL_BLOCK`` (128) queries, CPU attention goes by query blocks that skip the
    keys after each block: logits, loss and the tied embedding's gradient still equal HF's."""
    from pretrain.models.common import explicit_attention as ea

    blocked = count_explicit_attention_calls(monkeypatch, ea._CausalBlockAttention)
    model = make_model(**CASES[name], max_seq_len=320)
    hf = to_hf(model)
    x = torch.randint(0, VOCAB, (2, 300), generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, VOCAB, (2, 300), generator=torch.Generator().manual_seed(6))

    ours = model.logits(model.forward_tokens(x))
    theirs = hf(x).logits
    assert len(blocked) == model.cfg.n_layers
    assert (ours - theirs).abs().max().item() < 1e-5
    ours_loss = torch.nn.functional.cross_entropy(ours.flatten(0, 1), y.flatten())
    hf_loss = torch.nn.functional.cross_entropy(theirs.flatten(0, 1), y.flatten())
    ours_loss.backward()
    hf_loss.backward()
    assert abs(ours_loss.item() - hf_loss.item()) < 1e-6
    grad, hf_grad = model.output_weight.grad, hf.get_output_embeddings().weight.grad
    torch.testing.assert_close(grad, hf_grad, rtol=1e-4, atol=1e-6)
