"""Per-batch training FLOPs against PyTorch's own count of the matrix products run.

``torch.utils.flop_counter.FlopCounterMode`` counts every matmul of a forward and backward.
The weight products it sees must equal :func:`count_batch`'s ``weights`` exactly, and the
batched products its ``attention`` and ``positions`` (SDPA on its math kernel), for every
family and objective: the decoder over all tokens, MLM's head on the selected rows only, T5's
decoder over the targets, XLNet's query stream over its rows and its last layer's content
stream cut to keys and values. (The loss here is a plain cross-entropy over the labeled rows:
the fused one writes its gradients with ``out=`` matmuls the counter does not see.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.data.loader import TokenBatch
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.models.encoder.configs import encoder_config
from pretrain.models.encoder.model import EncoderLM
from pretrain.models.encoder_decoder import EncoderDecoderLM, encoder_decoder_config
from pretrain.models.spec import matmul_params
from pretrain.models.xlnet import XLNetLM, xlnet_config
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.clm import CausalLM
from pretrain.objectives.mlm import MaskedLM
from pretrain.objectives.plm import PermutationLM
from pretrain.objectives.span import SpanCorruption
from pretrain.scaling.batch_flops import batch_flops, count_batch, step_flops
from pretrain.scaling.flops import flops_per_token

VOCAB, SPECIAL, B, T = 500, 110, 3, 64


def token_batch(length: int) -> TokenBatch:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(SPECIAL, VOCAB, (B, length), generator=g)
    zeros = torch.zeros_like(tokens)
    return TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))


def case(name: str):
    torch.manual_seed(0)
    clm = CausalLM(document_masking=False)
    if name == "llama":
        return DecoderLM(decoder_config("debug", VOCAB)), clm, T + 1
    if name == "gpt2-untied":
        cfg = decoder_config("debug", VOCAB, style="gpt2", tie_embeddings=False)
        return DecoderLM(cfg), clm, T + 1
    if name == "bert-mlm":
        mlm = MaskedLM(3, VOCAB, list(range(SPECIAL)))
        return EncoderLM(encoder_config("debug", VOCAB)), mlm, T + 1
    if name == "t5-span":
        span = SpanCorruption(T, list(range(100, 0, -1)), eos_id=1, decoder_start_id=0)
        return EncoderDecoderLM(encoder_decoder_config("debug", VOCAB)), span, span.raw_length
    plm = PermutationLM(list(range(SPECIAL)), mask_id=3)
    position_encoding = "rope" if name == "xlnet-rope" else "txl"
    model = XLNetLM(xlnet_config("debug", VOCAB, position_encoding=position_encoding))
    return model, plm, T + 1


CASES = ["llama", "gpt2-untied", "bert-mlm", "t5-span", "xlnet-txl", "xlnet-rope"]


@pytest.mark.parametrize("name", CASES)
def test_flops_equal_the_products_pytorch_counts(name):
    model, objective, length = case(name)
    batch = objective(token_batch(length), torch.Generator().manual_seed(0))
    # SDPA's math kernel runs attention as matmuls the counter sees (fused kernels it skips)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        hidden = model(batch)
        rows = batch.labels != IGNORE_INDEX
        logits = model.logits(hidden[rows])
        F.cross_entropy(logits.float(), batch.labels[rows]).backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    matmuls = counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)
    flops = count_batch(model, batch)
    assert flops.weights == matmuls
    # attention's score and value products, and XLNet's position scores, are batched matmuls;
    # XLNet also scatters its query rows back to their positions (one more, uncounted: it is
    # a one-hot (B, M, T) product, 4 B M T d FLOPs with its gradient)
    scatter = 0
    if batch.target_mapping is not None:
        M = batch.target_mapping.shape[1]
        scatter = 4 * B * M * batch.input_ids.shape[1] * model.cfg.d_model
    assert counts.get("aten.bmm", 0) == flops.attention + flops.positions + scatter


def test_clm_with_every_token_labeled_is_palms_per_token_count():
    model, objective, length = case("llama")
    batch = objective(token_batch(length), torch.Generator().manual_seed(0))
    assert batch.num_label_tokens == B * T
    cfg = model.cfg
    per_token = flops_per_token(matmul_params(model), cfg.n_layers, cfg.n_heads, cfg.head_dim, T)
    assert batch_flops(model, batch) == pytest.approx(per_token * B * T, rel=1e-12)
    assert step_flops(model, [batch, batch], world_size=4) == 8 * batch_flops(model, batch)


def test_mlm_projects_only_the_selected_rows():
    model, objective, length = case("bert-mlm")
    batch = objective(token_batch(length), torch.Generator().manual_seed(0))
    cfg = model.cfg
    per_token = flops_per_token(matmul_params(model), cfg.n_layers, cfg.n_heads, cfg.head_dim, T)
    unselected = B * T - batch.num_label_tokens
    assert 0 < batch.num_label_tokens < B * T / 4
    saved = 6.0 * model.output_weight.numel() * unselected
    assert batch_flops(model, batch) == pytest.approx(per_token * B * T - saved, rel=1e-12)
