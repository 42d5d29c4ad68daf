"""Dedup stage: exact keys, MinHash signatures, banding, union-find, multi-task runs, dirty/dev."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from pretrain.data.dedup import (
    DedupConfig,
    apply_removals,
    cluster_duplicates,
    deduplicate,
    find_duplicates,
    shard_documents,
    write_task_signatures,
)
from pretrain.data.dedup_cli import main as dedup_cli
from pretrain.data.dedup_exact import exact_dedup, exact_key, normalize_for_exact
from pretrain.data.jsonl_parts import read_part
from pretrain.data.lsh import bucket_pairs, jaccard_sorted
from pretrain.data.minhash import (
    Permutations,
    ShingleHasher,
    bands_rows_for_threshold,
    candidate_probability,
    estimated_jaccard,
    unique_per_document,
)
from pretrain.data.score import jaccard, score, word_ngrams
from pretrain.data.union_find import UnionFind

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"
EXACT_ONLY = DedupConfig(minhash=False, verify=False)


def random_text(rng: random.Random, num_words: int, vocab: int = 5000) -> str:
    return " ".join(f"w{rng.randrange(vocab)}" for _ in range(num_words))


def edit_words(rng: random.Random, text: str, rate: float, vocab: int = 5000) -> str:
    """The corpus README's near copies: each word deleted, substituted or preceded by an
    insertion with probability ``rate``."""
    out = []
    for word in text.split():
        if rng.random() >= rate:
            out.append(word)
            continue
        kind = rng.randrange(3)
        if kind == 1:
            out.append(f"w{rng.randrange(vocab)}")
        elif kind == 2:
            out.extend([f"w{rng.randrange(vocab)}", word])
    return " ".join(out)


def synthetic_corpus(seed: int = 0, num_clean: int = 60) -> list[dict]:
    """Clean random texts plus exact copies (case/space changed) and near copies, shuffled."""
    rng = random.Random(seed)
    clean = [random_text(rng, rng.randrange(120, 400)) for _ in range(num_clean)]
    docs = list(clean)
    for text in rng.sample(clean, num_clean // 6):
        docs.append("  " + text.upper().replace(" ", "\n"))
    for text in rng.sample(clean, num_clean // 3):
        docs.append(edit_words(rng, text, rng.uniform(0.01, 0.12)))
    rng.shuffle(docs)
    return [{"id": f"doc{i:03d}", "text": t} for i, t in enumerate(docs)]


# --- exact -----------------------------------------------------------------------------------


def test_exact_key_ignores_case_and_whitespace_only():
    base = "The quick brown fox\njumps over the lazy dog."
    variants = ["the QUICK brown fox jumps over the lazy dog.",
                "  The quick\tbrown  fox\n\n jumps over the lazy dog.  "]  # fmt: skip
    assert normalize_for_exact(variants[1]) == "the quick brown fox jumps over the lazy dog."
    assert {exact_key(v) for v in variants} == {exact_key(base)}
    assert exact_key(base.replace("dog.", "dog!")) != exact_key(base)
    assert exact_key(base.replace("quick", "quack")) != exact_key(base)


def test_exact_dedup_keeps_first_of_each_text_in_input_order():
    docs = [{"id": "a", "text": "Hello  World"}, {"id": "b", "text": "hello world"},
            {"id": "c", "text": "Hello, world"}, {"id": "d", "text": "HELLO\nWORLD\n"}]  # fmt: skip
    removed: list[dict] = []
    kept = [d["id"] for d in exact_dedup(docs, removed)]
    assert kept == ["a", "c"]
    assert removed == [{"id": "b", "reason": "dedup:exact", "dup_of": "a"},
                       {"id": "d", "reason": "dedup:exact", "dup_of": "a"}]  # fmt: skip
    # The survivor is the first in input order, so reversing the input changes only that.
    kept, removed_full = deduplicate(docs[::-1], EXACT_ONLY)
    assert [d["id"] for d in kept] == ["d", "c"]
    assert {(r["id"], r["reason"], r["dup_of"]) for r in removed_full} == {
        ("b", "dedup:exact", "d"), ("a", "dedup:exact", "d")}  # fmt: skip


# --- shingles and MinHash --------------------------------------------------------------------


def test_shingle_sets_match_the_scorer_word_ngrams():
    """Hashed shingle sets have the scorer's sizes and Jaccard (no collisions on these)."""
    rng = random.Random(1)
    base = random_text(rng, 300)
    texts = [base, edit_words(rng, base, 0.1), "Ünïcode ÉCOLE straße — İstanbul, naïve café",
             "three short words", "", "!!! ...", "one\ntwo\n\nthree_four 5 six seven"]  # fmt: skip
    hashes, counts = ShingleHasher(5).batch(texts)
    sets, sizes = unique_per_document(hashes, counts)
    ends = np.cumsum(sizes)
    hashed = [sets[e - s : e] for e, s in zip(ends, sizes, strict=True)]
    for text, size in zip(texts, sizes, strict=True):
        assert size == len(word_ngrams(text))
    assert jaccard_sorted(hashed[0], hashed[1]) == pytest.approx(
        jaccard(word_ngrams(texts[0]), word_ngrams(texts[1])), abs=1e-12)  # fmt: skip
    # One text alone hashes as it does inside a batch.
    assert np.array_equal(ShingleHasher(5)(texts[1]), hashes[counts[0] : counts[0] + counts[1]])


