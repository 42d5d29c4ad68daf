"""Worker for tests: a decoder (and an encoder) whose sequence is split over the ranks
(:class:`~pretrain.distributed.context_parallel.ContextParallel`) against the whole model, for
several attention specs and both styles; writes ``OUT_DIR/context_rank{R}.json``.

Per case: the largest difference of the sharded hidden states from the whole model's rows at
those positions, of the gradients (summed over the ranks) from the whole model's, the
collectives of the sharded forward and backward, and whether greedy decoding (a batch that is
not sharded) still equals the whole model's. Usage:
``torchrun --nproc_per_node=2 tests/distributed/check_context_parallel.py OUT_DIR``
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode

from pretrain.config import ModelConfig
from pretrain.distributed.context_parallel import ContextParallel
from pretrain.distributed.launch import exit_process
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.objectives.clm import positions_within_documents

VOCAB, SEQ_LEN = 64, 16


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    facts = {
        "llama_documents": measure("llama", "causal", documents=True),
        "llama_prefix": measure("llama", "prefix", documents=False),
        "gpt2_causal": measure("gpt2", "causal", documents=False),
        "bert_documents": measure(None, "bidirectional", documents=True, family="encoder"),
    }
    (out / f"context_rank{dist.get_rank()}.json").write_text(json.dumps(facts))
    dist.destroy_process_group()


def measure(style: str | None, kind: str, documents: bool, family: str = "decoder") -> dict:
    from pretrain.generate import generate
    from pretrain.models.spec import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(family=family, size="debug", style=style, d_model=64, n_heads=4)
    if style == "llama":
        cfg.n_kv_heads = 2  # grouped-query: the two key/value heads are gathered
    whole = build_model(cfg, VOCAB, SEQ_LEN, 0)
    split = copy.deepcopy(whole)
    context = ContextParallel(split, dist.group.WORLD)
    draw = torch.Generator().manual_seed(1)  # the same batch on every rank
    ids = torch.randint(1, VOCAB, (2, SEQ_LEN), generator=draw)
    spec, position_ids = AttentionSpec(kind), None
    if documents:  # three documents in the first row, crossing the chunk boundaries
        docs = torch.tensor([[0] * 3 + [1] * 9 + [2] * 4, [0] * SEQ_LEN])
        spec = AttentionSpec(kind, document_ids=docs)
        position_ids = positions_within_documents(docs)
    if kind == "prefix":
        spec = AttentionSpec(kind, prefix_lengths=torch.tensor([6, 11]))
    weights = torch.randn(2, SEQ_LEN, 64, generator=draw)
    batch = ModelBatch(ids, ids, spec, position_ids=position_ids)

    reference = whole(batch)
    (reference * weights).sum().backward()
    shard = context.shard(batch)
    positions = shard.attention.query_positions
    counter = CommDebugMode()
    with counter:
        hidden = split(shard)
        (hidden * weights[:, positions]).sum().backward()
    grad_rel = 0.0
    for p, q in zip(split.parameters(), whole.parameters(), strict=True):
        if q.grad is None:  # outside this forward (the encoder's output bias): both alike
            assert p.grad is None
            continue
        grad = p.grad.clone()
        dist.all_reduce(grad)  # what DDP's (or FSDP's) reduction adds up
        grad_rel = max(grad_rel, float((grad - q.grad).abs().max() / q.grad.abs().max()))
    greedy = None  # an encoder does not generate
    if family == "decoder":
        with torch.no_grad():
            prompt = ids[0, :5]
            greedy = [generate(m, prompt, 6, temperature=0).tolist() for m in (split, whole)]
    counts = {str(op).rpartition(".")[2]: n for op, n in counter.get_comm_counts().items()}
    return {
        "positions": positions.tolist(),
        "hidden_abs": float((hidden.detach() - reference.detach()[:, positions]).abs().max()),
        "grad_rel": grad_rel,
        "collectives": counts,
        "n_layers": len(whole.blocks),
        "greedy_equal": None if greedy is None else greedy[0] == greedy[1],
    }


if __name__ == "__main__":
    main()
    exit_process(0)
