"""Progress display: a rich progress bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import logging
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from pretrain.console import err_console

log = logging.getLogger(__name__)


def describe(record: dict[str, Any]) -> str:
    mfu = record.get("mfu")
    return (
        f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
        f"{record['tokens_per_second']:,.0f} tok/s  "
        f"MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
    )


class Progress:
    """Shows step, loss, lr, tokens/s, MFU and ETA."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total = total_steps
        self.live = enabled and err_console.is_terminal
        self._bar: RichProgress | None = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = RichProgress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err_console,
            )
            self._bar.__enter__()
        return self

    def start(self, step: int) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task("train", total=self.total, completed=step, info="")

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=step, info=describe(record))
        else:
            log.info("step %d/%d  %s", step, self.total, describe(record))

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