def test_minhash_estimate_is_within_sampling_error_of_true_jaccard():
    """Each permutation agrees with probability J, so the estimate over P permutations has
    standard deviation sqrt(J (1 - J) / P) (Broder 1997); every pair must be within 4 of them
    (plus one permutation's worth), and the mean error over pairs within 4 / sqrt(pairs)."""
    rng = random.Random(2)
    num_perm = 256
    texts = []
    for i in range(40):
        base = random_text(rng, rng.randrange(100, 600))
        texts += [base, edit_words(rng, base, 0.01 + 0.3 * i / 40)]
    hashes, counts = ShingleHasher(5).batch(texts)
    signatures = Permutations(num_perm, seed=7).signatures(hashes, counts)
    sets, sizes = unique_per_document(hashes, counts)
    ends = np.cumsum(sizes)
    errors, sigmas, trues = [], [], []
    for i in range(0, len(texts), 2):
        a, b = sets[ends[i] - sizes[i] : ends[i]], sets[ends[i + 1] - sizes[i + 1] : ends[i + 1]]
        true = jaccard_sorted(a, b)
        estimate = float(estimated_jaccard(signatures[i], signatures[i + 1]))
        sigma = math.sqrt(true * (1 - true) / num_perm)
        assert abs(estimate - true) <= 4 * sigma + 1 / num_perm, (i, true, estimate)
        errors.append(estimate - true)
        sigmas.append(sigma)
        trues.append(true)
    assert min(trues) < 0.3 and max(trues) > 0.8  # a spread of Jaccards was tested
    assert abs(np.mean(errors)) <= 4 * np.sqrt(np.mean(np.square(sigmas)) / len(errors))
    # Unrelated texts: Jaccard about 0, and so is the estimate.
    assert float(estimated_jaccard(signatures[0], signatures[2])) < 0.03


def test_signatures_do_not_depend_on_batching():
    rng = random.Random(3)
    texts = [random_text(rng, n) for n in (3, 50, 9000, 200, 1)]  # 9000 words > one chunk
    hasher, perms = ShingleHasher(5), Permutations(64, seed=1)
    hashes, counts = hasher.batch(texts)
    together = perms.signatures(hashes, counts)
    for i, text in enumerate(texts):
        alone = hasher(text)
        assert np.array_equal(perms.signatures(alone, np.array([len(alone)]))[0], together[i])


# --- banding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "num_perm", "expected"),
    # reference/data.md §4: the datasketch _optimal_param optimum (equal weights), derived there
    # with the midpoint rule; (0.9, 128) is datasketch MinHashLSH's default threshold and size.
    [(0.9, 128, (5, 25)), (0.8, 128, (9, 13)), (0.7, 240, (24, 10)), (0.75, 112, (11, 10))],
)
def test_bands_rows_for_threshold_known_optima(threshold, num_perm, expected):
    assert bands_rows_for_threshold(threshold, num_perm) == expected


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9])
def test_banding_probability_crosses_one_half_near_the_threshold(threshold):
    bands, rows = bands_rows_for_threshold(threshold, 128)
    assert bands * rows <= 128
    crossing = (1 - 0.5 ** (1 / bands)) ** (1 / rows)  # solves 1 - (1 - s^r)^b = 1/2
    assert abs(crossing - threshold) < 0.05
    assert candidate_probability(threshold - 0.15, bands, rows) < 0.5
    assert candidate_probability(min(threshold + 0.15, 1.0), bands, rows) > 0.5


