"""Training throughput against Hugging Face, same shape, weights and batches, one run.

    python bench/bench_train_gpu.py                          # gpt2-small CLM, 16 x 1024, bf16
    python bench/bench_train_gpu.py --style llama            # the same 124M shape, Llama style
    python bench/bench_train_gpu.py --objective mlm          # bert-base MLM, 32 x 512
    python bench/bench_train_gpu.py --objective span         # t5-v1_1-base span corruption
    python bench/bench_train_gpu.py --objective plm          # xlnet-base permutation LM
    python bench/bench_train_gpu.py --objective plm --attention-backend flex --sides ours
    python bench/bench_train_gpu.py --doc-len 300 --attention-backend flex --sides ours
    python bench/bench_train_gpu.py --device cpu --size debug --batch 2 --seq-len 64 \\
        --steps 2 --warmup 1 --sides ours_eager,hf_eager     # a smoke run without a GPU

Sides: ``ours`` and ``hf`` are compiled with ``torch.compile`` (default mode; compile time is
reported apart; ours block by block as the trainer does, ``--compile-scope model`` for one
graph), ``ours_eager`` and ``hf_eager`` are not; ``ours_eagerloss`` compiles the model
but runs the cross-entropy chunks eagerly. ``--loss-chunks 512,0`` times ours
once per cross-entropy chunk size (0: the device default), reusing one compiled model.

Both sides start from the same weights (HF is built by ``to_hf`` from ours) and train on the
same batches, made by our objective from random tokens and cycled: forward, loss, backward,
clip 1.0, fused AdamW (on the CPU too since 2026-11-27, as HF's ``Trainer`` defaults to),
``zero_grad``. Ours is the trainer's path: ``model(batch)`` under bf16 autocast, then
``cross_entropy_sum`` (bf16 projection, only labeled rows, the per-chunk softmax compiled
when the side is). HF computes its own loss under the same
autocast: ``LlamaForCausalLM``/``GPT2LMHeadModel`` with ``labels=``/``shift_labels=``,
``BertForMaskedLM`` with ``labels`` (-100 off the selected positions),
``T5ForConditionalGeneration`` with ``labels`` and ``decoder_input_ids``, ``XLNetLMHeadModel``
with the same ``perm_mask`` and ``target_mapping`` and one label per target row
(``hf_eager_collator``: the same ``perm_mask`` in the form HF's
``DataCollatorForPermutationLanguageModeling`` gives, an identity ``target_mapping`` with a
query row per position and -100 off the targets).

Tokens/s counts encoder-input tokens (B * T) per step after warmup, synchronized. MFU =
tokens/s * FLOPs per token / peak bf16 FLOP/s, the FLOPs being what our model computes on these
batches (``pretrain.scaling.batch_flops``: 6N + 12LHQT per token for CLM, PaLM App. B; the
vocabulary projection on MLM's selected rows only, T5's decoder over the targets, XLNet's two
streams), the same count for both sides.

Prints one JSON line per side and a table; ``--json-out FILE`` also writes the results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time

import torch
import torch._functorch.config as functorch_config

from machine import add_malloc_flag, git_commit, tune_malloc_as_the_trainer
from pretrain.data.loader import TokenBatch
from pretrain.losses import cross_entropy_sum
from pretrain.models.decoder.configs import decoder_config
from pretrain.models.encoder.configs import encoder_config
from pretrain.models.encoder_decoder.configs import encoder_decoder_config
from pretrain.objectives.base import IGNORE_INDEX, ModelBatch
from pretrain.objectives.clm import CausalLM
from pretrain.objectives.mlm import MaskedLM
from pretrain.objectives.plm import PermutationLM
from pretrain.objectives.span import SpanCorruption
from pretrain.optim import build_optimizer, param_groups
from pretrain.scaling.batch_flops import batch_flops
from pretrain.scaling.flops import peak_flops
from pretrain.train.compile import COMPILE_SCOPES, CUDA_GRAPH_MODES, compile_for_training

DEFAULTS = {  # objective: (size, vocab, batch, seq_len); the reference shapes
    "clm": ("gpt2-small", 50257, 16, 1024),
    "mlm": ("bert-base", 30522, 32, 512),
    "span": ("t5-v1_1-base", 32128, 32, 512),
    "plm": ("base", 32000, 32, 512),
}
NUM_SPECIAL = 110  # ids below this are "special" (mask, pad, sentinels) in the random batches
PAD, EOS, MASK = 0, 1, 3


def build_models(args, device):
    """(ours, hf, objective) with HF built from our weights."""
    if args.objective == "clm":
        from pretrain.models.decoder.hf import to_hf
        from pretrain.models.decoder.model import DecoderLM

        overrides = {} if args.style is None else {"style": args.style}
        if args.style == "llama":
            overrides["bias"] = False
        if args.n_experts:  # HF side: MixtralForCausalLM
            overrides.update(n_experts=args.n_experts, experts_per_token=args.experts_per_token)
            if args.d_ff:
                overrides["d_ff"] = args.d_ff
        cfg = decoder_config(
            args.size,
            args.vocab,
            max_seq_len=args.seq_len,
            attention_backend=args.attention_backend,
            **overrides,
        )
        ours, objective = DecoderLM(cfg), CausalLM(document_masking=args.doc_len > 0)
    elif args.objective == "mlm":
        from pretrain.models.encoder.hf import to_hf
        from pretrain.models.encoder.model import EncoderLM

        cfg = encoder_config(args.size, args.vocab, max_seq_len=args.seq_len, pad_id=PAD)
        ours = EncoderLM(cfg)
        objective = MaskedLM(MASK, args.vocab, list(range(NUM_SPECIAL)), document_masking=False)
    elif args.objective == "plm":
        from pretrain.models.xlnet.configs import xlnet_config
        from pretrain.models.xlnet.hf import to_hf
        from pretrain.models.xlnet.model import XLNetLM

        cfg = xlnet_config(
            args.size,
            args.vocab,
            max_seq_len=args.seq_len,
            attention_backend=args.attention_backend,
            position_encoding=args.position_encoding,
            flex_layout=args.flex_layout,
        )
        ours = XLNetLM(cfg)
        objective = PermutationLM(list(range(NUM_SPECIAL)), mask_id=MASK)
        if args.position_encoding == "rope":  # HF has Transformer-XL positions only: its
            # twin is a txl model of the same shape (other weights, so another first loss)
            twin = XLNetLM(dataclasses.replace(cfg, position_encoding="txl"))
            return ours.to(device).train(), to_hf(twin).to(device).train(), objective
    else:
        from pretrain.models.encoder_decoder.hf import to_hf
        from pretrain.models.encoder_decoder.model import EncoderDecoderLM

        cfg = encoder_decoder_config(
            args.size, args.vocab, pad_id=PAD, attention_backend=args.attention_backend
        )
        ours = EncoderDecoderLM(cfg)
        sentinels = list(range(NUM_SPECIAL - 1, NUM_SPECIAL - 101, -1))
        objective = SpanCorruption(args.seq_len, sentinels, eos_id=EOS, decoder_start_id=PAD)
    ours = ours.to(device).train()
    hf = to_hf(ours).to(device).train()
    return ours, hf, objective


def make_batches(objective, args, device, count: int = 4) -> list[ModelBatch]:
    window = getattr(objective, "window_length", lambda t: t + 1)(args.seq_len)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        tokens = torch.randint(NUM_SPECIAL, args.vocab, (args.batch, window), generator=g)
        docs = torch.zeros_like(tokens)
        if args.doc_len:  # documents of random lengths, mean doc_len, packed into windows
            starts = torch.rand(tokens.shape, generator=g) < 1.0 / args.doc_len
            docs = torch.cumsum(starts.long(), dim=1)
        ids = torch.arange(args.batch)
        batches.append(objective(TokenBatch(tokens, docs, ids * 0, ids), g).to(device))
    return batches


def make_steps(ours, hf, args, device, label_positions: dict[int, torch.Tensor]):
    """The sides' step functions; ``label_positions`` maps ``id(batch)`` to the batch's label
    positions on the device, found before timing as the trainer finds them on the host
    (``ModelBatch.loss_groups``)."""
    bf16 = args.precision == "bf16"

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    # Fused AdamW on both sides and both devices: build_optimizer picks it, and Hugging
    # Face's Trainer defaults to it (``adamw_torch_fused`` from PyTorch 2.8).
    ours_opt = build_optimizer(ours, lr=3e-4)
    hf_opt = torch.optim.AdamW(param_groups(hf, 0.1), lr=3e-4, betas=(0.9, 0.95), fused=True)
    mode = None if args.compile_mode == "default" else args.compile_mode
    sides = args.sides.split(",")
    eager = [s for s in sides if s == "ours_eager" or s.startswith("ours_eager_chunk")]
    compiled = [s for s in sides if s.startswith("ours") and s not in eager]
    if eager and compiled and args.compile_scope == "blocks":
        raise SystemExit(
            f"--compile-scope blocks compiles our blocks in place, so {eager[0]} cannot run "
            f"beside {compiled[0]} in one process; use --compile-scope model"
        )
    compiled_ours = compile_for_training(ours, args.compile_scope, mode) if compiled else ours
    compiled_hf = torch.compile(hf, mode=mode)
    if args.memory_budget < 1:  # as train.activation_memory_budget does
        budget = functorch_config.patch(activation_memory_budget=args.memory_budget)
        compiled_ours = budget(compiled_ours)

    cudagraphs = mode in CUDA_GRAPH_MODES

    def ours_step(model, compiled: bool, chunk_rows: int | None):
        def step(batch: ModelBatch):
            if cudagraphs:  # a new step: the graphs may overwrite the last step's outputs
                torch.compiler.cudagraph_mark_step_begin()
            positions = label_positions[id(batch)]
            with autocast():
                hidden = model(batch)
            total, n, ce = cross_entropy_sum(
                hidden,
                batch.labels,
                ours.output_weight,
                compute_dtype=torch.bfloat16 if bf16 else None,
                output_bias=getattr(ours, "output_bias", None),
                chunk_rows=chunk_rows,
                compiled=compiled,
                label_positions=positions,
            )
            router = ours.router_aux_loss() if hasattr(ours, "router_aux_loss") else None
            (total / n if router is None else total / n + router).backward()
            torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
            ours_opt.step()
            ours_opt.zero_grad(set_to_none=True)
            return ce / n

        return step

    def hf_step(model, collator_form: bool = False):
        def step(batch: ModelBatch):
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            labels = batch.labels.contiguous()
            kwargs = {"input_ids": batch.input_ids.contiguous(), "labels": labels}
            if args.objective == "clm":
                kwargs.update(shift_labels=labels, use_cache=False)
                if args.n_experts:  # Mixtral adds its balancing loss, as ours does
                    kwargs.update(output_router_logits=True)
            elif args.objective == "span":
                kwargs.update(decoder_input_ids=batch.decoder_input_ids, use_cache=False)
            elif args.objective == "plm":
                tm = batch.target_mapping
                perm = (~batch.attention.permutation_allowed()).to(tm.dtype)
                if collator_form:  # as DataCollatorForPermutationLanguageModeling: a query
                    # row per position (identity mapping), -100 off the targets
                    B, T = labels.shape
                    eye = torch.eye(T, dtype=tm.dtype, device=tm.device)
                    tm, rows = eye.expand(B, T, T).contiguous(), labels
                else:  # XLNet's compact form: one query row and one label per target
                    rows = torch.einsum("bmt,bt->bm", tm, labels.to(tm.dtype)).long()
                    rows[tm.sum(-1) == 0] = -100
                kwargs.update(labels=rows, perm_mask=perm, target_mapping=tm, use_mems=False)
            with autocast():
                out = model(**kwargs)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            if getattr(out, "aux_loss", None) is not None:  # the cross-entropy, as ours reports
                return (out.loss - hf.config.router_aux_loss_coef * out.aux_loss).detach()
            return out.loss.detach()

        return step

    steps = {"hf": hf_step(compiled_hf), "hf_eager": hf_step(hf)}
    if args.objective == "plm":
        steps["hf_eager_collator"] = hf_step(hf, collator_form=True)
    for rows in args.loss_chunks:
        suffix = "" if rows is None else f"_chunk{rows}"
        steps["ours" + suffix] = ours_step(compiled_ours, True, rows)
        steps["ours_eagerloss" + suffix] = ours_step(compiled_ours, False, rows)
        steps["ours_eager" + suffix] = ours_step(ours, False, rows)
    return steps


def sdpa_backend(name: str) -> contextlib.AbstractContextManager:
    """``sdpa_kernel`` limited to one backend (``auto``: PyTorch's own choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel(backend)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, batches, args, device) -> dict:
    """Compile + warmup seconds, tokens/s, first loss and peak memory of one side."""
    resident = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) / 2**30
    start = time.perf_counter()
    first = float(step(batches[0]))
    for i in range(1, args.warmup):
        step(batches[i % len(batches)])
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    tokens = batches[0].input_ids.numel() * args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "tokens_per_second": tokens / seconds,
        "warmup_seconds": warm,
        "first_loss": first,
        "peak_memory_gib": peak,
        # what the side added on top of what was resident when it started (both models'
        # weights, and the optimizer states of sides measured before it)
        "peak_above_start_gib": None if peak is None else peak - resident,
    }


