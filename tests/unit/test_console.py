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


def test_ranks_other_than_0_log_only_their_warnings_and_say_whose_they_are(monkeypatch, capsys):
    import logging

    from pretrain.console import setup_logging

    # The log console writes to whatever sys.stderr is at the time (here capsys's). Pinning
    # its file in a test would leave it on this test's stream for every later test.
    log = logging.getLogger("pretrain.test_console")
    try:
        monkeypatch.setenv("RANK", "1")
        setup_logging()
        log.info("resumed from step 5")  # rank 0 says it; the others would repeat it
        log.warning("shard checksum mismatch")
        monkeypatch.setenv("RANK", "0")
        setup_logging()
        log.info("val loss 3.2")
    finally:
        monkeypatch.delenv("RANK")
        setup_logging()
    lines = [line.strip() for line in capsys.readouterr().err.splitlines()]
    assert any(line.endswith("[rank 1] shard checksum mismatch") for line in lines), lines
    assert not any("resumed from step 5" in line for line in lines)
    assert any(line.endswith("val loss 3.2") and "[rank" not in line for line in lines), lines


def test_a_rank_other_than_0_names_itself_in_its_error(monkeypatch, capsys):
    from pretrain.cli import main
    from pretrain.console import setup_logging

    monkeypatch.setenv("RANK", "2")
    try:
        assert main(["generate", "--run", "/nonexistent/run", "--prompt", "x"]) == 2
    finally:
        monkeypatch.delenv("RANK")
        setup_logging()  # main set rank 2's logging up
    assert capsys.readouterr().err.startswith("[rank 2] error: ")
