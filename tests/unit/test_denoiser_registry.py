"""BART and UL2 from the config: registry, pairing, real-tokenizer tables, config errors."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import ConfigError, ExperimentConfig, ModelConfig, ObjectiveConfig, load_config
from pretrain.data.loader import TokenLoader
from pretrain.objectives import OBJECTIVES, build_objective, check_pairing, loader_seq_len
from pretrain.objectives.bart import BARTDenoising
from pretrain.objectives.ul2 import UL2


def test_build_objective_makes_bart_and_ul2_that_run_on_loader_batches(tokenizer, shards_dir):
    sp = tokenizer.special
    g = torch.Generator().manual_seed(0)
    bart = build_objective(ObjectiveConfig(name="bart"), tokenizer, 64)
    assert isinstance(bart, BARTDenoising) and OBJECTIVES["bart"] is BARTDenoising
    token_batch = next(TokenLoader(shards_dir, loader_seq_len(bart, 64), 4, seed=0))
    assert token_batch.tokens.shape == (4, 62)
    batch = bart(token_batch, g)
    assert batch.input_ids.shape == batch.labels.shape == (4, 64)
    bos, eos = torch.full((4, 1), sp.bos), torch.full((4, 1), sp.eos)
    assert torch.equal(batch.labels, torch.cat([bos, token_batch.tokens, eos], dim=1))
    assert (batch.input_ids == sp.mask).any()
    # sentence ends and word starts come from the tokenizer's own vocabulary
    (full_stop,), (newline,), (the,) = (tokenizer.encode(s) for s in (".", "\n", " the"))
    assert bart.sentence_ends[[full_stop, newline, sp.eos]].all()
    assert not bart.sentence_ends[the] and bart.words.opens[the]
    assert not bart.special[bart.random_ids].any() and bart.special[sp.modes["[S]"]]

    for family in ("encoder_decoder", "decoder"):
        cfg = ObjectiveConfig(name="ul2", ul2_preset="upalm")
        ul2 = build_objective(cfg, tokenizer, 64, family=family)
        assert isinstance(ul2, UL2) and ul2.family == family
        loader = TokenLoader(shards_dir, loader_seq_len(ul2, 64), 4, seed=0)
        batch = ul2(next(loader), g)
        assert batch.input_ids.shape == (4, 64) and batch.objective == "ul2"
        assert set(batch.input_ids[:, 0].tolist()) <= set(sp.modes.values())
    with pytest.raises(ValueError, match=r"family=cfg\.model\.family"):
        build_objective(ObjectiveConfig(name="ul2"), tokenizer, 64)


def test_pairing_refuses_bart_on_decoders_and_ul2_on_encoders():
    with pytest.raises(
        ValueError,
        match=r"objective\.name 'bart' does not train model\.family 'decoder'; "
        r"it supports \['encoder_decoder'\]; objectives for 'decoder': .*'ul2'",
    ):
        check_pairing("bart", "decoder")
    check_pairing("bart", "encoder_decoder")
    check_pairing("ul2", "decoder")
    check_pairing("ul2", "encoder_decoder")
    with pytest.raises(ValueError, match="'ul2' does not train model.family 'encoder'"):
        check_pairing("ul2", "encoder")


@pytest.mark.parametrize(
    ("objective", "key"),
    [
        (dict(name="bart", bart_mask_ratio=1.5), "objective.bart_mask_ratio"),
        (dict(name="bart", bart_rotate_ratio=-0.1), "objective.bart_rotate_ratio"),
        (dict(name="bart", bart_poisson_lambda=0.0), "objective.bart_poisson_lambda"),
        (dict(name="ul2", ul2_rates=[1.0, 1.0]), "objective.ul2_rates"),
        (dict(name="ul2", ul2_rates=[0.0] * 7), "objective.ul2_rates"),
        (dict(name="ul2", ul2_prefix_noise_density=0.7), "objective.ul2_prefix_noise_density"),
    ],
)
def test_bad_denoiser_settings_name_their_key(objective, key):
    cfg = ExperimentConfig(
        model=ModelConfig(family="encoder_decoder"), objective=ObjectiveConfig(**objective)
    )
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()


def test_ul2_running_out_of_sentinels_is_refused_when_the_config_loads():
    cfg = load_config(
        ExperimentConfig,
        overrides=[
            "--model.family=encoder_decoder",
            "--objective.name=ul2",
            "--train.seq_len=1024",
            "--data.train=x",
        ],
    )
    with pytest.raises(ConfigError, match=r"X\(3,0\.5\) makes 171 noise spans.*100 sentinel"):
        cfg.validate()
    cfg.objective.ul2_rates = [1, 1, 0, 1, 1, 1, 1]
    cfg.validate()
    with pytest.raises(ConfigError, match="objective.ul2_preset"):
        load_config(ExperimentConfig, overrides=["--objective.ul2_preset=palm"])
