"""Skip the update of a step whose loss or gradient norm spikes, decided on the device.

A step whose loss, or whose gradient norm before clipping, lies more than ``sigma`` standard
deviations above the mean of the steps before it (the last ``window``) is not applied: its
data is consumed, the weights and the optimizer's moments stay as they were. This is
OLMo-core's ``SkipStepOptimizer`` ("skip updates when the loss or gradient norm for a step is
above a certain threshold of standard deviations computed over a rolling interval";
``rolling_interval_length=128``, ``sigma_factor=6``) and llm.c's outlier detector (``-sl``,
``-sg``: "skip update if loss goes above this in zscore"). As there, nothing is decided before
half the window is filled, and a skipped step's values still join the window, so a lasting
change of level (a new data mixture, a learning-rate change) stops counting as a spike after
a few steps instead of stopping training. Unlike there, a non-finite value never joins it (the
step is skipped for that reason anyway; :mod:`pretrain.train.step_sums`).

Everything stays on the device: the decision feeds the fused optimizer's ``found_inf`` like a
non-finite step's, so the host does not wait for the step to finish. The window is part of the
checkpoint (:meth:`SpikeDetector.state_dict`), so a resumed run skips the steps an
uninterrupted one skips.
"""

from __future__ import annotations

from typing import Any

import torch

SERIES = ("loss", "grad_norm")
"""What is watched, in the order of the rows of the window."""


class SpikeDetector:
    """Rolling mean and standard deviation of the loss and the gradient norm, on the device.

    Args:
        sigma: how many standard deviations above the mean a value must lie to be a spike.
        window: how many earlier steps the mean and deviation cover.
        device: where the window lives (the parameters' device).
    """

    def __init__(self, sigma: float, window: int, device: torch.device | str) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if window < 2:
            raise ValueError(f"window must be at least 2 steps, got {window}")
        self.sigma = sigma
        self.window = window
        self.min_history = max(2, window // 2)
        """Steps that must be in the window before anything is called a spike."""
        self.values = torch.zeros(len(SERIES), window, dtype=torch.float64, device=device)
        self.filled = torch.zeros(window, dtype=torch.bool, device=device)
        self.next_slot = 0  # one slot a step, on the host: no device value decides it

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Whether this step spikes (a float32 0-d tensor, 1.0 or 0.0), then add its values to
        the window. ``loss`` and ``grad_norm`` are 0-d tensors on the window's device."""
        step = torch.stack([loss.detach().reshape(()), grad_norm.detach().reshape(())])
        step = step.to(self.values.dtype)
        weight = self.filled.to(self.values.dtype)  # (window,)
        count = weight.sum()
        mean = (self.values * weight).sum(1) / count.clamp(min=1)
        # unbiased, as torch.std_mean in OLMo-core
        variance = ((self.values - mean[:, None]) ** 2 * weight).sum(1) / (count - 1).clamp(min=1)
        above = (step - mean) > self.sigma * variance.sqrt()  # (2,)
        finite = torch.isfinite(step).all()
        spike = above.any() & finite & (count >= self.min_history)
        self.values[:, self.next_slot] = torch.where(finite, step, 0.0)
        self.filled[self.next_slot] = finite
        self.next_slot = (self.next_slot + 1) % self.window
        return spike.to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """The window as plain numbers (for ``state.json``; reading it waits for the device)."""
        return {
            "sigma": self.sigma,
            "window": self.window,
            "values": self.values.tolist(),
            "filled": self.filled.tolist(),
            "next_slot": self.next_slot,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a window saved by :meth:`state_dict`; one of another size is refused."""
        if state["window"] != self.window:
            raise ValueError(
                f"the checkpoint's spike window covers {state['window']} steps, the run's "
                f"train.spike_window_steps is {self.window}"
            )
        device = self.values.device
        self.values = torch.tensor(state["values"], dtype=torch.float64, device=device)
        self.filled = torch.tensor(state["filled"], dtype=torch.bool, device=device)
        self.next_slot = int(state["next_slot"])
