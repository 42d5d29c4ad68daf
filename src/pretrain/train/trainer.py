"""The training loop: ``pretrain train --config configs/X.yaml [--key.sub=value ...] [--resume]``.

Reads like nanoGPT's loop: for each step, set the learning rate from a pure schedule, run the
micro-batches of the step (forward, loss, backward), clip, step, then maybe log, evaluate and
checkpoint. The trainer never knows which architecture or objective it runs: it calls
``objective(token_batch)``, ``model(batch)`` and ``cross_entropy_sum(...)``.

Loss normalization (DESIGN.md §3): each micro-batch's loss *sum* is divided by the number of
label tokens of the whole step, so every label token weighs the same however the tokens are
spread over micro-batches (torchtitan's ``global_valid_tokens``).

Exact resume: a checkpoint holds the weights, the optimizer, the loader position, the
objective's random generator and the trainer's counters; the schedule is a pure function of the
step. On CPU the losses after ``--resume`` are bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ExperimentConfig, save_config
from pretrain.data.loader import TokenLoader
from pretrain.eval.perplexity import evaluate, task_losses
from pretrain.losses import cross_entropy_sum
from pretrain.models.spec import build_model, model_flops_per_token
from pretrain.objectives import build_objective, loader_seq_len
from pretrain.optim import build_optimizer, lr_at
from pretrain.scaling.flops import peak_flops
from pretrain.tokenizer import Tokenizer, token_byte_lengths
from pretrain.train.checkpoint import list_steps, load_checkpoint, save_checkpoint
from pretrain.train.metrics import MetricsWriter
from pretrain.train.progress import Progress
from pretrain.train.state import TrainState

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "model_config.json"


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the run directory is not in a usable state)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name!r} but no CUDA device is available")
    return device


class Trainer:
    """Builds everything a run needs from an :class:`ExperimentConfig`; :meth:`fit` trains."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = False):
        self.cfg = cfg.validate()
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if not resume and list_steps(self.ckpt_dir):
            raise TrainingError(
                f"{self.run_dir} already holds checkpoints: pass --resume to continue it, "
                "or choose another --run.dir"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TrainingError(
                "this trainer runs one process; multi-process (torchrun) training is not "
                "available yet"
            )
        self.device = resolve_device(cfg.train.device)
        bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.device.type == "cuda"
        )
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        torch.manual_seed(cfg.train.seed)

        tokenizer_path = cfg.data.tokenizer
        if tokenizer_path is None:
            raise TrainingError(
                "data.tokenizer: give the tokenizer directory the shards were made with"
            )
        self.tokenizer = Tokenizer.load(tokenizer_path)
        self.model = build_model(
            cfg.model, self.tokenizer.vocab_size, cfg.train.seq_len, self.tokenizer.special.pad
        ).to(self.device)
        self.step_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.optimizer = build_optimizer(
            self.model, cfg.optim.lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps
        )
        self.objective = build_objective(
            cfg.objective, self.tokenizer, cfg.train.seq_len, family=cfg.model.family
        )
        self.window_seq_len = loader_seq_len(self.objective, cfg.train.seq_len)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.loader = TokenLoader(
            cfg.data.train,
            self.window_seq_len,
            cfg.train.micro_batch_size,
            weights=cfg.data.weights,
            seed=cfg.train.seed,
            checksum=cfg.data.verify_checksums,
            tokenizer_hash=self.tokenizer.hash,
        )
        # Opened now so a wrong data.val fails before training, not at the first evaluation.
        self.val_batches = self.val_loader() if cfg.data.val else None
        self.grad_accum = cfg.grad_accum_steps()
        reports_bpb = self.objective.reports_bits_per_byte
        lengths = token_byte_lengths(self.tokenizer) if reports_bpb else None
        self.token_bytes = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
        self.state = TrainState()
        if resume:
            self._restore()
        self._prepare_run_dir(resume)
        self.flops_per_token = model_flops_per_token(self.model, cfg.train.seq_len)
        self.peak_flops = peak_flops(self.device)

    # --- setup -------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        # The exact architecture (also when it came from model.init_from), for load_run.
        (self.run_dir / MODEL_CONFIG_FILE).write_text(
            json.dumps(self.model.cfg.to_dict(), indent=2) + "\n"
        )
        self.tokenizer.save(self.run_dir / "tokenizer")
        self.metrics = MetricsWriter(
            self.run_dir, self.state.step if resume else None, self.cfg.log.tensorboard
        )

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_dir, "latest", map_location="cpu")
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(ckpt.optim_state["optimizer"])
        self.generator.set_state(ckpt.optim_state["rng"]["objective"])
        torch.set_rng_state(ckpt.optim_state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in ckpt.optim_state["rng"]:
            torch.cuda.set_rng_state(ckpt.optim_state["rng"]["cuda"], self.device)
        self.loader.load_state_dict(ckpt.state["loader"])
        self.state = TrainState.from_dict(ckpt.state["trainer"])
        log.info("resumed from %s (step %d)", ckpt.path, self.state.step)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- the loop ----------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter() - self.state.elapsed_seconds
        deadline = None if cfg.train.max_minutes is None else started + 60 * cfg.train.max_minutes
        progress = Progress(cfg.train.max_steps, enabled=cfg.log.progress)
        last_val: dict[str, Any] | None = None
        window_tokens, window_start = 0, time.perf_counter()
        with progress:
            progress.start(self.state.step)
            while self.state.step < cfg.train.max_steps:
                if deadline is not None and time.perf_counter() >= deadline:
                    log.info("train.max_minutes reached at step %d", self.state.step)
                    break
                record = self.train_step()
                window_tokens += record["step_tokens"]
                step = self.state.step
                self.state.elapsed_seconds = time.perf_counter() - started
                if step % cfg.log.every_steps == 0 or step == cfg.train.max_steps:
                    now = time.perf_counter()
                    tokens_per_second = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    record = self._train_record(record, tokens_per_second)
                    self.metrics.write(record)
                    progress.update(step, record)
                paused = time.perf_counter()
                if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                    last_val = self.evaluate_and_log()
                if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                    self.save(last_val)
                window_start += time.perf_counter() - paused  # tokens/s counts training only
        final_step = self.state.step
        if self.cfg.data.val and self.state.last_eval_step != final_step:
            last_val = self.evaluate_and_log()
        if not list_steps(self.ckpt_dir) or list_steps(self.ckpt_dir)[-1] != final_step:
            self.save(last_val)
        self.metrics.close()
        self._write_plot_and_sample()
        return {
            "step": final_step,
            "tokens": self.state.tokens_seen,
            "val": last_val,
            "skipped_steps": self.state.num_skipped_steps,
            "seconds": self.state.elapsed_seconds,
        }

    def _write_plot_and_sample(self) -> None:
        """``plots/loss.png`` and ``samples.txt`` in the run directory (DESIGN.md §5)."""
        from pretrain.generate import generate
        from pretrain.train.plots import plot_losses

        plot_losses(self.run_dir)
        if self.cfg.log.sample_tokens <= 0 or self.cfg.model.family != "decoder":
            return
        eos = self.tokenizer.special.eos
        ids = generate(
            self.model,
            torch.tensor([eos]),  # a new document
            self.cfg.log.sample_tokens,
            temperature=0.8,
            top_k=50,
            eos_id=eos,
            generator=torch.Generator(device=self.device).manual_seed(self.cfg.train.seed),
        )
        text = self.tokenizer.decode([i for i in ids[1:].tolist() if i != eos])
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(f"--- step {self.state.step} ---\n{text}\n")

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns what to log."""
        cfg = self.cfg
        lr = lr_at(
            self.state.step,
            schedule=cfg.optim.schedule,
            peak_lr=cfg.optim.lr,
            warmup_steps=cfg.optim.warmup_steps,
            max_steps=cfg.train.max_steps,
            min_lr_ratio=cfg.optim.min_lr_ratio,
            decay_fraction=cfg.optim.decay_fraction,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [
            self.objective(next(self.loader), self.generator) for _ in range(self.grad_accum)
        ]
        num_label_tokens = sum(b.num_label_tokens for b in batches)
        ce_sum = torch.zeros((), device=self.device)
        per_task: dict[str, list[torch.Tensor]] = {}  # name -> [ce sum, label tokens]
        for cpu_batch in batches:
            groups = cpu_batch.task_rows()
            batch = cpu_batch.to(self.device)
            with self._autocast():
                hidden = self.step_model(batch)
            total = torch.zeros((), device=self.device)
            for name, rows in groups:  # one group unless examples record their task
                h, y = hidden, batch.labels
                if rows is not None:
                    rows = rows.to(self.device)
                    h, y = hidden[rows], batch.labels[rows]
                task_total, count, ce = cross_entropy_sum(
                    h,
                    y,
                    self.model.output_weight,
                    cfg.objective.z_loss,
                    compute_dtype=self.autocast_dtype,
                    output_bias=getattr(self.model, "output_bias", None),
                    compiled=cfg.train.compile,
                )
                total = total + task_total
                ce_sum += ce
                if rows is not None:
                    sums = per_task.setdefault(name, [torch.zeros_like(ce), 0])
                    sums[0] += ce
                    sums[1] += count
            (total / max(num_label_tokens, 1)).backward()
        # grad_clip <= 0 means no clipping (the norm is still measured and logged)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss = float(ce_sum) / max(num_label_tokens, 1)
        step_tokens = sum(b.input_ids.numel() for b in batches)
        finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.state.consecutive_nonfinite = 0
        else:
            self._skip_nonfinite(loss, float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += step_tokens
        return {
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "step_tokens": step_tokens,
            "skipped": not finite,
            "tasks": task_losses(per_task),
        }

    def _skip_nonfinite(self, loss: float, grad_norm: float) -> None:
        self.state.consecutive_nonfinite += 1
        self.state.num_skipped_steps += 1
        limit = self.cfg.train.max_nonfinite_steps
        log.warning(
            "step %d: non-finite loss %s or gradient norm %s; the update is skipped (%d in a row)",
            self.state.step + 1,
            loss,
            grad_norm,
            self.state.consecutive_nonfinite,
        )
        if self.state.consecutive_nonfinite >= limit:
            raise TrainingError(
                f"the loss or gradients were non-finite for {limit} steps in a row (last at step "
                f"{self.state.step + 1}); training stopped. Lower optim.lr, raise "
                "optim.warmup_steps, set objective.z_loss=1e-4, or resume from an earlier "
                "checkpoint"
            )

    def _train_record(self, record: dict[str, Any], tokens_per_second: float) -> dict[str, Any]:
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_second * self.flops_per_token / self.peak_flops
        return {
            "step": self.state.step,
            "split": "train",
            "loss": record["loss"],
            "lr": record["lr"],
            "tokens": self.state.tokens_seen,
            "grad_norm": record["grad_norm"],
            "tokens_per_second": tokens_per_second,
            "mfu": mfu,
            "skipped_steps": self.state.num_skipped_steps,
            **({"tasks": record["tasks"]} if record.get("tasks") else {}),
        }

    # --- eval and checkpoints ----------------------------------------------------------

    def val_loader(self) -> TokenLoader:
        cfg = self.cfg
        return TokenLoader(
            cfg.data.val,
            self.window_seq_len,
            cfg.eval.batch_size or cfg.train.micro_batch_size,
            split="val",
            shuffle=False,
            num_epochs=1,
            checksum=cfg.data.verify_checksums,
            tokenizer_hash=self.tokenizer.hash,
        )

    def evaluate_and_log(self) -> dict[str, Any] | None:
        if self.val_batches is None:
            return None
        self.val_batches.reset()
        result = evaluate(
            self.model,
            self.objective,
            self.val_batches,
            self.token_bytes,
            self.device,
            self.cfg.eval.max_batches,
            self._autocast,
            accuracy=self.objective.reports_accuracy,
        )
        record = {
            "step": self.state.step,
            "split": "val",
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens": self.state.tokens_seen,
        }
        record.update({k: result[k] for k in ("loss", "perplexity", "bits_per_byte")})
        if result["accuracy"] is not None:
            record["accuracy"] = result["accuracy"]
        record["tokens_evaluated"] = result["tokens"]
        if "tasks" in result:
            record["tasks"] = result["tasks"]
        self.metrics.write(record)
        self.state.last_eval_step = self.state.step
        log.info(
            "step %d: val loss %.4f, bits/byte %s",
            self.state.step,
            result["loss"],
            "n/a" if result["bits_per_byte"] is None else f"{result['bits_per_byte']:.4f}",
        )
        return record

    def save(self, last_val: dict[str, Any] | None) -> Path:
        val_loss = last_val["loss"] if last_val and last_val["step"] == self.state.step else None
        is_best = val_loss is not None and (
            self.state.best_val_loss is None or val_loss < self.state.best_val_loss
        )
        if is_best:
            self.state.best_val_loss = val_loss
        rng = {"objective": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return save_checkpoint(
            self.ckpt_dir,
            self.state.step,
            self.model.state_dict(),
            {"optimizer": self.optimizer.state_dict(), "rng": rng},
            {
                "trainer": self.state.to_dict(),
                "loader": self.loader.state_dict(),
                "val_loss": val_loss,
            },
            keep_last=self.cfg.checkpoint.keep_last,
            is_best=is_best,
        )
