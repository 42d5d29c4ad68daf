"""Regional compilation (train.compile_scope=blocks): one graph per kind of block, same values."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from pretrain.models.encoder_decoder import EncoderDecoderLM, encoder_decoder_config
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.train.compile import compile_for_training
from tests.helpers import assert_close_to_scale, projected_sum
from tests.unit.test_xlnet import make_model, plm_batch

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def graphs_and_grads(model: nn.Module, batch: ModelBatch) -> tuple[int, torch.Tensor, dict]:
    """(graphs Dynamo built, output, gradients) of a forward and backward compiled by blocks
    with the aot_eager backend (traced and partitioned like Inductor's, no code generated)."""
    counters.clear()
    run = compile_for_training(model, "blocks", backend="aot_eager")
    out = run(batch)
    projected_sum(out).backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    return counters["stats"]["unique_graphs"], out, grads


def assert_same_as_eager(model: nn.Module, batch: ModelBatch, expected_graphs: int) -> None:
    eager = copy.deepcopy(model)
    out = eager(batch)
    projected_sum(out).backward()
    graphs, compiled_out, grads = graphs_and_grads(model, batch)
    assert graphs == expected_graphs
    torch.testing.assert_close(compiled_out, out, rtol=1e-5, atol=1e-6)
    expected = {k: p.grad for k, p in eager.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    for k in expected:
        assert_close_to_scale(grads[k], expected[k], 1e-4, k)


def test_xlnet_blocks_share_a_graph_the_last_one_its_own():
    """Every block but the last runs one graph; the last skips its content output (a second)."""
    model = make_model().train()
    assert len(model.blocks) == 2
    model.blocks.append(copy.deepcopy(model.blocks[0]))  # three: first, middle, last
    assert_same_as_eager(model, plm_batch(), expected_graphs=2)


def test_t5_encoder_and_decoder_blocks_one_graph_each():
    torch.manual_seed(0)
    cfg = encoder_decoder_config("debug", 97, pad_id=0)
    model = EncoderDecoderLM(cfg).train()
    assert cfg.n_layers > 1 and cfg.n_decoder_layers > 1
    ids = torch.randint(1, 97, (2, 24))
    batch = ModelBatch(
        input_ids=ids,
        labels=ids[:, :8],
        attention=AttentionSpec(kind="bidirectional"),
        decoder_input_ids=ids[:, :8],
    )
    assert_same_as_eager(model, batch, expected_graphs=2)


def test_bad_scope_and_a_model_without_blocks_are_refused():
    with pytest.raises(ValueError, match="train.compile_scope='layers'"):
        compile_for_training(make_model(), "layers")
    with pytest.raises(ValueError, match="Linear has no .blocks.*compile_scope=model"):
        compile_for_training(nn.Linear(2, 2), "blocks")


@pytest.mark.parametrize(
    ("mode", "device", "accum", "refused"),
    [
        ("reduce-overhead", "cuda", 2, True),
        ("max-autotune", "cuda", 4, True),
        ("reduce-overhead", "cuda", 1, False),  # one micro-batch a step: nothing accumulates
        ("max-autotune-no-cudagraphs", "cuda", 4, False),
        ("default", "cuda", 4, False),
        ("reduce-overhead", "cpu", 4, False),  # no CUDA graphs on the CPU
    ],
)
def test_cuda_graphs_are_refused_where_gradients_accumulate(mode, device, accum, refused):
    from pretrain.config import ConfigError
    from pretrain.train.compile import refuse_cuda_graphs_with_accumulation

    if refused:
        with pytest.raises(ConfigError, match=f"train.compile_mode={mode}.*{accum} a step"):
            refuse_cuda_graphs_with_accumulation(mode, device, accum)
    else:
        refuse_cuda_graphs_with_accumulation(mode, device, accum)
