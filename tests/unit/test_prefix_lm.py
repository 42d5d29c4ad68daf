"""Prefix LM: the seqio PrefixLMFeatureConverter test vector, and the split-point law."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.data.loader import TokenBatch
from pretrain.models.common.attention import attention_mask
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.noise import prefix_length_bounds, random_prefix_length
from pretrain.objectives.prefix_lm import EncoderDecoderPrefixLM, prefix_lm_batch


def test_seqio_prefix_lm_test_vector():
    # seqio feature_converters_test.py::test_prefix_lm_unpacked: inputs [9,4,6,1],
    # targets [3,9,1]; decoder inputs [0,9,4,6,1,3,9,1], targets [9,4,6,1,3,9,1],
    # loss weights [0,0,0,0,1,1,1], bidirectional over len(inputs) + 1 = 5 positions
    window = torch.tensor([[0, 9, 4, 6, 1, 3, 9, 1]])
    batch = prefix_lm_batch(window, torch.tensor([5]))
    assert batch.input_ids.tolist() == [[0, 9, 4, 6, 1, 3, 9, 1][:-1]]
    weights = (batch.labels != IGNORE_INDEX).long().tolist()
    assert weights == [[0, 0, 0, 0, 1, 1, 1]]
    assert batch.labels[batch.labels != IGNORE_INDEX].tolist() == [3, 9, 1]
    mask = attention_mask(batch.attention, 7)[0, 0]  # (T, T), True = may attend
    expected = torch.tensor(
        [[j < 5 or j <= i for j in range(7)] for i in range(7)], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def test_prefix_length_is_uniform_on_one_to_length_minus_one():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([random_prefix_length(9, 0.5, g) for _ in range(4000)])
    assert int(draws.min()) == 1 and int(draws.max()) == 8
    counts = torch.bincount(draws, minlength=9)[1:].float()
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.02
    # a lower density keeps longer prefixes: [round(0.6 * 8), 8] = [5, 8]
    short = {random_prefix_length(9, 0.2, g) for _ in range(500)}
    assert short == {5, 6, 7, 8}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), density=st.sampled_from([0.5, 0.25]))
def test_encoder_decoder_prefix_lm_sends_the_prefix_to_the_encoder(seed: int, density: float):
    EOS, PAD, T = 1, 2, 24
    objective = EncoderDecoderPrefixLM(T, EOS, PAD, PAD, noise_density=density)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 500, (6, objective.window_length(T)), generator=g)
    zeros = torch.zeros_like(tokens)
    batch = objective(TokenBatch(tokens, zeros, zeros[:, 0], zeros[:, 0]), g)
    assert batch.input_ids.shape == batch.labels.shape == batch.decoder_input_ids.shape == (6, T)
    low, high = prefix_length_bounds(T - 1, density)
    for b in range(6):
        inputs = batch.input_ids[b][batch.input_ids[b] != PAD].tolist()
        targets = batch.labels[b][batch.labels[b] != IGNORE_INDEX].tolist()
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert low <= len(inputs) - 1 <= high
        assert inputs[:-1] + targets[:-1] == tokens[b].tolist()  # prefix + suffix = window
        shifted = [PAD] + batch.labels[b, :-1].tolist()
        expected = [PAD if t == IGNORE_INDEX else t for t in shifted]
        assert batch.decoder_input_ids[b].tolist() == expected


def test_decoder_prefix_lm_draws_prefixes_on_one_to_t_and_keeps_documents_apart():
    from pretrain.objectives.clm import positions_within_documents
    from pretrain.objectives.prefix_lm import PrefixLM

    B, T = 400, 8
    tokens = torch.randint(10, 500, (B, T + 1), generator=torch.Generator().manual_seed(0))
    docs = (torch.arange(T + 1) >= 5).long().expand(B, -1)
    token_batch = TokenBatch(tokens, docs, torch.zeros(B, dtype=torch.long), torch.arange(B))
    g = torch.Generator().manual_seed(1)
    batch = PrefixLM()(token_batch, g)
    counts = torch.bincount(batch.attention.prefix_lengths, minlength=T + 2)
    assert counts[0] == counts[T + 1] == 0 and (counts[1 : T + 1] > 25).all(), counts  # ~50
    assert torch.equal(batch.attention.document_ids, docs[:, :-1])
    assert torch.equal(batch.position_ids, positions_within_documents(docs[:, :-1]))
    plain = PrefixLM(document_masking=False)(token_batch, g)
    assert plain.attention.document_ids is None and plain.position_ids is None


def test_encoder_decoder_prefix_lm_needs_three_positions_and_windows_of_its_length():
    # seq_len 3: two raw tokens, a prefix of 1 and a suffix of 1, each with its EOS.
    objective = EncoderDecoderPrefixLM(3, 1, 2, 2)
    tokens = torch.tensor([[7, 8]])
    zeros = torch.zeros_like(tokens)
    batch = objective(TokenBatch(tokens, zeros, zeros[:, 0], zeros[:, 0]), torch.Generator())
    assert batch.input_ids.tolist() == [[7, 1, 2]]
    assert batch.labels.tolist() == [[8, 1, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="train.seq_len must be >= 3 for the prefix LM, got 2"):
        EncoderDecoderPrefixLM(2, 1, 2, 2)
    wrong = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"prefix LM \(seq_len 3\) needs windows of 2 tokens, got 3"
    ):
        objective(TokenBatch(wrong, wrong, wrong[:, 0], wrong[:, 0]), torch.Generator())
