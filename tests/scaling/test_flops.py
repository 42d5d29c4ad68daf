"""FLOPs, parameter counts and MFU against published numbers (reference/scaling.md §4)."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import ModelConfig
from pretrain.scaling.counts import count_config
from pretrain.scaling.flops import (
    PF_DAY,
    flops_per_token,
    gpu_peak_flops,
    mfu,
    peak_flops,
    training_flops,
    wall_seconds,
)

# GPT-3 (Brown et al. 2020) Table D.1: params (millions), total train FLOPs; 300B tokens each.
GPT3_TABLE_D1 = [
    (125, 2.25e20),
    (356, 6.41e20),
    (760, 1.37e21),
    (1_320, 2.38e21),
    (2_650, 4.77e21),
    (6_660, 1.20e22),
    (12_850, 2.31e22),
    (174_600, 3.14e23),
]


@pytest.mark.parametrize(("millions", "published"), GPT3_TABLE_D1)
def test_gpt3_table_d1_is_6nd(millions, published):
    assert training_flops(millions * 1e6, 300e9) == pytest.approx(published, rel=5e-3)


def test_gpt3_175b_pf_days():
    # Table D.1: 3.14E+23 FLOPs = 3.64E+03 PF-days; a PF-day is 8.64e19 FLOPs (Kaplan §1.3).
    assert PF_DAY == 8.64e19
    assert training_flops(174.6e9, 300e9) / PF_DAY == pytest.approx(3.64e3, rel=2e-3)


def test_nanogpt_124m_flops_per_token():
    # nanoGPT estimate_mfu: N = 123,653,376 (non-wpe), L = H = 12, Q = 64, T = 1024.
    assert flops_per_token(123_653_376, 12, 12, 64, 1024) == 855_166_464
    # Kaplan's causal convention counts half the attention term; "none" is 6N.
    assert flops_per_token(123_653_376, 12, 12, 64, 1024, "kaplan") == 855_166_464 - 56_623_104
    assert flops_per_token(123_653_376, 12, 12, 64, 1024, "none") == 6 * 123_653_376
    with pytest.raises(ValueError, match="palm"):
        flops_per_token(1, 1, 1, 1, 1, "causal")


def test_gpt2_small_counts_match_nanogpt():
    counts = count_config(ModelConfig(family="decoder", size="gpt2-small"), 50257, 1024)
    assert counts.total == 124_439_808  # GPT-2 small (nanoGPT / HF GPT2LMHeadModel)
    wpe = 1024 * 768
    assert counts.total - wpe == 123_653_376  # nanoGPT get_num_params(non_embedding=True)
    # Kaplan's N drops the token and the position tables: 85.06M (12 L d^2 = 84.93M + norms,
    # biases).
    assert counts.non_embedding == 124_439_808 - 50257 * 768 - wpe
    # FLOPs use the matmul parameters (weights, no biases/norms) plus the tied output head:
    # nanoGPT's N (karpathy/nanoGPT @ 3adf61e model.py get_num_params, reference §4.2) less its
    # 12 x (2304 + 768 + 3072 + 768 biases + 2 x 2 x 768 LayerNorm) + 2 x 768 ln_f = 121,344
    # non-matmul parameters; equally, from the dims, 12 layers x 12 d^2 (qkv 3d^2, proj d^2,
    # MLP 8d^2) plus the 50257 x 768 head.
    matmul = 123_653_376 - 121_344
    assert matmul == 12 * 12 * 768**2 + 50257 * 768 == 123_532_032
    assert counts.matmul == matmul
    # 6 x 123,532,032 + 12 L H Q T (113,246,208): nanoGPT's 855,166,464 less 6 x 121,344.
    assert counts.flops_per_token == 854_438_400 == 855_166_464 - 6 * 121_344
    assert counts.flops_per_token == flops_per_token(counts.matmul, 12, 12, 64, 1024)


# Matmul parameters from the architecture dims (d = 768, 12 layers per stack):
# BERT-base: 12 x (qkv 3d^2 + out d^2 + MLP 2 x d x 3072) + MLM transform d^2 + tied decoder
# 30522 d. T5 v1.1 base (gated GELU, d_ff 2048, untied lm_head): encoder 12 x (4d^2 + 3 x d x
# 2048), decoder 12 x (8d^2 self+cross + 3 x d x 2048), lm_head 32128 d.
BERT_MATMUL = 12 * (4 * 768**2 + 2 * 768 * 3072) + 768**2 + 30522 * 768
T5_MATMUL = 12 * (4 * 768**2 + 3 * 768 * 2048) + 12 * (8 * 768**2 + 3 * 768 * 2048) + 32128 * 768


@pytest.mark.parametrize(
    ("family", "size", "vocab", "total", "matmul", "embeddings"),
    [
        # HF BertForMaskedLM bert-base-uncased; Kaplan's N leaves out the word, position
        # (512) and token-type (2) embeddings
        ("encoder", "bert-base", 30522, 109_514_298, BERT_MATMUL, (30522 + 512 + 2) * 768),
        # HF google/t5-v1_1-base; N leaves out the shared embedding and the encoder's and
        # decoder's relative-position tables (32 buckets x 12 heads each)
        ("encoder_decoder", "t5-v1_1-base", 32128, 247_577_856, T5_MATMUL,
         32128 * 768 + 2 * 32 * 12),
    ],
)  # fmt: skip
def test_other_families_counts(family, size, vocab, total, matmul, embeddings):
    counts = count_config(ModelConfig(family=family, size=size), vocab, 512)
    assert counts.total == total
    assert counts.matmul == matmul
    assert counts.non_embedding == total - embeddings
    layers = 24 if family == "encoder_decoder" else 12  # encoder + decoder stacks
    assert counts.n_layers == layers
    assert counts.flops_per_token == pytest.approx(6 * matmul + 12 * layers * 12 * 64 * 512)


def test_mfu_palm_540b():
    # PaLM App. B: 238.3K tokens/s on 6144 TPU v4 at 275 TFLOP/s, 6N only: 45.7%.
    assert mfu(238.3e3, 6 * 540e9, 275e12 * 6144) == pytest.approx(0.457, abs=5e-4)


def test_peaks_and_wall_time():
    assert gpu_peak_flops("A100") == 312e12  # dense bf16, not the 624 sparse figure
    assert gpu_peak_flops("h100") == 989e12
    assert gpu_peak_flops("H200") == 989e12
    assert gpu_peak_flops("5e14") == 5e14
    assert gpu_peak_flops(5e14) == 5e14
    # One lookup: case-insensitive, "-"/"_" as spaces, longest key first (CUDA device names).
    assert gpu_peak_flops("h100-pcie") == gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("H100_NVL") == 835e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(torch.device("cpu")) is None
    with pytest.raises(ValueError, match="A100"):
        gpu_peak_flops("TPUv9")
    assert wall_seconds(989e12 * 0.5 * 3600 * 8, 989e12, 0.5, 8) == pytest.approx(3600)
