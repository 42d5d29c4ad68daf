"""Cross-entropy over the vocabulary that never materializes all fp32 logits at once.

``cross_entropy_sum(hidden, labels, output_weight)`` returns ``(loss_sum, num_label_tokens)``:
the trainer divides the sum by the label count summed over micro-batches and ranks
(DESIGN.md §3), so objectives whose label count varies (MLM, span corruption) are weighted
per token, not per batch.

Only positions with a label are projected onto the vocabulary (for MLM that is ~15% of the
positions). Those rows are processed in chunks by a fused linear + cross-entropy autograd
function (the approach of Liger Kernel's fused linear cross-entropy and of torchtitan's
chunked loss): each chunk's logits are computed in fp32, turned into the loss *and* into the
gradients of the hidden states and the output weight right away, then freed. Peak memory is
one chunk of logits instead of ``N x V`` floats, with no recomputation in backward.

The optional z-loss (PaLM, Chowdhery et al. 2022, §5) adds ``coef * logsumexp(logits)**2`` per
label token to keep the softmax normalizer near 1.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from pretrain.objectives.base import label_positions as find_label_positions
from pretrain.train.cpu_malloc import MMAP_THRESHOLD_BYTES

DEFAULT_CHUNK_ROWS = 512  # CPU: fits in cache; measured faster than 2048 (vocabulary 4096)
CPU_CHUNK_BYTES = MMAP_THRESHOLD_BYTES - (1 << 20)  # CPU: a chunk's fp32 logits, below it
CUDA_VOCAB_MULTIPLE = 64  # CUDA: vocabulary columns padded to this for aligned bf16 GEMMs
CUDA_CHUNK_BYTES = 1 << 30  # CUDA: rows per chunk so one chunk's fp32 logits take about 1 GiB


def default_chunk_rows(device: torch.device, vocab_size: int) -> int:
    """Label rows per chunk: small on CPU (cache), large on CUDA (fewer, fuller launches).

    On a CPU, at most :data:`DEFAULT_CHUNK_ROWS`, and fewer where a chunk's fp32 logits would
    reach :data:`CPU_CHUNK_BYTES`, 1 MiB under the mmap threshold that
    :mod:`pretrain.train.cpu_malloc` sets: glibc serves a larger block with fresh pages every
    time, and the page faults cost more than the smaller chunks (T5 ``tiny``'s 464 label rows
    and 32128 words: 80 ms in one 60 MB chunk, 68 ms in 252-row chunks, measured at b29b150;
    ``bench/bench_cpu_loss_optim.py``).
    """
    if device.type != "cuda":
        return max(1, min(DEFAULT_CHUNK_ROWS, CPU_CHUNK_BYTES // (4 * vocab_size)))
    rows = CUDA_CHUNK_BYTES // (4 * vocab_size)
    return max(DEFAULT_CHUNK_ROWS, rows // DEFAULT_CHUNK_ROWS * DEFAULT_CHUNK_ROWS)


def vocab_multiple(device: torch.device) -> int:
    """Vocabulary columns are padded to this multiple in the loss's GEMMs (1: no padding)."""
    return CUDA_VOCAB_MULTIPLE if device.type == "cuda" else 1


