"""Muon with AdamW as one optimizer: which weights each updates, updates equal to PyTorch's
two optimizers run side by side, and a state dict that resumes exactly."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.optim_muon import (
    NS_COEFFICIENTS,
    NS_STEPS,
    MuonWithAdamW,
    hidden_matrices,
    orthogonalize,
    row_blocks,
)


def _model(**overrides) -> DecoderLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16,
               tie_embeddings=False)  # fmt: skip
    return DecoderLM(DecoderConfig(**{**cfg, **overrides}))


def _backward(model: DecoderLM, seed: int) -> None:
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    logits = model.logits(model.forward_tokens(tokens[:, :-1]))
    nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_muon_takes_the_blocks_linear_weights_and_adamw_everything_else(style):
    model = _model(style=style)
    optimizer = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1)
    muon, *adamw = optimizer.param_groups
    assert muon["algorithm"] == "muon" and {g["algorithm"] for g in adamw} == {"adamw"}
    linear = {id(m.weight) for m in model.blocks.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in muon["params"]} == linear and all(p.ndim == 2 for p in muon["params"])
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    rest = {names[id(p)] for g in adamw for p in g["params"]}
    expected = {"embed.weight", "norm.weight", "lm_head.weight"}  # input, output, gains
    assert expected <= rest
    assert all(n in expected or n.split(".")[-1] == "bias" or "norm" in n or n == "pos_embed.weight"
               for n in rest), rest  # fmt: skip
    # AdamW's groups keep their decay rule: norms, biases and embeddings undecayed
    undecayed = {names[id(p)] for g in adamw if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "embed.weight" in undecayed and "lm_head.weight" not in undecayed
    assert muon["weight_decay"] == 0.1 and muon["momentum"] == 0.95


def _matrices(t: torch.Tensor, rows: tuple[int, ...]) -> list[torch.Tensor]:
    """The separate matrices of a fused or stacked weight (or its gradient): each expert's
    (3-D), then each block of ``rows``."""
    return [block for matrix in t.view(-1, *t.shape[-2:]) for block in matrix.split(rows)]


@pytest.mark.parametrize(
    ("overrides", "num_fused"),
    [({}, 4), ({"n_experts": 3, "d_ff": 24}, 4)],  # qkv, gate_up (per expert) of 2 layers
    ids=["dense", "experts"],
)
def test_in_bf16_its_updates_are_pytorchs_muon_and_adamw_side_by_side(overrides, num_fused):
    """PyTorch's Muon on q, k, v, gate and up as separate matrices (as in HF's Llama), and on
    each expert's gate, up and down (HF's Mixtral stacks them), the rest as they are; AdamW
    on everything else: the same weights, bit for bit."""
    ours_model = _model(**overrides)
    theirs_model = copy.deepcopy(ours_model)
    ours = MuonWithAdamW(ours_model, lr=1e-2, weight_decay=0.1, momentum=0.9,
                         ns_dtype=torch.bfloat16)  # fmt: skip
    blocks = row_blocks(theirs_model)
    fused = [p for p in hidden_matrices(theirs_model) if id(p) in blocks]
    assert len(fused) == num_fused
    # each matrix a parameter of its own; the fused weight is copied back after each step
    rows = {id(p): blocks.get(id(p), (p.size(-2),)) for p in hidden_matrices(theirs_model)}
    separate = {
        p: [nn.Parameter(m.detach().clone()) for m in _matrices(p, rows[id(p)])]
        for p in hidden_matrices(theirs_model)
    }
    muon = torch.optim.Muon([q for parts in separate.values() for q in parts], lr=1e-2,
                            weight_decay=0.1, momentum=0.9,
                            adjust_lr_fn="match_rms_adamw")  # fmt: skip
    from pretrain.optim import param_groups

    rest = [
        {**g, "params": [p for p in g["params"] if p not in separate]}
        for g in param_groups(theirs_model, 0.1)
    ]
    adamw = torch.optim.AdamW(
        [g for g in rest if g["params"]], lr=1e-2, betas=(0.9, 0.95), fused=True
    )
    for step, lr in enumerate([1e-2, 3e-3, 5e-3]):  # the schedule sets every group's lr
        for group in ours.param_groups:
            group["lr"] = lr
        for group in (*muon.param_groups, *adamw.param_groups):
            group["lr"] = lr
        _backward(ours_model, step)
        _backward(theirs_model, step)
        for p, parts in separate.items():
            for q, grad in zip(parts, _matrices(p.grad, rows[id(p)]), strict=True):
                q.grad = grad.clone()
        ours.step()
        muon.step()
        adamw.step()
        with torch.no_grad():
            for p, parts in separate.items():
                p.copy_(torch.cat(parts).view_as(p))
        ours.zero_grad()
        theirs_model.zero_grad()
    before = _model(**overrides)
    for (name, a), b, c in zip(ours_model.named_parameters(), theirs_model.parameters(),
                               before.parameters(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name  # every weight moved


def test_fused_projections_split_where_hugging_faces_separate_matrices_do():
    from pretrain.models.decoder.hf import hf_state

    model = _model()  # 4 query heads, 2 key/value heads: q's block is twice k's
    blocks = row_blocks(model)
    hf = hf_state(model)
    for i, block in enumerate(model.blocks):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        assert blocks[id(block.attn.qkv.weight)] == tuple(
            hf[f"{attn}{n}_proj.weight"].size(0) for n in "qkv"
        )
        assert blocks[id(block.mlp.gate_up.weight)] == tuple(
            hf[f"{mlp}{n}_proj.weight"].size(0) for n in ("gate", "up")
        )
        assert id(block.attn.out.weight) not in blocks


def test_a_saved_and_loaded_state_continues_exactly():
    model = _model()
    optimizer = MuonWithAdamW(model, lr=1e-2)
    for step in range(2):
        _backward(model, step)
        optimizer.step()
        optimizer.zero_grad()
    buffer = io.BytesIO()  # as a checkpoint stores it: no unrestricted pickle
    torch.save(optimizer.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    resumed = MuonWithAdamW(resumed_model, lr=1e-2)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state[resumed.param_groups[0]["params"][0]]["momentum_buffer"].abs().sum() > 0
    for m, o in ((model, optimizer), (resumed_model, resumed)):
        for group in o.param_groups:
            group["lr"] = 4e-3  # reaches both inner updates after a load too
        _backward(m, 2)
        o.step()
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_newton_schulz_in_fp32_lands_where_pytorchs_bf16_does():
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    ours = orthogonalize(g, dtype=torch.float32)
    theirs = _zeropower_via_newtonschulz(g, NS_COEFFICIENTS, NS_STEPS, 1e-7)
    assert torch.equal(orthogonalize(g), theirs)  # bf16: the same computation
    singular = torch.linalg.svdvals(ours)
    assert ours.shape == g.shape and 0.6 < singular.min() and singular.max() < 1.25
    assert torch.linalg.svdvals(theirs.float()).sub(singular).abs().max() < 0.05
    # the update's directions are the gradient's: U V^T of its SVD, up to the band above
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(ours.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_fp32_iterations_where_bf16_would_be_emulated(monkeypatch):
    from pretrain.train import cpu_precision

    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: False)
    assert MuonWithAdamW(_model(), lr=1e-3).ns_dtype == torch.float32
    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: True)
    assert MuonWithAdamW(_model(), lr=1e-3).ns_dtype == torch.bfloat16
    # optim.muon_precision chooses (fp32: what the tests comparing ranks pin, on any CPU)
    from pretrain.config import OptimConfig
    from pretrain.optim import build_training_optimizer

    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        optim = OptimConfig(name="muon", muon_precision=precision)
        assert build_training_optimizer(_model(), optim).ns_dtype == dtype
    # the dtype reaches the update: Muon's matrices move differently, AdamW's weights alike
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model()
        _backward(model, 0)
        MuonWithAdamW(model, lr=1e-2, ns_dtype=dtype).step()
        moved[dtype] = dict(model.named_parameters())
    for name, p32 in moved[torch.float32].items():
        same = torch.equal(p32, moved[torch.bfloat16][name])
        is_matrix = name.startswith("blocks.") and name.endswith(
            ("qkv.weight", "out.weight", "gate_up.weight", "down.weight")
        )
        assert same != is_matrix, name


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "xlnet"])
def test_every_family_gives_muon_its_blocks_matrices_and_trains_a_step(family):
    from pretrain.config import ModelConfig
    from pretrain.models.spec import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, size="debug"), 64, 16, 0)
    optimizer = MuonWithAdamW(model, lr=1e-2)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    linear = {id(m.weight) for m in model.blocks.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == linear
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
