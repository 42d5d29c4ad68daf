"""Tables printed to a pipe or a file keep their cells whole."""

from __future__ import annotations

import io

from rich.table import Table

from pretrain.console import PIPED_WIDTH, make_console


def test_piped_output_is_wide_enough_for_long_cells(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    console = make_console(file=out)
    assert console.width == PIPED_WIDTH
    table = Table(title="shards")
    for column in ("split", "source", "documents", "tokens"):
        table.add_column(column)
    source = "kept/all/part-00000.jsonl.gz of /data/web/2024-10/filtered"
    table.add_row("train", source, "188,412", "1,262,301,774")
    console.print(table)
    printed = out.getvalue()
    assert source in printed and "1,262,301,774" in printed and "documents" in printed


def test_columns_still_decide_where_they_are_set(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert make_console(file=io.StringIO()).width == 60