def padded_output(
    weight: torch.Tensor, bias: torch.Tensor | None, multiple: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` in ``dtype`` with zero rows, and a bias of -inf there, up to a multiple.

    A vocabulary of 50257 makes every GEMM against the output weight misaligned for the tensor
    cores (rows of 50257 bf16 values are not 16-byte multiples) and several times slower;
    nanoGPT pads the model's vocabulary to 50304 for this. Padding only inside the loss keeps
    the model's shape: the padded logits are -inf, so they add nothing to the softmax, and
    their gradients are exactly zero and dropped.
    """
    V = weight.shape[0]
    extra = -V % multiple
    w = weight.to(dtype)
    if not extra:
        return w, bias
    w = torch.cat([w, w.new_zeros(extra, w.shape[1])])
    acc = torch.promote_types(dtype, torch.float32)
    b = torch.zeros(V + extra, dtype=acc, device=weight.device)
    b[V:] = float("-inf")
    if bias is not None:
        b[:V] = bias
    return w, b


def chunk_loss_and_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    z_loss_coef: float,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cross-entropy sum, z-loss sum and d(loss)/d(logits) of one chunk.

    Args:
        logits: ``(n, V)`` in the projection's dtype; the softmax runs in fp32 (fp64 stays).
        targets: ``(n, 1)`` target ids.
        bias: ``(V,)`` output bias in the accumulation dtype, or None.

    Returns:
        ``(ce_sum, z_sum, grad)`` with ``grad = softmax * (1 + 2 z lse) - onehot(y)`` in the
        dtype of ``logits`` (None when ``need_grad`` is False). Pure, so ``torch.compile`` can
        fuse it into a few passes over the chunk on CUDA; in eager mode on CPU, with a
        gradient, it is :func:`softmax_loss_and_grad` (one pass fewer) where that applies.
    """
    acc = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if bias is not None:
        acc = acc + bias
    if need_grad and acc.device.type == "cpu" and not torch.compiler.is_compiling():
        from_softmax = softmax_loss_and_grad(acc, targets, z_loss_coef, logits.dtype)
        if from_softmax is not None:
            return from_softmax
    logp = acc.log_softmax(dim=-1)  # (n, V)
    target_logp = logp.gather(1, targets)  # (n, 1)
    ce = -target_logp.sum()
    z_sum = torch.zeros((), dtype=acc.dtype, device=acc.device)
    lse = None
    if z_loss_coef:
        lse = acc.gather(1, targets) - target_logp  # (n, 1): log Z
        z_sum = (lse * lse).sum()
    if not need_grad:
        return ce, z_sum, None
    grad = logp.exp_()  # (n, V) softmax, in place
    if lse is not None:
        grad *= 1.0 + 2.0 * z_loss_coef * lse
    grad.scatter_add_(1, targets, torch.full_like(target_logp, -1.0))
    return ce, z_sum, grad.to(logits.dtype)


MIN_TARGET_PROB = 1e-30
"""Below this softmax probability of a target (a loss above 69 nats on that token),
:func:`softmax_loss_and_grad` hands the chunk back to ``log_softmax``: ``log`` of an fp32
probability near the bottom of its range loses precision, and 0 has none."""


def softmax_loss_and_grad(
    acc: torch.Tensor, targets: torch.Tensor, z_loss_coef: float, grad_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`chunk_loss_and_grad` for eager CPU from one ``softmax`` pass instead of
    ``log_softmax`` then ``exp``: the loss of a row is ``-log p[y]`` (and ``log Z = l[y] -
    log p[y]``), one fewer pass over the ``(n, V)`` fp32 chunk. Returns None, to take the
    ``log_softmax`` path, where some target's probability is below :data:`MIN_TARGET_PROB`
    (a data-dependent check: a host sync on CUDA, so CPU only)."""
    probs = acc.softmax(dim=-1)  # (n, V)
    target_prob = probs.gather(1, targets)  # (n, 1)
    if not bool((target_prob >= MIN_TARGET_PROB).all()):
        return None
    target_logp = target_prob.log()
    ce = -target_logp.sum()
    z_sum = torch.zeros((), dtype=acc.dtype, device=acc.device)
    if z_loss_coef:
        lse = acc.gather(1, targets) - target_logp  # (n, 1): log Z
        z_sum = (lse * lse).sum()
        probs *= 1.0 + 2.0 * z_loss_coef * lse
    probs.scatter_add_(1, targets, torch.full_like(target_prob, -1.0))
    return ce, z_sum, probs.to(grad_dtype)


@functools.cache
def _compiled_chunk_loss_and_grad():
    """:func:`chunk_loss_and_grad` compiled once per process."""
    return torch.compile(chunk_loss_and_grad)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """With logits l_i = h_i W^T (+ b): sum_i [lse(l_i) - l_i[y_i] + z * lse(l_i)^2] over rows i."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, z_loss_coef: float, chunk_rows: int, compiled: bool
    ):  # type: ignore[override]
        needs_grad = any(ctx.needs_input_grad[:3])
        compute_dtype = hidden.dtype
        acc_dtype = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 in tests
        chunk_fn = _compiled_chunk_loss_and_grad() if compiled else chunk_loss_and_grad
        V = weight.shape[0]
        b = None if bias is None else bias.to(acc_dtype)
        w, b = padded_output(
            weight, b, vocab_multiple(hidden.device), compute_dtype
        )  # (V', C), (V',) or None
        loss = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        z_total = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if needs_grad else None
        )
        grad_bias = (
            torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device)
            if needs_grad and bias is not None
            else None
        )
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows]  # (n, C)
            y = targets[start : start + chunk_rows, None]  # (n, 1)
            ce, z_sum, g = chunk_fn(h @ w.t(), y, b, z_loss_coef, needs_grad)  # g: (n, V)
            loss += ce
            z_total += z_sum
            if g is None:
                continue
            if grad_bias is not None:
                grad_bias += g[:, :V].sum(dim=0, dtype=acc_dtype)
            torch.mm(g, w, out=grad_hidden[start : start + chunk_rows])
            if g.dtype == acc_dtype:
                grad_weight.addmm_(g[:, :V].t(), h)
            else:  # bf16 product added into fp32 in one pass (no fp32 copy of it first)
                grad_weight += (g.t() @ h)[:V]
            del g
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return loss + z_loss_coef * z_total, loss

    @staticmethod
    def backward(ctx, grad_total, _grad_ce):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        gh = (grad_hidden * grad_total.to(grad_hidden.dtype)) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * grad_total).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        gb = None
        if ctx.needs_input_grad[2] and grad_bias is not None:
            gb = (grad_bias * grad_total).to(ctx.bias_dtype)
        return gh, gw, gb, None, None, None, None


def cross_entropy_sum(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    output_weight: torch.Tensor,
    z_loss_coef: float = 0.0,
    chunk_rows: int | None = None,
    compute_dtype: torch.dtype | None = None,
    output_bias: torch.Tensor | None = None,
    compiled: bool = False,
    label_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy of ``hidden @ output_weight.T`` against ``labels``.

    Args:
        hidden: ``(..., C)`` final hidden states.
        labels: ``(...)`` target ids, ``IGNORE_INDEX`` where there is no loss.
        output_weight: ``(V, C)`` output projection (the tied embedding or the LM head).
        z_loss_coef: PaLM z-loss coefficient (1e-4 in PaLM, 1e-5 in OLMo 2); 0 disables it.
        chunk_rows: label positions per chunk of fp32 logits; None picks
            :func:`default_chunk_rows` for the device.
        compute_dtype: dtype of the vocabulary projection (bf16 under mixed precision); the
            softmax and the sums stay in fp32. None keeps the dtype of ``hidden``.
        output_bias: ``(V,)`` bias added to the logits (BERT's MLM decoder has one).
        compiled: run the per-chunk softmax and gradient through ``torch.compile`` (the
            trainer sets it with ``train.compile``), fusing them into a few passes.
        label_positions: indices into the flattened ``labels`` where there is a label, found
            where the batch was made (:meth:`ModelBatch.loss_groups`); None finds them here,
            which on a GPU waits for ``labels`` and everything queued before it.

    Returns:
        ``(objective_sum, num_label_tokens, ce_sum)``: the sum to backpropagate (cross-entropy
        plus z-loss), the number of label tokens, and the plain cross-entropy sum for logging.
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (B*T, C)
    flat_labels = labels.reshape(-1)
    rows = label_positions if label_positions is not None else find_label_positions(labels)
    rows = rows.to(hidden.device)  # no copy when loss_groups put them there already
    h = flat_hidden.index_select(0, rows)  # (N, C) labeled rows only
    y = flat_labels.index_select(0, rows)
    if compute_dtype is not None:
        h = h.to(compute_dtype)
    weight, bias = output_weight, output_bias
    if not torch.is_grad_enabled():  # eval: Function.forward can't see grad mode, so detach
        h, weight = h.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(hidden.device, output_weight.shape[0])
    total, ce = _FusedLinearCrossEntropy.apply(
        h, weight, bias, y, float(z_loss_coef), chunk_rows, compiled
    )
    # A fill, not a copy from the host (which would wait for the device), for the count.
    count = torch.full((), len(rows), dtype=torch.int64, device=hidden.device)
    return total, count, ce.detach()


def cross_entropy_by_task(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    groups: list[tuple[str, torch.Tensor | None, torch.Tensor | None]],
    output_weight: torch.Tensor,
    **kwargs,
) -> Iterator[tuple[str, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`cross_entropy_sum` of each task's rows: ``(name, rows, total, count, ce)``.

    ``groups`` is :meth:`ModelBatch.loss_groups`: ``(name, example rows, label positions)``
    per task, or one ``(objective, None, label positions)`` for the whole batch; positions
    None are found on the device. ``kwargs`` go to :func:`cross_entropy_sum`.
    """
    for name, rows, positions in groups:
        h, y = hidden, labels
        if rows is not None:
            rows = rows.to(hidden.device)
            h, y = hidden[rows], labels[rows]
        totals = cross_entropy_sum(h, y, output_weight, label_positions=positions, **kwargs)
        yield (name, rows, *totals)
