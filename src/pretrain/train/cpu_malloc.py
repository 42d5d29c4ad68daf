"""glibc ``malloc`` settings for training on CPU: freed tensors stay mapped for the next step.

A training step allocates and frees the same large temporaries (activations, gradients, loss
chunks) every time. With glibc's defaults a block above the mmap threshold (128 KiB at first,
raised on the fly up to 32 MiB) is a fresh ``mmap`` and a freed heap top beyond the trim
threshold goes back to the kernel, so the next step touches new pages and takes a page fault
per 4 KiB. Measured on the `tiny` decoder in bf16 (2 threads, ``bench/bench_train_cpu.py``
with and without ``--glibc-malloc-defaults``, two alternating pairs of processes, at bba2be1;
``docs/benchmarks.md``): page faults went from 611-5,924 to 0-461 per step, but the step time
did not change beyond the noise (228-265 ms against 221-272 ms). It did in session 9's code
(about 320 against 260 ms, an unlogged probe), before the loss and norms took fewer passes
and the loss chunks stayed under the threshold. This is the job
Intel's CPU launchers (``torch.backends.xeon.run_cpu``) give tcmalloc or jemalloc through
``LD_PRELOAD``; two ``mallopt`` calls do it for glibc in-process: the mmap threshold at its
largest (32 MiB on 64-bit) and no trimming, so memory freed by one step is reused by the next
instead of being returned and faulted in again. The process keeps its peak heap, as it would
with those allocators.

Nothing is changed where the user already chose: ``MALLOC_*`` variables set (glibc reads them
at start), an allocator preloaded, or ``PRETRAIN_CPU_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: "never" for any heap we reach
OPT_OUT_ENV = "PRETRAIN_CPU_MALLOC"

_applied = False


def user_chose_allocator(environ: Mapping[str, str] = os.environ) -> str | None:
    """The setting that says the user tuned or replaced malloc, or None."""
    if environ.get(OPT_OUT_ENV, "1") == "0":
        return f"{OPT_OUT_ENV}=0"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        if name in environ:
            return name
    if environ.get("LD_PRELOAD"):
        return "LD_PRELOAD"
    return None


def keep_freed_memory_mapped() -> bool:
    """Apply the two ``mallopt`` settings once per process; True when they are in force.

    A no-op (False) off glibc, or where :func:`user_chose_allocator` finds a choice.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    reason = user_chose_allocator()
    if reason:
        log.debug("glibc malloc left as it is (%s)", reason)
        return False
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    _applied = ok
    if ok:
        log.debug("glibc malloc: mmap threshold 32 MiB, no trimming (freed memory reused)")
    return ok
