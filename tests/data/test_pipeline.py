"""`pretrain data prepare` and the stage commands: accounting, resume, several tasks, mixing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from pretrain.cli import main
from pretrain.config import ConfigError
from pretrain.data.jsonl_parts import list_parts, read_part
from pretrain.data.mix_stage import copies_of, plan_mixture
from pretrain.data.pipeline import prepare
from pretrain.data.prepare_config import DomainConfig, MixConfig, PrepareConfig
from pretrain.data.tasks import StageNotFinished, TaskSlice
from tests.conftest import write_jsonl as write_lines


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, [json.dumps(r) for r in records])


WORDS = ("the of and to in that is was he for it with as his on be at by had not are but from "
         "river mountain letter garden window morning silence journey promise thunder lantern "
         "harbor meadow candle whisper orchard").split()  # fmt: skip


def _prose(rng: random.Random, sentences: int = 30) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
        out.append(" ".join(words).capitalize() + ".")
    paragraphs = [" ".join(out[i : i + 5]) for i in range(0, len(out), 5)]
    return "\n\n".join(paragraphs)


def _corpus(tmp_path: Path) -> tuple[dict[str, list[dict]], set[str], set[str]]:
    """Two domains with prose, exact copies across domains, junk, and one unreadable line."""
    rng = random.Random(0)
    books = [{"id": f"b{i}", "text": _prose(rng)} for i in range(12)]
    web = [{"id": f"w{i}", "text": _prose(rng)} for i in range(8)]
    web += [{"id": "w-copy", "text": books[3]["text"]}, {"id": "w-copy2", "text": web[0]["text"]}]
    web += [{"id": "junk1", "text": "buy now"}, {"id": "junk2", "text": "click here " * 3}]
    write_jsonl(tmp_path / "in" / "books" / "a.jsonl", books[:6])
    write_jsonl(tmp_path / "in" / "books" / "b.jsonl", books[6:])
    write_jsonl(tmp_path / "in" / "web.jsonl", web)
    with open(tmp_path / "in" / "web.jsonl", "a") as f:
        f.write("{not json\n")
    return {"books": books, "web": web}, {"w-copy", "w-copy2"}, {"junk1", "junk2"}


def _config(tmp_path: Path, **extra) -> PrepareConfig:
    cfg = PrepareConfig(
        out=str(tmp_path / "out"),
        domains=[
            DomainConfig("books", [str(tmp_path / "in" / "books")], weight=1.0, max_epochs=3),
            DomainConfig("web", [str(tmp_path / "in" / "web.jsonl")], weight=1.0),
        ],
    )
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cfg


def _ids(directory: Path) -> list[str]:
    return [doc["id"] for part in list_parts(directory) for doc in read_part(part)]


def test_prepare_accounts_for_every_document_and_mixes_to_the_shares(tmp_path):
    docs, copies, junk = _corpus(tmp_path)
    report = prepare(_config(tmp_path))
    out = tmp_path / "out"
    assert report["all_documents_accounted_for"]
    stages = report["stages"]
    assert stages["filter"]["documents_out"] == stages["dedup"]["documents_in"] == 22
    assert stages["dedup"]["documents_out"] == stages["mix"]["documents_in"] == 20
    assert stages["dedup"]["words_in"] > stages["dedup"]["words_out"] > 0
    totals = report["totals"]
    assert totals["documents_read"] == 24 and totals["read_errors"] == 1
    assert set(_ids(out / "filter" / "removed")) == junk
    assert set(_ids(out / "dedup" / "removed")) == copies
    removed = {d["id"]: d for d in (read_part(p) for p in list_parts(out / "dedup" / "removed"))
               for d in d}  # fmt: skip
    assert removed["w-copy"]["dup_of"] == "b3" and removed["w-copy"]["reason"] == "dedup:exact"
    assert report["removed_by_dedup"] == {"dedup:exact": 2}
    kept = set(_ids(out / "dedup" / "kept"))
    assert kept == {d["id"] for ds in docs.values() for d in ds} - copies - junk
    # equal weights: web (8 documents) would need more than books; books repeat up to 3 times
    books, web = report["domains"]["books"], report["domains"]["web"]
    assert books["share"] == pytest.approx(0.5) and web["share"] == pytest.approx(0.5)
    total = books["available_words"] + web["available_words"]
    assert books["epochs"] == pytest.approx(total / 2 / books["available_words"])
    assert books["epochs"] < 1.0 and web["epochs"] == 1.0 and web["capped"]  # max_epochs 1
    mixed_web = _ids(out / "mix" / "web")
    assert len(mixed_web) == web["mixed_documents"] == len(set(mixed_web))  # copies renamed
    assert (out / "report.json").exists()


def test_a_rerun_skips_finished_tasks_and_gives_the_same_output(tmp_path, monkeypatch):
    _corpus(tmp_path)
    cfg = _config(tmp_path)
    first = prepare(cfg)
    assert first["removed_by_dedup"]  # the dedup stage ran its steps the first time

    def boom(*args, **kwargs):
        raise AssertionError("a finished task ran again")

    for name in (
        "pretrain.data.filter_stage.filter_task",
        "pretrain.data.pipeline.filter_task",
        "pretrain.data.dedup_stage.signature_task",
        "pretrain.data.dedup_stage.apply_task",
        "pretrain.data.dedup.cluster_duplicates",
        "pretrain.data.mix_stage.mix_task",
        "pretrain.data.pipeline.mix_task",
    ):
        monkeypatch.setattr(name, boom)
    assert prepare(cfg) == first


def test_a_rerun_with_other_inputs_or_settings_is_refused_not_reused(tmp_path):
    """The stage's reports would otherwise say "already done" and hand on the old outputs."""
    _corpus(tmp_path)
    first = prepare(_config(tmp_path))
    other = _config(tmp_path)
    other.domains[1].paths = [str(tmp_path / "in" / "books" / "a.jsonl")]
    with pytest.raises(ValueError, match=r"filter: task 2 was done for other inputs or settings"):
        prepare(other)
    stricter = _config(tmp_path)
    stricter.filters.settings = {"gopher_quality": {"min_words": 100}}
    with pytest.raises(ValueError, match=r"filter: task 0 was done for other inputs or settings"):
        prepare(stricter)
    assert prepare(_config(tmp_path)) == first  # the same run again is still reused
    shutil.rmtree(tmp_path / "out")  # what the message says to do
    assert prepare(other)["stages"]["filter"]["documents_in"] == 12 + 6  # books, a.jsonl again


