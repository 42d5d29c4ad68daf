"""UL2 mixture of denoisers: draws, per-denoiser corruption, both model forms, fixed shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.data.loader import TokenBatch
from pretrain.models.common.attention import attention_mask
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.noise import num_noise_tokens_and_spans
from pretrain.objectives.ul2 import UL2
from pretrain.objectives.ul2_denoisers import PRESETS, UL2_DENOISERS, resolve_preset
from tests.helpers import merge_span_corruption

EOS, PAD = 1, 2
MODES = {"[R]": 5, "[S]": 6, "[X]": 7}
SENTINELS = list(range(1000, 1100))
FAMILIES = ("encoder_decoder", "decoder")
SEEDS = st.integers(0, 2**31 - 1)


def _ul2(seq_len: int, family: str, preset: str = "uniform", rates=None) -> UL2:
    denoisers, default_rates = resolve_preset(preset, rates)
    return UL2(
        seq_len,
        family,
        mode_ids=MODES,
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        pad_id=PAD,
        decoder_start_id=PAD,
        denoisers=denoisers,
        rates=default_rates,
    )


def _batch(objective: UL2, seed: int, B: int = 16) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 1000, (B, objective.raw_length), generator=g)
    zeros = torch.zeros_like(tokens)
    return TokenBatch(tokens, zeros, torch.zeros(B, dtype=torch.long), torch.arange(B))


def _examples(objective: UL2, batch, family: str):
    """Per example: (denoiser, mode token, inputs without mode/EOS, targets without EOS)."""
    out = []
    for b, i in enumerate(batch.task_ids.tolist()):
        if family == "encoder_decoder":
            inputs = [t for t in batch.input_ids[b].tolist() if t != PAD]
            targets = [t for t in batch.labels[b].tolist() if t != IGNORE_INDEX]
        else:  # rebuild [mode] inputs [EOS] targets [EOS] from the shifted sequence
            last = int((batch.labels[b] != IGNORE_INDEX).nonzero()[-1])
            sequence = batch.input_ids[b, : last + 1].tolist() + [int(batch.labels[b, last])]
            prefix = int(batch.attention.prefix_lengths[b])
            inputs, targets = sequence[:prefix], sequence[prefix:]
        assert inputs[-1] == EOS and targets[-1] == EOS
        out.append((objective.denoisers[i], inputs[0], inputs[1:-1], targets[:-1]))
    return out


def _model_length(denoiser, raw: int, family: str) -> int:
    """Worst case, recomputed here from T5's counts: encoder [mode] inputs [EOS], or the
    decoder-only [mode] inputs [EOS] targets [EOS] minus the last token."""
    if denoiser.mean_span is None:
        return raw + 1 if family == "encoder_decoder" else raw + 2
    noise, spans = num_noise_tokens_and_spans(raw, denoiser.density, denoiser.mean_span)
    inputs, targets = raw - noise + spans, noise + spans
    return 2 + inputs if family == "encoder_decoder" else 2 + inputs + targets


def _targets_length(denoiser, raw: int) -> int:
    """A span denoiser's targets with their EOS: noise tokens, one sentinel a span, EOS."""
    noise, spans = num_noise_tokens_and_spans(raw, denoiser.density, denoiser.mean_span)
    return noise + spans + 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("seq_len", [16, 64, 200, 512])
