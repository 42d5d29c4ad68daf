"""CPU training throughput: ``DecoderLM`` against Hugging Face ``LlamaForCausalLM`` (with
``--n-experts``, a mixture of experts against ``MixtralForCausalLM``, both adding their
load-balancing loss).

Both models have the same shape and the same initial weights: ours is built from
``decoder_config(size, vocab, **overrides)``, the Hugging Face one by
``pretrain.models.decoder.hf.to_hf(ours)`` (SDPA attention, tied embeddings), then put in
training mode. Both see the same random token batches ``(B, T + 1)``: inputs are the first T
tokens, targets the last T.

One training step, timed whole, on each side:

- ours, exactly the path of ``Trainer.train_step``: ``hidden = model(ModelBatch(...))`` with
  causal attention and no document ids (autocast, when on, wraps only this call, as in the
  trainer), ``total, n, ce = cross_entropy_sum(hidden, labels, model.output_weight,
  compute_dtype=..., compiled=..., label_positions=...)`` (bf16 projection under ``--bf16``,
  compiled chunks under ``--compile``, label positions from ``ModelBatch.loss_groups``, as
  the trainer passes them),
  ``(total / n).backward()``, ``clip_grad_norm_(..., 1.0)``, the finite checks, AdamW from
  ``pretrain.optim.build_optimizer``, ``zero_grad(set_to_none=True)``.
- Hugging Face, as its ``Trainer`` does: ``hf(input_ids=x, labels=y, shift_labels=y,
  use_cache=False).loss`` (autocast, when on, wraps the forward and the loss, as HF's
  ``Trainer`` does). ``shift_labels`` makes HF's own ``ForCausalLMLoss`` score the same T
  targets without shifting again (passing the (B, T + 1) tokens as ``labels`` would run a
  T + 1 forward instead). ``use_cache=False`` keeps HF from building a KV cache it does not
  need, as HF's gradient-checkpointing path does. Then ``loss.backward()``, the same
  clipping and ``torch.optim.AdamW(pretrain.optim.param_groups(hf, 0.1), ..., fused=True)``
  (the ``Trainer``'s default optimizer from PyTorch 2.8) with the same hyperparameters, and
  ``zero_grad(set_to_none=True)``. Ours is fused as well. Before 2026-11-27 both sides ran
  the for-loop AdamW on the CPU.

Modes: eager fp32 (default), ``--compile`` (``torch.compile`` of each model, default mode:
ours block by block with its loss chunks compiled, as the trainer does with
``train.compile``, ``--compile-scope model`` for one graph; HF whole, its loss inside; the
optimizer step stays eager on both sides; compile time is reported apart and excluded),
``--bf16`` (``torch.autocast("cpu", dtype=torch.bfloat16)``; weights stay fp32).

Tokens/s = B * T * steps / seconds, after ``--warmup`` steps per side. Measurements run in
``--rounds`` rounds, ours and HF alternating (and swapping who goes first), and the best round
of each side counts. The first step's loss is printed for both sides: with the same shape,
weights and batch it must agree (within 1e-4 in eager fp32). The CPU time other processes used
meanwhile is printed; above 0.1 core the run is flagged as noisy. Target: ours / HF >= 1.3.

Run from the repository root::

    python bench/bench_train_cpu.py                      # tiny, vocab 4096, B 8, T 256
    python bench/bench_train_cpu.py --compile --bf16
    python bench/bench_train_cpu.py --d-model 512 --n-layers 8 --n-heads 8 --batch 4 \\
        --seq-len 512 --steps 3 --warmup 2 --rounds 2
    python bench/bench_train_cpu.py --profile 3          # top ops by self CPU time, both sides
    python bench/bench_train_cpu.py --n-experts 8 --d-ff 256   # a mixture of experts: Mixtral

This is a benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from machine import (
    add_malloc_flag,
    busy_cpu_seconds,
    cpu_model,
    git_commit,
    minor_page_faults,
    tune_malloc_as_the_trainer,
    usable_cores,
)
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.hf import to_hf
from pretrain.models.decoder.model import DecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.optim import build_optimizer, param_groups

TARGET_RATIO = 1.3
NOISE_CORES = 0.10  # other processes busier than this during a measurement: warn
LOSS_TOL_FP32 = 1e-4
LR, WEIGHT_DECAY, BETAS, EPS, GRAD_CLIP = 3e-4, 0.1, (0.9, 0.95), 1e-8, 1.0
NUM_BATCHES = 4  # distinct random batches, cycled


class NoiseMeter:
    """Average cores other processes kept busy between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.other_cpu = 0.0
        self.wall = 0.0
        self.available = busy_cpu_seconds() is not None

    @contextlib.contextmanager
    def measure(self):
        busy0, own0, t0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        yield
        busy1, own1 = busy_cpu_seconds(), time.process_time()
        self.wall += time.perf_counter() - t0
        if busy0 is not None and busy1 is not None:
            self.other_cpu += max(0.0, (busy1 - busy0) - (own1 - own0))

    @property
    def other_cores(self) -> float | None:
        return self.other_cpu / self.wall if self.available and self.wall else None