def test_reports_of_another_format_are_refused_naming_the_file(tmp_path):
    """A filter report from before ``kept_part`` existed (no format stamp) fails with a message
    that names it, not with a KeyError in the dedup stage."""
    _corpus(tmp_path)
    cfg = _config(tmp_path)
    first = prepare(cfg)
    report = tmp_path / "out" / "filter" / "_tasks" / "00001.json"
    old = json.loads(report.read_text())
    assert old.pop("report_format") == 3
    del old["kept_part"]
    report.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"00001\.json: task report format 1, .*reads format 3"):
        prepare(cfg)
    report.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"00001\.json: not a task report"):
        prepare(cfg)
    shutil.rmtree(tmp_path / "out" / "filter")  # what the message says to do
    assert prepare(cfg) == first


def test_several_tasks_match_one(tmp_path, monkeypatch):
    _corpus(tmp_path)
    single = prepare(_config(tmp_path))
    cfg = _config(tmp_path, out=str(tmp_path / "sharded"))
    assert prepare(cfg, TaskSlice(0, 2)) is None  # the other machine's tasks are missing
    with pytest.raises(StageNotFinished, match="have not finished"):
        from pretrain.data.tasks import read_reports

        read_reports(Path(cfg.out) / "filter", 3)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    # an array job run again until done: each run advances every stage as far as it can
    slices = [TaskSlice.from_args(None, None), TaskSlice(0, 2)]
    assert slices[0] == TaskSlice(1, 2)
    results = [prepare(cfg, slices[i % 2]) for i in range(6)]
    sharded = next(r for r in results if r is not None)
    assert sharded == single
    assert _ids(tmp_path / "sharded" / "mix") == _ids(tmp_path / "out" / "mix")


def test_two_workers_give_the_same_result_as_one(tmp_path):
    _corpus(tmp_path)
    one = prepare(_config(tmp_path))
    two = prepare(_config(tmp_path, out=str(tmp_path / "two"), workers=2))
    assert one == two


def test_mixture_plan_applies_temperature_and_the_epoch_cap():
    domains = [DomainConfig("big", ["x"]), DomainConfig("small", ["y"], max_epochs=2.0)]
    words = {"big": 900, "small": 100}
    natural = plan_mixture(domains, words, MixConfig())
    assert natural["big"]["share"] == pytest.approx(0.9)
    assert natural["small"]["epochs"] == pytest.approx(1.0)
    flat = plan_mixture(domains, words, MixConfig(temperature=1e6))  # about uniform
    assert flat["small"]["share"] == pytest.approx(0.5, abs=1e-3)
    assert flat["small"]["epochs"] == 2.0 and flat["small"]["capped"]  # 500 words wanted
    assert flat["big"]["epochs"] == pytest.approx(0.5 / 0.9, rel=1e-3)
    sharp = plan_mixture(domains, words, MixConfig(temperature=0.5))
    assert sharp["big"]["share"] == pytest.approx(81 / 82)


def test_copies_realize_fractional_epochs_deterministically():
    ids = [f"doc{i}" for i in range(4000)]
    counts = [copies_of(i, 1.25, seed=0) for i in ids]
    assert set(counts) == {1, 2} and abs(sum(counts) / len(ids) - 1.25) < 0.03
    assert counts == [copies_of(i, 1.25, seed=0) for i in ids]
    assert counts != [copies_of(i, 1.25, seed=1) for i in ids]