def test_each_denoiser_takes_the_longest_window_that_fits(family, preset, seq_len):
    objective = _ul2(seq_len, family, preset)
    denoisers = objective.denoisers
    # The window every denoiser fits sets the decoder length of encoder-decoder models.
    shared = min(objective.raw_lengths)
    assert max(_model_length(d, shared, family) for d in denoisers) <= seq_len
    assert max(_model_length(d, shared + 1, family) for d in denoisers) > seq_len
    if family == "encoder_decoder":
        spans = [_targets_length(d, shared) for d in denoisers if d.mean_span is not None]
        # the prefix LM's longest targets: the window less its shortest prefix (T5's
        # random_prefix_noise_mask, at least 1), plus EOS
        prefix = [shared + 1 - max(round((1 - 2 * d.density) * (shared - 1)), 1)
                  for d in denoisers if d.mean_span is None]  # fmt: skip
        assert objective.targets_length == max(spans + prefix)
    assert objective.window_length(seq_len) == max(objective.raw_lengths)
    for d, raw in zip(denoisers, objective.raw_lengths, strict=True):
        assert _model_length(d, raw, family) <= seq_len
        if d.mean_span is None:  # the prefix LM: fixed by the input length alone
            assert _model_length(d, raw + 1, family) > seq_len
            continue
        assert num_noise_tokens_and_spans(raw, d.density, d.mean_span)[1] <= len(SENTINELS)
        longer_fits = (
            _model_length(d, raw + 1, family) <= seq_len
            and num_noise_tokens_and_spans(raw + 1, d.density, d.mean_span)[1] <= len(SENTINELS)
            and (family == "decoder" or _targets_length(d, raw + 1) <= objective.targets_length)
        )
        assert not longer_fits, d.name


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_decoder_rows_are_filled_whatever_the_denoiser(preset):
    """One window for all would leave the rows of every denoiser but X(3, 0.5) a fifth pad."""
    objective = _ul2(256, "decoder", preset)
    padded = 0
    for seed in range(4):
        batch = objective(_batch(objective, seed), torch.Generator().manual_seed(seed))
        real = (batch.input_ids != PAD).sum(1)
        assert (real >= 256 - 2).all(), (batch.task_ids, real)
        padded += int((real < 256).sum())
        assert not (batch.labels == PAD).any()  # no label on the padding
        assert (batch.labels[batch.input_ids == PAD] == IGNORE_INDEX).all()
    assert padded > 0  # some rows did end in padding


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_example_inverts_and_has_its_denoisers_density(family, preset):
    objective = _ul2(128, family, preset)
    seen = set()
    for seed in range(12):
        token_batch = _batch(objective, seed)
        batch = objective(token_batch, torch.Generator().manual_seed(seed))
        assert batch.input_ids.shape == (16, 128)
        if family == "encoder_decoder":
            assert batch.labels.shape == batch.decoder_input_ids.shape
            assert batch.labels.shape == (16, objective.targets_length)
            shifted = batch.labels[:, :-1].masked_fill(batch.labels[:, :-1] == IGNORE_INDEX, PAD)
            assert torch.equal(batch.decoder_input_ids[:, 1:], shifted)
            assert (batch.decoder_input_ids[:, 0] == PAD).all()
        examples = _examples(objective, batch, family)
        for row, i, example in zip(token_batch.tokens, batch.task_ids, examples, strict=True):
            denoiser, mode, inputs, targets = example
            seen.add(denoiser.name)
            raw = objective.raw_lengths[i]
            original = row[:raw].tolist()  # the denoiser's own window: the first raw tokens
            assert mode == MODES[denoiser.mode]
            if denoiser.mean_span is None:
                assert inputs + targets == original
                assert len(targets) <= raw - round((1 - 2 * denoiser.density) * (raw - 1))
                continue
            assert merge_span_corruption(inputs, targets, SENTINELS) == original
            noise, spans = num_noise_tokens_and_spans(raw, denoiser.density, denoiser.mean_span)
            used = [t for t in inputs if t in SENTINELS]
            assert used == SENTINELS[:spans] and targets[0] == SENTINELS[0]
            assert len(targets) - spans == noise  # round(raw * density) noise tokens
            assert abs(noise / raw - denoiser.density) <= 0.5 / raw + 1e-9
    assert seen == {d.name for d in objective.denoisers}


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, preset=st.sampled_from(sorted(PRESETS)))
def test_decoder_form_is_a_prefix_lm_over_mode_inputs_and_targets(seed, preset):
    objective = _ul2(96, "decoder", preset)
    token_batch = _batch(objective, seed, B=4)
    batch = objective(token_batch, torch.Generator().manual_seed(seed))
    assert batch.input_ids.shape == batch.labels.shape == (4, 96)
    assert batch.attention.kind == "prefix" and batch.decoder_input_ids is None
    mask = attention_mask(batch.attention, 96)[:, 0]  # (B, T, T)
    for b, (denoiser, mode, inputs, targets) in enumerate(_examples(objective, batch, "decoder")):
        prefix = int(batch.attention.prefix_lengths[b])
        assert prefix == 1 + len(inputs) + 1  # mode, inputs, EOS
        assert batch.input_ids[b, 0] == MODES[denoiser.mode] == mode
        labelled = (batch.labels[b] != IGNORE_INDEX).nonzero().squeeze(1).tolist()
        # the loss covers exactly the targets and their EOS, each predicted from the token before
        assert labelled == list(range(prefix - 1, prefix + len(targets)))
        assert batch.labels[b, labelled].tolist() == targets + [EOS]
        assert not (batch.labels[b] == PAD).any()  # no label on the padding
        assert (batch.input_ids[b, prefix + len(targets) + 1 :] == PAD).all()
        assert mask[b, 0, prefix - 1] and not mask[b, prefix - 1, prefix]  # prefix / causal


