"""Chunked fused cross-entropy: value and gradients equal the plain full-logits computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain import losses
from pretrain.losses import cross_entropy_sum
from pretrain.objectives.base import IGNORE_INDEX


def _reference(hidden, labels, weight, z):
    logits = hidden @ weight.t()
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum")
    valid = labels.view(-1) != IGNORE_INDEX
    lse = torch.logsumexp(logits.view(-1, logits.shape[-1])[valid], dim=-1)
    return ce + z * (lse**2).sum(), ce, int(valid.sum())


@pytest.mark.parametrize("z", [0.0, 1e-2])
@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_value_and_gradients_match_full_logits(z: float, chunk_rows: int):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = IGNORE_INDEX
    labels[2, -1] = IGNORE_INDEX

    total, count, ce = cross_entropy_sum(
        hidden, labels, weight, z_loss_coef=z, chunk_rows=chunk_rows
    )
    gh, gw = torch.autograd.grad(total * 0.5, [hidden, weight])

    ref_total, ref_ce, ref_count = _reference(hidden, labels, weight, z)
    rh, rw = torch.autograd.grad(ref_total * 0.5, [hidden, weight])
    assert int(count) == ref_count == 3 * 11 - 5
    torch.testing.assert_close(total.double(), ref_total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ce.double(), ref_ce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    assert gh[0, :4].abs().max() == 0  # ignored positions get no gradient


def test_no_label_tokens_gives_zero_loss_and_zero_gradient():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    labels = torch.full((2, 4), IGNORE_INDEX)
    total, count, _ = cross_entropy_sum(hidden, labels, weight)
    total.backward()
    assert int(count) == 0 and float(total.detach()) == 0.0
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_bf16_hidden_with_fp32_weight_is_close_to_fp32():
    torch.manual_seed(1)
    hidden = torch.randn(64, 32)
    weight = torch.randn(100, 32) * 0.1
    labels = torch.randint(0, 100, (64,))
    full, _, _ = cross_entropy_sum(hidden, labels, weight)
    half, _, _ = cross_entropy_sum(hidden.bfloat16(), labels, weight)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=2e-2, atol=0)


def test_bf16_projection_keeps_fp32_gradients_for_fp32_hidden():
    torch.manual_seed(2)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = (torch.randn(100, 32) * 0.1).requires_grad_()
    labels = torch.randint(0, 100, (40,))
    full, _, _ = cross_entropy_sum(hidden, labels, weight)
    rh, rw = torch.autograd.grad(full, [hidden, weight])
    for chunk_rows in (None, 7):  # one chunk, and six whose weight gradients add up
        mixed, _, _ = cross_entropy_sum(
            hidden, labels, weight, compute_dtype=torch.bfloat16, chunk_rows=chunk_rows
        )
        torch.testing.assert_close(mixed, full, rtol=2e-2, atol=0)
        gh, gw = torch.autograd.grad(mixed, [hidden, weight])
        assert gh.dtype == gw.dtype == torch.float32
        torch.testing.assert_close(gh, rh, rtol=0.05, atol=5e-3)
        torch.testing.assert_close(gw, rw, rtol=0.05, atol=5e-3)


def test_evaluation_under_no_grad_does_no_gradient_work():
    hidden = torch.randn(64, 16)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (64,))
    with torch.no_grad(), torch.profiler.profile() as prof:
        cross_entropy_sum(hidden, labels, weight, chunk_rows=64)
    matmuls = sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))
    assert matmuls == 1  # only the forward projection; no grad_hidden / grad_weight products


def test_output_bias_value_and_gradients_match_full_logits():
    torch.manual_seed(3)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    labels[1, :3] = IGNORE_INDEX
    total, count, _ = cross_entropy_sum(hidden, labels, weight, output_bias=bias, chunk_rows=4)
    logits = hidden @ weight.t() + bias
    ref = F.cross_entropy(logits.view(-1, 40), labels.view(-1), reduction="sum")
    torch.testing.assert_close(total, ref)
    # The trainer backpropagates the sum over the label count: every gradient scales with it.
    got = torch.autograd.grad(total / 7.0, [hidden, weight, bias])
    want = torch.autograd.grad(ref / 7.0, [hidden, weight, bias])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_eval_accuracy_counts_argmax_hits_on_label_tokens_only():
    from pretrain.eval.perplexity import _num_correct

    class Head(torch.nn.Module):
        def logits(self, h):
            return h  # hidden states are the logits here

    hidden = torch.tensor([[[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]]])
    labels = torch.tensor([[0, 2, 2, IGNORE_INDEX]])  # right, wrong, right, ignored
    assert _num_correct(Head(), hidden, labels) == 2


@pytest.mark.slow
@pytest.mark.parametrize("with_bias", [False, True])
def test_compiled_chunks_match_eager_chunks(with_bias: bool):
    """``compiled=True`` (the path ``train.compile`` takes) computes the same loss and grads."""
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    bias = torch.randn(40, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 40, (2, 9))
    labels[1, :3] = IGNORE_INDEX
    params = [hidden, weight] + ([bias] if with_bias else [])
    results = []
    for compiled in (False, True):
        total, _, ce = cross_entropy_sum(
            hidden, labels, weight, 1e-2, chunk_rows=5, output_bias=bias, compiled=compiled
        )
        results.append((total.detach(), ce, *torch.autograd.grad(total, params)))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_cpu_loss_takes_the_default_chunks_for_a_large_vocabulary(monkeypatch):
    """Without ``chunk_rows`` the CPU loss cuts a 32128-word vocabulary's rows into chunks of
    :func:`default_chunk_rows` (fp32 logits under the allocator's mmap threshold)."""
    vocab, rows = 32128, 600
    chunk = losses.default_chunk_rows(torch.device("cpu"), vocab)
    seen = []
    real = losses.chunk_loss_and_grad
    monkeypatch.setattr(
        losses,
        "chunk_loss_and_grad",
        lambda logits, *a: seen.append(len(logits)) or real(logits, *a),
    )
    hidden = torch.randn(rows, 8, requires_grad=True)
    total, _, _ = cross_entropy_sum(hidden, torch.randint(0, vocab, (rows,)), torch.randn(vocab, 8))
    total.backward()
    assert chunk < 512 and seen == [chunk, chunk, rows - 2 * chunk]


def test_default_chunk_rows_keep_cpu_chunks_small_and_cuda_chunks_near_one_gib():
    from pretrain.losses import CPU_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, default_chunk_rows

    assert default_chunk_rows(torch.device("cpu"), 4096) == DEFAULT_CHUNK_ROWS
    for vocab in (32128, 50257, 128256, 10**8):  # fp32 chunks below glibc's mmap threshold
        rows = default_chunk_rows(torch.device("cpu"), vocab)
        assert 1 <= rows < DEFAULT_CHUNK_ROWS and (rows == 1 or rows * vocab * 4 < 32 << 20)
        assert (rows + 1) * vocab * 4 > CPU_CHUNK_BYTES
    rows = default_chunk_rows(torch.device("cuda"), 50257)
    assert rows % DEFAULT_CHUNK_ROWS == 0 and rows * 50257 * 4 <= 1 << 30
    assert (rows + DEFAULT_CHUNK_ROWS) * 50257 * 4 > 1 << 30
    assert default_chunk_rows(torch.device("cuda"), 10**7) == DEFAULT_CHUNK_ROWS


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
def test_vocabulary_padding_changes_nothing(monkeypatch, with_bias: bool, compute_dtype):
    """The CUDA path pads V to a multiple of 64 (-inf logits): loss and grads are unchanged,
    also with the bf16 projection (whose weight gradient is summed into fp32 per chunk)."""
    import pretrain.losses as losses

    torch.manual_seed(2)
    dtype = torch.float64 if compute_dtype is None else torch.float32
    hidden = torch.randn(2, 9, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(37, 16, dtype=dtype, requires_grad=True)
    bias = torch.randn(37, dtype=dtype, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 37, (2, 9))
    labels[0, 0] = IGNORE_INDEX
    params = [hidden, weight] + ([bias] if with_bias else [])
    results = []
    for multiple in (1, 64):
        monkeypatch.setattr(losses, "vocab_multiple", lambda device, m=multiple: m)
        total, _, ce = cross_entropy_sum(
            hidden, labels, weight, 1e-2, chunk_rows=4, output_bias=bias,
            compute_dtype=compute_dtype,
        )  # fmt: skip
        results.append((total.detach(), ce, *torch.autograd.grad(total, params)))
    tol = 1e-12 if compute_dtype is None else 1e-6
    for unpadded, padded in zip(*results, strict=True):
        assert padded.shape == unpadded.shape
        torch.testing.assert_close(padded, unpadded, rtol=tol, atol=tol)
    w, b = losses.padded_output(weight, None, 64, torch.float64)
    assert w.shape == (64, 16) and (w[37:] == 0).all() and torch.isinf(b[37:]).all()


def test_label_positions_from_the_batch_give_the_same_loss_per_task():
    """``ModelBatch.loss_groups`` finds each task's label positions on the host; the loss over
    those positions equals the loss that finds them itself, group by group."""
    from pretrain.losses import cross_entropy_by_task
    from pretrain.objectives.base import AttentionSpec, ModelBatch

    torch.manual_seed(2)
    labels = torch.randint(0, 40, (5, 9))
    labels[torch.rand(5, 9) < 0.4] = IGNORE_INDEX
    batch = ModelBatch(
        input_ids=labels.clamp(min=0),
        labels=labels,
        attention=AttentionSpec(kind="causal"),
        task_ids=torch.tensor([1, 0, 1, 1, 0]),
        task_names=("a", "b"),
    )
    hidden = torch.randn(5, 9, 8, dtype=torch.float64)
    weight = torch.randn(40, 8, dtype=torch.float64)
    groups = batch.loss_groups()
    moved = batch.loss_groups("cpu")  # the trainer passes its device
    assert all(torch.equal(a[2], b[2]) for a, b in zip(groups, moved, strict=True))
    assert [(name, rows.tolist()) for name, rows, _ in groups] == [("a", [1, 4]), ("b", [0, 2, 3])]
    for _, rows, positions in groups:
        assert torch.equal(positions, torch.nonzero(labels[rows].reshape(-1) >= 0).squeeze(1))
    found = [(n, r, None) for n, r, _ in groups]
    given = list(cross_entropy_by_task(hidden, labels, groups, weight, chunk_rows=3))
    itself = list(cross_entropy_by_task(hidden, labels, found, weight, chunk_rows=3))
    for (_, _, total, count, ce), (_, _, total2, count2, ce2) in zip(given, itself, strict=True):
        assert int(count) == int(count2) and torch.equal(total, total2) and torch.equal(ce, ce2)
    # the loss uses the positions it is given: half of them give half the count
    halves = [(n, r, p[::2]) for n, r, p in groups]
    half = list(cross_entropy_by_task(hidden, labels, halves, weight, chunk_rows=3))
    for (_, _, _, count, _), (_, _, positions) in zip(half, halves, strict=True):
        assert int(count) == len(positions)
    untracked = ModelBatch(input_ids=batch.input_ids, labels=labels, attention=batch.attention)
    [(name, rows, positions)] = untracked.loss_groups()
    assert name == "clm" and rows is None and len(positions) == int((labels >= 0).sum())


def test_compute_dtype_projects_in_that_dtype_also_per_task():
    # The bf16 projection is what autocast would compute (bf16 operands, fp32 softmax); it is
    # not the fp32 result, which a compute_dtype silently ignored would give.
    from pretrain.losses import cross_entropy_by_task

    torch.manual_seed(4)
    hidden = torch.randn(2, 24, 32)
    weight = torch.randn(100, 32)
    labels = torch.randint(0, 100, (2, 24))
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()
    ref = F.cross_entropy(logits.view(-1, 100), labels.view(-1), reduction="sum")
    fp32 = F.cross_entropy((hidden @ weight.t()).view(-1, 100), labels.view(-1), reduction="sum")
    assert abs(ref - fp32) > 1e-2
    total, _, _ = cross_entropy_sum(hidden, labels, weight, compute_dtype=torch.bfloat16)
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=0)
    groups = [("a", torch.tensor([0]), None), ("b", torch.tensor([1]), None)]
    per_task = list(
        cross_entropy_by_task(hidden, labels, groups, weight, compute_dtype=torch.bfloat16)
    )
    torch.testing.assert_close(sum(t[2] for t in per_task), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_cpu_softmax_path_equals_the_log_softmax_path(monkeypatch, z: float):
    """Eager CPU takes the loss from ``softmax`` (``-log p[y]``); forcing every chunk back to
    ``log_softmax`` (a threshold above any probability) gives the same loss and gradient."""
    torch.manual_seed(0)
    logits = torch.randn(9, 40, dtype=torch.float64) * 4
    targets = torch.randint(0, 40, (9, 1))
    from_softmax = losses.softmax_loss_and_grad(logits, targets, z, torch.float64)
    assert from_softmax is not None
    used = []
    real = losses.softmax_loss_and_grad
    monkeypatch.setattr(losses, "softmax_loss_and_grad", lambda *a: used.append(1) or real(*a))
    fast = losses.chunk_loss_and_grad(logits, targets, None, z, True)
    assert used == [1]  # eager CPU with a gradient: the chunk went through the softmax path
    for a, b in zip(fast, from_softmax, strict=True):
        assert torch.equal(a, b)
    monkeypatch.setattr(losses, "MIN_TARGET_PROB", 2.0)
    assert losses.softmax_loss_and_grad(logits, targets, z, torch.float64) is None
    slow = losses.chunk_loss_and_grad(logits, targets, None, z, True)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_target_whose_probability_underflows_still_gets_its_exact_loss():
    """fp32 softmax gives the target 0 when its logit is 200 below another: the chunk goes
    through log_softmax, and the loss is 200 (not inf), the gradient that of fp64."""
    logits = torch.zeros(3, 8)
    logits[1, 5] = 200.0  # row 1's target is 0, whose probability is exp(-200) ~ 1e-87
    targets = torch.tensor([[2], [0], [7]])
    ce, _, grad = losses.chunk_loss_and_grad(logits, targets, None, 0.0, True)
    ref_logits = logits.double().requires_grad_()
    ref = F.cross_entropy(ref_logits, targets[:, 0], reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert torch.isfinite(ce) and abs(float(ce) - float(ref)) < 1e-4
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-6, atol=1e-6)