def test_stage_commands_and_prepare_from_the_cli(tmp_path, capsys):
    _corpus(tmp_path)
    assert main(["data", "filter", "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "f"), "--json"]) == 0  # fmt: skip
    counts = json.loads(capsys.readouterr().out)
    assert counts["read"] == 24 and counts["kept"] == 22
    assert counts["unreadable malformed_json"] == 1
    assert main(["data", "dedup", "--input", str(tmp_path / "f" / "filter" / "kept"), "--out",
                 str(tmp_path / "d"), "--json"]) == 0  # fmt: skip
    counts = json.loads(capsys.readouterr().out)
    assert counts["kept"] == 20 and counts["dedup:exact"] == 2
    mix_args = [
        "data",
        "mix",
        "--domain",
        f"a={tmp_path / 'in' / 'books'}:1:4",
        f"b={tmp_path / 'in' / 'web.jsonl'}:3",
        "--out",
        str(tmp_path / "m"),
        "--json",
    ]
    assert main(mix_args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["a"]["share"] == pytest.approx(0.25) and plan["a"]["realized_words"] > 0
    config = {"out": str(tmp_path / "p"), "domains": [
        {"name": "books", "paths": [str(tmp_path / "in" / "books")]}],
        "filters": {"settings": {"no_such_threshold": 1}}}  # fmt: skip
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["data", "prepare", str(tmp_path / "bad.yaml")]) == 2
    assert "no_such_threshold" in capsys.readouterr().err
    config["filters"] = {"enabled": True}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    assert main(["data", "prepare", str(tmp_path / "p.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["documents_read"] == 12 and report["all_documents_accounted_for"]


def test_the_example_config_validates():
    from pretrain.config import load_config

    path = Path(__file__).parents[2] / "configs" / "data" / "prepare.yaml"
    cfg = load_config(PrepareConfig, path).validate()
    assert [d.name for d in cfg.domains] == ["books", "wiki", "docs", "speeches"]
    books = cfg.domains[0].filter_settings(cfg.filters.settings)
    assert books == {"gopher_quality": {"max_words": 2_000_000}}


def test_a_domain_overrides_filter_settings_and_bad_keys_name_the_domain(tmp_path):
    _corpus(tmp_path)
    assert "gopher_quality:min_words" in prepare(_config(tmp_path))["removed_by_rule"]
    cfg = _config(tmp_path, out=str(tmp_path / "override"))
    cfg.domains[1].filters = {"gopher_quality": {"min_words": 1}}  # web only
    report = prepare(cfg)
    assert "gopher_quality:min_words" not in report["removed_by_rule"]
    cfg.domains[1].filters = {"gopher_quality": {"no_such_rule": 1}}
    with pytest.raises(ConfigError, match=r"domains\[1\].filters.*no_such_rule"):
        cfg.validate()


def test_prepare_tokenizes_the_mix_and_reports_tokens_per_domain(tmp_path, tokenizer_dir):
    from pretrain.config import from_dict
    from pretrain.data.loader import TokenLoader
    from pretrain.data.stats import shard_stats

    _corpus(tmp_path)
    cfg = _config(tmp_path)
    cfg.tokenize = from_dict(type(cfg.tokenize), {"tokenizer": str(tokenizer_dir),
                                                  "val_fraction": 0.2})  # fmt: skip
    report = prepare(cfg)
    stats = shard_stats(tmp_path / "out" / "shards")
    assert not stats["problems"]
    total = sum(s["num_tokens"] for s in stats["splits"].values())
    assert report["totals"]["tokens"] == total > 0
    assert all(report["domains"][d]["tokens"] > 0 for d in ("books", "web"))
    batch = next(TokenLoader(tmp_path / "out" / "shards", 16, 2, seed=0))
    assert batch.tokens.shape == (2, 17)


def test_repeated_copies_share_their_original_split_and_mix_reads_cleanly(tmp_path, tokenizer_dir):
    """A document the mixture repeats lands in train or val with all its copies: a copy in val
    of a document trained on would make the val loss measure memorization."""
    from pretrain.config import from_dict
    from pretrain.data.shards import open_split

    _corpus(tmp_path)
    cfg = _config(tmp_path)
    cfg.domains[1].weight, cfg.domains[1].max_epochs = 3.0, 4.0  # web repeats its documents
    cfg.tokenize = from_dict(type(cfg.tokenize), {"tokenizer": str(tokenizer_dir),
                                                  "val_fraction": 0.5})  # fmt: skip
    report = prepare(cfg)
    assert report["domains"]["web"]["epochs"] > 1.5
    manifest = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
    assert manifest["read_report"]["num_errors"] == 0  # mix/_tasks/ is not read as input
    documents = {}
    for split in ("train", "val"):
        _, shards = open_split(tmp_path / "out" / "shards", split)
        for shard in shards:
            starts = [0, *shard.ends[:-1].tolist()]
            documents[split] = documents.get(split, set()) | {
                tuple(shard.tokens[s:e].tolist()) for s, e in zip(starts, shard.ends, strict=True)
            }
    assert documents["train"] and documents["val"]
    assert not documents["train"] & documents["val"]