def test_fineweb_banding_detection_probabilities():
    # FineWeb (Penedo et al. 2024, §3.4): 56%, 77%, 92%, 98.8% at s = 0.70, 0.75, 0.80, 0.85
    # for 14 bands of 8 rows; datatrove minhash.py: 1 - (1 - 0.8^8)^14 = 0.924.
    got = candidate_probability(np.array([0.70, 0.75, 0.80, 0.85]), 14, 8)
    assert np.allclose(got, [0.565, 0.772, 0.924, 0.988], atol=0.002)


def test_bucket_pairs_all_pairs_for_small_buckets_star_for_large():
    keys = np.array([5, 9, 5, 5, 7, 9, 1, 1, 1, 1])
    positions = np.arange(10) * 10
    star = bucket_pairs(keys, positions)
    assert {tuple(p) for p in star.tolist()} == {
        (0, 20), (0, 30), (10, 50), (60, 70), (60, 80), (60, 90)}  # fmt: skip
    full = {tuple(p) for p in bucket_pairs(keys, positions, all_pairs_max=3).tolist()}
    assert full == {tuple(p) for p in star.tolist()} | {(20, 30)}  # the 4-bucket stays a star


# --- union-find ------------------------------------------------------------------------------


def test_union_find_clusters_chained_pairs_with_smallest_member_as_root():
    pairs = [(3, 4), (1, 2), (2, 3), (7, 6), (8, 8)]
    results = []
    for order in (pairs, pairs[::-1], [pairs[i] for i in (2, 4, 0, 3, 1)]):
        uf = UnionFind(10)
        absorbed = uf.union_pairs(np.array(order))
        results.append((uf.clusters(), sorted(absorbed), uf.roots().tolist()))
    assert results[0][0] == [[1, 2, 3, 4], [6, 7]]
    assert results[0][1] == [2, 3, 4, 7]  # every non-root, whatever the order
    assert results[0][2] == [0, 1, 1, 1, 1, 5, 6, 6, 8, 9]
    assert all(r == results[0] for r in results)


# --- the whole stage -------------------------------------------------------------------------


def test_verified_pass_catches_edited_copies_the_fineweb_pass_misses():
    rng = random.Random(4)
    base = random_text(rng, 600)
    copy = edit_words(rng, base, 0.09)  # Jaccard about 0.45: P(14 x 8 finds it) < 0.01
    unrelated = random_text(rng, 600)
    j = jaccard(word_ngrams(base), word_ngrams(copy))
    assert 0.4 < j < 0.55
    docs = [{"id": "orig", "text": base}, {"id": "copy", "text": copy},
            {"id": "other", "text": unrelated}]  # fmt: skip
    assert find_duplicates(docs, DedupConfig(verify=False)) == []
    removed = find_duplicates(docs)
    assert [(r["id"], r["reason"], r["dup_of"]) for r in removed] == [
        ("copy", "dedup:minhash_verified", "orig")]  # fmt: skip
    # Above the copy's Jaccard the same pair is rejected by the exact check.
    assert find_duplicates(docs, DedupConfig(verify_threshold=min(j + 0.05, 1.0))) == []


def test_containment_accepts_a_text_inside_long_boilerplate_when_enabled():
    rng = random.Random(5)
    article = random_text(rng, 120)
    wrapped = random_text(rng, 250) + "\n" + article + "\n" + random_text(rng, 250)
    docs = [{"id": "article", "text": article}, {"id": "wrapped", "text": wrapped}]
    assert find_duplicates(docs) == []  # Jaccard about 0.2
    on = DedupConfig(containment_threshold=0.9)
    assert [r["id"] for r in find_duplicates(docs, on)] == ["wrapped"]
    too_small = DedupConfig(containment_threshold=0.9, containment_min_shingles=200)
    assert find_duplicates(docs, too_small) == []


