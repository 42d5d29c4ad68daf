"""Loader: packing, document ids, deterministic shuffle, rank sharding, exact resume, blends."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from pretrain.data.loader import TokenLoader
from pretrain.data.mixture import WeightedInterleave
from pretrain.data.shards import open_split

SEQ_LEN = 64


def _stream(directory: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """All tokens of a split in storage order and the document index of each token."""
    _, shards = open_split(directory, split)
    tokens = np.concatenate([np.asarray(s.tokens, dtype=np.int64) for s in shards])
    lengths = np.concatenate([np.diff(np.concatenate([[0], s.ends])) for s in shards])
    doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
    return tokens, doc_of_token


def _take(loader: TokenLoader, num_batches: int) -> list:
    return [next(loader) for _ in range(num_batches)]


def test_windows_are_consecutive_slices_with_true_document_ids(shards_dir: Path, tokenizer):
    tokens, docs = _stream(shards_dir)
    loader = TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=7, shuffle=False)
    n = loader.num_windows[0]
    assert n == (len(tokens) - 1) // SEQ_LEN
    seen = 0
    for batch in _take(loader, n // 7):
        assert batch.tokens.shape == batch.document_ids.shape == (7, SEQ_LEN + 1)
        for row in range(7):
            w = int(batch.sample_ids[row])
            sl = slice(w * SEQ_LEN, w * SEQ_LEN + SEQ_LEN + 1)
            assert batch.tokens[row].tolist() == tokens[sl].tolist()
            assert batch.document_ids[row].tolist() == docs[sl].tolist()
            seen += 1
    assert seen == (n // 7) * 7
    # a new document starts right after each EOS
    eos = tokenizer.special.eos
    t, d = batch.tokens.numpy(), batch.document_ids.numpy()
    after_eos = t[:, :-1] == eos
    assert np.array_equal(np.diff(d, axis=1) == 1, after_eos)


def _windows(loader: TokenLoader) -> Iterator[tuple[int, ...]]:
    """``loader``'s stream of windows, each as a tuple of its tokens: the micro-batch size
    only groups the stream."""
    while True:
        yield from (tuple(row.tolist()) for row in next(loader).tokens)


def test_shuffled_epoch_visits_every_window_once_and_is_seeded(shards_dir: Path):
    # 16-window micro-batches: whole epochs in few batches
    stream = _windows(TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=16, seed=3))
    n = TokenLoader(shards_dir, SEQ_LEN, 1).num_windows[0]
    epoch0 = list(islice(stream, n))
    ordered = list(islice(_windows(TokenLoader(shards_dir, SEQ_LEN, 16, shuffle=False)), n))
    assert sorted(epoch0) == sorted(ordered) and len(set(ordered)) == n
    assert epoch0 != ordered
    epoch1 = list(islice(stream, n))
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(ordered)  # each epoch its own order
    one_at_a_time = _windows(TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=1, seed=3))
    assert list(islice(one_at_a_time, 20)) == epoch0[:20]  # the batch size does not change it
    other_seed = _windows(TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=16, seed=4))
    assert list(islice(other_seed, 20)) != epoch0[:20]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_cover_an_epoch_exactly_once(shards_dir: Path, world_size: int):
    probe = TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=4, seed=1)
    n = probe.num_windows[0]
    per_rank = []
    for rank in range(world_size):
        loader = TokenLoader(shards_dir, SEQ_LEN, 4, seed=1, rank=rank, world_size=world_size)
        samples = np.concatenate(
            [b.sample_ids.numpy() for b in _take(loader, n // (4 * world_size) + 1)]
        )
        per_rank.append(samples)
    all_samples = np.concatenate(per_rank)
    assert len(np.unique(all_samples)) == len(all_samples)  # no overlap between ranks
    first_epoch = np.sort(all_samples[all_samples < n])
    assert np.array_equal(first_epoch, np.arange(n))  # no gap
    # and the windows behind those samples (content + position) are each seen once
    windows = Counter()
    for rank in range(world_size):
        loader = TokenLoader(shards_dir, SEQ_LEN, 16, seed=1, rank=rank, world_size=world_size)
        rows = (
            tuple(tokens.tolist() + documents.tolist())
            for batch in iter(loader.__next__, None)
            for tokens, documents in zip(batch.tokens, batch.document_ids, strict=True)
        )
        windows.update(islice(rows, n // world_size))
    assert sum(windows.values()) == (n // world_size) * world_size
    assert max(windows.values()) == 1


def test_resume_mid_epoch_reproduces_the_same_sample_sequence(shards_dir: Path):
    n = TokenLoader(shards_dir, SEQ_LEN, 1).num_windows[0]
    steps = n // 5 + 3  # runs past the first epoch boundary
    straight = TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=5, seed=11)
    expected = _take(straight, steps)

    first = TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=5, seed=11)
    head = _take(first, steps // 2)
    state = first.state_dict()
    resumed = TokenLoader(shards_dir, SEQ_LEN, micro_batch_size=5, seed=11)
    resumed.load_state_dict(state)
    got = head + _take(resumed, steps - steps // 2)
    for a, b in zip(expected, got, strict=True):
        assert a.tokens.equal(b.tokens) and a.document_ids.equal(b.document_ids)
        assert a.sample_ids.equal(b.sample_ids)


def test_resume_with_another_world_size_continues_the_global_sequence(shards_dir: Path):
    two = [TokenLoader(shards_dir, SEQ_LEN, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for loader in two:
        _take(loader, 3)
    state = two[0].state_dict()
    assert state == two[1].state_dict()
    assert state["num_samples_consumed"] == 24
    one = TokenLoader(shards_dir, SEQ_LEN, 4, seed=5)
    one.load_state_dict(state)
    assert next(one).sample_ids.tolist() == [24, 25, 26, 27]


def test_state_from_other_data_or_settings_is_refused(shards_dir: Path):
    state = TokenLoader(shards_dir, SEQ_LEN, 2, seed=1).state_dict()
    with pytest.raises(ValueError, match="other data"):
        TokenLoader(shards_dir, SEQ_LEN, 2, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="other data"):
        TokenLoader(shards_dir, SEQ_LEN + 1, 2, seed=1).load_state_dict(state)
    blend = dict(seq_len=SEQ_LEN, micro_batch_size=2, seed=1)
    state = TokenLoader([shards_dir] * 2, weights=[0.5, 0.5], **blend).state_dict()
    with pytest.raises(ValueError, match="other data"):
        TokenLoader([shards_dir] * 2, weights=[0.9, 0.1], **blend).load_state_dict(state)


def test_blend_realizes_its_weights_within_one_percent(shards_dir: Path):
    weights = [0.5, 0.3, 0.2]
    loader = TokenLoader([shards_dir] * 3, SEQ_LEN, 64, weights=weights, seed=0)
    counts = np.zeros(3)
    for b in _take(loader, 50):
        counts += np.bincount(b.source_ids.numpy(), minlength=3)
    assert np.all(np.abs(counts / counts.sum() - weights) < 0.01)
    # each source keeps its own shuffled stream
    b = loader.batch_for(np.arange(64))
    first_of = {
        int(c): b.tokens[int(np.nonzero(b.source_ids.numpy() == c)[0][0])] for c in range(3)
    }
    assert not first_of[0].equal(first_of[1])


def test_blend_resumes_exactly(shards_dir: Path, tmp_path: Path):
    args = dict(seq_len=SEQ_LEN, micro_batch_size=8, weights=[0.7, 0.3], seed=9)
    expected = _take(TokenLoader([shards_dir, shards_dir], **args), 10)
    first = TokenLoader([shards_dir, shards_dir], **args)
    _take(first, 4)
    resumed = TokenLoader([shards_dir, shards_dir], **args)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(expected[4:], _take(resumed, 6), strict=True):
        assert a.tokens.equal(b.tokens) and a.source_ids.equal(b.source_ids)


@pytest.mark.parametrize(
    "weights", [[1, 1], [0.9, 0.1], [0.5, 0.25, 0.25], [0.01, 0.99], [3, 0, 1]]
)
def test_interleave_counts_stay_within_one_sample_of_target(weights):
    interleave = WeightedInterleave(weights, period=1000)
    w = np.asarray(weights, dtype=float) / sum(weights)
    comps, local = interleave(np.arange(2500))
    for c in range(len(weights)):
        mine = np.nonzero(comps == c)[0]
        assert np.array_equal(local[mine], np.arange(len(mine)))  # local indices are 0, 1, 2, ...
        running = np.cumsum(comps == c)
        assert np.all(np.abs(running - w[c] * np.arange(1, 2501)) <= 1 + 2500 / 1000)


def test_val_split_reads_once_in_order_then_stops(shards_dir: Path):
    tokens, _ = _stream(shards_dir, "val")
    loader = TokenLoader(shards_dir, SEQ_LEN, 16, split="val", shuffle=False, num_epochs=1)
    batches = list(loader)
    n = (len(tokens) - 1) // SEQ_LEN
    assert sum(len(b.tokens) for b in batches) == n
    assert batches[-1].tokens[-1].tolist() == tokens[(n - 1) * SEQ_LEN : n * SEQ_LEN + 1].tolist()


def test_a_rank_outside_the_world_is_refused(shards_dir: Path):
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        TokenLoader(shards_dir, SEQ_LEN, 1, rank=2, world_size=2)


@pytest.mark.parametrize("remainder", [0, 1])
def test_window_count_is_the_most_that_fit_when_the_tokens_divide_evenly_or_not(
    shards_dir: Path, remainder: int
):
    # Windows of T + 1 tokens start every T tokens: n of them need n * T + 1 tokens. With N a
    # multiple of T that is N / T - 1 windows (the last token of a full N / T-th would be
    # missing); with N = k * T + 1 it is k, ending exactly at the last token.
    from pretrain.data.loader import PackedWindows

    tokens, docs = _stream(shards_dir)
    N = len(tokens)
    seq_len = next((t for t in range(16, 5000) if N % t == remainder), None)
    if seq_len is None:
        pytest.skip(f"no seq_len in [16, 5000) leaves remainder {remainder} of {N} tokens")
    _, shards = open_split(shards_dir, "train")
    windows = PackedWindows(shards, seq_len)
    n = windows.num_windows
    assert n * seq_len + 1 <= N < (n + 1) * seq_len + 1
    assert n == (N // seq_len if remainder == 1 else N // seq_len - 1)
    out_tokens = np.empty(seq_len + 1, dtype=np.int64)
    out_docs = np.empty(seq_len + 1, dtype=np.int64)
    windows.read(n - 1, out_tokens, out_docs)
    last = slice((n - 1) * seq_len, n * seq_len + 1)
    assert out_tokens.tolist() == tokens[last].tolist()
    assert out_docs.tolist() == docs[last].tolist()
