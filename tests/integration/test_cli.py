"""The command line: tokenizer train -> data tokenize -> data stats, errors, quickstart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.cli import EXIT_BAD_INPUT, main
from pretrain.tokenizer import Tokenizer
from tests.conftest import write_jsonl


def _run_json(capsys: pytest.CaptureFixture, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_tokenizer_train_tokenize_and_stats_from_the_command_line(
    tmp_path: Path, corpus_path: Path, capsys: pytest.CaptureFixture
):
    tok_dir, shard_dir = tmp_path / "tok", tmp_path / "shards"
    meta = _run_json(
        capsys,
        ["tokenizer", "train", "--input", str(corpus_path), "--vocab-size", "600",
         "--out", str(tok_dir), "--json"],
    )  # fmt: skip
    assert meta["vocab_size"] == 600 == Tokenizer.load(tok_dir).vocab_size
    assert meta["training"]["num_documents"] == 344

    out = _run_json(
        capsys,
        ["data", "tokenize", "--tokenizer", str(tok_dir), "--input", str(corpus_path),
         "--out", str(shard_dir), "--val-fraction", "0.2", "--workers", "2", "--json"],
    )  # fmt: skip
    splits = out["stats"]["splits"]
    assert splits["train"]["num_documents"] + splits["val"]["num_documents"] == 344
    assert out["read_report"]["num_errors"] == 0

    stats = _run_json(capsys, ["data", "stats", str(shard_dir), "--json"])
    assert stats["problems"] == [] and stats["checksums_verified"]
    assert stats["splits"] == splits

    assert main(["data", "stats", str(shard_dir)]) == 0
    assert "every shard matches its manifest" in capsys.readouterr().out


def test_stats_exits_nonzero_and_names_a_corrupted_shard(
    tmp_path: Path, shards_dir: Path, capsys: pytest.CaptureFixture
):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shards_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "val-00000.bin").write_bytes(b"\0\0" * 10)
    assert main(["data", "stats", str(copy)]) == 1
    assert "val-00000.bin" in capsys.readouterr().out


def test_strict_bad_input_exits_with_file_and_line(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture
):
    path = write_jsonl(tmp_path / "in.jsonl", ['{"text": "fine"}', '{"text": "fine too"}', "{bad"])
    argv = ["data", "tokenize", "--tokenizer", str(tokenizer_dir), "--input", str(path)]
    assert main([*argv, "--out", str(tmp_path / "o"), "--strict"]) == EXIT_BAD_INPUT
    assert f"error: {path}:3: malformed_json" in capsys.readouterr().err

    # without --strict the line is counted and reported, and the rest is kept
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "malformed_json" in out and "line 3" in out


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = ["data", "tokenize", "--tokenizer", str(tmp_path / "none"), "--input", "x.jsonl"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == EXIT_BAD_INPUT
    assert "no tokenizer.json" in capsys.readouterr().err


def test_data_and_tokenizer_commands_never_import_torch(tmp_path: Path):
    """Data commands run on CPU nodes, often as thousands of array tasks: each would pay
    torch's import (3.5 s on a laptop CPU) for nothing."""
    docs = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"id": str(i), "text": f"Document {i}: the quick brown fox jumps. " * 20})
        for i in range(100)
    ])  # fmt: skip
    commands = [
        ["tokenizer", "train", "--input", str(docs), "--vocab-size", "400",
         "--out", str(tmp_path / "tok")],
        ["data", "tokenize", "--tokenizer", str(tmp_path / "tok"), "--input", str(docs),
         "--out", str(tmp_path / "shards")],
        ["data", "stats", str(tmp_path / "shards")],
        ["data", "filter", "--input", str(docs), "--out", str(tmp_path / "filtered")],
        ["data", "dedup", "--input", str(docs), "--out", str(tmp_path / "deduped")],
    ]  # fmt: skip
    script = (
        "import sys\n"
        "from pretrain.cli import main\n"
        f"codes = [main(argv) for argv in {commands!r}]\n"
        "print(codes, sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0, 0] []"


def test_quickstart_runs_every_stage_and_writes_a_loss_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--workers", "1", "--minutes", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "ROMEO:" in printed and "bits per byte" in printed
    stats = _run_json(capsys, ["data", "stats", str(out / "shards"), "--json"])
    assert stats["problems"] == []
    assert stats["splits"]["val"]["num_documents"] > 0
    assert Tokenizer.load(out / "tokenizer").hash == stats["tokenizer_hash"]
    png = out / "run" / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [
        json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert {r["split"] for r in metrics} == {"train", "val"}
    # the minutes are the training's own: the preparation before it takes none of them. (Half
    # the 12 s: steps are budgeted from a timing taken before training, which a busy machine
    # can make longer than the steps turn out to be.)
    latest = (out / "run" / "checkpoints" / "latest").read_text().strip()
    state = json.loads((out / "run" / "checkpoints" / latest / "state.json").read_text())
    assert state["trainer"]["elapsed_seconds"] > 0.5 * 12
    assert (out / "run" / "samples.txt").read_text().startswith("ROMEO:")
    assert (out / "run" / "checkpoints" / "latest").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quickstart", "--minutes", "-1"], "argument --minutes: must be > 0, got -1"),
        (["quickstart", "--minutes", "0"], "argument --minutes: must be > 0, got 0"),
        (["generate", "--run", "r", "--temperature", "-1"], "--temperature: must be >= 0"),
    ],
)
def test_out_of_range_arguments_are_refused_before_any_work(
    argv, message, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_BAD_INPUT and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing prepared before the refusal


def test_train_prints_its_resolved_config_and_explains_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    import yaml

    from pretrain.config import ExperimentConfig, load_config, to_dict

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny-clm.yaml"
    argv = ["train", "--config", str(config), "--optim.lr=1e-4", "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-4 and printed["train"]["spike_sigma"] == 0.0
    resolved = load_config(ExperimentConfig, config, ["--optim.lr=1e-4"])
    assert printed == yaml.safe_load(yaml.safe_dump(to_dict(resolved)))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--section.key=value" in capsys.readouterr().out


def test_tokenizer_train_keeps_an_existing_tokenizer_unless_overwrite(
    tmp_path: Path, corpus_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--input", str(corpus_path), "--vocab-size", "600",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    first = Tokenizer.load(out).hash
    capsys.readouterr()
    assert main([*argv[:-3], "700", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "already holds a tokenizer" in capsys.readouterr().err
    assert Tokenizer.load(out).hash == first
    assert main([*argv[:-3], "700", "--out", str(out), "--overwrite"]) == 0
    assert Tokenizer.load(out).vocab_size == 700