def profile(step, batches, steps: int, device, rows: int = 25) -> str:
    """The kernels of ``steps`` more steps of a side, by self time on the device; on CUDA also
    the host's ops by their own time (where launching a step goes, and how long the host
    waited for the device at the end), and the wall time per step beside the kernels' sum.
    Kernel time well below the wall time means gaps: the device waited for the host."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
        wall_ms = 1e3 * (time.perf_counter() - start) / steps
    averages = prof.key_averages()
    out = averages.table(sort_by=sort, row_limit=rows, max_name_column_width=70)
    if device.type == "cuda":
        from torch.autograd import DeviceType

        host = averages.table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70
        )
        kernel_us = sum(
            e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA
        )
        out += f"\n--- the host's own time ---\n{host}"
        kernel_ms = kernel_us / 1e3 / steps
        out += f"\nper step: wall {wall_ms:.1f} ms (profiled), kernels {kernel_ms:.1f} ms"
    return out


def parse_args(add_arguments=None) -> argparse.Namespace:
    """The benchmark's options; ``add_arguments(parser)`` adds a caller's own (other scripts
    that build the same models)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if add_arguments is not None:
        add_arguments(p)
    p.add_argument("--objective", choices=sorted(DEFAULTS), default="clm")
    p.add_argument("--size")
    p.add_argument("--style", choices=["gpt2", "llama"], default=None)
    p.add_argument("--vocab", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--n-experts", type=int, default=0, help="clm: a mixture of experts")
    p.add_argument("--experts-per-token", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=None, help="clm with --n-experts: expert width")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sides", default="ours,hf")
    p.add_argument(
        "--doc-len",
        type=int,
        default=0,
        help="CLM: mean packed document length; document masking on (ours only: HF has none)",
    )
    p.add_argument("--attention-backend", choices=["sdpa", "flex"], default="sdpa")
    p.add_argument(
        "--position-encoding",
        choices=["txl", "rope"],
        default="txl",
        help="PLM: XLNet's positions (rope: HF's side is a txl twin of the same shape)",
    )
    p.add_argument(
        "--flex-layout",
        choices=["factorization", "input"],
        default="factorization",
        help="PLM with flex: content rows sorted by factorization rank (default) or as input",
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        default=1.0,
        help="ours compiled: train.activation_memory_budget (1.0: PyTorch's default)",
    )
    add_malloc_flag(p)  # on a CPU only
    p.add_argument("--loss-chunks", default="", help="comma list of chunk rows; 0 = default")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"],
        help="torch.compile mode of both compiled sides",
    )
    p.add_argument(
        "--compile-scope",
        default="blocks",
        choices=COMPILE_SCOPES,
        help="ours compiled: each block (train.compile_scope's default) or the whole model",
    )
    p.add_argument(
        "--sdpa-backend",
        default="auto",
        choices=["auto", "flash", "cudnn", "efficient", "math"],
        help="restrict scaled_dot_product_attention to one kernel (both sides)",
    )
    p.add_argument("--json-out")
    p.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after timing a side, profile this many more steps and print its top kernels",
    )
    args = p.parse_args()
    size, vocab, batch, seq_len = DEFAULTS[args.objective]
    args.size = args.size or size
    args.vocab = args.vocab or vocab
    args.batch = args.batch or batch
    args.seq_len = args.seq_len or seq_len
    args.loss_chunks = [None] + [int(c) for c in args.loss_chunks.split(",") if c and int(c)]
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    malloc = ""
    if device.type == "cpu":  # as bench_train_cpu.py: what the trainer does, for both sides
        malloc = f", malloc {tune_malloc_as_the_trainer(args)}"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    ours, hf, objective = build_models(args, device)
    batches = make_batches(objective, args, device)
    # training FLOPs per input token of these batches (pretrain.scaling.batch_flops)
    flops = sum(batch_flops(ours, b) for b in batches) / sum(b.input_ids.numel() for b in batches)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"commit {git_commit()}, device {name}, torch {torch.__version__}, {args.objective} "
        f"{args.size}{'' if args.style is None else ' ' + args.style} "
        f"({ours.num_params():,} params), batch {args.batch} x {args.seq_len}, {args.precision}, "
        f"compile mode {args.compile_mode}, ours compiled by {args.compile_scope}, "
        f"sdpa {args.sdpa_backend}{malloc}"
    )
    print(header, flush=True)
    positions = {id(b): torch.nonzero(b.labels.reshape(-1) != IGNORE_INDEX)[:, 0] for b in batches}
    steps = make_steps(ours, hf, args, device, positions)
    results = {}
    for side in args.sides.split(","):
        try:
            with sdpa_backend(args.sdpa_backend):
                r = measure(steps[side], batches, args, device)
        except torch.OutOfMemoryError:  # report it and go on with the other sides
            peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
            print(json.dumps({"side": side, "error": "out of memory", "peak_gib": peak_gib}))
            torch.cuda.empty_cache()
            continue
        r["mfu"] = r["tokens_per_second"] * flops / peak if flops and peak else None
        if side not in results or r["tokens_per_second"] > results[side]["tokens_per_second"]:
            results[side] = r  # a side named twice (e.g. alternating on a CPU) keeps its best
        print(json.dumps({"side": side, **r}), flush=True)
        if args.profile_steps:
            print(f"--- profile: {side}, {args.profile_steps} steps ---", flush=True)
            print(profile(steps[side], batches, args.profile_steps, device), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(
        "\n| side | tokens/s | MFU | compile + warmup s | peak GiB | above start GiB |"
        "\n|---|---:|---:|---:|---:|---:|"
    )
    for side, r in results.items():
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        above = r["peak_above_start_gib"]
        above = "n/a" if above is None else f"{above:.1f}"
        print(
            f"| {side} | {r['tokens_per_second']:,.0f} | {mfu} | {r['warmup_seconds']:.1f} "
            f"| {mem} | {above} |"
        )
    pairs = [("ours", "hf"), ("ours", "hf_eager"), ("ours_eager", "hf_eager")]
    pairs += [("ours", "hf_eager_collator"), ("ours_eager", "hf_eager_collator")]
    for a, b in pairs:
        if a in results and b in results:
            ratio = results[a]["tokens_per_second"] / results[b]["tokens_per_second"]
            print(f"{a} / {b} = {ratio:.2f}")
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps({"header": header, "results": results}) + "\n")


if __name__ == "__main__":
    main()
