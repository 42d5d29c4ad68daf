"""UL2's denoisers, the two mixtures of them, and the length arithmetic that fixes shapes.

Tay et al. 2022, "UL2: Unifying Language Learning Paradigms" (arXiv 2205.05131), §3.1.2: the
seven denoisers ("mean span mu, corruption rate r"):

- R: (3, 0.15), (8, 0.15), mode token ``[R]``;
- X: (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5), mode token ``[X]``;
- S: prefix LM with on average a quarter of the window as target (written (L/4, 0.25) in the
  secondary tables; T5's ``random_prefix_noise_mask`` at density 0.25 keeps a prefix uniform on
  ``[round((L - 1) / 2), L - 1]``), mode token ``[S]``.

The table comes from secondary sources that agree with each other (the paper's own table was
not at hand: ``shared/reference/objectives.md`` §5.2). UL2 does not state mixing weights; its
appendix code samples the tasks uniformly when ``rates`` is None, hence the ``uniform`` preset.

``upalm`` is UL2R as used for U-PaLM (Tay et al. 2022b, "Transcending Scaling Laws with 0.1%
Extra Compute", arXiv 2210.11399, §2.3): 50% S with the split point uniform (density 0.5),
25% R (3, 0.15) and 25% X, "mean length of 32 OR a corruption rate of up to 50%", split here
evenly between X (32, 0.15) and X (3, 0.5) as levanter's ``ul2r.py`` lists them.

Every span denoiser's counts follow from the window length alone (T5's
``num_noise_tokens_and_spans``), so the longest inputs and targets are known in advance, and
each denoiser gets the window that fills the model's input (:func:`plan_ul2`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pretrain.objectives.noise import (
    corrupted_lengths,
    num_noise_tokens_and_spans,
    prefix_length_bounds,
)


@dataclass(frozen=True)
class Denoiser:
    """One denoising task: span corruption (``mean_span`` set) or prefix LM (``None``)."""

    mode: str  # "[R]", "[X]" or "[S]", the key of the tokenizer's mode-token id
    density: float  # share of the window that becomes target
    mean_span: float | None = None

    @property
    def is_prefix_lm(self) -> bool:
        return self.mean_span is None

    @property
    def name(self) -> str:
        if self.mean_span is None:
            return f"S({self.density:g})"
        return f"{self.mode[1]}({self.mean_span:g},{self.density:g})"


def _span(mode: str, mean_span: float, density: float) -> Denoiser:
    return Denoiser(mode, density, mean_span)


UL2_DENOISERS = (
    _span("[R]", 3, 0.15),
    _span("[R]", 8, 0.15),
    _span("[X]", 3, 0.5),
    _span("[X]", 8, 0.5),
    _span("[X]", 64, 0.15),
    _span("[X]", 64, 0.5),
    Denoiser("[S]", 0.25),
)
UPALM_DENOISERS = (
    Denoiser("[S]", 0.5),
    _span("[R]", 3, 0.15),
    _span("[X]", 32, 0.15),
    _span("[X]", 3, 0.5),
)
PRESETS: dict[str, tuple[tuple[Denoiser, ...], tuple[float, ...]]] = {
    "uniform": (UL2_DENOISERS, (1 / 7,) * 7),
    "upalm": (UPALM_DENOISERS, (0.5, 0.25, 0.125, 0.125)),
}


def resolve_preset(
    preset: str, rates: Sequence[float] | None = None, prefix_noise_density: float | None = None
) -> tuple[tuple[Denoiser, ...], tuple[float, ...]]:
    """The preset's denoisers (S density overridden if given) and rates (``rates`` if given)."""
    if preset not in PRESETS:
        raise ValueError(f"objective.ul2_preset must be one of {sorted(PRESETS)}, got {preset!r}")
    denoisers, default_rates = PRESETS[preset]
    if prefix_noise_density is not None:
        denoisers = tuple(
            Denoiser(d.mode, prefix_noise_density) if d.is_prefix_lm else d for d in denoisers
        )
    names = [d.name for d in denoisers]
    if rates is None:
        return denoisers, default_rates
    if len(rates) != len(denoisers) or any(r < 0 for r in rates) or sum(rates) <= 0:
        raise ValueError(
            f"objective.ul2_rates must give {len(denoisers)} non-negative rates, not all zero, "
            f"for the {preset!r} denoisers {names}; got {list(rates)}"
        )
    return denoisers, tuple(float(r) for r in rates)