@pytest.mark.parametrize("num_tasks", [2, 3, 7, 90])  # 90 > documents: empty tasks
def test_multi_task_run_equals_single_task(tmp_path, num_tasks):
    docs = synthetic_corpus()
    config = DedupConfig(batch_size=5)  # several batches per task
    single = find_duplicates(docs, config, tmp_path / "single")
    assert {r["reason"] for r in single} == {
        "dedup:exact", "dedup:minhash", "dedup:minhash_verified"}  # fmt: skip

    work = tmp_path / "multi"
    for k in reversed(range(num_tasks)):  # task order must not matter
        write_task_signatures(shard_documents(docs, num_tasks, k), work, k, num_tasks, config)
    assert cluster_duplicates(work) == single
    kept, removed = [], []
    for k in range(num_tasks):
        kept += [
            d["id"] for d in apply_removals(shard_documents(docs, num_tasks, k), work, removed)
        ]
    assert sorted(r["id"] for r in removed) == sorted(r["id"] for r in single)
    assert sorted(kept) == sorted(d["id"] for d in deduplicate(docs, config)[0])
    assert len(kept) + len(removed) == len(docs)
    assert not {r["dup_of"] for r in removed} & {r["id"] for r in removed}  # survivors stay


def test_a_task_without_documents_is_clustered_with_the_others(tmp_path):
    """An empty input file or a fully filtered part gives a task of no documents: clustering
    reads the other tasks and finds what one task over all documents finds."""
    docs = synthetic_corpus(num_clean=12)
    config = DedupConfig(batch_size=5)
    write_task_signatures(enumerate(docs), tmp_path / "work", 0, 2, config)
    write_task_signatures(iter([]), tmp_path / "work", 1, 2, config)
    removed = cluster_duplicates(tmp_path / "work")
    assert removed and removed == find_duplicates(docs, config, tmp_path / "single")


def test_cluster_refuses_an_incomplete_run_and_apply_a_different_input(tmp_path):
    docs = synthetic_corpus(num_clean=12)
    write_task_signatures(shard_documents(docs, 2, 0), tmp_path, 0, 2)
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        cluster_duplicates(tmp_path)
    write_task_signatures(shard_documents(docs, 2, 1), tmp_path, 1, 2)
    removed = cluster_duplicates(tmp_path)
    assert removed
    renamed = [{**d, "id": "x" + d["id"]} for d in docs]
    with pytest.raises(ValueError, match="inputs differ"):
        list(apply_removals(shard_documents(renamed), tmp_path))


def test_cli_steps_with_two_tasks(tmp_path):
    docs = synthetic_corpus(num_clean=20)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    work = tmp_path / "work"
    for k in (0, 1):
        args = ["--input", str(data), "--work-dir", str(work), "--num-tasks", "2"]
        assert dedup_cli(["signatures", *args, "--task-index", str(k), "--batch-size", "4"]) == 0
    assert dedup_cli(["cluster", "--work-dir", str(work)]) == 0
    kept_ids = []
    for k in (0, 1):
        out = tmp_path / f"kept-{k}.jsonl.gz"
        args = ["--input", str(data), "--work-dir", str(work), "--num-tasks", "2"]
        assert dedup_cli(["apply", *args, "--task-index", str(k), "--out", str(out)]) == 0
        kept_ids += [d["id"] for d in read_part(out)]
    expected = deduplicate(docs, DedupConfig(batch_size=4))[0]
    assert sorted(kept_ids) == sorted(d["id"] for d in expected)


@pytest.mark.skipif(
    not (CORPORA / "dirty" / "dev_truth.jsonl.gz").exists(),
    reason=f"needs the shared corpora at {CORPORA} (dirty/dev.jsonl.gz and its truth)",
)
def test_dirty_dev_targets():
    """Library defaults on dirty/dev: dup_recall >= 0.98 and near_dup_recall_all >= 0.70 at
    dup_precision >= 0.98 (FineWeb's single 14 x 8 pass alone reaches about 0.47)."""
    docs = list(read_part(CORPORA / "dirty" / "dev.jsonl.gz"))
    truth = list(read_part(CORPORA / "dirty" / "dev_truth.jsonl.gz"))
    removed = find_duplicates(docs)
    gone = {r["id"] for r in removed}
    assert all(r["reason"].startswith("dedup:") and r["dup_of"] not in gone for r in removed)
    texts = {d["id"]: d["text"] for d in docs}
    metrics = score(truth, [d["id"] for d in docs if d["id"] not in gone], removed, texts)
    assert metrics["dup_precision"] >= 0.98, metrics
    assert metrics["dup_recall"] >= 0.98, metrics
    assert metrics["near_dup_recall_all"] >= 0.70, metrics
