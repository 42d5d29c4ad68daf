"""The model and its loss as one module, so data-parallel wrappers see the whole step.

The loss reads the output projection (``model.output_weight``) outside the model's forward.
FSDP2 only gathers sharded weights inside a wrapped module's forward, so the trainer wraps
this module, not the bare model: its forward runs the model and the chunked cross-entropy,
and DDP/FSDP2 treat the pair as one unit. In a single process it computes exactly what the
loop computed inline before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from pretrain.losses import cross_entropy_by_task
from pretrain.objectives.base import ModelBatch


class ModelWithLoss(nn.Module):
    """``forward(batch, groups) -> (loss_sum with z-loss and a mixture of experts' router
    loss, ce_sum, {task: (ce_sum, count)}, router loss sum)``,
    ``groups`` from :meth:`ModelBatch.loss_groups` (made on the host, so the counts are ints).

    Args:
        model: the single-device model (its state dict keys get the ``model.`` prefix here).
        z_loss: weight of the z-loss term.
        compute_dtype: dtype of the logits chunks (bf16 under mixed precision), or None.
        compiled: use the compiled cross-entropy.
        forward: what runs the model (``torch.compile(model)``), default ``model`` itself.
        autocast: context manager factory the model's forward (not the loss) runs under.
    """

    def __init__(
        self,
        model: nn.Module,
        z_loss: float,
        compute_dtype: torch.dtype | None,
        compiled: bool = False,
        forward: Callable[[ModelBatch], torch.Tensor] | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        super().__init__()
        self.model = model
        self.z_loss = z_loss
        self.compute_dtype = compute_dtype
        self.compiled = compiled
        # Not a submodule: a compiled wrapper would register the weights a second time.
        self.__dict__["_forward"] = forward
        self.__dict__["_autocast"] = autocast

    def forward(
        self, batch: ModelBatch, groups: list[tuple[str, torch.Tensor | None, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, int]], torch.Tensor]:
        run = self.model if self._forward is None else self._forward
        with self._autocast():
            hidden = run(batch)
        return self.loss(hidden, batch.labels, groups)

    def loss(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        groups: list[tuple[str, torch.Tensor | None, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, int]], torch.Tensor]:
        """:meth:`forward`'s values from the model's final ``hidden`` states (a pipeline's
        last stage computes them, :mod:`pretrain.distributed.pipeline_parallel`)."""
        total = hidden.new_zeros((), dtype=torch.float32)
        ce_sum = hidden.new_zeros((), dtype=torch.float32)
        per_task: dict[str, tuple[torch.Tensor, int]] = {}
        label_counts = {name: len(positions) for name, _, positions in groups}  # on the host
        for name, rows, task_total, _, ce in cross_entropy_by_task(
            hidden,
            labels,
            groups,
            self.model.output_weight,
            z_loss_coef=self.z_loss,
            compute_dtype=self.compute_dtype,
            output_bias=getattr(self.model, "output_bias", None),
            compiled=self.compiled,
        ):  # one group unless examples record their task
            total = total + task_total
            ce_sum = ce_sum + ce.detach()
            if rows is not None:
                per_task[name] = (ce.detach(), label_counts[name])
        router_loss = getattr(self.model, "router_aux_loss", None)
        aux = None if router_loss is None else router_loss()
        aux_sum = ce_sum.new_zeros(())
        if aux is not None:
            # A mixture of experts' load-balancing loss, weighted per label token like the
            # cross-entropy sum it joins: after the step's division by the label count, each
            # micro-batch's term counts by its share of the labels.
            aux_sum = aux * sum(label_counts.values())
            total = total + aux_sum
        return total, ce_sum, per_task, aux_sum.detach()
