"""Small helpers shared by several test files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from pretrain.config import ExperimentConfig
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer


def losses(run_dir: Path, split: str = "train") -> list[tuple[int, float]]:
    """``(step, loss)`` of every ``split`` record in a run's ``metrics.jsonl``."""
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == split]


def crash_then_resume(
    make_config: Callable[[], ExperimentConfig],
    crash_before_step: int,
    monkeypatch: pytest.MonkeyPatch,
    after_crash: Callable[[], None] | None = None,
) -> None:
    """Train until ``crash_before_step`` would start, die there, then ``--resume`` to the end.

    ``after_crash`` runs between the two, to check what the crash left behind.
    """
    real_step = Trainer.queue_step

    def crashing_step(self):
        if self.state.step == crash_before_step - 1:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self)

    monkeypatch.setattr(Trainer, "queue_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config()).fit()
    monkeypatch.setattr(Trainer, "queue_step", real_step)
    if after_crash is not None:
        after_crash()
    Trainer(make_config(), resume=True).fit()


def straight_and_resumed(
    config_for: Callable[[Path], ExperimentConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    crash_before_step: int = 6,
) -> tuple[Path, Path]:
    """Run ``config_for(run_dir)`` once straight through and once crashing before
    ``crash_before_step`` then resuming (:func:`crash_then_resume`); the two run dirs."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    Trainer(config_for(straight)).fit()
    crash_then_resume(lambda: config_for(crashed), crash_before_step, monkeypatch)
    return straight, crashed


def perturb_norms_and_biases(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Move norm weights off one and biases off zero (in place), so a parity test catches a
    swapped or dropped tensor that the initial values would hide. Returns ``model``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(scale * torch.randn_like(p))
    return model


def merge_span_corruption(
    inputs: Sequence[int], targets: Sequence[int], sentinels: Sequence[int]
) -> list[int]:
    """The original tokens back from T5 span-corruption inputs and targets (no EOS)."""
    hidden: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t in sentinels:
            current = t
            hidden[t] = []
        else:
            hidden[current].append(t)
    merged: list[int] = []
    for t in inputs:
        merged += hidden[t] if t in sentinels else [t]
    return merged


def count_explicit_attention_calls(monkeypatch, *functions) -> list[int]:
    """A list that grows by one each time the explicit-GEMM attention path runs (or, given
    ``functions``, each time one of those autograd Functions of it runs)."""
    from pretrain.models.common import explicit_attention as ea

    calls: list[int] = []
    for function in functions or (ea._ExplicitAttention, ea._CausalBlockAttention):
        real = function.apply
        monkeypatch.setattr(function, "apply", lambda *a, real=real: calls.append(1) or real(*a))
    return calls


def projected_sum(out: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``sum(out * r)`` for a fixed random ``r``: a scalar with a real gradient everywhere.

    The mean square of a model's output is no such loss when the output is normed (RMSNorm or
    LayerNorm with unit weight): each position's mean square is then a constant, and every
    gradient before the norm is rounding noise (~1e-9) that any absolute tolerance passes.
    """
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out.float() * probe.to(out.device)).sum()


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tol: float, msg: str = ""):
    """``actual`` equals ``expected`` within ``tol`` relative to each element and to the size of
    ``expected`` (its largest magnitude), which must not be negligible: an absolute tolerance
    alone passes anything when gradients are small (position tables' are ~1e-6)."""
    scale = expected.abs().max().item()
    assert scale > 1e-4, f"{msg}: the expected values are negligible ({scale:.1e})"
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=msg or None)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pretrain.train.run_lock import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_run_dir_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s training lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir), "600"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def lock_run_dir_elsewhere(run_dir: Path) -> subprocess.CompletedProcess:
    """Take ``run_dir``'s lock in another process, which exits at once."""
    return subprocess.run(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir), "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
