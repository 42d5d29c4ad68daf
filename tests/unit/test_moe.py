"""Mixture of experts: what each token's output is, that every expert takes part in the
backward, the load-balancing loss at its extremes and against HF's, and the loss it adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.common.moe import MoE, load_balancing_loss
from pretrain.models.decoder import DecoderConfig, DecoderLM


def _moe(seed: int = 0, n_experts: int = 4, k: int = 2) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(d_model=16, d_ff=24, n_experts=n_experts, experts_per_token=k)
    moe.init_weights(0.3, 0.3)
    return moe


def test_each_token_is_the_weighted_sum_of_its_top_k_experts():
    moe = _moe()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    out = moe(x)
    for n, token in enumerate(x.reshape(-1, 16)):
        probs = torch.softmax(moe.router.weight @ token, dim=-1)
        top = probs.topk(2)
        expected = torch.zeros(16)
        for p, e in zip(top.values / top.values.sum(), top.indices.tolist(), strict=True):
            gate, up = (moe.gate_up[e] @ token).chunk(2)
            expected += p * (moe.down[e] @ (F.silu(gate) * up))
        assert torch.allclose(out.reshape(-1, 16)[n], expected, atol=1e-5), n
    assert moe.router_logits.shape == (10, 4)


def test_an_expert_without_tokens_gets_a_zero_gradient():
    moe = _moe()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:2] = 5.0  # every token's top 2: experts 0 and 1
    x = torch.rand(3, 4, 16) + 0.1  # positive: experts 0 and 1 win for every token
    moe(x).sum().backward()
    assert moe.gate_up.grad is not None and moe.down.grad is not None
    assert moe.gate_up.grad[:2].abs().sum() > 0 and moe.gate_up.grad[2:].abs().sum() == 0
    assert moe.down.grad[2:].abs().sum() == 0


def test_load_balancing_loss_is_k_when_even_and_e_when_one_expert_takes_all():
    E, k = 4, 2
    # token j puts equal weight on experts j and j+1: every expert chosen equally often
    even = torch.full((E, E), -30.0)
    for j in range(E):
        even[j, j] = even[j, (j + 1) % E] = 0.0
    assert load_balancing_loss([even, even], k).item() == pytest.approx(k, abs=1e-6)
    one = torch.full((8, E), -30.0)
    one[:, 0] = 30.0
    assert load_balancing_loss([one], k).item() == pytest.approx(E, abs=1e-4)


def test_load_balancing_loss_equals_hugging_faces():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(12, 6, generator=g) for _ in range(3)]
    theirs = mixtral.load_balancing_loss_func(tuple(layers), 6, 2)
    assert load_balancing_loss(layers, 2).item() == pytest.approx(theirs.item(), rel=1e-6)


def test_the_training_loss_carries_the_router_loss_per_label_token():
    from pretrain.objectives.base import AttentionSpec, ModelBatch
    from pretrain.train.loss_module import ModelWithLoss

    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=32,
                        max_seq_len=16, n_experts=4, router_aux_loss_coef=0.5)  # fmt: skip
    model = DecoderLM(cfg)
    tokens = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    batch = ModelBatch(input_ids=tokens[:, :-1], labels=tokens[:, 1:], attention=AttentionSpec())
    groups = batch.loss_groups()
    loss_module = ModelWithLoss(model, z_loss=0.0, compute_dtype=None)
    total, ce_sum, _, router_sum = loss_module(batch, groups)
    model.forward_tokens(tokens[:, :-1])
    aux = model.router_aux_loss()
    assert aux > 0
    assert router_sum.item() == pytest.approx(aux.item() * 16, rel=1e-6)  # 16 label tokens
    assert total.item() == pytest.approx(ce_sum.item() + aux.item() * 16, rel=1e-6)
    total.backward()
    assert model.blocks[0].mlp.router.weight.grad.abs().sum() > 0


def test_flops_count_the_k_experts_a_token_runs_through():
    from pretrain.models.spec import matmul_params

    shape = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, d_ff=40, max_seq_len=16)
    dense = DecoderLM(DecoderConfig(**shape))
    moe = DecoderLM(DecoderConfig(**shape, n_experts=8, experts_per_token=2))
    swiglu, router = 3 * 32 * 40, 8 * 32
    assert matmul_params(moe) - matmul_params(dense) == 3 * (swiglu + router)  # 2 MLPs, not 8


def test_experts_one_by_one_compute_what_the_grouped_gemm_does(monkeypatch):
    """The path for GPUs without grouped GEMMs (before H100), checked against the grouped one
    on the CPU: the same outputs and gradients."""
    from pretrain.models.common import moe as moe_module

    results, grouped_calls = [], []
    real_matmul = moe_module.expert_matmul
    monkeypatch.setattr(moe_module, "expert_matmul",
                        lambda *a: grouped_calls.append(1) or real_matmul(*a))  # fmt: skip
    for grouped in (True, False):
        monkeypatch.setattr(moe_module, "grouped_mm_applies", lambda rows, g=grouped: g)
        grouped_calls.clear()
        layer = _moe(n_experts=5, k=2)
        x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2))
        out = layer(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, layer.gate_up.grad, layer.down.grad, layer.router.weight.grad))
        assert len(grouped_calls) == (2 if grouped else 0)  # each path is the one taken
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_recomputed_blocks_give_the_router_loss_its_gradient():
    """Activation checkpointing reruns each block in the backward; the balancing loss, read
    from the first forward's routing, still reaches the router (non-reentrant checkpoints)."""
    from pretrain.distributed.parallelize import apply_activation_checkpointing

    grads = []
    for recompute, router_loss in ((False, True), (True, True), (True, False)):
        torch.manual_seed(0)
        cfg = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=32,
                            max_seq_len=16, n_experts=4, router_aux_loss_coef=1.0)  # fmt: skip
        model = DecoderLM(cfg)
        if recompute:
            apply_activation_checkpointing(model)
        tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
        hidden = model.forward_tokens(tokens)
        loss = model.logits(hidden).square().mean()
        if router_loss:
            loss = loss + model.router_aux_loss()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    router = "blocks.0.mlp.router.weight"  # the router loss moved it: the comparison means it
    assert not torch.allclose(grads[1][router], grads[2][router], atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_experts=-1), "n_experts must be >= 0"),
        (dict(n_experts=4, style="gpt2"), "style 'llama', got 'gpt2'"),
        (dict(n_experts=4, experts_per_token=5), "experts_per_token must be between 1 and"),
        (dict(n_experts=4, router_aux_loss_coef=-0.1), "router_aux_loss_coef must be >= 0"),
    ],
)
def test_impossible_mixtures_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(vocab_size=64, d_model=32, n_heads=4, **overrides)
