"""Tasks of a data stage: which ones this process runs, in how many workers, and which are done.

A stage splits its work into numbered tasks (one per input file, or one per shard of the
documents). Every task writes its outputs atomically and then a small JSON *report* file;
the report is the completion marker, so a rerun skips finished tasks and redoes the rest
(datatrove's ``completions`` folder works the same way). Each report records a key of what
its task was given (:func:`task_key`); a rerun into the same directory with other inputs or
settings is refused instead of silently reusing the old outputs.

Across machines, ``--num-tasks N --task-index I`` runs the tasks ``t`` with ``t % N == I``;
under a Slurm job array the two default to ``SLURM_ARRAY_TASK_COUNT`` and
``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``), so ``sbatch --array=0-7`` runs a
stage on 8 nodes with no extra flags. Inside one process, ``workers`` processes run the tasks
(spawned, so no fork-inherited state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_text

log = logging.getLogger(__name__)

# Bumped whenever a stage's report gains or changes a field a later step reads; reports of
# another format are refused with a message instead of failing later on a missing key.
# 2: filter reports carry ``kept_part`` (format 1 had no stamp). 3: the task key.
REPORT_FORMAT = 3
FORMAT_KEY = "report_format"
TASK_KEY = "task_key"


class StageNotFinished(ValueError):
    """A later step needs tasks that have not finished (they may run on another machine)."""


@dataclass(frozen=True)
class TaskSlice:
    """This process's share of a stage's tasks."""

    task_index: int = 0
    num_tasks: int = 1

    def __post_init__(self) -> None:
        if self.num_tasks < 1 or not 0 <= self.task_index < self.num_tasks:
            raise ValueError(
                f"--task-index must be in [0, --num-tasks), got {self.task_index} of "
                f"{self.num_tasks}"
            )

    def mine(self, num_stage_tasks: int) -> list[int]:
        return [t for t in range(num_stage_tasks) if t % self.num_tasks == self.task_index]

    @classmethod
    def from_args(cls, task_index: int | None, num_tasks: int | None) -> TaskSlice:
        """Explicit values, else a Slurm job array's variables, else the whole stage."""
        env = os.environ
        if num_tasks is None and "SLURM_ARRAY_TASK_COUNT" in env:
            num_tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
        if task_index is None and "SLURM_ARRAY_TASK_ID" in env:
            task_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return cls(task_index or 0, num_tasks or 1)


def report_path(stage_dir: Path, task: int) -> Path:
    return stage_dir / "_tasks" / f"{task:05d}.json"


def is_done(stage_dir: Path, task: int) -> bool:
    return report_path(stage_dir, task).exists()


def task_key(args: tuple) -> str:
    """What a task was given: its arguments (input and output paths, settings).

    A file's contents are not part of it: an input rewritten in place under the same name is
    not noticed (hashing every input on every rerun would read them all again), while its
    outputs, inputs of the next stage, keep their names whenever a stage is redone."""
    return hashlib.sha256(repr(args).encode()).hexdigest()[:16]


def mark_done(stage_dir: Path, task: int, report: dict[str, Any], key: str = "") -> None:
    path = report_path(stage_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**report, FORMAT_KEY: REPORT_FORMAT, TASK_KEY: key}
    atomic_write_text(path, json.dumps(stamped, sort_keys=True))


def check_done_with(stage_dir: Path, task: int, key: str) -> None:
    """Refuse a finished task whose report was written for other arguments than ``key``'s."""
    path = report_path(stage_dir, task)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):  # not done, or unreadable: read_report says so
        return
    done_with = report.get(TASK_KEY) if isinstance(report, dict) else None
    if done_with is not None and done_with != key:
        raise ValueError(
            f"{stage_dir}: task {task} was done for other inputs or settings than this run's; "
            f"choose another --out, or delete {stage_dir} to redo this stage"
        )


def read_report(path: Path) -> dict[str, Any]:
    """One task's report, without its format stamp.

    Raises:
        ValueError: naming the file, when it was written in another report format (an older
            or newer pretrain), or is not a JSON object.
    """
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a task report ({e}); delete it to rerun the task") from e
    if not isinstance(report, dict):
        raise ValueError(f"{path}: not a task report (a JSON object); delete it to rerun it")
    found = report.pop(FORMAT_KEY, 1)
    report.pop(TASK_KEY, None)
    if found != REPORT_FORMAT:
        raise ValueError(
            f"{path}: task report format {found}, this pretrain reads format {REPORT_FORMAT} "
            f"(written by another version); delete {path.parent.parent} to rerun that stage"
        )
    return report


def read_reports(stage_dir: Path, num_tasks: int) -> list[dict[str, Any]]:
    """Every task's report.

    Raises:
        StageNotFinished: naming the tasks not finished yet.
    """
    missing = [t for t in range(num_tasks) if not is_done(stage_dir, t)]
    if missing:
        raise StageNotFinished(
            f"{stage_dir}: tasks {missing[:10]}{'...' if len(missing) > 10 else ''} of "
            f"{num_tasks} have not finished; run them (e.g. the other --task-index values) first"
        )
    return [read_report(report_path(stage_dir, t)) for t in range(num_tasks)]


def run_tasks(
    fn: Callable[..., dict[str, Any]],
    args_per_task: Sequence[tuple],
    stage_dir: Path,
    tasks: Sequence[int],
    workers: int = 1,
) -> int:
    """Run ``fn(*args_per_task[t])`` for each unfinished task ``t``; mark each done with its
    report. Returns how many ran (the rest were already done).

    Raises:
        ValueError: a finished task's report was written for other arguments.
    """
    keys = {t: task_key(args_per_task[t]) for t in tasks}
    for t in tasks:
        check_done_with(stage_dir, t, keys[t])
    todo = [t for t in tasks if not is_done(stage_dir, t)]
    if workers <= 1 or len(todo) <= 1:
        for t in todo:
            mark_done(stage_dir, t, fn(*args_per_task[t]), keys[t])
        return len(todo)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(todo))) as pool:
        results = [pool.apply_async(fn, args_per_task[t]) for t in todo]
        for t, result in zip(todo, results, strict=True):
            mark_done(stage_dir, t, result.get(), keys[t])
    return len(todo)


def run_stage(
    fn: Callable[..., dict[str, Any]],
    args_per_task: Sequence[tuple],
    stage_dir: Path,
    task_slice: TaskSlice | None = None,
    workers: int = 1,
) -> list[dict[str, Any]] | None:
    """Run this process's share (``task_slice``) of a stage's tasks in ``workers`` processes;
    every task's report, or None while tasks of other ``--task-index`` values are unfinished."""
    mine = (task_slice or TaskSlice()).mine(len(args_per_task))
    ran = run_tasks(fn, args_per_task, stage_dir, mine, workers)
    log.info("%s: %d tasks ran, %d were already done", stage_dir.name, ran, len(mine) - ran)
    if not all(is_done(stage_dir, t) for t in range(len(args_per_task))):
        return None
    return read_reports(stage_dir, len(args_per_task))
