"""Worker for tests: split a ``debug`` decoder over the ranks (``apply_tensor_parallel``), run
one forward and backward beside the whole model (and, without sequence parallelism, greedy
decoding with the KV cache), and write the collectives counted and the largest differences to
``OUT_DIR/collectives_{SP}_rank{R}.json``.

Both without and with sequence parallelism (SP 0 and 1 in the file names). Usage:
``torchrun --nproc_per_node=2 tests/distributed/count_tp_collectives.py OUT_DIR STYLE``
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.debug import CommDebugMode

from pretrain.config import ModelConfig
from pretrain.distributed.launch import exit_process
from pretrain.distributed.tensor_parallel import apply_tensor_parallel, fuse_row_blocks


def main() -> None:
    out, style = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    for sequence_parallel in (False, True):
        facts = measure(mesh, style, sequence_parallel)
        name = f"collectives_{int(sequence_parallel)}_rank{dist.get_rank()}.json"
        (out / name).write_text(json.dumps(facts))
    dist.destroy_process_group()


def measure(mesh, style: str, sequence_parallel: bool) -> dict:
    """The collectives of one split forward and backward, and how far it is from the whole
    model's (and, without sequence parallelism, whether greedy decoding agrees)."""
    from pretrain.models.spec import build_model

    torch.manual_seed(0)
    whole = build_model(ModelConfig(family="decoder", size="debug", style=style), 64, 16, 0)
    split = copy.deepcopy(whole)
    apply_tensor_parallel(split, mesh, sequence_parallel)
    generated = None
    # before the counting: decoding after CommDebugMode's context failed in its module
    # tracking (IndexError in _fw_set_module_hook, PyTorch 2.13)
    if not sequence_parallel:  # decoding with the KV cache: this rank's key/value heads
        from pretrain.generate import generate

        with torch.no_grad():
            prompt = torch.tensor([3, 5, 7])
            ours, want = (generate(m, prompt, 8, temperature=0) for m in (split, whole))
        generated = ours.tolist() == want.tolist()
    ids = torch.randint(1, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    counter = CommDebugMode()
    with counter:
        hidden = split.forward_tokens(ids)
        hidden.pow(2).sum().backward()
    reference = whole.forward_tokens(ids)
    reference.pow(2).sum().backward()
    grads = fuse_row_blocks(
        {
            n: getattr(p.grad, "full_tensor", lambda g=p.grad: g)()
            for n, p in split.named_parameters()
        }
    )
    grad_rel = max(
        float((grads[n] - p.grad).abs().max() / p.grad.abs().max())
        for n, p in whole.named_parameters()
    )
    counts = {str(op).rpartition(".")[2]: n for op, n in counter.get_comm_counts().items()}
    return {
        "collectives": counts,
        "n_layers": len(whole.blocks),
        "hidden_abs": float((hidden - reference).abs().max()),
        "grad_rel": grad_rel,
        "greedy_tokens_equal": generated,
    }


if __name__ == "__main__":
    main()
    exit_process(0)
