"""Objective mixtures: draw rates, per-row invariants of each component, merging, config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrain.config import ConfigError, ExperimentConfig, ObjectiveConfig, load_config
from pretrain.data.loader import TokenBatch
from pretrain.models.common.attention import attention_mask
from pretrain.objectives import build_objective, loader_seq_len
from pretrain.objectives.base import IGNORE_INDEX
from pretrain.objectives.clm import CausalLM
from pretrain.objectives.mixture import ObjectiveMixture
from pretrain.objectives.prefix_lm import PrefixLM
from pretrain.objectives.span import SpanCorruption
from tests.helpers import merge_span_corruption

PAD, EOS = 2, 1
SENTINELS = list(range(1000, 1100))
SEEDS = st.integers(0, 2**31 - 1)


def _batch(window: int, seed: int, B: int = 8, doc_len: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 1000, (B, window), generator=g)
    docs = torch.zeros_like(tokens)
    if doc_len:
        docs = torch.arange(window).expand(B, window) // doc_len
    return TokenBatch(tokens, docs, torch.zeros(B, dtype=torch.long), torch.arange(B))


def _decoder_mix(granularity: str = "example") -> ObjectiveMixture:
    parts = [("clm", CausalLM(), 3.0), ("prefix_lm", PrefixLM(0.5), 1.0)]
    return ObjectiveMixture(parts, 32, PAD, granularity)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS)
def test_decoder_rows_keep_their_objectives_invariants(seed: int):
    mix = _decoder_mix()
    tb = _batch(33, seed, doc_len=20)
    batch = mix(tb, torch.Generator().manual_seed(seed))
    assert batch.task_names == ("clm", "prefix_lm")
    assert batch.input_ids.shape == batch.labels.shape == (8, 32)
    tasks = set(batch.task_ids.tolist())
    assert batch.attention.kind == ("causal" if tasks == {0} else "prefix")
    for b, task in enumerate(batch.task_ids.tolist()):
        x, y = tb.tokens[b, :-1], tb.tokens[b, 1:]
        assert torch.equal(batch.input_ids[b], x)
        lengths = batch.attention.prefix_lengths
        prefix = 0 if lengths is None else int(lengths[b])
        if task == 0:  # causal LM: a prefix of 0, every next token a label, documents kept
            assert prefix == 0 and torch.equal(batch.labels[b], y)
            assert torch.equal(batch.attention.document_ids[b], tb.document_ids[b, :-1])
        else:  # prefix LM: labels only after the prefix
            assert 0 < prefix <= 32  # the prefix holds 1..T of the T+1 window tokens
            assert (batch.labels[b, : prefix - 1] == IGNORE_INDEX).all()
            assert torch.equal(batch.labels[b, prefix - 1 :], y[prefix - 1 :])
    mask = attention_mask(batch.attention, 32)  # a valid mask: every query sees itself
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()


def test_example_rates_follow_the_weights():
    mix = _decoder_mix()
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2)
    for seed in range(200):
        counts += torch.bincount(mix(_batch(33, seed), g).task_ids, minlength=2)
    share = counts[0] / counts.sum()
    assert abs(float(share) - 0.75) < 0.03  # 1600 draws: 3 sigma is about 0.033


def test_batch_granularity_gives_each_batch_one_component_at_the_weights():
    mix = _decoder_mix("batch")
    g = torch.Generator().manual_seed(1)
    firsts = []
    for seed in range(400):
        batch = mix(_batch(33, seed), g)
        assert len(set(batch.task_ids.tolist())) == 1
        firsts.append(int(batch.task_ids[0]))
    assert abs(firsts.count(0) / 400 - 0.75) < 0.07


def test_same_seed_same_batch_and_another_seed_another():
    mix = _decoder_mix()
    tb = _batch(33, 5)
    a = mix(tb, torch.Generator().manual_seed(7))
    b = mix(tb, torch.Generator().manual_seed(7))
    c = mix(tb, torch.Generator().manual_seed(8))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.task_ids, b.task_ids)
    assert not torch.equal(a.labels, c.labels) or not torch.equal(a.task_ids, c.task_ids)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS)
def test_encoder_decoder_mix_pads_each_part_and_keeps_span_corruption_invertible(seed: int):
    span = SpanCorruption(48, SENTINELS, EOS, PAD)
    dense = SpanCorruption(48, SENTINELS, EOS, PAD, noise_density=0.5)
    mix = ObjectiveMixture([("r", span, 1.0), ("x", dense, 1.0)], 48, PAD)
    assert mix.window_length(48) == max(span.raw_length, dense.raw_length)
    tb = _batch(mix.window_length(48), seed)
    batch = mix(tb, torch.Generator().manual_seed(seed))
    width = max(span.targets_length, dense.targets_length)
    assert batch.decoder_input_ids.shape == batch.labels.shape == (8, width)
    for b, task in enumerate(batch.task_ids.tolist()):
        part = (span, dense)[task]
        inputs = [t for t in batch.input_ids[b].tolist() if t != PAD][:-1]  # drop EOS
        targets = batch.labels[b][batch.labels[b] != IGNORE_INDEX].tolist()
        assert len(targets) == part.targets_length and targets[-1] == EOS
        assert (batch.labels[b, part.targets_length :] == IGNORE_INDEX).all()
        merged = merge_span_corruption(inputs, targets[:-1], SENTINELS)
        assert merged == tb.tokens[b, : part.raw_length].tolist()


def test_ul2_component_tasks_are_named_per_denoiser(tokenizer):
    cfg = ObjectiveConfig(
        name="mixture",
        mixture=[{"name": "ul2", "weight": 1.0}, {"name": "prefix_lm", "weight": 1.0}],
    )
    mix = build_objective(cfg, tokenizer, 64, family="decoder")
    assert "ul2/S(0.25)" in mix.task_names and mix.task_names[-1] == "prefix_lm"
    window = loader_seq_len(mix, 64) + 1
    batch = mix(_batch(window, 0, B=32), torch.Generator().manual_seed(0))
    names = {batch.task_names[t] for t in batch.task_ids.tolist()}
    assert "prefix_lm" in names and any(n.startswith("ul2/") for n in names)
    assert batch.input_ids.shape[1] == 64


def _experiment(family: str, mixture, **objective) -> ExperimentConfig:
    overrides = [
        f"--model.family={family}",
        "--data.train=[x]",
        "--objective.name=mixture",
        f"--objective.mixture={mixture}",
    ] + [f"--objective.{k}={v}" for k, v in objective.items()]
    return load_config(ExperimentConfig, None, overrides)


@pytest.mark.parametrize(
    ("family", "mixture", "message"),
    [
        ("decoder", "[{name: clm, weight: 1}, {name: mlm, weight: 1}]",
         r"objective.mixture\[1\]: objective.name 'mlm' does not train model.family 'decoder'"),
        ("decoder", "[{name: clm, weight: 0}]", r"objective.mixture\[0\].weight must be"),
        ("decoder", "[{name: clm, noise_densty: 0.5}]",
         r"objective.mixture\[0\].noise_densty"),
        ("decoder", "[{name: mixture}]", r"objective.mixture\[0\]: a mixture cannot contain"),
        ("decoder", "[]", r"objective.mixture: give a list"),
        ("encoder_decoder", "[{name: span, noise_density: 2}, {name: bart}]",
         r"objective.mixture\[0\].noise_density must be in \(0, 1\), got 2"),
        ("encoder", "[{name: mlm}, {name: mlm, mlm_probability: 0}]",
         r"objective.mixture\[1\].mlm_probability must be in \(0, 1\]"),
    ],
)  # fmt: skip
def test_bad_mixtures_are_refused_naming_the_component(family, mixture, message):
    with pytest.raises(ConfigError, match=message):
        _experiment(family, mixture).validate()


def test_component_keys_override_the_shared_ones():
    cfg = _experiment(
        "encoder_decoder",
        "[{name: span, weight: 2}, {name: span, noise_density: 0.5, weight: 1}]",
        mean_noise_span_length=8,
    ).validate()
    (a, wa), (b, wb) = cfg.objective.components()
    assert (wa, wb) == (2.0, 1.0)
    assert (a.noise_density, b.noise_density) == (0.15, 0.5)
    assert a.mean_noise_span_length == b.mean_noise_span_length == 8


def test_mixed_per_example_the_decoder_width_does_not_depend_on_the_draw():
    """A batch that drew only the short-target part still has the longest decoder (shapes
    stay fixed for the compiled step); mixed per batch, each batch has its part's own."""
    span = SpanCorruption(48, SENTINELS, EOS, PAD)
    dense = SpanCorruption(48, SENTINELS, EOS, PAD, noise_density=0.5)
    assert span.targets_length < dense.targets_length
    for granularity, width in (("example", dense.targets_length), ("batch", span.targets_length)):
        mix = ObjectiveMixture(
            [("r", span, 1.0), ("x", dense, 1e-12)], 48, PAD, granularity=granularity
        )
        batch = mix(_batch(mix.window_length(48), 0), torch.Generator().manual_seed(0))
        assert batch.task_ids.tolist() == [0] * 8  # only "r" drawn
        assert batch.labels.shape == batch.decoder_input_ids.shape == (8, width)


