"""Fit ``L(N, D) = E + A/N^alpha + B/D^beta`` to final losses: Chinchilla Approaches 3 and 2.

Approach 3 (Hoffmann et al. 2022, §3.3 and App. D.2, eq. 11): minimise over
``(a, b, e, alpha, beta)`` the **sum** of Huber losses (delta = 1e-3) of the log-loss residuals
``LSE(a - alpha log N, b - beta log D, e) - log L``, with L-BFGS started from a grid
(alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4,500
starts); ``A, B, E = exp(a), exp(b), exp(e)``. Summing, not averaging, matters: Besiroglu et al.
2024 (arXiv 2404.10102) trace Hoffmann's biased estimates to an averaged loss that stopped
L-BFGS early. scipy is not a dependency, so L-BFGS is ``torch.optim.LBFGS`` (strong Wolfe line
search, float64). Running L-BFGS from all 4,500 starts takes minutes, so every start is
scored on the objective, a short L-BFGS run refines the ``top_k`` best, and the best few of those
run to convergence (``top_k=None`` runs every start). Confidence intervals come from a
bootstrap over the points (Chinchilla Table 2; Epoch used 4,000 resamples), each resample
started from the full fit.

Approach 2 (Hoffmann §3.2): a parabola in log N per IsoFLOP budget, its vertex the budget's
optimal N; then a power law ``N_opt = k C^a`` (and ``D_opt = C / (6 N_opt)``) through the
vertices.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pretrain.scaling.chinchilla import LossLaw

HUBER_DELTA = 1e-3
MIN_POINTS = 5  # as many as the law has parameters
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def init_grid() -> torch.Tensor:
    """Hoffmann App. D.2's 4,500 starts as rows ``(a, b, e, alpha, beta)``."""
    a_b = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    e = [-1.0, -0.5, 0.0, 0.5, 1.0]
    exps = [0.0, 0.5, 1.0, 1.5, 2.0]
    rows = list(itertools.product(a_b, a_b, e, exps, exps))
    return torch.tensor(rows, dtype=torch.float64)


def objective(
    theta: torch.Tensor,
    log_n: torch.Tensor,
    log_d: torch.Tensor,
    log_loss: torch.Tensor,
    weights: torch.Tensor | None = None,
    delta: float = HUBER_DELTA,
) -> torch.Tensor:
    """Summed Huber loss of eq. (11) for ``theta[..., 5]`` (batched over leading dims)."""
    a, b, e, alpha, beta = (t[..., None] for t in theta.unbind(-1))
    terms = torch.stack(
        [a - alpha * log_n, b - beta * log_d, e.expand(*e.shape[:-1], log_n.shape[-1])]
    )
    residual = torch.logsumexp(terms, 0) - log_loss
    huber = torch.nn.functional.huber_loss(
        residual, torch.zeros_like(residual), reduction="none", delta=delta
    )
    if weights is not None:
        huber = huber * weights
    return huber.sum(-1)


def _lbfgs(theta0: torch.Tensor, fn, max_iter: int) -> tuple[torch.Tensor, float]:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = fn(theta)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value = float(fn(theta))
    return theta.detach(), value if math.isfinite(value) else math.inf


def _law(theta: torch.Tensor) -> LossLaw:
    a, b, e, alpha, beta = theta.tolist()
    return LossLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


@dataclasses.dataclass
class Approach3Fit:
    """The fitted law, its objective value, and bootstrap intervals per parameter."""

    law: LossLaw
    objective: float
    num_points: int
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    std_errors: dict[str, float] = dataclasses.field(default_factory=dict)
    confidence: float = 0.95
    num_bootstrap: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.law.to_dict())
        out["a"], out["b"], out["G"] = self.law.a, self.law.b, self.law.G
        out.update(objective=self.objective, num_points=self.num_points)
        out.update(confidence=self.confidence, num_bootstrap=self.num_bootstrap)
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        out["std_errors"] = self.std_errors
        return out


