"""Compile time and step speed of ``train.compile_scope=blocks`` against ``model``.

For each objective's reference model (``bench_train_gpu.py``'s defaults: gpt2-small, bert-base,
t5-v1_1-base, xlnet-base), runs ``bench_train_gpu.py --sides ours`` twice, once per compile
scope, each in a fresh process with an empty Inductor (and Triton) cache, so every compile
starts cold as on a new machine. Reports the first steps' seconds (Dynamo, AOTAutograd and
Inductor, plus ``--warmup`` steps) and the tokens/s after them, and the ratios.

    python bench/bench_compile.py --device cpu --batch 2 --seq-len 128     # about 10 minutes
    python bench/bench_compile.py --objectives clm,plm --attention-backend flex   # on a GPU

This is a benchmark, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import REPO, cpu_model, git_commit

SCOPES = ("model", "blocks")


def run_side(objective: str, scope: str, args: argparse.Namespace) -> dict:
    """One cold-cache run of ``bench_train_gpu.py``: its result for side ``ours``."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor",
            TRITON_CACHE_DIR=f"{tmp}/triton",
            PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO / 'bench'}",
        )
        out = Path(tmp) / "result.jsonl"
        cmd = [
            sys.executable, str(REPO / "bench" / "bench_train_gpu.py"),
            "--device", args.device, "--objective", objective, "--sides", "ours",
            "--compile-scope", scope, "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--precision", args.precision, "--json-out", str(out),
        ]  # fmt: skip
        for flag in ("batch", "seq_len", "attention_backend", "position_encoding"):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(value)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise SystemExit(f"{objective} / {scope} failed:\n{tail}")
        line = json.loads(out.read_text().splitlines()[-1])
        return {"header": line["header"], **line["results"]["ours"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", default="clm,mlm,span,plm")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--attention-backend", choices=["sdpa", "flex"])
    p.add_argument("--position-encoding", choices=["txl", "rope"])
    p.add_argument("--warmup", type=int, default=1, help="steps counted with the compile")
    p.add_argument("--steps", type=int, default=3, help="timed steps after them")
    args = p.parse_args()
    print(f"commit {git_commit()}, {cpu_model() if args.device == 'cpu' else args.device}")
    rows = []
    for objective in args.objectives.split(","):
        results = {scope: run_side(objective, scope, args) for scope in SCOPES}
        print(results["blocks"]["header"], flush=True)
        for scope, r in results.items():
            print(json.dumps({"objective": objective, "scope": scope, **r}), flush=True)
        rows.append((objective, results))
    print(
        "\n| objective | first steps s, model | blocks | model / blocks "
        "| tokens/s, model | blocks | blocks / model |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for objective, r in rows:
        m, b = r["model"], r["blocks"]
        print(
            f"| {objective} | {m['warmup_seconds']:.1f} | {b['warmup_seconds']:.1f} "
            f"| {m['warmup_seconds'] / b['warmup_seconds']:.2f} "
            f"| {m['tokens_per_second']:,.0f} | {b['tokens_per_second']:,.0f} "
            f"| {b['tokens_per_second'] / m['tokens_per_second']:.2f} |"
        )


if __name__ == "__main__":
    main()
