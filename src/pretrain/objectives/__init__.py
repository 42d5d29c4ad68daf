"""Pretraining objectives: pure functions from a TokenBatch to a ModelBatch.

Each objective names the model families it supports; :func:`check_pairing` refuses a bad
pairing when the config is loaded, not at step 1000.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.objectives.bart import BARTDenoising, sentence_end_table
from pretrain.objectives.clm import CausalLM
from pretrain.objectives.mixture import ObjectiveMixture, window_length
from pretrain.objectives.mlm import MaskedLM
from pretrain.objectives.plm import PermutationLM
from pretrain.objectives.prefix_lm import EncoderDecoderPrefixLM, PrefixLM
from pretrain.objectives.span import SpanCorruption
from pretrain.objectives.ul2 import UL2
from pretrain.objectives.ul2_denoisers import resolve_preset
from pretrain.objectives.words import WordBoundaries

if TYPE_CHECKING:
    from pretrain.config import ObjectiveConfig
    from pretrain.tokenizer import Tokenizer

OBJECTIVES: dict[str, type] = {
    "bart": BARTDenoising,
    "clm": CausalLM,
    "mixture": ObjectiveMixture,
    "mlm": MaskedLM,
    "plm": PermutationLM,
    "prefix_lm": PrefixLM,
    "span": SpanCorruption,
    "ul2": UL2,
}


def check_pairing(objective: str, family: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective.name {objective!r}; choose one of {sorted(OBJECTIVES)}"
        )
    families = OBJECTIVES[objective].families
    if family not in families:
        works = sorted(
            name
            for name, cls in OBJECTIVES.items()
            if family in cls.families and name != "mixture"  # a mixture is of these
        )
        raise ValueError(
            f"objective.name {objective!r} does not train model.family {family!r}; "
            f"it supports {list(families)}; objectives for {family!r}: {works}"
        )


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """Every reserved special id: BOS, EOS, pad, mask, SEP, CLS, sentinels, mode tokens."""
    sp = tokenizer.special
    return [sp.bos, sp.eos, sp.pad, sp.mask, sp.sep, sp.cls, *sp.sentinels, *sp.modes.values()]


def _token_texts(tokenizer: Tokenizer) -> list[str]:
    """Each id's own decoded text, special tokens included."""
    ids = [[i] for i in range(tokenizer.vocab_size)]
    return tokenizer.backend.decode_batch(ids, skip_special_tokens=False)


def build_objective(
    cfg: ObjectiveConfig, tokenizer: Tokenizer, seq_len: int, family: str | None = None
):
    """The objective named by ``cfg.name``, with the tokenizer's special ids.

    ``family`` (``model.family``) is needed by objectives that build different batches for
    different families (UL2: encoder-decoder or decoder-only).
    """
    if cfg.name in ("bart", "ul2"):
        cfg.validate()
    if cfg.name == "clm":
        return CausalLM(document_masking=cfg.document_masking)
    if cfg.name == "mlm":
        sp = tokenizer.special
        words = None
        if cfg.whole_word_masking:
            words = WordBoundaries.from_token_texts(_token_texts(tokenizer))
        return MaskedLM(
            mask_id=sp.mask,
            vocab_size=tokenizer.vocab_size,
            special_ids=special_ids(tokenizer),
            probability=cfg.mlm_probability,
            mask_replace_prob=cfg.mask_replace_prob,
            random_replace_prob=cfg.random_replace_prob,
            exact_count=cfg.exact_count,
            max_predictions=cfg.mlm_max_predictions,
            words=words,
            document_masking=cfg.document_masking,
        )
    if cfg.name == "plm":
        return PermutationLM(
            special_ids=special_ids(tokenizer),
            mask_id=tokenizer.special.mask,
            rule=cfg.plm_rule,
            partial_k=cfg.plm_partial_k,
            max_span=cfg.plm_max_span,
        )
    if cfg.name == "span":
        sp = tokenizer.special
        return SpanCorruption(
            seq_len,
            list(sp.sentinels),
            eos_id=sp.eos,
            decoder_start_id=sp.pad,
            noise_density=cfg.noise_density,
            mean_noise_span_length=cfg.mean_noise_span_length,
            pad_id=sp.pad,
        )
    if cfg.name == "prefix_lm":
        if family == "encoder_decoder":
            sp = tokenizer.special
            return EncoderDecoderPrefixLM(
                seq_len, sp.eos, sp.pad, sp.pad, noise_density=cfg.prefix_noise_density
            )
        return PrefixLM(cfg.prefix_noise_density, document_masking=cfg.document_masking)
    if cfg.name == "bart":
        return _build_bart(cfg, tokenizer, seq_len)
    if cfg.name == "mixture":
        components = [
            (c.name, build_objective(c, tokenizer, seq_len, family), weight)
            for c, weight in cfg.components()
        ]
        return ObjectiveMixture(components, seq_len, tokenizer.special.pad, cfg.mixture_granularity)
    if cfg.name == "ul2":
        if family is None:
            raise ValueError(
                "objective.name 'ul2' builds different batches for model.family 'decoder' and "
                "'encoder_decoder': call build_objective(..., family=cfg.model.family)"
            )
        sp = tokenizer.special
        denoisers, rates = resolve_preset(
            cfg.ul2_preset, cfg.ul2_rates, cfg.ul2_prefix_noise_density
        )
        return UL2(
            seq_len,
            family,
            mode_ids=sp.modes,
            sentinel_ids=sp.sentinels,
            eos_id=sp.eos,
            pad_id=sp.pad,
            decoder_start_id=sp.pad,
            denoisers=denoisers,
            rates=rates,
        )
    raise ValueError(f"unknown objective.name {cfg.name!r}; choose one of {sorted(OBJECTIVES)}")


def _build_bart(cfg: ObjectiveConfig, tokenizer: Tokenizer, seq_len: int) -> BARTDenoising:
    sp = tokenizer.special
    size = tokenizer.vocab_size
    texts = _token_texts(tokenizer)
    return BARTDenoising(
        seq_len,
        bos_id=sp.bos,
        eos_id=sp.eos,
        pad_id=sp.pad,
        mask_id=sp.mask,
        decoder_start_id=sp.pad,
        special_ids=special_ids(tokenizer),
        vocab_size=size,
        words=WordBoundaries.from_token_texts(texts),
        sentence_ends=sentence_end_table(texts),
        mask_ratio=cfg.bart_mask_ratio,
        random_ratio=cfg.bart_random_ratio,
        poisson_lambda=cfg.bart_poisson_lambda,
        token_mask_ratio=cfg.bart_token_mask_ratio,
        deletion_ratio=cfg.bart_deletion_ratio,
        insert_ratio=cfg.bart_insert_ratio,
        permute_sentence_ratio=cfg.bart_permute_sentence_ratio,
        rotate_ratio=cfg.bart_rotate_ratio,
    )


def loader_seq_len(objective, seq_len: int) -> int:
    """The loader's T: windows hold T+1 raw tokens, or what the objective asks for (T5 spans)."""
    return window_length(objective, seq_len) - 1