def example_lengths(denoiser: Denoiser, raw_length: int) -> tuple[int, int]:
    """Longest (inputs, targets) a window of ``raw_length`` tokens gives, each with its EOS,
    without the mode token: ``L - noise + spans + 1`` and ``noise + spans + 1`` for a span
    denoiser; ``max_prefix + 1`` and ``L - min_prefix + 1`` for the prefix LM."""
    if denoiser.mean_span is None:
        min_in, max_in = prefix_length_bounds(raw_length, denoiser.density)
        return max_in + 1, raw_length - min_in + 1
    return corrupted_lengths(raw_length, denoiser.density, denoiser.mean_span)


def model_length(denoiser: Denoiser, raw_length: int, family: str) -> int:
    """Longest model input: the encoder's ``mode + inputs``, or for a decoder-only model
    ``mode + inputs + targets`` less the one token that is only a label. For the prefix LM the
    decoder-only length is ``L + 2`` whatever the split."""
    inputs, targets = example_lengths(denoiser, raw_length)
    if family == "encoder_decoder":
        return 1 + inputs
    if denoiser.is_prefix_lm:
        return raw_length + 2
    return inputs + targets


@dataclass(frozen=True)
class UL2Plan:
    """Shapes fixed for a configuration: raw tokens per example of each denoiser (the loader's
    window is the longest of them) and the decoder length."""

    raw_lengths: tuple[int, ...]  # per denoiser, in the order given
    targets_length: int  # encoder-decoder: longest targets of the active denoisers

    @property
    def window_length(self) -> int:
        return max(self.raw_lengths)


def _longest(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The longest window from ``start`` (which fits) up to ``limit`` that fits; lengths grow
    with the window, so the first that does not fit ends the search."""
    raw_length = start
    while raw_length < limit and fits(raw_length + 1):
        raw_length += 1
    return raw_length


def plan_ul2(
    denoisers: Sequence[Denoiser],
    rates: Sequence[float],
    seq_len: int,
    family: str,
    num_sentinels: int,
) -> UL2Plan:
    """Each denoiser's longest window whose example fits the fixed shapes; refuses denoisers
    that need more sentinels than exist even in the window all of them fit.

    The shapes: model inputs of ``seq_len`` tokens and, for encoder-decoder models, a decoder
    of ``targets_length``: the longest targets any active denoiser makes from the longest
    window every active denoiser fits (so the decoder is no longer than one shared window
    would need). Within them, and within the sentinels there are, each denoiser takes its own
    longest window: a denoiser that corrupts more (X at rate 0.5) writes more sentinels and
    targets per raw token, and one shared window, sized for it, would leave the others' rows
    about a fifth padding (decoder-only, uniform rates). Rows take the first
    ``raw_lengths[i]`` tokens of the loader's window, as the multi-objective mixture does for
    its shorter parts.
    """
    is_active = [r > 0 for r in rates]
    active = [d for d, on in zip(denoisers, is_active, strict=True) if on]
    if not active:
        raise ValueError("objective.ul2_rates: at least one rate must be positive")
    if not all(model_length(d, 2, family) <= seq_len for d in active):
        raise ValueError(f"train.seq_len={seq_len} is too short for UL2 with {family} models")
    limit = 4 * seq_len
    shared = _longest(
        lambda n: all(model_length(d, n, family) <= seq_len for d in active), 2, limit
    )
    targets_length = max(example_lengths(d, shared)[1] for d in active)

    def fits(d: Denoiser, raw_length: int) -> bool:  # a longer window than `shared` only
        if model_length(d, raw_length, family) > seq_len:  # while sentinels remain, too
            return False
        if d.mean_span is not None:
            if num_noise_tokens_and_spans(raw_length, d.density, d.mean_span)[1] > num_sentinels:
                return False
        return family != "encoder_decoder" or example_lengths(d, raw_length)[1] <= targets_length

    raw_lengths = tuple(
        _longest(lambda n, d=d: fits(d, n), shared, limit) if on else shared
        for d, on in zip(denoisers, is_active, strict=True)
    )
    names = [d.name for d in denoisers]
    for d, on, raw_length in zip(denoisers, is_active, raw_lengths, strict=True):
        if not on or d.mean_span is None:
            continue
        _, spans = num_noise_tokens_and_spans(raw_length, d.density, d.mean_span)
        if spans > num_sentinels:
            raise ValueError(
                f"objective.ul2_rates: denoiser {d.name} makes {spans} noise spans in its "
                f"{raw_length}-token windows at train.seq_len={seq_len} ({family}), but the "
                f"tokenizer has only {num_sentinels} sentinel tokens; give it rate 0 in "
                f"objective.ul2_rates (order {names}) or lower train.seq_len"
            )
    return UL2Plan(raw_lengths, targets_length)
