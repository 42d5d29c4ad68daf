"""Tokens per second and model FLOPs utilization over the steps since the last logged line."""

from __future__ import annotations


class ThroughputWindow:
    """Adds up the tokens, FLOPs and wall seconds of steps; :meth:`take` turns them into rates
    and starts over.

    Args:
        peak_flops: one device's peak FLOP/s (None where unknown: no MFU).
        world_size: the ranks whose FLOPs a step counts (MFU is over all their devices).
    """

    def __init__(self, peak_flops: float | None, world_size: int):
        self.peak_flops = peak_flops
        self.world_size = world_size
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0

    def add(self, tokens: int, flops: float, seconds: float) -> None:
        self.tokens += tokens
        self.flops += flops
        self.seconds += seconds

    def take(self) -> tuple[float, float | None]:
        """``(tokens per second, MFU or None)`` since the last call."""
        seconds = max(self.seconds, 1e-9)
        tokens_per_second, flops_per_second = self.tokens / seconds, self.flops / seconds
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0
        if not self.peak_flops:
            return tokens_per_second, None
        return tokens_per_second, flops_per_second / (self.peak_flops * self.world_size)
