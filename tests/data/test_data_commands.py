"""`pretrain data filter|dedup|mix|prepare|score` as a user meets them: messages and outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from pretrain.cli import main

WORDS = ("the of and to in that is was he for it with as his on be at by had not are but from "
         "river mountain letter garden window morning silence journey promise thunder lantern "
         "harbor meadow candle whisper orchard").split()  # fmt: skip


def _prose(seed: int) -> str:
    rng = random.Random(seed)
    sentences = [
        " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(30)
    ]
    return "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 30, 5))


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tmp_path with short relative paths, as a user does (and so that printed paths
    are not wrapped by the console)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", ["filter", "dedup"])
def test_a_stage_on_input_without_documents_is_refused_naming_it(in_tmp, capsys, command):
    _write(in_tmp / "empty.jsonl", [])
    args = ["data", command, "--input", "empty.jsonl", "--out", "out", "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no documents could be read from ['empty.jsonl']" in err
    assert "empty.jsonl: holds no documents" in err and "Traceback" not in err
    # Fixing the input and rerunning reads it: the refused run left no finished tasks.
    _write(in_tmp / "empty.jsonl", [{"id": f"d{i}", "text": _prose(i)} for i in range(3)])
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["read"] == 3


def test_stage_outputs_are_printed_as_clean_paths(in_tmp, capsys):
    _write(in_tmp / "docs.jsonl", [{"id": "d", "text": _prose(0)}])
    assert main(["data", "filter", "--input", "docs.jsonl", "--out", "filtered/"]) == 0
    out = capsys.readouterr().out
    assert "output: filtered/filter/kept\n" in out


@pytest.mark.parametrize(
    ("spec", "bad"), [("books=books/:abc", "the weight"), ("books=books/:1:x", "the max_epochs")]
)
def test_a_domain_weight_that_is_no_number_is_named(in_tmp, capsys, spec, bad):
    assert main(["data", "mix", "--domain", spec, "--out", "m"]) == 2
    err = capsys.readouterr().err
    assert f"--domain {spec!r}: {bad} of domain 'books' must be a number" in err


def test_a_typo_in_the_global_filter_settings_is_named_there(in_tmp, capsys):
    _write(in_tmp / "docs.jsonl", [{"id": "d", "text": _prose(0)}])
    config = {"out": "p", "domains": [{"name": "web", "paths": ["docs.jsonl"],
                                       "filters": {"c4": {"min_sentences": 2}}}],
              "filters": {"settings": {"gopher_quality": {"min_wordz": 5}}}}  # fmt: skip
    (in_tmp / "p.yaml").write_text(yaml.safe_dump(config))
    assert main(["data", "prepare", "p.yaml"]) == 2
    err = capsys.readouterr().err
    assert "filters.settings: unknown config key 'gopher_quality.min_wordz'" in err
    assert "domains[0]" not in err


def test_scoring_a_subset_whose_copies_lack_their_original(in_tmp, capsys):
    """The truth of a subset can name originals the subset lacks (its first 500 lines of
    dirty/dev): those copies are reported, not a KeyError."""
    docs = [{"id": f"d{i}", "text": _prose(i)} for i in range(4)]
    docs.append({"id": "copy", "text": _prose(99)})  # a copy of "gone", not in the input
    _write(in_tmp / "in.jsonl", docs)
    truth = [{"id": d["id"], "kind": "clean", "dup_of": None, "lq_type": None} for d in docs[:4]]
    truth.append({"id": "copy", "kind": "exact_dup", "dup_of": "gone", "lq_type": None})
    _write(in_tmp / "truth.jsonl", truth)
    assert main(["data", "score", "in.jsonl", "truth.jsonl", "--out", "s", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["duplicates_without_original"] == 1 and result["dup_recall"] is None
    assert main(["data", "score", "in.jsonl", "truth.jsonl", "--out", "s"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "dup_recall │ n/a" in out
    assert "1 copies in truth.jsonl have their original outside in.jsonl" in out


def test_a_subset_is_scored_against_the_whole_truth_file(in_tmp, capsys):
    """Truth rows of documents the input lacks are left out and counted; the scores are those
    of the truth narrowed to the input."""
    docs = [{"id": f"d{i}", "text": _prose(i)} for i in range(4)]
    docs.append({"id": "dup", "text": docs[0]["text"]})
    _write(in_tmp / "in.jsonl", docs)
    truth = [{"id": d["id"], "kind": "clean", "dup_of": None, "lq_type": None} for d in docs[:4]]
    truth.append({"id": "dup", "kind": "exact_dup", "dup_of": "d0", "lq_type": None})
    _write(in_tmp / "subset_truth.jsonl", truth)
    truth += [{"id": f"x{i}", "kind": "clean", "dup_of": None, "lq_type": None} for i in range(3)]
    _write(in_tmp / "truth.jsonl", truth)
    argv = ["data", "score", "in.jsonl", "truth.jsonl", "--out", "s", "--json"]
    assert main(argv) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main([*argv[:3], "subset_truth.jsonl", *argv[4:]]) == 0
    narrowed = json.loads(capsys.readouterr().out)
    assert whole.pop("truth_outside_input") == 3 and narrowed.pop("truth_outside_input") == 0
    assert whole == narrowed and whole["dup_recall"] == 1.0
