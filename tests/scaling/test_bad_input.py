"""``pretrain scaling``'s refusals: a number no count can use is refused before any work, naming
its flag (exit 2, no traceback), and every CSV row ``scaling fit`` does not use is reported."""

from __future__ import annotations

import csv
import json

import pytest

from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.scaling.chinchilla import EPOCH
from pretrain.scaling.flops import wall_seconds
from pretrain.scaling.plan import methods_for
from pretrain.scaling.points import read_points

POSITIVE = "must be a positive finite number, got"
# "missing.csv" is never opened: the flags are checked first.
BAD_NUMBERS = [
    (["plan", "--compute", "0"], f"--compute {POSITIVE} 0"),  # was a ZeroDivisionError
    (["plan", "--compute", "-1"], f"--compute {POSITIVE} -1"),  # was "math domain error"
    (["plan", "--compute", "inf"], f"--compute {POSITIVE} inf"),  # was an OverflowError
    (["plan", "--compute", "nan"], f"--compute {POSITIVE} nan"),
    (["plan", "--params=-1e9"], f"--params {POSITIVE} -1e+09"),
    (["plan", "--tokens", "0"], f"--tokens {POSITIVE} 0"),
    (["plan", "--compute", "1e21", "--tokens-per-param", "0"], f"--tokens-per-param {POSITIVE} 0"),
    (["plan", "--compute", "1e21", "--num-gpus", "0"], "--num-gpus must be at least 1, got 0"),
    (["plan", "--compute", "1e21", "--vocab-size", "0"], "--vocab-size must be at least 1, got 0"),
    (["plan", "--compute", "1e21", "--seq-len", "-2"], "--seq-len must be at least 1, got -2"),
    (["plan", "--compute", "1e21", "--mfu", "0"], "--mfu must be in (0, 1], got 0"),
    (["plan", "--compute", "1e21", "--mfu", "1.5"], "--mfu must be in (0, 1], got 1.5"),
    (["plan", "--compute", "1e21", "--peak-flops", "inf"], f"--peak-flops {POSITIVE} inf"),
    (["plan", "--compute", "1e21", "--gpu", "0"], "--gpu must name a GPU (A100, H100, ...) or "
     "give its peak FLOP/s as a positive finite number (e.g. 989e12), got 0"),
    (["flops", "--params", "-5", "--tokens", "10"], f"--params {POSITIVE} -5"),  # was "flops -300"
    (["flops", "--params", "1e9", "--tokens", "nan"], f"--tokens {POSITIVE} nan"),
    (["flops", "--params", "1e9", "--tokens", "1e9", "--tokens-per-second", "0"],
     f"--tokens-per-second {POSITIVE} 0"),
    (["flops", "--set", "model.size=debug", "--vocab-size", "0"],
     "--vocab-size must be at least 1, got 0"),
    (["fit", "missing.csv", "--bootstrap", "-1"], "--bootstrap must be 0 or more, got -1"),
    (["fit", "missing.csv", "--bootstrap", "1"],
     "--bootstrap must be 0 (no intervals) or at least 2, got 1"),
    (["fit", "missing.csv", "--drop-highest", "-1"], "--drop-highest must be 0 or more, got -1"),
    (["fit", "missing.csv", "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["fit", "missing.csv", "--confidence", "1"],
     "--confidence must be in (0, 1), e.g. 0.95, got 1"),
    (["ladder", "--sizes", "debug", "--isoflop", "1e15,0"], f"--isoflop {POSITIVE} 0"),
    (["ladder", "--sizes", "debug", "--tokens-per-param", "nan"],
     f"--tokens-per-param {POSITIVE} nan"),
    (["ladder", "--sizes", "debug", "--tokens-per-param", "20", "--vocab-size", "0"],
     "--vocab-size must be at least 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS]
)
def test_a_bad_number_is_refused_naming_its_flag(capsys, argv, message):
    assert main(["scaling", *argv, "--json"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"  # that line only: no traceback, no work
    assert captured.out == ""


def test_ladder_numbers_that_are_not_numbers_are_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["scaling", "ladder", "--sizes", "debug", "--isoflop", "1e15,abc"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "argument --isoflop: expected numbers separated by commas (e.g. 10,20), got " in (
        capsys.readouterr().err
    )


def test_a_budget_too_large_for_a_shape_says_to_plan_without_one(capsys):
    assert main(["scaling", "plan", "--compute", "1e60", "--json"]) == EXIT_BAD_INPUT
    assert "plan without one (--no-shape)" in capsys.readouterr().err  # not a torch overflow
    assert main(["scaling", "plan", "--compute", "1e60", "--no-shape", "--json"]) == 0


def test_library_refuses_what_it_cannot_plan():
    with pytest.raises(ValueError, match="compute must be a positive finite number, got 0"):
        methods_for(0.0)
    with pytest.raises(ValueError, match="tokens_per_param must be a positive finite number"):
        methods_for(1e21, tokens_per_param=float("nan"))
    with pytest.raises(ValueError, match="num_devices must be at least 1, got 0"):
        wall_seconds(1e21, 989e12, 0.4, 0)


# --- rows scaling fit does not use ---------------------------------------------------------


def _write(path, bad_rows: dict[int, list[str]], good: int = 6):
    """A CSV of ``good`` points of Epoch's law, with ``bad_rows`` inserted at their file lines
    (line 1 is the header)."""
    rows = [[f"{n:g}", f"{20 * n:g}", f"{EPOCH.loss(n, 20 * n):.6f}"] for n in
            (1e7 * 2**i for i in range(good))]  # fmt: skip
    for line in sorted(bad_rows):
        rows.insert(line - 2, bad_rows[line])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["params", "tokens", "loss"])
        writer.writerows(rows)
    return path


BAD_ROWS = {
    3: ["-1e7", "2e8", "3.1"],  # was dropped silently
    5: ["4e7", "8e8", "nan"],
    6: ["4e7", "8e8", "abc"],
    9: ["4e7", "", "3.0"],
}


def test_read_points_lists_every_row_it_skips_with_its_line_and_reason(tmp_path):
    path = _write(tmp_path / "points.csv", BAD_ROWS)
    points = read_points(path)
    assert len(points) == 6
    assert [(r.line, r.column, r.value, r.reason) for r in points.skipped] == [
        (3, "params", "-1e7", "not positive"),
        (5, "loss", "nan", "not finite"),
        (6, "loss", "abc", "not a number"),
        (9, "tokens", "", "empty"),
    ]
    assert points.drop_highest_loss(1).skipped == points.skipped
    with pytest.raises(ValueError, match=r"points\.csv:3: params not positive \('-1e7'\)"):
        read_points(path, strict=True)


def test_fit_reports_skipped_rows_in_text_and_json(tmp_path, capsys):
    path = _write(tmp_path / "points.csv", {3: BAD_ROWS[3], 6: BAD_ROWS[6]})
    argv = ["scaling", "fit", str(path), "--bootstrap", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Approach 3 fit on 6 points (2 CSV rows skipped: see the warnings)" in " ".join(
        captured.out.split()
    )
    err = " ".join(captured.err.split())  # rich wraps long log lines
    assert f"{path}: skipped 1 row with params not positive (line 3; first value '-1e7')" in err
    assert f"{path}: skipped 1 row with loss not a number (line 6; first value 'abc')" in err

    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_points"] == 6
    assert out["rows_skipped"] == {
        "count": 2,
        "by_reason": {
            "params not positive": {"count": 1, "lines": [3], "first_value": "-1e7"},
            "loss not a number": {"count": 1, "lines": [6], "first_value": "abc"},
        },
    }
    assert main([*argv, "--strict"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"error: {path}:3: params not positive ('-1e7')\n"


def test_too_few_points_says_which_rows_were_skipped_and_why(tmp_path, capsys):
    path = _write(tmp_path / "three.csv", {3: ["2e7", "4e8", "abc"]}, good=2)
    assert main(["scaling", "fit", str(path), "--json"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"error: {path}: 2 usable rows; the fit needs at least 5; skipped 1 row with loss not "
        "a number (line 3; first value 'abc')"
    )
