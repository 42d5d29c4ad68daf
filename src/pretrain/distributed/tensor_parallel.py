"""Tensor parallelism of the transformer blocks (Megatron-LM's layout, through DTensor).

Shoeybi et al. 2019 ("Megatron-LM", §3): in each block the first linear layer of the
attention and of the MLP is split by output rows across the ranks of a tensor-parallel group
(column parallel: each rank computes its heads, or its slice of the hidden layer, from the
whole input), the second by input columns (row parallel: each rank's partial output is summed
by one all-reduce). A block then costs two all-reduces forward and two backward, and each rank
holds ``1 / tp`` of its weights and of its attention and MLP activations. The plans are
PyTorch's (``parallelize_module`` with ``ColwiseParallel`` / ``RowwiseParallel``), as in
torchtitan; FSDP2 then shards the same parameters over the data-parallel ranks (2-D).

Our blocks fuse q, k and v into one ``qkv`` matrix and the SwiGLU gate and up projections into
one ``gate_up``. Split by rows as one matrix, rank 0 would get every query head and no value
head. So before the plan is applied each fused projection becomes :class:`RowBlocks`: one
linear layer per block of rows (the blocks its module names in ``fused_projections()``), each
split across the ranks on its own, their local outputs concatenated: each rank then sees
``[its queries; its keys; its values]``, the layout the attention's forward splits. Checkpoints
stay independent of the tensor-parallel degree: the consolidated ``model.safetensors`` holds
the fused matrices (:func:`fuse_row_blocks`), and the sharded ``dcp/`` checkpoint names each
block's whole (global) matrix, which DCP reshards onto any other degree > 1.

Embeddings, norms and the output projection are replicated across a tensor-parallel group:
their inputs and gradients are the same on its ranks (a column-parallel layer's input gradient
is all-reduced), so they stay equal without communication. With sequence parallelism the
blocks' norms run on each rank's share of the positions instead; their weights are then
replicated DTensors, whose partial gradients DTensor sums over the group.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import torch
from torch import nn

from pretrain.models.common.attention import Attention
from pretrain.models.common.mlp import GeluMLP, SwiGLU

# A RowBlocks part's name in a state dict: ``<fused>.parts.<i>.<weight|bias>``.
_PART = re.compile(r"^(?P<fused>.+)\.parts\.(?P<index>\d+)\.(?P<kind>weight|bias)$")


class RowBlocks(nn.Module):
    """A fused linear layer as one linear layer per block of its output rows.

    ``forward`` concatenates the parts' outputs, so it equals the fused layer's; under tensor
    parallelism each part is split across the ranks and each rank concatenates its slices.
    """

    def __init__(self, fused: nn.Linear, sizes: tuple[int, ...]) -> None:
        super().__init__()
        if sum(sizes) != fused.out_features:
            raise ValueError(f"row blocks {sizes} do not add up to {fused.out_features} rows")
        weights = fused.weight.detach().split(sizes, dim=0)
        biases = fused.bias.detach().split(sizes) if fused.bias is not None else [None] * len(sizes)
        self.parts = nn.ModuleList()
        for weight, bias in zip(weights, biases, strict=True):
            part = nn.Linear(
                fused.in_features,
                weight.shape[0],
                bias=bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
            with torch.no_grad():
                part.weight.copy_(weight)
                if bias is not None:
                    part.bias.copy_(bias)
            self.parts.append(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def held_blocks(model: nn.Module) -> list[nn.Module]:
    """``model.blocks`` but for the stand-ins of blocks other pipeline stages hold."""
    from pretrain.distributed.pipeline_stages import SkippedBlock

    return [b for b in model.blocks if not isinstance(b, SkippedBlock)]


def check_divisible(model: nn.Module, degree: int) -> None:
    """Refuse a model whose blocks do not split evenly into ``degree`` slices.

    Raises:
        ValueError: naming the config key (heads, key/value heads, MLP width) that does not
            divide, or the block part tensor parallelism does not know.
    """
    block = held_blocks(model)[0]  # every block has the same parts and shapes
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if not isinstance(attn, Attention) or not isinstance(mlp, SwiGLU | GeluMLP):
        raise ValueError(
            f"distributed.tensor_parallel_degree={degree}: {type(block).__name__} is not a "
            "block of self-attention and a dense MLP (decoder and encoder families; no "
            "mixture of experts)"
        )
    width = mlp.d_ff if isinstance(mlp, SwiGLU) else mlp.up.out_features
    for key, count in (
        ("model.n_heads", attn.n_heads),
        ("model.n_kv_heads", attn.n_kv_heads),
        ("model.d_ff", width),
    ):
        if count % degree:
            raise ValueError(
                f"distributed.tensor_parallel_degree={degree} must divide {key}={count}: "
                "each rank takes an equal share"
            )


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh,
    sequence_parallel: bool = False,
    runs: list[list[nn.Module]] | None = None,
) -> None:
    """Split each of ``model.blocks`` across ``tp_mesh`` (a 1-D DeviceMesh), in place.

    With ``sequence_parallel`` (Korthikanti et al. 2022, "Reducing Activation Recomputation
    in Large Transformer Models", §4.2.2) the residual stream between the attention and MLP
    is split along the sequence too: each rank keeps and normalizes ``T / tp`` positions, the
    sequence is all-gathered before each attention and MLP, and their outputs are
    reduce-scattered instead of all-reduced (the same traffic); the blocks' input is split at
    the first block and gathered after the last: of each of ``runs`` (a pipeline's stages'
    blocks; default: the model's blocks as one run). Call it before FSDP wraps the blocks, and
    build the optimizer after both.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleOutput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    degree = tp_mesh.size()
    check_divisible(model, degree)
    # Between the attention and the MLP, the residual stream: whole, or each rank's positions.
    stream = Shard(1) if sequence_parallel else Replicate()
    # The attention and the MLP take their input as one replicated DTensor (gathered along
    # the sequence first, with sequence_parallel): the partial input gradients of their
    # column-parallel layers (q, k, v; gate, up) add up, then one all-reduce (or
    # reduce-scatter) per input: Megatron's count. Their other arguments come by keyword.
    replicated_input = PrepareModuleInput(
        input_layouts=(stream,), desired_input_layouts=(Replicate(),), use_local_output=False
    )
    for block in held_blocks(model):  # a pipeline stage's, or all
        plan: dict[str, object] = {
            "attn": replicated_input,
            "mlp": replicated_input,
            "attn.out": RowwiseParallel(output_layouts=stream),
            "mlp.down": RowwiseParallel(output_layouts=stream),
        }
        plan.update({path: ColwiseParallel() for path in split_fused_projections(block)})
        if sequence_parallel:
            plan.update({name: SequenceParallel(use_local_output=True) for name in _NORMS})
        parallelize_module(block, tp_mesh, plan)
        # The forward reshapes the local projections into this rank's heads.
        block.attn.n_heads //= degree
        block.attn.n_kv_heads //= degree
    if sequence_parallel:
        gathered = PrepareModuleOutput(
            output_layouts=Shard(1), desired_output_layouts=Replicate(), use_local_output=True
        )
        for run in runs if runs is not None else [list(model.blocks)]:
            run[0].register_forward_pre_hook(_split_sequence(tp_mesh))
            parallelize_module(run[-1], tp_mesh, gathered)


# A block's norms: what sequence parallelism runs on each rank's share of the positions.
_NORMS = ("attn_norm", "mlp_norm")


def _split_sequence(mesh):
    """A forward pre-hook for the first block: keep this rank's share of the positions (its
    gradient is gathered back in backward). Not ``PrepareModuleInput``: a length the ranks
    cannot share evenly is refused here, by name, rather than split unevenly (a rank with no
    position fails later, obscurely), and the families' blocks take other arguments."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    degree = mesh.size()

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if x.shape[1] % degree:
            raise ValueError(
                f"distributed.sequence_parallel: a sequence of {x.shape[1]} positions does not "
                f"split over distributed.tensor_parallel_degree={degree} ranks"
            )
        whole = DTensor.from_local(x, mesh, (Replicate(),), run_check=False)
        return (whole.redistribute(mesh, (Shard(1),)).to_local(), *args[1:])

    return hook


def split_fused_projections(block: nn.Module) -> list[str]:
    """Replace ``block``'s fused projections by :class:`RowBlocks` (same outputs, same
    weights); return the paths, in ``block``, of the layers that read the block's input: what
    the column-parallel plan splits (``attn.qkv.parts.0`` .. ``mlp.gate_up.parts.1``, or
    GPT-2's ``mlp.up``)."""
    paths = []
    for path in ("attn", "mlp"):
        module = getattr(block, path)
        fused = module.fused_projections() if hasattr(module, "fused_projections") else {}
        for name, sizes in fused.items():
            setattr(module, name, RowBlocks(getattr(module, name), sizes))
            paths += [f"{path}.{name}.parts.{i}" for i in range(len(sizes))]
    if isinstance(block.mlp, GeluMLP):
        paths.append("mlp.up")
    return paths


def fuse_row_blocks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of the fused model: every ``X.parts.i.weight`` (and bias) concatenated
    by rows, in ``i`` order, into ``X.weight``; other entries unchanged and in order."""
    fused: dict[str, list[tuple[int, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _PART.match(key)
        if match is None:
            out[key] = value
            continue
        name = f"{match['fused']}.{match['kind']}"
        if name not in fused:
            fused[name] = []
            out[name] = value  # a placeholder that keeps the key's position
        fused[name].append((int(match["index"]), value))
    for name, parts in fused.items():
        indices = sorted(i for i, _ in parts)
        if indices != list(range(len(parts))):
            raise ValueError(f"{name}: row blocks {indices}, expected 0..{len(parts) - 1}")
        out[name] = torch.cat([value for _, value in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


@contextlib.contextmanager
def quiet_redistribution() -> Iterator[None]:
    """Silence DTensor's warning that a redistribution over the 2-D (data x tensor parallel)
    mesh takes one collective per dimension: the gradient norm's and the checkpoint's
    gathers do, once a step or a checkpoint, and every rank would print it."""
    logger = logging.getLogger("torch.distributed.tensor._redistribute")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
