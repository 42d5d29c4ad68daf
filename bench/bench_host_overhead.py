"""The host's own time in a training step: a deep model with almost no arithmetic.

A GPU step can only be as fast as the host queues it. To see what the framework costs the host
(Python, dispatch, the compiled graphs' guards and wrappers, autograd, clipping, the
optimizer), this times the trainer's step on the CPU on a model whose tensors are tiny (GPT-2
style, 12 layers of width 32, 16 tokens), so the kernels take next to nothing and what remains
is overhead. Per phase, the median milliseconds over the steps, for each compile scope
(``eager``; ``blocks``: each block compiled, the trainer's default; ``model``: one graph), in
the same run. On a GPU the kernel launches add to these; the order between the scopes is what
carries over.

    python bench/bench_host_overhead.py [--layers 12] [--steps 50] [--scopes eager,blocks,model]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from machine import cpu_model, git_commit
from pretrain.losses import cross_entropy_sum
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.model import DecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.optim import build_optimizer
from pretrain.train.compile import compile_for_training

PHASES = ("forward", "loss", "backward", "clip", "optimizer")


def time_scope(scope: str, layers: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    vocab = 256
    cfg = decoder_config("debug", vocab, style="gpt2", d_model=32, n_heads=2, n_layers=layers,
                         d_ff=64)  # fmt: skip
    model = DecoderLM(cfg)
    optimizer = build_optimizer(model, lr=1e-3)
    forward = model if scope == "eager" else compile_for_training(model, scope)
    tokens = torch.randint(0, vocab, (1, 16))
    batch = ModelBatch(tokens, tokens, AttentionSpec("causal"))
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def step(record: bool) -> None:
        marks = [time.perf_counter()]
        hidden = forward(batch)
        marks.append(time.perf_counter())
        total, count, _ = cross_entropy_sum(
            hidden, batch.labels, model.output_weight, compiled=scope != "eager"
        )
        marks.append(time.perf_counter())
        (total / count).backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if record:
            for phase, start, end in zip(PHASES, marks, marks[1:], strict=False):
                times[phase].append(end - start)

    for _ in range(5):  # compile and warm up
        step(False)
    for _ in range(steps):
        step(True)
    result = {phase: round(1e3 * statistics.median(t), 2) for phase, t in times.items()}
    result["step"] = round(sum(result.values()), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scopes", default="eager,blocks,model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# commit {git_commit()}, torch {torch.__version__}, {cpu_model()}, one thread, "
          f"{args.layers} layers, median of {args.steps} steps, ms per step")  # fmt: skip
    print(f"{'scope':8s}" + "".join(f"{p:>10s}" for p in (*PHASES, "step")))
    for scope in args.scopes.split(","):
        r = time_scope(scope, args.layers, args.steps)
        print(f"{scope:8s}" + "".join(f"{r[p]:10.2f}" for p in (*PHASES, "step")))
        print(json.dumps({"scope": scope, **r}))


if __name__ == "__main__":
    main()