# --- the two training steps ------------------------------------------------------------------


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def ours_step_fn(
    model: DecoderLM,
    bf16: bool,
    compile_model: bool,
    compile_scope: str = "blocks",
    loss_seconds: list[float] | None = None,
) -> Callable:
    """``Trainer.train_step`` for one micro-batch, minus the schedule and the logging.

    ``loss_seconds``, when given, gets the time of each ``cross_entropy_sum`` call (which
    also computes the loss's gradients).
    """
    from pretrain.losses import cross_entropy_sum
    from pretrain.train.compile import compile_for_training

    step_model = compile_for_training(model, compile_scope) if compile_model else model
    optimizer = build_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)

    def step(xy: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, y = xy
        batch = ModelBatch(input_ids=x, labels=y, attention=AttentionSpec("causal"))
        num_label_tokens = batch.num_label_tokens
        [(_, _, positions)] = batch.loss_groups()  # on the host, as the trainer does
        with autocast(bf16):
            hidden = step_model(batch)
        loss_start = time.perf_counter()
        total, _, ce = cross_entropy_sum(
            hidden,
            batch.labels,
            model.output_weight,
            compute_dtype=torch.bfloat16 if bf16 else None,
            compiled=compile_model,
            label_positions=positions,
        )
        if loss_seconds is not None:
            loss_seconds.append(time.perf_counter() - loss_start)
        router = model.router_aux_loss()  # a mixture of experts' balancing loss, else None
        loss_mean = total / max(num_label_tokens, 1)
        (loss_mean if router is None else loss_mean + router).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        loss = float(ce) / max(num_label_tokens, 1)
        if math.isfinite(loss) and bool(torch.isfinite(grad_norm)):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def hf_step_fn(hf, bf16: bool, compile_model: bool) -> Callable:
    """A Hugging Face training step: model forward with its own causal-LM loss."""
    step_model = torch.compile(hf) if compile_model else hf
    # Fused, as Hugging Face's Trainer defaults to (``adamw_torch_fused`` from PyTorch 2.8);
    # our build_optimizer picks the same kernel on the CPU.
    optimizer = torch.optim.AdamW(
        param_groups(hf, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS, fused=True
    )

    moe = hasattr(hf.config, "num_local_experts")  # Mixtral: its balancing loss too

    def step(xy: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, y = xy
        extra = {"output_router_logits": True} if moe else {}
        with autocast(bf16):
            out = step_model(input_ids=x, labels=y, shift_labels=y, use_cache=False, **extra)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), GRAD_CLIP)
        value = float(out.loss.detach())
        if moe:  # the cross-entropy alone, as ours reports it
            value -= hf.config.router_aux_loss_coef * float(out.aux_loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return step


# --- measurement -----------------------------------------------------------------------------


def timed_steps(
    step: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int, start: int
) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        step(batches[(start + i) % len(batches)])
    return time.perf_counter() - t0


def profile(
    step: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int, label: str, rows: int
) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(n):
            step(batches[i % len(batches)])
    print(f"\n=== profile: {label}, {n} steps, top {rows} by self CPU time ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=None, help="override the size's d_model")
    p.add_argument("--n-layers", type=int, default=None, help="override the size's n_layers")
    p.add_argument("--n-heads", type=int, default=None, help="override the size's n_heads")
    p.add_argument("--d-ff", type=int, default=None, help="override the size's d_ff")
    p.add_argument(
        "--n-experts", type=int, default=None, help="a mixture of experts (HF side: Mixtral)"
    )
    p.add_argument("--experts-per-token", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best counts")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--compile-scope",
        choices=["blocks", "model"],
        default="blocks",
        help="ours under --compile: block by block (the trainer's default) or the whole model",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile N steps per side"
    )
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument(
        "--time-loss",
        action="store_true",
        help="also print the median time of our loss call (forward and gradients) per step",
    )
    add_malloc_flag(p)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides = {
        k: v
        for k, v in (
            ("d_model", args.d_model),
            ("n_layers", args.n_layers),
            ("n_heads", args.n_heads),
            ("d_ff", args.d_ff),
            ("n_experts", args.n_experts),
            ("experts_per_token", args.experts_per_token),
        )
        if v is not None
    }
    cfg = decoder_config(args.size, args.vocab, **overrides)
    if args.seq_len > cfg.max_seq_len:
        cfg = decoder_config(args.size, args.vocab, max_seq_len=args.seq_len, **overrides)
    if cfg.style != "llama":
        raise SystemExit("this benchmark compares against LlamaForCausalLM: use a llama size")
    ours = DecoderLM(cfg).train()
    hf = to_hf(ours).train()

    import transformers

    mode = ("compile" if args.compile else "eager") + (" bf16-autocast" if args.bf16 else " fp32")
    if args.compile:
        mode += f" (ours by {args.compile_scope}, HF whole)"
    B, T = args.batch, args.seq_len
    print(
        f"machine: commit {git_commit()}, cpu {cpu_model()}, cores {usable_cores()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"shape: size {args.size} d_model {cfg.d_model} n_layers {cfg.n_layers} n_heads "
        f"{cfg.n_heads} n_kv_heads {cfg.n_kv_heads} d_ff {cfg.d_ff} experts {cfg.n_experts} "
        f"(top {cfg.experts_per_token}) vocab {cfg.vocab_size} "
        f"tied {cfg.tie_embeddings}; params ours {ours.num_params():,} "
        f"hf {sum(p.numel() for p in hf.parameters()):,}; "
        f"hf attn_implementation {hf.config._attn_implementation}"
    )
    print(f"batch {B} x seq {T} = {B * T} tokens/step; mode {mode}")
    print(f"malloc: {tune_malloc_as_the_trainer(args)}, both sides")
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    tokens = [
        torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen) for _ in range(NUM_BATCHES)
    ]
    # Inputs and targets as contiguous (B, T) tensors, as a data loader hands them over.
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    loss_seconds: list[float] | None = [] if args.time_loss else None
    sides = {
        "ours": ours_step_fn(ours, args.bf16, args.compile, args.compile_scope, loss_seconds),
        "hf": hf_step_fn(hf, args.bf16, args.compile),
    }

    # First step: the loss check (same weights, same batch) and, compiled, the compile time.
    first_loss, first_s, warm_s = {}, {}, {}
    for name, step in sides.items():
        t0 = time.perf_counter()
        first_loss[name] = step(batches[0])
        first_s[name] = time.perf_counter() - t0
        warm_s[name] = timed_steps(step, batches, max(args.warmup - 1, 0), 1)
        print(f"{name}: first step {first_s[name]:.2f} s, loss {first_loss[name]:.6f}", flush=True)
    diff = abs(first_loss["ours"] - first_loss["hf"])
    check = ""
    if not args.bf16 and not args.compile:
        check = f" (tolerance {LOSS_TOL_FP32:g}: {'ok' if diff <= LOSS_TOL_FP32 else 'MISMATCH'})"
    print(
        f"first-step loss: ours {first_loss['ours']:.6f} hf {first_loss['hf']:.6f} "
        f"|diff| {diff:.2e}{check}"
    )

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    meter = NoiseMeter()
    start = max(args.warmup, 1)
    for r in range(args.rounds):
        order = ["ours", "hf"] if r % 2 == 0 else ["hf", "ours"]
        for name in order:
            faults = minor_page_faults()
            with meter.measure():
                s = timed_steps(sides[name], batches, args.steps, start)
            faults = (minor_page_faults() - faults) / args.steps
            times[name].append(s)
            print(
                f"round {r + 1}: {name:4s} {args.steps} steps {s:.2f} s "
                f"= {B * T * args.steps / s:,.0f} tok/s, {faults:,.0f} page faults/step",
                flush=True,
            )
    last_loss = {name: step(batches[0]) for name, step in sides.items()}
    print(
        f"loss after the run (same batch as step 1): ours {last_loss['ours']:.6f} "
        f"hf {last_loss['hf']:.6f}"
    )

    tps = {name: B * T * args.steps / min(t) for name, t in times.items()}
    ratio = tps["ours"] / tps["hf"]
    # Each round's pair ran back to back: the median of their ratios shrugs off a slow spell
    # of the machine that the best of each side can straddle.
    paired = statistics.median(h / o for o, h in zip(times["ours"], times["hf"], strict=True))
    print(f"ours / HF per round: median {paired:.2f} over {args.rounds} rounds")
    if loss_seconds is not None:
        timed = loss_seconds[-args.steps * args.rounds - 1 : -1]  # the timed rounds' steps
        median_ms = statistics.median(timed) * 1e3
        print(f"ours: loss call median {median_ms:.1f} ms over {len(timed)} steps")
    if args.compile:
        # Compile time: first step minus a measured step (plus any recompiles in warmup).
        for name in sides:
            step_s = min(times[name]) / args.steps
            extra = first_s[name] + warm_s[name] - step_s * max(args.warmup, 1)
            print(f"{name}: compile time ~{extra:.1f} s (first + warmup steps minus steady)")
    other = meter.other_cores
    if other is not None:
        note = "  WARNING: machine busy, numbers are noisy" if other > NOISE_CORES else ""
        print(f"other processes kept {other:.2f} cores busy during the measurements{note}")
    print()
    print(f"| mode | ours tok/s | HF tok/s | ours / HF | target >= {TARGET_RATIO}x met |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| {mode} | {tps['ours']:,.0f} | {tps['hf']:,.0f} | {ratio:.2f} | "
        f"{'yes' if ratio >= TARGET_RATIO else 'no'} |"
    )

    if args.profile:
        for name, step in sides.items():
            profile(step, batches, args.profile, f"{name} ({mode})", args.profile_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
