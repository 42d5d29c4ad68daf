"""Pretraining objectives: pure functions from a TokenBatch to a ModelBatch.

Each objective names the model families it supports; :func:`check_pairing` refuses a bad
pairing when the config is loaded, not at step 1000.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.objectives.clm import CausalLM
from pretrain.objectives.mlm import MaskedLM, word_start_table
from pretrain.objectives.prefix_lm import PrefixLM
from pretrain.objectives.span import SpanCorruption

if TYPE_CHECKING:
    from pretrain.config import ObjectiveConfig
    from pretrain.tokenizer import Tokenizer

OBJECTIVES: dict[str, type] = {
    "clm": CausalLM,
    "mlm": MaskedLM,
    "prefix_lm": PrefixLM,
    "span": SpanCorruption,
}


def check_pairing(objective: str, family: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective.name {objective!r}; choose one of {sorted(OBJECTIVES)}"
        )
    families = OBJECTIVES[objective].families
    if family not in families:
        works = sorted(name for name, cls in OBJECTIVES.items() if family in cls.families)
        raise ValueError(
            f"objective.name {objective!r} does not train model.family {family!r}; "
            f"it supports {list(families)}; objectives for {family!r}: {works}"
        )


def build_objective(cfg: ObjectiveConfig, tokenizer: Tokenizer, seq_len: int):
    """The objective named by ``cfg.name``, with the tokenizer's special ids."""
    if cfg.name == "clm":
        return CausalLM(document_masking=cfg.document_masking)
    if cfg.name == "mlm":
        sp = tokenizer.special
        special_ids = [sp.bos, sp.eos, sp.pad, sp.mask, sp.sep, sp.cls, *sp.sentinels]
        special_ids += list(sp.modes.values())
        word_starts = None
        if cfg.whole_word_masking:
            vocab = tokenizer.backend.get_vocab(with_added_tokens=False)
            word_starts = word_start_table(vocab, tokenizer.vocab_size)
        return MaskedLM(
            mask_id=sp.mask,
            vocab_size=tokenizer.vocab_size,
            special_ids=special_ids,
            probability=cfg.mlm_probability,
            mask_replace_prob=cfg.mask_replace_prob,
            random_replace_prob=cfg.random_replace_prob,
            exact_count=cfg.exact_count,
            word_starts=word_starts,
            document_masking=cfg.document_masking,
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
        )
    if cfg.name == "prefix_lm":
        return PrefixLM(cfg.prefix_noise_density, document_masking=cfg.document_masking)
    raise ValueError(f"unknown objective.name {cfg.name!r}; choose one of {sorted(OBJECTIVES)}")


def loader_seq_len(objective, seq_len: int) -> int:
    """The loader's T: windows hold T+1 raw tokens, or what the objective asks for (T5 spans)."""
    window = getattr(objective, "window_length", None)
    return seq_len if window is None else window(seq_len) - 1
