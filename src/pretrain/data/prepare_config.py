"""The ``pretrain data prepare CONFIG.yaml`` schema: domains, stages and their settings.

```yaml
out: prepared/                 # every stage writes under here
workers: 2
domains:
  - {name: books, paths: [corpora/books.jsonl.gz], weight: 0.3, max_epochs: 2}
  - {name: web, paths: [raw/web/]}            # weight: natural share of the data
normalize: true                # Unicode NFC, whitespace, control characters
filters: {enabled: true, settings: {}}       # FilterConfig keys to override
dedup: {exact: true, near: true, settings: {}}
pii: {enabled: false}
mix: {temperature: 1.0, total_tokens: null, seed: 0}
tokenize: {tokenizer: null, val_fraction: 0.01}   # a tokenizer dir makes train/val shards
```

Unknown keys are errors that name the key (:func:`pretrain.config.from_dict`).
"""

from __future__ import annotations

import dataclasses
import typing

from pretrain.config import ConfigError


@dataclasses.dataclass
class DomainConfig:
    name: str
    paths: list[str]
    weight: float | None = None
    """Share before temperature; None: the domain's natural share of the kept words."""
    max_epochs: float = 1.0
    """Most times a domain's documents may be repeated to reach its share."""
    filters: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    """This domain's overrides of ``filters.settings``, per filter family, e.g. whole books:
    ``{gopher_quality: {max_words: 2000000}}``."""

    def filter_settings(self, base: dict[str, typing.Any]) -> dict[str, typing.Any]:
        """``base`` with this domain's overrides merged in, family by family."""
        merged = dict(base)
        for family, values in self.filters.items():
            if isinstance(values, dict) and isinstance(merged.get(family), dict):
                merged[family] = {**merged[family], **values}
            else:
                merged[family] = values
        return merged


@dataclasses.dataclass
class FilterStageConfig:
    enabled: bool = True
    settings: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    """Overrides of :class:`pretrain.data.filters.FilterConfig` fields."""


@dataclasses.dataclass
class DedupStageConfig:
    exact: bool = True
    near: bool = True
    settings: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    """Overrides of :class:`pretrain.data.dedup.DedupConfig` fields."""


@dataclasses.dataclass
class PiiConfig:
    enabled: bool = False


@dataclasses.dataclass
class MixConfig:
    temperature: float = 1.0
    """Shares become proportional to ``share ** (1 / temperature)`` (mT5, Conneau et al. 2020):
    1 keeps them, larger values flatten them towards uniform."""
    total_tokens: int | None = None
    """Size of the mixed corpus in words; None: the kept words of all domains."""
    seed: int = 0


@dataclasses.dataclass
class TokenizeConfig:
    tokenizer: str | None = None
    val_fraction: float = 0.01


@dataclasses.dataclass
class PrepareConfig:
    out: str
    domains: list[DomainConfig]
    workers: int = 1
    normalize: bool = True
    filters: FilterStageConfig = dataclasses.field(default_factory=FilterStageConfig)
    dedup: DedupStageConfig = dataclasses.field(default_factory=DedupStageConfig)
    pii: PiiConfig = dataclasses.field(default_factory=PiiConfig)
    mix: MixConfig = dataclasses.field(default_factory=MixConfig)
    tokenize: TokenizeConfig = dataclasses.field(default_factory=TokenizeConfig)

    def validate(self) -> PrepareConfig:
        if not self.domains:
            raise ConfigError("domains: give at least one {name, paths} entry")
        names = [d.name for d in self.domains]
        for i, d in enumerate(self.domains):
            if not d.name or "/" in d.name or names.count(d.name) > 1:
                raise ConfigError(f"domains[{i}].name must be unique and contain no '/'")
            if not d.paths:
                raise ConfigError(f"domains[{i}].paths: give at least one file or directory")
            if d.weight is not None and d.weight <= 0:
                raise ConfigError(f"domains[{i}].weight must be > 0, got {d.weight}")
            if d.max_epochs <= 0:
                raise ConfigError(f"domains[{i}].max_epochs must be > 0, got {d.max_epochs}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.mix.temperature <= 0:
            raise ConfigError(f"mix.temperature must be > 0, got {self.mix.temperature}")
        if self.mix.total_tokens is not None and self.mix.total_tokens <= 0:
            raise ConfigError(f"mix.total_tokens must be > 0, got {self.mix.total_tokens}")
        self._check_settings("filters.settings", "pretrain.data.filters", "FilterConfig",
                             self.filters.settings)  # fmt: skip
        from pretrain.data.filters import FilterConfig

        # The global settings alone first, so that a mistake in them is named there and not in
        # the first domain that merges them.
        try:
            FilterConfig(**self.filters.settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"filters.settings: {e}") from None
        for i, d in enumerate(self.domains):
            self._check_settings(f"domains[{i}].filters", "pretrain.data.filters",
                                 "FilterConfig", d.filters)  # fmt: skip
            try:
                FilterConfig(**d.filter_settings(self.filters.settings))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"domains[{i}].filters: {e}") from None
        self._check_settings("dedup.settings", "pretrain.data.dedup", "DedupConfig",
                             self.dedup.settings)  # fmt: skip
        if not 0.0 <= self.tokenize.val_fraction < 1.0:
            raise ConfigError(
                f"tokenize.val_fraction must be in [0, 1), got {self.tokenize.val_fraction}"
            )
        return self

    @staticmethod
    def _check_settings(key: str, module: str, name: str, settings: dict) -> None:
        import importlib

        cls = getattr(importlib.import_module(module), name)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"{key}: unknown keys {unknown}; valid: {sorted(known)}")