def fit_approach3(
    num_params: Sequence[float],
    num_tokens: Sequence[float],
    loss: Sequence[float],
    *,
    delta: float = HUBER_DELTA,
    top_k: int | None = 24,
    keep: int = 3,
    num_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> Approach3Fit:
    """Approach 3 fit (see the module docstring); ``num_bootstrap`` > 0 adds intervals."""
    log_n, log_d, log_l = (
        torch.log(torch.as_tensor(np.asarray(x, dtype=np.float64)))
        for x in (num_params, num_tokens, loss)
    )
    if not (len(log_n) == len(log_d) == len(log_l)) or len(log_n) < MIN_POINTS:
        raise ValueError(
            f"need at least {MIN_POINTS} (N, D, loss) points of equal length, got {len(log_n)}"
        )

    def fn(theta: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return objective(theta, log_n, log_d, log_l, weights, delta)

    grid = init_grid()
    with torch.no_grad():
        scores = torch.nan_to_num(fn(grid), nan=math.inf)
    starts = grid[scores.argsort()] if top_k is None else grid[scores.argsort()[:top_k]]
    short = 1000 if top_k is None else 40
    refined = sorted((_lbfgs(s, fn, short) for s in starts), key=lambda r: r[1])
    if top_k is not None:
        refined = sorted((_lbfgs(t, fn, 1000) for t, _ in refined[:keep]), key=lambda r: r[1])
    best, value = refined[0]
    fit = Approach3Fit(law=_law(best), objective=value, num_points=len(log_n))
    if num_bootstrap:
        _bootstrap(fit, best, fn, num_bootstrap, confidence, seed)
    return fit


def _bootstrap(fit: Approach3Fit, best, fn, num_bootstrap: int, confidence: float, seed: int):
    """Resample the points with replacement (as multinomial weights); refit from ``best``."""
    n = fit.num_points
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_bootstrap):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        weights = torch.as_tensor(counts, dtype=torch.float64)
        theta, value = _lbfgs(best, lambda t, w=weights: fn(t, w), 500)
        if math.isfinite(value):
            law = _law(theta)
            samples.append([getattr(law, k) for k in PARAM_NAMES])
    values = np.asarray(samples)
    tail = (1.0 - confidence) / 2.0
    for i, name in enumerate(PARAM_NAMES):
        lo, hi = np.quantile(values[:, i], [tail, 1.0 - tail])
        fit.intervals[name] = (float(lo), float(hi))
        fit.std_errors[name] = float(values[:, i].std(ddof=1))
    fit.confidence, fit.num_bootstrap = confidence, len(samples)


# --- Approach 2 --------------------------------------------------------------------------------


@dataclasses.dataclass
class IsoFlopCurve:
    """One budget's points and its fitted parabola ``loss = c2 x^2 + c1 x + c0``, x = log10 N."""

    flops: float
    num_params: list[float]
    loss: list[float]
    coeffs: tuple[float, float, float]
    optimal_params: float


@dataclasses.dataclass
class Approach2Fit:
    """Power laws through the IsoFLOP minima: ``N_opt = k_n C^a``, ``D_opt = k_d C^b``."""

    curves: list[IsoFlopCurve]
    a: float
    k_n: float
    b: float
    k_d: float

    def optimal(self, flops: float) -> tuple[float, float]:
        return self.k_n * flops**self.a, self.k_d * flops**self.b

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "k_n": self.k_n,
            "k_d": self.k_d,
            "budgets": [
                {"flops": c.flops, "optimal_params": c.optimal_params, "points": len(c.loss)}
                for c in self.curves
            ],
        }


def group_budgets(flops: Sequence[float], rel_tol: float = 0.1) -> list[list[int]]:
    """Indices of points grouped by FLOP budget: sorted, split where C jumps by > ``rel_tol``."""
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and flops[i] <= flops[groups[-1][0]] * (1.0 + rel_tol):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def fit_approach2(
    num_params: Sequence[float], flops: Sequence[float], loss: Sequence[float]
) -> Approach2Fit:
    """Approach 2 on points grouped by budget; budgets with < 3 sizes or no interior minimum
    (a parabola opening downwards) are skipped."""
    n_arr, c_arr, l_arr = (np.asarray(x, dtype=np.float64) for x in (num_params, flops, loss))
    curves = []
    for idx in group_budgets(list(c_arr)):
        x = np.log10(n_arr[idx])
        if len(set(x.round(6))) < 3:
            continue
        c2, c1, c0 = np.polyfit(x, l_arr[idx], 2)
        if c2 <= 0:
            continue
        n_opt = 10 ** (-c1 / (2 * c2))
        budget = float(np.exp(np.log(c_arr[idx]).mean()))
        curves.append(
            IsoFlopCurve(budget, n_arr[idx].tolist(), l_arr[idx].tolist(), (c2, c1, c0), n_opt)
        )
    if len(curves) < 2:
        raise ValueError(
            "Approach 2 needs at least 2 FLOP budgets with 3 or more model sizes each "
            f"(found {len(curves)})"
        )
    log_c = np.log([c.flops for c in curves])
    log_n = np.log([c.optimal_params for c in curves])
    a, log_k = np.polyfit(log_c, log_n, 1)
    # D_opt = C / (6 N_opt) = C^(1-a) / (6 k)
    return Approach2Fit(
        curves, float(a), float(np.exp(log_k)), float(1 - a), float(1.0 / (6.0 * np.exp(log_k)))
    )
