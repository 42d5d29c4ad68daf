"""Scaling plots as PNG (matplotlib, headless): loss against FLOPs with the fitted law's
compute-optimal frontier, and IsoFLOP curves with their parabolas (Hoffmann et al. 2022,
Figs. 3 and 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrain.scaling.chinchilla import LossLaw
from pretrain.scaling.fit import Approach2Fit
from pretrain.scaling.points import Points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_vs_flops(points: Points, law: LossLaw, path: str | Path) -> Path:
    """Points coloured by model size; the law's loss along its compute-optimal frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter(points.flops, points.loss, c=np.log10(points.params), cmap="viridis", s=14)
    fig.colorbar(sc, ax=ax, label="log10 parameters")
    grid = np.logspace(np.log10(points.flops.min()), np.log10(points.flops.max()) + 1, 100)
    frontier = [law.loss(*law.optimal(c)) for c in grid]
    ax.plot(grid, frontier, "k--", label=f"fit frontier (a = {law.a:.3f})")
    ax.set(xscale="log", xlabel="training FLOPs (6ND)", ylabel="loss")
    ax.legend()
    return _save(fig, plt, path)


def plot_isoflop(fit: Approach2Fit, path: str | Path) -> Path:
    """Loss against parameters per budget, each with its parabola and its minimum."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.cm.plasma(np.linspace(0, 0.9, len(fit.curves)))
    for curve, color in zip(fit.curves, colors, strict=True):
        ax.scatter(curve.num_params, curve.loss, color=color, s=14)
        x = np.linspace(np.log10(min(curve.num_params)), np.log10(max(curve.num_params)), 50)
        ax.plot(10**x, np.polyval(curve.coeffs, x), color=color, label=f"{curve.flops:.2g} FLOPs")
        ax.axvline(curve.optimal_params, color=color, lw=0.5, ls=":")
    ax.set(xscale="log", xlabel="parameters", ylabel="loss", title=f"IsoFLOP: a = {fit.a:.3f}")
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
