"""Muon on the hidden matrices and AdamW on the rest, as one ``torch.optim.Optimizer``.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") replaces
each matrix's momentum by its nearest semi-orthogonal matrix, computed by a few Newton-Schulz
iterations. It is meant for the hidden layers only: embeddings, the output head, norms and
biases keep AdamW. Liu et al. 2025 ("Muon is Scalable for LLM Training", Moonlight) scale
each update to the RMS AdamW's would have (``0.2 sqrt(max(A, B))`` for an ``A x B`` matrix)
and add AdamW's decoupled weight decay, so that Muon reuses AdamW's learning rate and weight
decay as they are: the one ``optim.lr`` schedule drives both, as here.

The Muon update is ``torch.optim.Muon``'s with ``adjust_lr_fn="match_rms_adamw"``, computed
here so that the Newton-Schulz iterations can run in fp32: PyTorch runs them in bf16, which a
CPU without AVX512-BF16 or AMX emulates, and there Muon's step over the ``tiny`` model took
8.8 s against 0.32 s in fp32 (AdamW's: 6.5 ms; docs/benchmarks.md). bf16 is kept where it is
native (CUDA, such CPUs); there the updates equal ``torch.optim.Muon``'s bit for bit
(tests/unit/test_optim_muon.py). AdamW's update is ``torch.optim.AdamW``'s. One optimizer
holds both sets of groups, so that the trainer, the schedule (it sets every group's ``lr``)
and the checkpoints see a single ``param_groups`` and ``state_dict``; each group names the
update it takes (``"algorithm"``).

Hidden matrices here are the weights of the ``nn.Linear`` layers inside ``model.blocks``. The
attention's q, k and v projections are one fused matrix here, and a SwiGLU MLP's gate and up
projections another; the modules name the blocks of rows they fuse
(``fused_projections()``), and Muon orthogonalizes and scales each block on its own, as it
would the separate matrices of HF's models, Moonlight's and Keller Jordan's code (tensor
parallelism splits them into separate matrices anyway). Under FSDP and tensor parallelism each
sharded matrix is gathered whole for its update (:meth:`MuonWithAdamW._muon_step`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pretrain.distributed.tensor_parallel import RowBlocks
from pretrain.models.common.moe import MoE
from pretrain.optim import fused_adamw_applies, param_groups

MUON, ADAMW = "muon", "adamw"
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Newton-Schulz's quintic coefficients (Jordan et al. 2024; ``torch.optim.Muon``'s)."""
NS_STEPS = 5


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """What Muon updates: the weights of the ``nn.Linear`` layers inside ``model.blocks``, and
    a mixture of experts' stacked expert weights (3-D: one matrix per expert)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks: no hidden matrices for Muon")
    out, seen = [], set()
    for module in blocks.modules():
        weights = [module.weight] if isinstance(module, nn.Linear) else []
        if isinstance(module, MoE):
            weights += module.expert_matrices()
        for weight in weights:
            if weight.requires_grad and id(weight) not in seen:
                seen.add(id(weight))
                out.append(weight)
    return out


def row_blocks(model: nn.Module) -> dict[int, tuple[int, ...]]:
    """``id(weight)`` -> its blocks of rows, for the fused projections of ``model.blocks``
    (the modules' ``fused_projections()``: ``qkv`` as q, k and v; ``gate_up`` as gate and up,
    each expert's for a mixture of experts). A weight not listed is one block."""
    out = {}
    for module in model.blocks.modules():
        fused = getattr(module, "fused_projections", None)
        if fused is None:
            continue
        for name, rows in fused().items():
            weight = getattr(module, name)
            if isinstance(weight, RowBlocks):  # split by tensor parallelism: matrices apart
                continue
            weight = weight.weight if isinstance(weight, nn.Module) else weight
            if sum(rows) != weight.size(-2):
                raise ValueError(
                    f"{type(module).__name__}.{name}: row blocks {rows} do not add up to the "
                    f"weight's {weight.size(-2)} rows"
                )
            out[id(weight)] = tuple(rows)
    return out


def orthogonalize(
    matrix: torch.Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz's quintic iteration towards the semi-orthogonal matrix nearest ``matrix``
    (Jordan et al. 2024), in ``dtype``: ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``,
    from ``X`` scaled to a Frobenius norm of 1. The coefficients trade exactness for speed: the
    singular values land near 1 (between about 0.7 and 1.2), not on it. As
    ``torch.optim.Muon`` computes it, in any dtype."""
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (CUDA; CPUs with AVX512-BF16 or
    AMX), so Newton-Schulz runs in bf16 there, as PyTorch's Muon does."""
    from pretrain.train.cpu_precision import cpu_has_native_bf16

    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer whose first group is updated by Muon and the others by AdamW.

    Args:
        model: its hidden matrices (:func:`hidden_matrices`) go to Muon; every other trainable
            parameter to AdamW, in :func:`pretrain.optim.param_groups`' decayed and undecayed
            groups (the decayed ones are the output head's, when untied).
        lr, weight_decay: shared by both (Moonlight's RMS matching makes that sensible).
        momentum: Muon's Nesterov momentum (0.95 in both papers); ``betas`` and ``eps`` are
            AdamW's.
        ns_dtype: the Newton-Schulz iterations' dtype; None: bf16 where the matrices' device
            computes it natively (:func:`native_bf16`), else fp32.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        matrices = hidden_matrices(model)
        muon_ids = {id(p) for p in matrices}
        adamw_groups = []
        for group in param_groups(model, weight_decay):
            rest = [p for p in group["params"] if id(p) not in muon_ids]
            if rest:
                adamw_groups.append({**group, "params": rest})
        adamw_params = [p for group in adamw_groups for p in group["params"]]
        self._adamw = torch.optim.AdamW(
            adamw_groups,
            lr=lr,
            betas=betas,
            eps=eps,
            fused=fused_adamw_applies(adamw_params) or None,
        )
        muon_group = {
            "params": matrices,
            "algorithm": MUON,
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": True,
            "ns_coefficients": NS_COEFFICIENTS,
            "ns_steps": NS_STEPS,
            "eps": 1e-7,
        }
        adamw = [{**g, "algorithm": ADAMW} for g in self._adamw.param_groups]
        super().__init__([muon_group, *adamw], {"lr": lr})
        if ns_dtype is None:
            ns_dtype = torch.bfloat16 if native_bf16(matrices[0].device) else torch.float32
        self.ns_dtype = ns_dtype
        self.row_blocks = row_blocks(model)
        self._link()

    def _link(self) -> None:
        """Point the inner AdamW at this optimizer's AdamW groups and its state, so that
        setting a group's ``lr`` here, or loading a state dict, reaches its update."""
        self._adamw.param_groups = [g for g in self.param_groups if g["algorithm"] == ADAMW]
        self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["algorithm"] == MUON:
                self._muon_step(group)
        self._adamw.step()
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        """``torch.optim.Muon``'s update (Nesterov momentum, Newton-Schulz, the RMS-matched
        rate, decoupled weight decay) of each matrix in ``group`` with a gradient, and of each
        block of rows of a fused one (:func:`row_blocks`) as if it were a matrix of its own.

        A sharded matrix (a DTensor: FSDP, tensor parallelism) keeps its momentum sharded;
        the update is gathered whole, orthogonalized on every rank, and each rank adds its
        shard of the result: Moonlight's distributed Muon (Liu et al. 2025, §2.3), which
        spends one all-gather a matrix and repeats the Newton-Schulz iterations on each rank."""
        lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = param.grad
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buffer = state["momentum_buffer"]
            buffer.lerp_(grad, 1 - momentum)
            update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
            param.mul_(1 - lr * decay)
            if hasattr(update, "full_tensor"):  # sharded: the whole update, then our shard
                whole = update.full_tensor()
                step = torch.zeros_like(whole)
                self._add_orthogonalized(whole, step, group, id(param))
                param.add_(_shard_like(step, param))
            else:
                self._add_orthogonalized(update, param, group, id(param))

    def _add_orthogonalized(
        self, update: torch.Tensor, target: torch.Tensor, group: dict[str, Any], key: int
    ) -> None:
        """``target -= lr * 0.2 sqrt(max(A, B)) * orthogonalize(block)`` for each ``A x B``
        block of rows of ``update`` (the blocks of the weight ``key``, :func:`row_blocks`)."""
        lr = group["lr"]
        blocks = self.row_blocks.get(key, (update.size(-2),))
        # a 2-D weight, or each expert's matrix of a stacked (E, rows, cols) one
        for matrix, whole in zip(update.view(-1, *update.shape[-2:]),
                                 target.view(-1, *target.shape[-2:]), strict=True):  # fmt: skip
            for block, rows in zip(matrix.split(blocks), whole.split(blocks), strict=True):
                block = orthogonalize(
                    block, group["ns_steps"], group["ns_coefficients"], group["eps"],
                    self.ns_dtype,
                )  # fmt: skip
                rows.add_(block, alpha=-(lr * (0.2 * math.sqrt(max(block.shape)))))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # builds new group dicts and a new state
        self._link()


def _shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``whole``, the same on every rank, as a DTensor laid out like ``param``: each rank
    keeps its part (no communication)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = param.device_mesh
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, param.placements)
