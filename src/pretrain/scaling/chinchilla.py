"""The parametric loss ``L(N, D) = E + A / N^alpha + B / D^beta`` and its compute-optimal frontier.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", arXiv 2203.15556):
eq. (2) the form, eq. (4) the frontier under ``C = 6 N D``:
``N_opt(C) = G (C/6)^a``, ``D_opt(C) = (C/6)^b / G``,
``G = (alpha A / (beta B))^(1/(alpha+beta))``,
``a = beta / (alpha+beta)``, ``b = alpha / (alpha+beta)``. N counts every parameter, embeddings
included (Chinchilla's convention).

Constants (reference/scaling.md §1.1, §2):

* ``CHINCHILLA``: Approach 3 unrounded, from the paper's TeX source as read by Besiroglu et
  al. (epoch-research/analyzing-chinchilla ``data_analysis.ipynb``, ``true_params``). These
  reproduce Fig. 4's "40B" at Gopher's 5.76e23 FLOPs; the rounded eq. (10) values give 32B.
* ``CHINCHILLA_ROUNDED``: eq. (10) as printed.
* ``EPOCH``: Besiroglu, Erdil, Barnett, You 2024 ("Chinchilla Scaling: A replication
  attempt", arXiv 2404.10102), the notebook's estimates.
"""

from __future__ import annotations

import dataclasses
import math

from pretrain.scaling.flops import training_flops


@dataclasses.dataclass(frozen=True)
class LossLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta``."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, num_params: float, num_tokens: float) -> float:
        return self.E + self.A / num_params**self.alpha + self.B / num_tokens**self.beta

    @property
    def a(self) -> float:
        """Exponent of ``N_opt`` in C: ``beta / (alpha + beta)`` (not alpha/(alpha+beta))."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of ``D_opt`` in C: ``alpha / (alpha + beta)``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:  # noqa: N802 - the paper's name
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimal(self, flops: float) -> tuple[float, float]:
        """Compute-optimal ``(N_opt, D_opt)`` for a budget of ``flops`` (eq. 4)."""
        return self.G * (flops / 6.0) ** self.a, (flops / 6.0) ** self.b / self.G

    def optimal_for_params(self, num_params: float) -> tuple[float, float]:
        """``(C, D)`` at which ``num_params`` is compute-optimal: eq. (4) inverted."""
        flops = 6.0 * (num_params / self.G) ** (1.0 / self.a)
        return flops, flops / (6.0 * num_params)

    def optimal_for_tokens(self, num_tokens: float) -> tuple[float, float]:
        """``(C, N)`` at which ``num_tokens`` is compute-optimal."""
        flops = 6.0 * (num_tokens * self.G) ** (1.0 / self.b)
        return flops, flops / (6.0 * num_tokens)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


CHINCHILLA = LossLaw(
    E=math.exp(0.5267228),
    A=math.exp(6.0073404),
    B=math.exp(6.0179186),
    alpha=0.33917084,
    beta=0.2849083,
)
CHINCHILLA_ROUNDED = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
EPOCH = LossLaw(E=1.81686, A=482.006, B=2085.434, alpha=0.34781, beta=0.36585)
LAWS = {"chinchilla": CHINCHILLA, "chinchilla_rounded": CHINCHILLA_ROUNDED, "epoch": EPOCH}

# Not a rule the paper states: read off its Table 3 (D/N 20.0 to 21.6) and Chinchilla itself
# (70B on 1.4T tokens); Epoch's blog and OLMo-core's ladder (tokens_per_param = 20) use it.
TOKENS_PER_PARAM = 20.0


def optimal_by_ratio(
    flops: float, tokens_per_param: float = TOKENS_PER_PARAM
) -> tuple[float, float]:
    """``(N, D)`` with ``D = r N`` and ``6 N D = C``."""
    num_params = math.sqrt(flops / (6.0 * tokens_per_param))
    return num_params, tokens_per_param * num_params


def complete(
    flops: float | None = None, num_params: float | None = None, num_tokens: float | None = None
) -> tuple[float, float, float]:
    """Two of (C, N, D) give the third by ``C = 6 N D``; returns ``(C, N, D)``."""
    given = sum(x is not None for x in (flops, num_params, num_tokens))
    if given != 2:
        raise ValueError("give exactly two of compute, params and tokens (or one to plan)")
    if flops is None:
        return training_flops(num_params, num_tokens), num_params, num_tokens
    if num_params is None:
        return flops, flops / (6.0 * num_tokens), num_tokens
    return flops, num_params, flops / (6.0 * num_params)
