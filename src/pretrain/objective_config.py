"""The ``objective`` section of the experiment config: which pretraining objective, its noise
settings (each key's docstring cites its paper's value), an objective mixture's components,
and the range checks that name the key."""

from __future__ import annotations

import dataclasses
import typing

from pretrain.typed_config import ConfigError, from_dict, to_dict


@dataclasses.dataclass
class ObjectiveConfig:
    name: str = "clm"
    document_masking: bool = True
    z_loss: float = 0.0
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    exact_count: bool = False
    """MLM: BERT's exact count per sequence instead of an independent draw per token."""
    mlm_max_predictions: int | None = None
    """MLM with ``exact_count``: at most this many selected tokens per sequence (BERT's
    ``max_predictions_per_seq``, 20 at 128 tokens); None: no cap."""
    whole_word_masking: bool = False
    """MLM: select whole words (stretches between whitespace, ``objectives/words.py``)."""
    noise_density: float = 0.15
    """Span corruption: share of tokens in noise spans (T5: 0.15)."""
    mean_noise_span_length: float = 3.0
    prefix_noise_density: float = 0.5
    """Prefix LM: the prefix is uniform on [round((1 - 2 d)(L - 1)), L - 1] tokens."""
    bart_mask_ratio: float = 0.3
    """BART text infilling: share of words hidden in Poisson-length spans (BART-large: 0.3)."""
    bart_random_ratio: float = 0.1
    """BART: share of the mask tokens it writes that are random tokens instead (BART-large: 0.1)."""
    bart_poisson_lambda: float = 3.0
    """BART: mean span length of text infilling (paper: 3; BART-large's fairseq args: 3.5)."""
    bart_token_mask_ratio: float = 0.0
    """BART token masking: share of tokens replaced by the mask token."""
    bart_deletion_ratio: float = 0.0
    """BART token deletion: share of tokens removed."""
    bart_insert_ratio: float = 0.0
    """BART: mask tokens inserted, as a share of the sequence length (fairseq --insert)."""
    bart_permute_sentence_ratio: float = 1.0
    """BART sentence permutation: share of sentences shuffled (BART-large: all of them)."""
    bart_rotate_ratio: float = 0.0
    """BART document rotation: probability that a sequence is rotated (BART-large: 0)."""
    ul2_preset: typing.Literal["uniform", "upalm"] = "uniform"
    """UL2: the 7 denoisers of Tay et al. 2022 at equal rates, or U-PaLM's UL2R mixture
    (50% S, 25% R(3, 0.15), 12.5% X(32, 0.15), 12.5% X(3, 0.5))."""
    ul2_rates: list[float] | None = None
    """UL2: one rate per denoiser of the preset, in its order (uniform: R(3,0.15) R(8,0.15)
    X(3,0.5) X(8,0.5) X(64,0.15) X(64,0.5) S; upalm: S R(3,0.15) X(32,0.15) X(3,0.5))."""
    plm_rule: typing.Literal["xlnet", "hf"] = "xlnet"
    """Permutation LM: the original XLNet code's target and perm-mask rule, or HF's collator's."""
    plm_partial_k: float = 6.0
    """Permutation LM: predict about 1/K of the tokens, the last of the factorization order."""
    plm_max_span: int = 5
    """Permutation LM: longest target span (XLNet's ``max_span_length``)."""
    mixture: list[dict[str, typing.Any]] | None = None
    """name 'mixture': the components, each ``{name: ..., weight: ..., <objective key>: ...}``;
    keys a component does not set come from this section (e.g. ``noise_density``)."""
    mixture_granularity: typing.Literal["example", "batch"] = "example"
    """Mixture: draw a component for every example, or one for every batch."""
    ul2_prefix_noise_density: float | None = None
    """UL2: the S denoiser's prefix-LM density (None: the preset's, 0.25 uniform, 0.5 upalm)."""

    def components(self) -> list[tuple[ObjectiveConfig, float]]:
        """The mixture's components as full configs with their weights.

        Raises:
            ConfigError: naming ``objective.mixture[i]`` and the bad key.
        """
        if self.name != "mixture":
            return [(self, 1.0)]
        if not self.mixture:
            raise ConfigError("objective.mixture: give a list of {name, weight} components")
        base = {k: v for k, v in to_dict(self).items() if k not in ("mixture", "name")}
        out = []
        for i, item in enumerate(self.mixture):
            where = f"objective.mixture[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"{where}: give a mapping with a 'name' and a 'weight'")
            if item["name"] == "mixture" or "mixture" in item:
                raise ConfigError(f"{where}: a mixture cannot contain a mixture")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{where}.weight must be a number > 0, got {weight!r}")
            fields = {**base, **{k: v for k, v in item.items() if k != "weight"}}
            out.append((from_dict(ObjectiveConfig, fields, where), float(weight)))
        return out

    def validate(self, where: str = "objective") -> ObjectiveConfig:
        """Range checks of the objective's settings; raises :class:`ConfigError` naming the key
        (under ``where``: ``objective``, or ``objective.mixture[i]`` for a component)."""
        if self.name == "mixture":
            for i, (component, _) in enumerate(self.components()):
                component.validate(f"objective.mixture[{i}]")
            return self
        if self.mixture is not None:
            raise ConfigError(
                f"{where}.mixture applies with objective.name=mixture only (the name is "
                f"{self.name!r}); set objective.name=mixture or leave objective.mixture out"
            )
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ConfigError(
                f"{where}.mlm_probability must be in (0, 1], got {self.mlm_probability}"
            )
        for name in ("mask_replace_prob", "random_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ConfigError(
                f"{where}.mask_replace_prob + {where}.random_replace_prob must be <= 1 (shares "
                f"of the selected tokens), got {self.mask_replace_prob} + "
                f"{self.random_replace_prob}"
            )
        if not 0.0 < self.prefix_noise_density <= 0.5:
            raise ConfigError(
                f"{where}.prefix_noise_density must be in (0, 0.5], got {self.prefix_noise_density}"
            )
        if not 0.0 < self.noise_density < 1.0:
            raise ConfigError(f"{where}.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_noise_span_length < 1:
            raise ConfigError(
                f"{where}.mean_noise_span_length must be >= 1, got {self.mean_noise_span_length}"
            )
        if self.mlm_max_predictions is not None:
            if self.mlm_max_predictions < 1:
                raise ConfigError(
                    f"{where}.mlm_max_predictions must be >= 1, got {self.mlm_max_predictions}"
                )
            if not self.exact_count:
                raise ConfigError(
                    f"{where}.mlm_max_predictions caps BERT's exact count: set "
                    f"{where}.exact_count=true too"
                )
        if not self.plm_partial_k > 1:
            raise ConfigError(f"{where}.plm_partial_k must be > 1, got {self.plm_partial_k}")
        if self.plm_max_span < 1:
            raise ConfigError(f"{where}.plm_max_span must be >= 1, got {self.plm_max_span}")
        from pretrain.objectives.ul2_denoisers import resolve_preset

        ratios = [
            "bart_mask_ratio",
            "bart_random_ratio",
            "bart_token_mask_ratio",
            "bart_deletion_ratio",
            "bart_insert_ratio",
            "bart_permute_sentence_ratio",
            "bart_rotate_ratio",
        ]
        for name in ratios:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {value}")
        if self.bart_poisson_lambda <= 0:
            raise ConfigError(
                f"{where}.bart_poisson_lambda must be > 0, got {self.bart_poisson_lambda}"
            )
        density = self.ul2_prefix_noise_density
        if density is not None and not 0.0 < density <= 0.5:
            raise ConfigError(
                f"{where}.ul2_prefix_noise_density must be in (0, 0.5], got {density}"
            )
        try:
            resolve_preset(self.ul2_preset, self.ul2_rates, density)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self
