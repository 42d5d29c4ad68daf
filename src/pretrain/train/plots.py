"""Loss curves from metrics.jsonl, as PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from pretrain.train.metrics import read_metrics


def plot_losses(run_dir: Path) -> Path:
    """Write ``run_dir/plots/loss.png``: train and val loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r["tokens"], r["loss"]) for r in records if r["split"] == split]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=split, markersize=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = run_dir / "plots" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
