"""Few-shot tasks scored at each evaluation during training (``eval.tasks``).

OLMo evaluates downstream tasks inside the training loop so that a run shows when, and
whether, its model starts to do tasks, not only its loss; this does the same with
:mod:`pretrain.eval.few_shot`. Each task is read and its prompts written once, when the
trainer starts (a bad record stops the run before training, naming its file and line); at
each evaluation every rank scores its share of the questions (every ``world_size``-th) and the
counts of right answers are summed over ranks, so the accuracies equal one process's. Under
FSDP every rank scores every question instead: each block gathers its weights in its forward,
a collective, so the ranks must run the same forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from pretrain.config import ExperimentConfig
from pretrain.distributed import comm
from pretrain.eval.answer_layout import AnswerLayout
from pretrain.eval.few_shot import ACCURACY_KEYS, METRICS, picks, prepare_task, score_task
from pretrain.tokenizer import Tokenizer


class DownstreamTasks:
    """``eval.tasks`` of ``cfg``, prepared.

    Args:
        every_question: every rank scores every question (FSDP's lockstep forwards).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        tokenizer: Tokenizer,
        rank: int,
        world_size: int,
        every_question: bool = False,
    ):
        self.layout = AnswerLayout(cfg, tokenizer)
        self.tasks = [prepare_task(t, self.layout, cfg.train.seq_len) for t in cfg.eval.tasks]
        self.batch_size = cfg.eval.batch_size or cfg.train.micro_batch_size
        self.rank, self.world_size = (0, 1) if every_question else (rank, world_size)

    def evaluate(
        self,
        model: torch.nn.Module,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> dict[str, dict[str, Any]]:
        """Each task's accuracies (:data:`~pretrain.eval.few_shot.METRICS`) at the current
        weights; every rank calls this."""
        out = {}
        for prepared in self.tasks:
            n = len(prepared.questions)
            indices = range(self.rank, n, self.world_size)
            with autocast():
                scores, premise = score_task(prepared, self.layout, model, self.batch_size, indices)
            right = torch.zeros(len(METRICS), dtype=torch.int64)
            for i, row, alone in zip(indices, scores, premise, strict=True):
                question = prepared.questions[i]
                chosen = picks(question, row, alone)
                for m, metric in enumerate(METRICS):
                    right[m] += chosen[metric] == question.answer
            if self.world_size > 1:
                right = comm.all_reduce_sum(right.to(device), device).cpu()
            result: dict[str, Any] = {
                ACCURACY_KEYS[metric]: int(right[m]) / n for m, metric in enumerate(METRICS)
            }
            result["examples"] = n
            out[prepared.task.name] = result
        return out