def test_a_part_without_positions_gets_zero_to_t_beside_one_with_them():
    from pretrain.objectives.clm import positions_within_documents

    parts = [("clm", CausalLM(), 1.0), ("plain", PrefixLM(0.5, document_masking=False), 1.0)]
    mix = ObjectiveMixture(parts, 32, PAD)
    tb = _batch(33, 0, B=16, doc_len=20)
    batch = mix(tb, torch.Generator().manual_seed(0))
    assert set(batch.task_ids.tolist()) == {0, 1}
    within = positions_within_documents(tb.document_ids[:, :-1])
    for b, task in enumerate(batch.task_ids.tolist()):
        want = within[b] if task == 0 else torch.arange(32)
        assert torch.equal(batch.position_ids[b], want), (b, task)


def test_components_of_one_name_are_told_apart_in_the_losses(tokenizer):
    """Two MLM components at other rates: each gets its own task, else one's losses would
    overwrite the other's in the per-objective metrics."""
    cfg = ObjectiveConfig(
        name="mixture",
        mixture=[
            {"name": "mlm", "weight": 1.0},
            {"name": "mlm", "mlm_probability": 0.4, "weight": 1.0},
            {"name": "span", "weight": 1.0},
        ],
    )
    mix = build_objective(cfg, tokenizer, 64, family="encoder_decoder")
    assert mix.task_names == ("mlm#0", "mlm#1", "span")
