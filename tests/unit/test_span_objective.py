"""The span-corruption objective: exact lengths, EOS, sentinel order, invertibility, shift."""

from __future__ import annotations

import pytest
import torch

from pretrain.data.loader import TokenBatch
from pretrain.objectives.span import SpanCorruption
from tests.helpers import merge_span_corruption

SENTINELS = list(range(1000, 1100))
EOS, PAD = 1, 2


def _batch(raw_length: int, seed: int = 0, B: int = 4) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 1000, (B, raw_length), generator=g)
    zeros = torch.zeros_like(tokens)
    return TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))


def test_lengths_eos_sentinels_and_shift():
    objective = SpanCorruption(512, SENTINELS, EOS, PAD)
    assert (objective.raw_length, objective.targets_length) == (568, 114)
    token_batch = _batch(568)
    batch = objective(token_batch, torch.Generator().manual_seed(0))
    assert batch.input_ids.shape == (4, 512) and batch.labels.shape == (4, 114)
    assert (batch.input_ids[:, -1] == EOS).all() and (batch.labels[:, -1] == EOS).all()
    assert torch.equal(batch.decoder_input_ids[:, 1:], batch.labels[:, :-1])
    assert (batch.decoder_input_ids[:, 0] == PAD).all()
    for row in range(4):
        used = [t for t in batch.input_ids[row].tolist() if t in SENTINELS]
        assert used == SENTINELS[: len(used)] and len(used) == 28  # extra_id_0, 1, 2, ...
        assert batch.labels[row, 0] == SENTINELS[0]


def test_original_is_the_merge_of_inputs_and_targets():
    objective = SpanCorruption(128, SENTINELS, EOS, PAD)
    token_batch = _batch(objective.raw_length, seed=3)
    batch = objective(token_batch, torch.Generator().manual_seed(1))
    for row in range(4):
        merged = merge_span_corruption(
            batch.input_ids[row, :-1].tolist(), batch.labels[row, :-1].tolist(), SENTINELS
        )
        assert merged == token_batch.tokens[row].tolist()


def test_settings_needing_more_sentinels_than_exist_are_refused():
    with pytest.raises(ValueError, match="128 spans, but the tokenizer has only 100"):
        SpanCorruption(512, SENTINELS, EOS, PAD, noise_density=0.5, mean_noise_span_length=3.0)


def test_wrong_window_length_and_missing_generator_are_refused():
    objective = SpanCorruption(512, SENTINELS, EOS, PAD)
    with pytest.raises(ValueError, match=r"span corruption \(seq_len 512\) needs windows of 568"):
        objective(_batch(513), torch.Generator())
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        objective(_batch(568))


def test_encoder_decoder_batch_pads_shifts_and_passes_tasks_through():
    from pretrain.objectives.base import IGNORE_INDEX, encoder_decoder_batch

    inputs = [torch.tensor([7, 8, EOS]), torch.tensor([9, EOS])]
    targets = [torch.tensor([5, EOS]), torch.tensor([4, 3, 6, EOS])]
    ids = torch.tensor([1, 0])
    mb = encoder_decoder_batch(
        inputs, targets, pad_id=PAD, decoder_start_id=0, objective="x", dtype=torch.long,
        inputs_length=4, targets_length=5, task_ids=ids, task_names=("a", "b"),
    )  # fmt: skip
    assert mb.input_ids.tolist() == [[7, 8, EOS, PAD], [9, EOS, PAD, PAD]]
    assert mb.labels.tolist() == [
        [5, EOS, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        [4, 3, 6, EOS, IGNORE_INDEX],
    ]
    assert mb.decoder_input_ids.tolist() == [[0, 5, EOS, PAD, PAD], [0, 4, 3, 6, EOS]]
    assert mb.attention.kind == "bidirectional"
    assert mb.task_ids is ids and mb.task_names == ("a", "b") and mb.objective == "x"
    with pytest.raises(ValueError, match="pad_id"):  # rows that need padding need a pad id
        encoder_decoder_batch(
            inputs, targets, pad_id=None, decoder_start_id=0, objective="x", dtype=torch.long
        )


@pytest.mark.parametrize(("density", "mean_span"), [(0.5, 8.0), (0.5, 3.0), (0.15, 3.0)])
def test_inputs_are_exactly_seq_len_also_where_t5s_hack_takes_a_token_fewer(density, mean_span):
    """At density 0.5 T5 drops one raw token when the targets would outgrow the inputs; the
    input comes out one short for some lengths (seq_len 14 at mean span 8) and is padded."""
    short = 0
    for seq_len in range(8, 160):
        objective = SpanCorruption(seq_len, SENTINELS, EOS, PAD, density, mean_span, pad_id=PAD)
        token_batch = _batch(objective.raw_length, seed=seq_len)
        batch = objective(token_batch, torch.Generator().manual_seed(seq_len))
        assert batch.input_ids.shape == (4, seq_len)
        padded = batch.input_ids[0, -1] == PAD
        short += bool(padded)
        end = seq_len - 1 - int(padded)  # the EOS closes the real input
        assert (batch.input_ids[:, end] == EOS).all() and (
            batch.input_ids[:, end + 1 :] == PAD
        ).all()
        for row in range(4):
            merged = merge_span_corruption(
                batch.input_ids[row, :end].tolist(), batch.labels[row, :-1].tolist(), SENTINELS
            )
            assert merged == token_batch.tokens[row].tolist()
    assert (short > 0) == (density == 0.5)  # e.g. 11, 19, 27... at mean span 3
    if density == 0.5 and mean_span == 8.0:
        with pytest.raises(ValueError, match="needs a pad_id"):
            SpanCorruption(14, SENTINELS, EOS, PAD, density, mean_span)


def test_more_spans_than_clean_tokens_to_separate_them_are_refused():
    with pytest.raises(ValueError, match="need a clean token between each two"):
        SpanCorruption(64, SENTINELS, EOS, PAD, 0.9, 1.0, pad_id=PAD)
