"""Shared fixtures: a small tokenizer and shard directory built from the bundled corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from pretrain.quickstart import bundled_corpus
from pretrain.tokenizer import Tokenizer, train_tokenizer_from_files

SHARED_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """The public-domain corpus shipped in the package (344 documents, 2.8 MB)."""
    return bundled_corpus()


@pytest.fixture(scope="session")
def corpus_docs(corpus_path: Path) -> list[dict]:
    with gzip.open(corpus_path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_path: Path) -> Path:
    tokenizer, _ = train_tokenizer_from_files([str(corpus_path)], vocab_size=1024)
    return tokenizer.save(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory, tokenizer_dir: Path, corpus_path: Path) -> Path:
    """Bundled corpus as train/val shards, small shards so windows cross shard boundaries."""
    from pretrain.data.tokenize import tokenize_to_shards

    out = tmp_path_factory.mktemp("shards")
    tokenize_to_shards(
        tokenizer_dir, [str(corpus_path)], out, val_fraction=0.1, shard_max_tokens=50_000
    )
    return out


@pytest.fixture
def shared_corpora() -> Path:
    if not SHARED_CORPORA.exists():
        pytest.skip(f"{SHARED_CORPORA} is absent (the shared corpora live outside the repo)")
    return SHARED_CORPORA


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    """Write raw lines (str or bytes) to ``path``, gzip'ed when it ends in .gz."""
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def pytest_collection_modifyitems(config, items):
    """In CI every optional dependency the tests use must be installed: no silent skips."""
    import os

    if os.environ.get("CI"):
        for module in ("transformers", "pyarrow", "zstandard", "hypothesis"):
            __import__(module)


@pytest.fixture
def fresh_dynamo():
    """A test that starts with no compiled frames (``pytest.mark.usefixtures``). On CPU,
    ``flex_attention`` compiles its wrapper (eager backend) with guards on the ``score_mod``'s
    captured tensors; when a later test with other terms misses that cache, PyTorch's report
    of why evaluates the old guards on the new closures and raises (IndexError or TypeError in
    ``recompilation_reason_for_no_tensor_aliasing_guard``). Within one configuration, as in a
    run, each closure compiles once and later calls find it."""
    torch._dynamo.reset()
    yield


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """FlexAttention differentiable on the CPU. PyTorch refuses requires_grad inputs there
    (``_validate_device``), but its eager ``flex_attention`` runs the higher-order op's math
    implementation, forward and backward, captured ``score_mod`` tables included; lifting the
    check lets the tests compare a flex path's gradients with the dense path's through
    ``flex.attend`` itself. The compiled kernels are checked on CUDA in ``tests/gpu``."""
    from torch.nn.attention import flex_attention

    monkeypatch.setattr(flex_attention, "_validate_device", lambda *_: None)
