"""GPU training throughput and MFU: ``DecoderLM`` against Hugging Face, same shape and batch.

    python bench/bench_train_gpu.py                       # gpt2-small, 16 x 1024, bf16, compiled
    python bench/bench_train_gpu.py --style llama         # the same 124M shape, Llama style
    python bench/bench_train_gpu.py --device cpu --size debug --batch 2 --seq-len 64 \\
        --steps 2 --warmup 1 --no-compile                 # a smoke run without a GPU

Both sides start from the same weights (HF is built by ``to_hf`` from ours) and train on the
same random batch: forward, loss, backward, clip 1.0, fused AdamW, ``zero_grad``. Ours is the
trainer's path (``model(batch)`` under bf16 autocast, then ``cross_entropy_sum`` with the
projection in bf16); HF computes its own loss (``labels=``/``shift_labels=``) under the same
autocast. ``torch.compile`` wraps each model (compile time reported apart). Tokens/s counts
B * T per step after warmup, synchronized; MFU = tokens/s * (6N + 12LHQT) / peak bf16 FLOP/s
(PaLM App. B), with N the matmul parameters of our model, the same for both sides.

Prints one JSON line per side and a table; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from machine import git_commit
from pretrain.losses import cross_entropy_sum
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.decoder.hf import to_hf
from pretrain.models.decoder.model import DecoderLM
from pretrain.models.spec import model_flops_per_token
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.optim import build_optimizer, param_groups
from pretrain.scaling.flops import peak_flops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(ours: DecoderLM, hf: torch.nn.Module, args, device: torch.device):
    bf16 = args.precision == "bf16"

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    ours_model = torch.compile(ours) if args.compile else ours
    hf_model = torch.compile(hf) if args.compile else hf
    fused = device.type == "cuda"
    ours_opt = build_optimizer(ours, lr=3e-4, fused=fused)
    hf_opt = torch.optim.AdamW(
        param_groups(hf, 0.1), lr=3e-4, betas=(0.9, 0.95), fused=fused or None
    )

    def ours_step(x, y):
        batch = ModelBatch(input_ids=x, labels=y, attention=AttentionSpec("causal"))
        with autocast():
            hidden = ours_model(batch)
        total, n, ce = cross_entropy_sum(
            hidden, y, ours.output_weight, compute_dtype=torch.bfloat16 if bf16 else None
        )
        (total / n).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return ce / n

    def hf_step(x, y):
        with autocast():
            loss = hf_model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.detach()

    return {"ours": ours_step, "hf": hf_step}


def measure(step, x, y, args, device) -> tuple[float, float, float]:
    """(compile+warmup seconds, tokens/s, first loss)."""
    start = time.perf_counter()
    first = float(step(x, y))
    for _ in range(args.warmup - 1):
        step(x, y)
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    sync(device)
    seconds = time.perf_counter() - start
    return warm, x.numel() * args.steps / seconds, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="gpt2-small")
    p.add_argument("--style", choices=["gpt2", "llama"], default=None)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sides", default="ours,hf")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True

    overrides = {} if args.style is None else {"style": args.style}
    if args.style == "llama":
        overrides["bias"] = False
    cfg = decoder_config(args.size, args.vocab, max_seq_len=args.seq_len, **overrides)
    ours = DecoderLM(cfg).to(device).train()
    hf = to_hf(ours).to(device).train()
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    flops = model_flops_per_token(ours, args.seq_len)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"commit {git_commit()}, device {name}, torch {torch.__version__}, "
        f"{cfg.style} {args.size} ({ours.num_params():,} params), batch {args.batch} x "
        f"{args.seq_len}, {args.precision}, compile={args.compile}"
    )
    steps = make_steps(ours, hf, args, device)
    results = {}
    for side in args.sides.split(","):
        warm, tps, first = measure(steps[side], x, y, args, device)
        mfu = tps * flops / peak if peak else None
        results[side] = {"tokens_per_second": tps, "mfu": mfu, "warmup_seconds": warm}
        print(json.dumps({"side": side, "first_loss": first, **results[side]}))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| side | tokens/s | MFU | compile + warmup s |\n|---|---:|---:|---:|")
    for side, r in results.items():
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {side} | {r['tokens_per_second']:,.0f} | {mfu} | {r['warmup_seconds']:.1f} |")
    if "ours" in results and "hf" in results:
        ratio = results["ours"]["tokens_per_second"] / results["hf"]["tokens_per_second"]
        print(f"\nours / HF = {ratio:.2f}")


if __name__ == "__main__":
    main()
