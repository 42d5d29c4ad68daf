"""What only a CUDA device can check: FlexAttention's backward (decoder masks; XLNet's two
streams, where the position table's gradient flows back through the kernel), the compiled
cross-entropy in bf16, T5's memory-efficient attention with a bias gradient, and compiled bf16
training.

Skipped without a GPU (CI has none); run on one with ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pretrain.config import ExperimentConfig, load_config
from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.models.encoder_decoder.configs import encoder_decoder_config
from pretrain.models.encoder_decoder.model import EncoderDecoderLM
from pretrain.models.xlnet import XLNetLM, xlnet_config
from pretrain.objectives.base import IGNORE_INDEX, AttentionSpec, ModelBatch
from pretrain.objectives.clm import CausalLM
from pretrain.objectives.plm import PermutationLM
from pretrain.train.compile import compile_for_training
from pretrain.train.trainer import Trainer
from tests.helpers import projected_sum

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("kind", ["causal-docs", "prefix", "prefix-docs"])
def test_flex_attention_forward_and_backward_match_dense_sdpa(kind: str):
    torch.manual_seed(0)
    B, T, V = 2, 256, 300
    cfg = dict(d_model=128, n_heads=4, n_kv_heads=2)
    sdpa = DecoderLM(decoder_config("debug", V, **cfg)).to(CUDA)
    flex = DecoderLM(decoder_config("debug", V, attention_backend="flex", **cfg)).to(CUDA)
    flex.load_state_dict(sdpa.state_dict())
    docs = torch.zeros(B, T, dtype=torch.long, device=CUDA)
    docs[0, 70:], docs[0, 200:], docs[1, 9:] = 1, 2, 3
    base = kind.split("-")[0]
    spec = AttentionSpec(
        base,
        document_ids=docs if kind.endswith("docs") else None,
        prefix_lengths=torch.tensor([40, 130], device=CUDA) if base == "prefix" else None,
    )
    x = torch.randint(0, V, (B, T), device=CUDA)
    outs, grads = [], []
    for model in (sdpa, flex):
        out = model.forward_tokens(x, attention=spec)
        projected_sum(out).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert _rel_err(outs[1], outs[0]) < 1e-3
    for g_flex, g_sdpa in zip(grads[1], grads[0], strict=True):
        assert _rel_err(g_flex, g_sdpa) < 1e-2


@pytest.mark.parametrize("with_bias", [False, True])
def test_compiled_bf16_cross_entropy_matches_fp64_reference(with_bias: bool):
    torch.manual_seed(0)
    N, C, V = 3000, 256, 5000
    hidden = torch.randn(N, C, device=CUDA, requires_grad=True)
    weight = (0.05 * torch.randn(V, C, device=CUDA)).requires_grad_()
    bias = (0.1 * torch.randn(V, device=CUDA)).requires_grad_() if with_bias else None
    labels = torch.randint(0, V, (N,), device=CUDA)
    labels[::7] = IGNORE_INDEX
    params = [hidden, weight] + ([bias] if with_bias else [])
    total, count, ce = cross_entropy_sum(
        hidden, labels, weight, 1e-4, chunk_rows=1024, compute_dtype=torch.bfloat16,
        output_bias=bias, compiled=True,
    )  # fmt: skip
    grads = torch.autograd.grad(total / count, params)

    ref_params = [p.detach().double().requires_grad_() for p in params]
    logits = ref_params[0] @ ref_params[1].t()
    if with_bias:
        logits = logits + ref_params[2]
    valid = labels != IGNORE_INDEX
    lse = torch.logsumexp(logits[valid], dim=-1)
    ref_ce = torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="sum")
    ref_total = ref_ce + 1e-4 * (lse**2).sum()
    ref_grads = torch.autograd.grad(ref_total / int(valid.sum()), ref_params)
    assert int(count) == int(valid.sum())
    assert math.isclose(float(ce), float(ref_ce), rel_tol=2e-3)
    for got, ref in zip(grads, ref_grads, strict=True):
        assert _rel_err(got, ref) < 2e-2


def _t5_batch(B: int, T_enc: int, T_dec: int, pad_from: int) -> ModelBatch:
    """Random span-corruption-shaped batch; row 1 padded from ``pad_from`` (masked keys)."""
    inputs = torch.randint(5, 500, (B, T_enc), device=CUDA)
    inputs[1, pad_from:] = 0
    labels = torch.randint(5, 500, (B, T_dec), device=CUDA)
    decoder_inputs = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    return ModelBatch(
        inputs, labels, AttentionSpec("bidirectional"), decoder_input_ids=decoder_inputs
    )


def _assert_flex_matches_dense(dense, flex, batch: ModelBatch, flex_forward=None) -> None:
    """Same loss (1e-4) and every gradient within 1e-3 relative, through both backends.
    ``flex_forward`` runs the flex model (``torch.compile(flex)``); default: ``flex`` itself."""
    losses = []
    # not `flex_forward or flex`: a compiled module has no truth value (it raises on len())
    flex_forward = flex if flex_forward is None else flex_forward
    for model, forward in ((dense, dense), (flex, flex_forward)):
        total, n, _ = cross_entropy_sum(
            forward(batch),
            batch.labels,
            model.output_weight,
            output_bias=getattr(model, "output_bias", None),
        )
        (total / n).backward()
        losses.append(float(total.detach() / n))
    assert abs(losses[0] - losses[1]) < 1e-4, losses
    for (name, p_dense), p_flex in zip(dense.named_parameters(), flex.parameters(), strict=True):
        if p_dense.grad is None:  # XLNet's segment terms: no token types in pretraining
            assert p_flex.grad is None, name
            continue
        assert _rel_err(p_flex.grad, p_dense.grad) < 1e-3, name


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_t5_attention_bias_gradient_under_bf16_matches_fp32(backend: str):
    """SDPA: the memory-efficient kernel's bias gradient; flex: the gradient of the bf16 bias
    the score_mod reads, which the kernel's backward sums over the batch (in float32, by
    atomic adds, in recent PyTorch: ``zeros_and_scatter_lowering``)."""
    torch.manual_seed(0)
    cfg = encoder_decoder_config("debug", 500, pad_id=0, attention_backend=backend)
    model = EncoderDecoderLM(cfg).to(CUDA)
    batch = _t5_batch(4, 96, 30, pad_from=80)
    labels = batch.labels
    bias_params = [
        model.encoder_position_bias.embed.weight,
        model.decoder_position_bias.embed.weight,
    ]
    results = []
    for dtype in (None, torch.bfloat16):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
            hidden = model(batch)
        total, n, _ = cross_entropy_sum(hidden, labels, model.output_weight, compute_dtype=dtype)
        grads = torch.autograd.grad(total / n, bias_params)
        results.append((float(total / n), grads))
    (loss32, g32), (loss16, g16) = results
    assert math.isfinite(loss16) and math.isclose(loss16, loss32, rel_tol=1e-2)
    for got, ref in zip(g16, g32, strict=True):
        assert float(ref.norm()) > 0 and _rel_err(got, ref) < 5e-2


@pytest.mark.parametrize(
    ("backend", "mode"), [("sdpa", "default"), ("flex", "default"), ("sdpa", "reduce-overhead")]
)
def test_compiled_bf16_training_on_cuda_lowers_the_loss(
    backend: str, mode: str, shards_dir, tokenizer_dir, tmp_path
):
    overrides = {
        "model.size": "debug",
        "model.attention_backend": backend,
        "train.compile_mode": mode,  # reduce-overhead: CUDA graphs
        "data.train": f"[{shards_dir}]",
        "data.val": str(shards_dir),
        "data.tokenizer": str(tokenizer_dir),
        "train.seq_len": 128,
        "train.micro_batch_size": 8,
        "train.tokens_per_batch": 1024,
        "train.max_steps": 40,
        "train.device": "cuda",
        "train.compile": True,
        "optim.lr": 3e-3,
        "optim.warmup_steps": 5,
        "eval.every_steps": 40,
        "eval.max_batches": 2,
        "checkpoint.every_steps": 40,
        "log.progress": False,
        "log.tensorboard": False,
        "run.dir": str(tmp_path / f"{backend}-{mode}"),
    }
    cfg = load_config(ExperimentConfig, None, [f"--{k}={v}" for k, v in overrides.items()])
    trainer = Trainer(cfg)
    assert trainer.autocast_dtype == torch.bfloat16
    losses = [trainer.train_step()["loss"] for _ in range(40)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


@pytest.mark.parametrize("objective", ["clm", "plm"])
def test_queuing_a_training_step_never_waits_for_the_device(
    objective: str, shards_dir, tokenizer_dir, tmp_path
):
    """``Trainer.queue_step`` (batches to the device, forward, loss, backward, clipping, the
    step's sums, the spike check and the optimizer's update, skipped on the device if
    non-finite or a spike) runs with CUDA's sync debug mode set to raise: nothing in it makes
    the host wait, so the device always has the next step queued while the host reads the one
    before."""
    overrides = {
        "model.family": "xlnet" if objective == "plm" else "decoder",
        "model.size": "debug",
        "objective.name": objective,
        "data.train": f"[{shards_dir}]",
        "data.val": "null",
        "data.tokenizer": str(tokenizer_dir),
        "train.seq_len": 128,
        "train.micro_batch_size": 4,
        "train.tokens_per_batch": 1024,  # two micro-batches a step
        "train.max_steps": 10,
        "train.device": "cuda",
        "train.spike_sigma": 6,  # the spike check's device work is queued too
        "log.progress": False,
        "log.tensorboard": False,
        "run.dir": str(tmp_path / objective),
    }
    cfg = load_config(ExperimentConfig, None, [f"--{k}={v}" for k, v in overrides.items()])
    trainer = Trainer(cfg)
    trainer.train_step()  # the first step creates the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        queued = [trainer.queue_step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    records = [trainer._account(q) for q in queued]
    # about ln(vocabulary) at the start; a pinned buffer read before its copy landed holds 0
    assert all(3 < r["loss"] < 12 and not r["skipped"] for r in records)


@pytest.mark.parametrize("compiled", [None, "model", "blocks"])
@pytest.mark.parametrize("position_encoding", ["txl", "rope"])
def test_xlnet_flex_forward_and_backward_match_dense(position_encoding, compiled):
    """Compiled (whole, or block by block as the trainer does by default), the txl position
    tables are rebuilt in the backward (common/recompute.py), and the query stream's rows
    (fewer than 128) run on the main kernel (flex.main_kernel_options)."""
    torch.manual_seed(0)
    B, T, V = 4, 256, 500
    cfg = xlnet_config("debug", V, position_encoding=position_encoding, attention_backend="sdpa")
    dense = XLNetLM(cfg).to(CUDA)
    flex = XLNetLM(dataclasses.replace(cfg, attention_backend="flex")).to(CUDA)
    flex.load_state_dict(dense.state_dict())
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, V, (B, T + 1), generator=g)
    zeros = torch.zeros_like(tokens)
    tb = TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))
    batch = PermutationLM([0, 1], mask_id=2)(tb, g).to(CUDA)
    assert flex.uses_flex(batch.attention) and not dense.uses_flex(batch.attention)
    auto = XLNetLM(dataclasses.replace(cfg, attention_backend="auto")).to(CUDA)
    assert auto.uses_flex(batch.attention)  # XLNet's default: flex on CUDA
    torch._dynamo.reset()
    forward = compile_for_training(flex, compiled) if compiled else None
    _assert_flex_matches_dense(dense, flex, batch, forward)


def test_flex_attend_puts_training_queries_on_the_main_kernel(monkeypatch):
    """An 85-row query (XLNet base's query stream) reaches the compiled kernel with the
    option that keeps it off the flex-decoding kernel, and computes what SDPA does."""
    from pretrain.models.common import flex

    real, seen = flex.compiled_flex_attention(), []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("kernel_options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(flex, "compiled_flex_attention", lambda: spy)
    g = torch.Generator(device=CUDA).manual_seed(0)
    q = torch.randn(2, 4, 85, 64, device=CUDA, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 4, 512, 64, device=CUDA, generator=g) for _ in range(2))
    out = flex.attend(q, k, v)
    assert seen == [flex.main_kernel_options(q, k, v)] and seen[0]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert _rel_err(out, ref) < 1e-3


@pytest.mark.parametrize("compiled", [None, "blocks"])
def test_t5_flex_forward_and_backward_match_dense(compiled):
    """Eager, and compiled block by block (FlexScores and block masks passed into each
    compiled block; the decoder's 60 rows on the main kernel)."""
    torch.manual_seed(0)
    cfg = encoder_decoder_config("debug", 500, pad_id=0)
    dense = EncoderDecoderLM(cfg).to(CUDA)
    flex = EncoderDecoderLM(dataclasses.replace(cfg, attention_backend="flex")).to(CUDA)
    flex.load_state_dict(dense.state_dict())
    torch._dynamo.reset()
    forward = compile_for_training(flex, compiled) if compiled else None
    _assert_flex_matches_dense(dense, flex, _t5_batch(4, 256, 60, pad_from=200), forward)


@pytest.mark.parametrize("objective", ["plm", "clm"])
def test_batches_reach_cuda_intact_through_pinned_queued_copies(objective):
    """``ModelBatch.to`` and ``loss_groups`` return while earlier work still runs on the device
    (the copies are queued, strided windows included), and what arrives equals what left."""
    tokens = torch.randint(10, 500, (4, 65))
    docs = torch.zeros_like(tokens)
    docs[:, 30:] = 1
    tb = TokenBatch(tokens, docs, torch.zeros(4, dtype=torch.long), torch.arange(4))
    if objective == "plm":
        cpu_batch = PermutationLM([0, 1], mask_id=2)(tb, torch.Generator().manual_seed(0))
    else:
        cpu_batch = CausalLM(document_masking=True)(tb)
    assert not cpu_batch.input_ids.is_contiguous()  # a view of the (B, T + 1) windows
    busy = torch.randn(4096, 4096, device=CUDA)
    for _ in range(20):  # tens of milliseconds of fp32 matmuls queued first
        busy = busy @ busy / 64
    batch = cpu_batch.to(CUDA)
    groups = cpu_batch.loss_groups(CUDA)
    assert not torch.cuda.current_stream().query()  # the host did not wait for them
    torch.cuda.synchronize()
    for name in ("input_ids", "labels", "target_mapping"):
        if getattr(cpu_batch, name) is not None:
            assert torch.equal(getattr(batch, name).cpu(), getattr(cpu_batch, name)), name
    for name in ("key_rank", "document_ids"):
        if getattr(cpu_batch.attention, name) is not None:
            got = getattr(batch.attention, name).cpu()
            assert torch.equal(got, getattr(cpu_batch.attention, name)), name
    [(_, rows, positions)] = groups
    assert rows is None and positions.is_cuda
    assert torch.equal(positions.cpu(), torch.nonzero(cpu_batch.labels.reshape(-1) >= 0)[:, 0])


@pytest.mark.parametrize("layout", [False, True])
def test_broadcast_block_masks_equal_create_block_mask_on_cuda(layout: bool):
    """The models' block-mask builder (flex_block_mask.py) gives ``create_block_mask``'s
    tensors on CUDA too (its stable sort and reductions run there), for XLNet's two streams."""
    from tests.unit.test_flex_block_mask import check_xlnet_stream_rules

    check_xlnet_stream_rules(layout, CUDA)
