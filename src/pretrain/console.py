"""Human-readable tables for the command line (rich); ``--json`` output bypasses these."""

from __future__ import annotations

import logging
import os
from typing import IO, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pretrain.data.readers import ReadReport

PIPED_WIDTH = 160
"""Columns of output that goes to a file or a pipe: rich's 80 would cut tables' paths and
numbers in logs (``COLUMNS`` still decides where it is set)."""


def make_console(stderr: bool = False, file: IO[str] | None = None) -> Console:
    """A console as wide as the terminal, or :data:`PIPED_WIDTH` where there is none."""
    piped = Console(stderr=stderr, file=file)
    if piped.is_terminal or "COLUMNS" in os.environ:
        return piped
    return Console(stderr=stderr, file=file, width=PIPED_WIDTH)


console = make_console()
err_console = make_console(stderr=True)


def process_rank() -> int:
    """This process's rank under ``torchrun`` (its ``RANK``), 0 elsewhere."""
    return int(os.environ.get("RANK", "0") or 0)


def rank_prefix() -> str:
    """``"[rank N] "`` for the ranks other than 0, which print only what is their own."""
    rank = process_rank()
    return f"[rank {rank}] " if rank > 0 else ""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through rich. Under ``torchrun`` the ranks other than 0 log only warnings
    and errors (every rank would repeat rank 0's progress and summaries), each line prefixed
    with the rank; ``--verbose`` shows their information too."""
    level = logging.INFO if process_rank() == 0 else logging.WARNING
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format=f"{rank_prefix()}%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def read_report_table(report: dict[str, Any] | ReadReport) -> Table | None:
    """Documents kept and rejected per file and reason; ``None`` when nothing was rejected."""
    data = report.to_dict() if isinstance(report, ReadReport) else report
    if not data.get("num_errors"):
        return None
    table = Table(title=f"Input problems ({data['num_errors']} not read as documents)")
    table.add_column("file")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("first at", justify="right")
    table.add_column("detail")
    first = {(e["file"], e["reason"]): e for e in data["first_examples"]}
    for file, counts in data["files"].items():
        for reason, n in counts.items():
            if reason == "kept":
                continue
            ex = first.get((file, reason), {})
            line = f"line {ex['line']}" if ex.get("line") else ""
            table.add_row(file, reason, str(n), line, (ex.get("detail") or "")[:80])
    return table


def stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"{stats['directory']}  ({stats['dtype']}, vocab {stats['vocab_size']})")
    for col in ("split", "source", "shards", "documents", "tokens", "text MB", "bytes/token"):
        table.add_column(col, justify="left" if col in ("split", "source") else "right")
    for split, s in stats["splits"].items():
        table.add_row(
            split,
            "all",
            str(s["num_shards"]),
            f"{s['num_documents']:,}",
            f"{s['num_tokens']:,}",
            f"{s['num_text_bytes'] / 1e6:.2f}",
            f"{s['bytes_per_token']:.3f}",
        )
        for source, c in s["sources"].items():
            bpt = c["num_text_bytes"] / c["num_tokens"] if c["num_tokens"] else 0.0
            table.add_row(
                "",
                source,
                "",
                f"{c['num_documents']:,}",
                f"{c['num_tokens']:,}",
                f"{c['num_text_bytes'] / 1e6:.2f}",
                f"{bpt:.3f}",
            )
    return table
