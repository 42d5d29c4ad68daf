"""Machine facts, a CPU-noise probe and the CPU allocator setting shared by the bench scripts
(run from the repo root as ``python bench/NAME.py``, which puts this folder on the import
path)."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
from pathlib import Path

from pretrain.train.cpu_malloc import keep_freed_memory_mapped

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def git_commit() -> str:
    """Short commit of the checkout, flagged when ``src/`` has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.CalledProcessError):  # e.g. a copy without .git on a GPU host
        return os.environ.get("PRETRAIN_COMMIT", "unknown")
    return commit + (" (src/ has uncommitted changes)" if dirty else "")


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def minor_page_faults() -> int:
    """Page faults of this process so far that needed no disk (fresh pages being mapped)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def add_malloc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--glibc-malloc-defaults",
        action="store_true",
        help="leave glibc malloc as it is (the trainer tunes it on a CPU, so by default this "
        "process does too, for every side it measures)",
    )


def tune_malloc_as_the_trainer(args: argparse.Namespace) -> str:
    """Apply :func:`pretrain.train.cpu_malloc.keep_freed_memory_mapped` unless
    ``--glibc-malloc-defaults``; returns what the header should say."""
    if not args.glibc_malloc_defaults and keep_freed_memory_mapped():
        return "tuned as the trainer tunes it (pretrain.train.cpu_malloc)"
    return "glibc defaults"