def test_denoiser_frequencies_match_the_rates():
    for preset in sorted(PRESETS):
        objective = _ul2(64, "encoder_decoder", preset)
        g = torch.Generator().manual_seed(0)
        counts = torch.zeros(len(objective.denoisers))
        for seed in range(100):
            batch = objective(_batch(objective, seed, B=64), g)
            counts += torch.bincount(batch.task_ids, minlength=len(counts))
            modes = batch.input_ids[:, 0].tolist()
            assert modes == [MODES[objective.denoisers[i].mode] for i in batch.task_ids]
        share = counts / counts.sum()
        assert (share - torch.tensor(PRESETS[preset][1])).abs().max() < 0.025, (preset, share)
    upalm = _ul2(64, "decoder", "upalm")
    assert [d.name for d in upalm.denoisers] == ["S(0.5)", "R(3,0.15)", "X(32,0.15)", "X(3,0.5)"]
    assert upalm.rates.tolist() == [0.5, 0.25, 0.125, 0.125]


def test_zero_rate_denoisers_are_never_drawn_and_do_not_limit_the_window():
    rates = [0, 0, 0, 0, 0, 0, 1]  # only S
    objective = _ul2(64, "encoder_decoder", rates=rates)
    batch = objective(_batch(objective, 0), torch.Generator().manual_seed(0))
    assert set(batch.task_ids.tolist()) == {6}
    assert objective.raw_length == 63  # S alone: [S] + 62 prefix tokens + EOS at most


def test_same_seed_same_batch_other_seed_other_batch():
    objective = _ul2(64, "decoder")
    token_batch = _batch(objective, 0)
    first, again, other = (
        objective(token_batch, torch.Generator().manual_seed(s)) for s in (1, 1, 2)
    )
    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.task_ids, again.task_ids)
    assert not torch.equal(first.input_ids, other.input_ids)
    assert torch.equal(first.to("cpu").task_ids, first.task_ids)


def test_settings_needing_more_sentinels_than_exist_are_refused():
    with pytest.raises(ValueError, match=r"objective\.ul2_rates: denoiser X\(3,0\.5\) makes 171"):
        _ul2(1024, "encoder_decoder")
    without = [1, 1, 0, 1, 1, 1, 1]  # X(3, 0.5) off: the rest fit in 100 sentinels
    assert _ul2(1024, "encoder_decoder", rates=without).raw_lengths[-1] == 1023  # S
    assert [d.name for d in UL2_DENOISERS][2] == "X(3,0.5)"


def test_the_presets_are_the_papers_denoisers():
    names = [d.name for d in UL2_DENOISERS]
    assert names == ["R(3,0.15)", "R(8,0.15)", "X(3,0.5)", "X(8,0.5)", "X(64,0.15)",
                     "X(64,0.5)", "S(0.25)"]  # fmt: skip
    modes = [d.mode for d in UL2_DENOISERS]
    assert modes == ["[R]", "[R]", "[X]", "[X]", "[X]", "[X]", "[S]"]
    denoisers, _ = resolve_preset("uniform", None, prefix_noise_density=0.5)
    assert [d.name for d in denoisers] == names[:-1] + ["S(0.5)"]  # only S changes
