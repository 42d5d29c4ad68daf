"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb, content-aware.

``QualityFilter(cfg)(text)`` returns None to keep a document, or the name of the first rule
that removes it, ``family:rule`` (``gopher_quality:alpha_words_frac``,
``gopher_repetition:dup_line_frac``, ``c4:lorem_ipsum``, ``fineweb:line_punct_ratio``).
Families run in the order of :data:`FAMILIES`: Gopher's own order (quality, then
repetition; Rae et al. 2021 App. A.1.1), then C4, then FineWeb's additions, as in the
FineWeb recipe (``reference/data.md`` §1.4).

The rules and their published thresholds live beside each family
(:mod:`~pretrain.data.filters_gopher`, :mod:`~pretrain.data.filters_c4`,
:mod:`~pretrain.data.filters_fineweb`). Applied blindly, the prose rules remove code and
technical documentation for being technical, and hard-wrapped books for their line breaks.
With ``content_aware`` (the default) :mod:`~pretrain.data.content_type` marks technical
documents (code, markup, tables), which skip the rules that do not fit them:

==================  ==============================================================
family              rules a technical document skips
==================  ==============================================================
gopher_quality      max_mean_word_length, hash_ratio, ellipsis_ratio, alpha_words_frac
gopher_repetition   every n-gram rule; duplicate lines/paragraphs count prose only
c4                  too_few_paragraphs, curly_bracket, too_few_sentences
fineweb             all four
==================  ==============================================================

Every document keeps: word count, min mean word length, bullets, ellipsis lines, stop
words, duplicate lines and paragraphs, lorem ipsum (and bad words). Each junk kind of
``dirty/`` trips at least one of those or is not technical. With ``unwrap_lines`` (the
default) line rules read hard-wrapped prose by logical lines
(:func:`~pretrain.data.text_view.unwrap_lines`).
``FilterConfig(content_aware=False, unwrap_lines=False)`` applies every rule to every
document by physical lines, as the published pipelines do.

The stage filters documents; it does not rewrite them unless ``c4.drop_lines`` is set, in
which case :meth:`QualityFilter.apply` returns prose cut down to the lines C4 keeps.
Text should be normalized first (:func:`pretrain.data.normalize.normalize_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pretrain.data.content_type import ContentType, detect_content_type
from pretrain.data.filters_c4 import C4Config, c4_filter
from pretrain.data.filters_fineweb import FineWebConfig, fineweb_quality
from pretrain.data.filters_gopher import (
    GopherQualityConfig,
    GopherRepetitionConfig,
    gopher_quality,
    gopher_repetition,
)
from pretrain.data.text_view import TextView

__all__ = [
    "FAMILIES",
    "C4Config",
    "FilterConfig",
    "FineWebConfig",
    "GopherQualityConfig",
    "GopherRepetitionConfig",
    "QualityFilter",
]

FAMILIES = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
_PROSE = ContentType(0.0, 0.0)


@dataclass
class FilterConfig:
    """Every threshold of every family (published values by default) and their switches."""

    content_aware: bool = True  # technical documents skip the prose rules that misfire
    unwrap_lines: bool = True  # line rules read hard-wrapped prose by logical lines
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)

    def __post_init__(self) -> None:
        """Accept plain dicts for the families (``FilterConfig(c4={"min_sentences": 5})``),
        checked key by key as YAML configs are (:func:`pretrain.config.from_dict`)."""
        from pretrain.config import from_dict

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                family = type(f.default_factory())  # type: ignore[misc]
                setattr(self, f.name, from_dict(family, value, f.name))


class QualityFilter:
    """Decide per document: keep (None) or the first failing rule's ``family:rule`` name."""

    def __init__(self, cfg: FilterConfig | None = None) -> None:
        self.cfg = cfg or FilterConfig()

    def __call__(self, text: str) -> str | None:
        return self.apply(text)[1]

    def apply(self, text: str) -> tuple[str | None, str | None]:
        """(text to keep, None) or (None, reason). The text changes only with c4.drop_lines."""
        cfg = self.cfg
        view = TextView(text, cfg.unwrap_lines)
        ctype = detect_content_type(view) if cfg.content_aware else _PROSE
        if cfg.gopher_quality.enabled:
            rule = next(gopher_quality(view, ctype, cfg.gopher_quality), None)
            if rule:
                return None, f"gopher_quality:{rule}"
        if cfg.gopher_repetition.enabled:
            rule = next(gopher_repetition(view, ctype, cfg.gopher_repetition), None)
            if rule:
                return None, f"gopher_repetition:{rule}"
        if cfg.c4.enabled:
            kept = [] if cfg.c4.drop_lines and not ctype.technical else None
            rule = next(c4_filter(view, ctype, cfg.c4, kept), None)
            if rule:
                return None, f"c4:{rule}"
            if kept is not None:
                if not kept:
                    return None, "c4:no_lines_left"
                text = "\n".join(kept)
                view = TextView(text, cfg.unwrap_lines)
        if cfg.fineweb.enabled:
            rule = next(fineweb_quality(view, ctype, cfg.fineweb), None)
            if rule:
                return None, f"fineweb:{rule}"
        return text, None

    def explain(self, text: str) -> list[str]:
        """Every rule ``text`` fails, in order, not only the first (ignores ``drop_lines``)."""
        cfg = self.cfg
        view = TextView(text, cfg.unwrap_lines)
        ctype = detect_content_type(view) if cfg.content_aware else _PROSE
        families = (
            ("gopher_quality", gopher_quality, cfg.gopher_quality),
            ("gopher_repetition", gopher_repetition, cfg.gopher_repetition),
            ("c4", c4_filter, cfg.c4),
            ("fineweb", fineweb_quality, cfg.fineweb),
        )
        return [
            f"{name}:{rule}"
            for name, rules, family_cfg in families
            if family_cfg.enabled
            for rule in rules(view, ctype, family_cfg)
        ]

    def content_type(self, text: str) -> ContentType:
        """How this filter classifies ``text`` (prose for every text when not content-aware)."""
        return detect_content_type(TextView(text)) if self.cfg.content_aware else _PROSE
