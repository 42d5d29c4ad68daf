"""The training loop: ``pretrain train --config configs/X.yaml [--key.sub=value ...] [--resume]``.

Reads like nanoGPT's loop: for each step, set the learning rate from a pure schedule, run the
micro-batches of the step (forward, loss, backward), clip, step, then maybe log, evaluate and
checkpoint. The trainer never knows which architecture or objective it runs: it calls
``objective(token_batch)``, ``model(batch)`` and ``cross_entropy_sum(...)``.

Loss normalization over micro-batches and ranks: :mod:`pretrain.train.accumulate`.

No wait between steps: :meth:`Trainer.queue_step` queues a whole step on the device and
returns; :meth:`Trainer.fit` reads its loss, gradient norm and the ranks' votes to stop only
once the next step is queued (:mod:`pretrain.train.step_sums`), so the device never idles
while the host prepares a step. A non-finite step, and with ``train.spike_sigma`` one whose loss
or gradient norm spikes (:mod:`pretrain.train.loss_spikes`), is skipped on the device by the
fused AdamW (``found_inf``, PyTorch's ``GradScaler`` contract; OLMo-core's skip-step optimizers
decide on the device for the same reason). Steps that are evaluated or checkpointed, and the
last, are read at once.

Exact resume: a checkpoint holds the weights, the optimizer, the loader position, the
objective's random generator, the trainer's counters and the spike window; the schedule is a
pure function of the step. On CPU the losses after ``--resume`` are bit-identical to an
uninterrupted run's.

Data parallel (``torchrun --nproc_per_node=N -m pretrain train ... --distributed.strategy=ddp``
or ``fsdp``; tensor parallel with ``distributed.tensor_parallel_degree``, pipeline parallel
with ``distributed.pipeline_parallel_degree``; see docs/scaling-out.md): each data-parallel
rank reads its own stride of the samples and the gradients add up to one process's
(:mod:`pretrain.train.accumulate`). Rank 0 logs and writes files; FSDP and pipeline
checkpoints are written by all ranks together (``dcp/``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ExperimentConfig
from pretrain.distributed import comm
from pretrain.distributed.context_parallel import ContextParallel
from pretrain.distributed.env import DistEnv, shutdown
from pretrain.distributed.grad_norm import clip_grad_norm
from pretrain.distributed.parallelize import (
    apply_activation_checkpointing,
    device_meshes,
    gathered,
    is_fsdp,
    parallelize,
)
from pretrain.distributed.pipeline_parallel import Pipeline
from pretrain.eval.perplexity import evaluate
from pretrain.models.spec import build_model
from pretrain.optim import build_training_optimizer, lr_at, skips_updates_on_device, step_unless
from pretrain.scaling.batch_flops import step_flops
from pretrain.scaling.flops import peak_flops
from pretrain.tokenizer import Tokenizer, token_byte_lengths
from pretrain.train.accumulate import accumulate_gradients, pipeline_gradients
from pretrain.train.batch_worker import BatchSource, WorkerStepBatches
from pretrain.train.checkpoint import list_steps
from pretrain.train.compile import refuse_cuda_graphs_with_accumulation, training_forward
from pretrain.train.cpu_malloc import keep_freed_memory_mapped
from pretrain.train.cpu_precision import warn_if_bf16_is_emulated
from pretrain.train.device_setup import (
    autocast_context,
    autocast_dtype,
    refuse_flex_off_cuda,
    resolve_device,
    start_distributed,
)
from pretrain.train.downstream import DownstreamTasks
from pretrain.train.errors import TrainingError
from pretrain.train.garbage_collection import ScheduledGarbageCollection
from pretrain.train.interrupt import StopOnSignal, TrainingInterrupted
from pretrain.train.loss_module import ModelWithLoss
from pretrain.train.loss_spikes import SpikeDetector
from pretrain.train.metrics import MetricsWriter, NoMetrics
from pretrain.train.progress import Progress
from pretrain.train.rng_state import objective_seed
from pretrain.train.run_files import write_run_files, write_sample
from pretrain.train.run_lock import lock_run_dir, unlock_run_dir
from pretrain.train.run_state import RunState
from pretrain.train.state import TrainState
from pretrain.train.step_batches import StepBatches
from pretrain.train.step_outcome import QueuedStep, is_applied, read_step, train_record
from pretrain.train.step_profiler import StepProfiler
from pretrain.train.step_sums import sum_over_ranks
from pretrain.train.throughput import ThroughputWindow
from pretrain.train.validation import open_val_loader, val_record

__all__ = ["QueuedStep", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)


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
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cpu":
            keep_freed_memory_mapped()  # no page faults on each step's fresh temporaries
        refuse_flex_off_cuda(cfg.model.attention_backend, self.device)
        self.dist: DistEnv = start_distributed(cfg, self.device)
        self._lock: Path | None = None
        self.grad_accum = cfg.grad_accum_steps(self.dist.dp_size)
        if cfg.train.compile:  # before the model is built: a wrong setting fails at once
            refuse_cuda_graphs_with_accumulation(
                cfg.train.compile_mode, self.device.type, self.grad_accum
            )
        self.autocast_dtype = autocast_dtype(cfg.train.precision, self.device)
        warn_if_bf16_is_emulated(self.device, self.autocast_dtype)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank

        tokenizer_path = cfg.data.tokenizer
        if tokenizer_path is None:
            raise TrainingError(
                "data.tokenizer: give the tokenizer directory the shards were made with"
            )
        self.tokenizer = Tokenizer.load(tokenizer_path)
        self.model = build_model(
            cfg.model, self.tokenizer.vocab_size, cfg.train.seq_len, self.tokenizer.special.pad
        )
        # A pipeline rank moves only its stages to the device (the Pipeline, after the split):
        # the whole model, built and initialized in host memory as one process would, need
        # not fit on one GPU.
        if self.dist.pp_size == 1:
            self.model.to(self.device)
        if cfg.distributed.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.step_model, self._marks_cudagraph_steps = training_forward(
            self.model, cfg.train, self.device
        )
        self.loss_module = ModelWithLoss(
            self.model,
            cfg.objective.z_loss,
            self.autocast_dtype,
            compiled=cfg.train.compile,
            forward=self.step_model,
            autocast=self._autocast,
        )
        self.pipeline: Pipeline | None = None
        self.flops_model = self.model  # what a step's FLOPs are counted on
        self.context: ContextParallel | None = None  # each rank attends over part of a sequence
        if self.dist.pp_size > 1:  # this rank keeps its stage's part of the model
            self.pipeline = Pipeline(
                self.model,
                self.dist,
                cfg.distributed.pipeline_schedule,
                cfg.distributed.pipeline_stages_per_rank,
                self.grad_accum,
                self.device,
                self._autocast,
                param_dtype=self.autocast_dtype,
                reshard_after_forward=cfg.distributed.reshard_after_forward,
                sequence_parallel=cfg.distributed.sequence_parallel,
                replicate_degree=cfg.distributed.replicate_degree,
            )
            self.train_module = self.loss_module  # the pipeline wraps its stages in DDP or FSDP
            self.flops_model = self.pipeline.whole_model
            self.context = self.pipeline.context
        else:
            meshes = None  # parallelize builds FSDP's; context parallelism needs its group
            if self.dist.cp_size > 1:
                meshes = device_meshes(self.device.type, cfg.distributed)
            # FSDP replaces the parameters by shards: the optimizer is built from them after.
            self.train_module = parallelize(
                self.loss_module,
                cfg.distributed,
                self.device,
                self.autocast_dtype,  # FSDP computes in the autocast dtype, reduces in fp32
                meshes,
            )
            if self.dist.cp_size > 1:
                self.context = ContextParallel(self.model, meshes.cp.get_group())
        self.optimizer = build_training_optimizer(self.model, cfg.optim)
        # A tensor-parallel group's ranks read the same batches: data is split by dp_rank.
        source = BatchSource.from_config(cfg, self.dist.dp_rank, self.dist.dp_size)
        # One process per machine reads every shard through sha256; the others trust it (a
        # mismatch stops that process, and its peers then stop at the next collective).
        self._verify_checksums = cfg.data.verify_checksums and self.dist.local_rank == 0
        self.objective, self.loader = source.build(self.tokenizer, self._verify_checksums)
        self.window_seq_len = self.loader.seq_len
        # Rank 0 draws what a single process draws; other ranks draw their own noise (masks).
        self.generator = torch.Generator().manual_seed(
            objective_seed(cfg.train.seed, self.dist.dp_rank, 0)
        )
        # Opened now so a wrong data.val fails before training, not at the first evaluation.
        self.val_batches = None
        if cfg.data.val:
            self.val_batches = open_val_loader(
                cfg, self.window_seq_len, self._verify_checksums, self.tokenizer.hash
            )
        self.downstream = None  # read now: a bad record fails before training
        if cfg.eval.tasks:
            lockstep = is_fsdp(self.train_module)  # every rank runs every forward
            rank, world = self.dist.dp_cp_rank, self.dist.dp_cp_size  # prompts are not split
            self.downstream = DownstreamTasks(cfg, self.tokenizer, rank, world, lockstep)
        self.batches = StepBatches(self.loader, self.objective, self.generator, self.grad_accum)
        if cfg.data.batch_worker == "process":
            self.batches = WorkerStepBatches(source, self.batches)
        reports_bpb = self.objective.reports_bits_per_byte
        lengths = token_byte_lengths(self.tokenizer) if reports_bpb else None
        self.token_bytes = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
        self.state = TrainState()
        self.spikes = None
        if cfg.train.spike_sigma > 0:
            self.spikes = SpikeDetector(
                cfg.train.spike_sigma, cfg.train.spike_window_steps, self.device
            )
        self.checkpoints = RunState(
            cfg,
            self.train_module,
            self.loss_module,
            self.optimizer,
            self.model.cfg.to_dict(),
            self.spikes,
            self.dist,
            self.device,
        )
        self._signals = StopOnSignal()  # its handlers are set while fit() runs
        self._deadline: float | None = None  # perf_counter() at train.max_minutes
        self._lock = self._lock_run_dir()  # nothing read from or written to it before
        if resume:
            self.state = self.checkpoints.resume(self.generator, self.loader)
        self._prepare_run_dir(resume)
        self.peak_flops = peak_flops(self.device)

    # --- setup -------------------------------------------------------------------------

    def _lock_run_dir(self) -> Path | None:
        """Rank 0 holds the run directory's lock; every rank stops if another run has it."""
        lock, refused = None, None
        if self.dist.is_main:
            try:
                lock = lock_run_dir(self.run_dir)
            except TrainingError as e:
                refused = str(e)
        refused = comm.broadcast_object(refused)
        if refused is not None:
            raise TrainingError(refused)
        return lock

    def _prepare_run_dir(self, resume: bool) -> None:
        if not self.dist.is_main:
            self.metrics = NoMetrics()
            return
        write_run_files(self.run_dir, self.cfg, self.model.cfg.to_dict(), self.tokenizer)
        self.metrics = MetricsWriter(
            self.run_dir, self.state.step if resume else None, self.cfg.log.tensorboard
        )

    def close(self) -> None:
        """Stop the batch worker, if any, give back the run directory and leave the process
        group (the trainer created it)."""
        self.batches.close()
        self._unlock()
        shutdown()

    def _unlock(self) -> None:
        if self._lock is not None:
            unlock_run_dir(self._lock)
            self._lock = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    # --- the loop ----------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or ``train.max_minutes``); returns a summary."""
        try:
            summary = self._fit()
        except TrainingInterrupted:  # saved on every rank: leave the process group cleanly
            self.close()
            raise
        except RuntimeError as e:
            if self.dist.world_size > 1 and comm.is_collective_failure(e):
                # Do not leave the process group: its peers are gone; exiting is the cleanup.
                raise TrainingError(
                    f"rank {self.dist.rank}: a collective operation failed; another rank died "
                    f"or stopped responding (distributed.timeout_seconds="
                    f"{self.cfg.distributed.timeout_seconds:g}). Resume from the last "
                    f"checkpoint with --resume. Cause: {str(e).splitlines()[0][:300]}"
                ) from e
            raise
        finally:
            self.batches.close()  # no worker process left drawing for a run that stopped
            self._unlock()  # the run is over, however it ended
        self.close()
        return summary

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter() - self.state.elapsed_seconds
        if cfg.train.max_minutes is not None:
            self._deadline = started + 60 * cfg.train.max_minutes
        progress = Progress(cfg.train.max_steps, enabled=cfg.log.progress and self.dist.is_main)
        last_val: dict[str, Any] | None = None
        window = ThroughputWindow(self.peak_flops, self.dist.world_size)
        # Resumed after the deadline: rank 0's clock decides, so all ranks agree. During the
        # loop each step's all-reduce carries the votes (queue_step).
        out_of_time = comm.broadcast_object(self._deadline_passed())
        stopped_by_signal = False
        rollback_due = False  # train.spike_rollback_after spikes within the window

        def read(queued: QueuedStep, began: float, ended: float | None = None) -> None:
            """Count, log, and take the ranks' votes to stop, for a step queued at ``began``.

            The step's wall time runs to ``ended``, when the next step was queued (the
            loop's period: the device's step time where the host waits for it, the host's
            where not), or, for a step read at once (before an evaluation or a checkpoint,
            and the last), to the end of its read. The time between two reads is not a
            step's: a step is read once the next is queued, or at once."""
            nonlocal stopped_by_signal, out_of_time, rollback_due
            record = self._account(queued)
            rollback_due |= record["rollback_due"]
            seconds = (time.perf_counter() if ended is None else ended) - began
            window.add(record["step_tokens"], record["step_flops"], seconds)
            stopped_by_signal |= record["stop_signal"]
            out_of_time |= record["out_of_time"]
            step = queued.step
            last = step == self.state.step and (stopped_by_signal or out_of_time)  # nothing after
            if step % cfg.log.every_steps == 0 or step == cfg.train.max_steps or last:
                tokens_per_second, mfu = window.take()
                logs_spikes = self.spikes is not None
                record = train_record(
                    queued, record, self.state, tokens_per_second, mfu, logs_spikes
                )
                self.metrics.write(record)
                progress.update(step, record)

        collector = ScheduledGarbageCollection(cfg.train.gc_every_steps)
        profiler = StepProfiler(
            cfg.log.profile_steps, self.run_dir / "profile", self.dist.rank, self.device
        )
        profiled = cfg.log.profile_steps
        if profiled and self.dist.is_main and profiled[0] > cfg.train.max_steps:
            log.warning(
                "log.profile_steps=%s starts after train.max_steps=%d: nothing is profiled",
                list(profiled),
                cfg.train.max_steps,
            )
        with progress, self._signals, collector:
            progress.start(self.state.step)
            unread: QueuedStep | None = None  # queued on the device, its values not yet read
            unread_began = 0.0  # when it was queued
            while self.state.step < cfg.train.max_steps and not (out_of_time or stopped_by_signal):
                began = time.perf_counter()
                with profiler.step(self.state.step + 1):
                    queued = self.queue_step()
                if unread is not None:  # the step before, read while this one runs
                    read(unread, unread_began, began)
                unread, unread_began = queued, began
                if rollback_due:  # found reading the step before: undo this one with it
                    read(unread, unread_began)
                    self._roll_back()
                    unread, rollback_due, last_val = None, False, None  # last_val: undone
                    continue
                step = self.state.step
                collector.after_step(step)  # while the device runs the step just queued
                evaluates = bool(cfg.eval.every_steps) and step % cfg.eval.every_steps == 0
                saves = bool(cfg.checkpoint.every_steps) and step % cfg.checkpoint.every_steps == 0
                last = step == cfg.train.max_steps
                if not (evaluates or saves or last or stopped_by_signal or out_of_time):
                    continue
                read(unread, unread_began)  # its weights are evaluated or saved, nothing later
                unread = None
                if rollback_due:
                    self._roll_back()
                    rollback_due, last_val = False, None
                    continue
                self.state.elapsed_seconds = time.perf_counter() - started
                if stopped_by_signal:
                    break
                if evaluates:  # neither counts in tokens/s: no step's time includes them
                    last_val = self.evaluate_and_log()
                if saves:
                    self.save(last_val)
            profiler.finish()  # the run ended inside the profiled range
            self.state.elapsed_seconds = time.perf_counter() - started
            final_step = self.state.step
            if out_of_time:
                log.info("train.max_minutes reached at step %d", final_step)
            if stopped_by_signal and final_step < cfg.train.max_steps:  # save, then stop
                if self.checkpoints.last_saved_step != final_step:
                    self.save(last_val)
                self.metrics.close()
                comm.barrier()
                cause = self._signals.signal_name or "a signal to another rank"
                raise TrainingInterrupted(
                    f"stopped after step {final_step} on {cause}; the step is saved in "
                    f"{self.ckpt_dir}; to continue, rerun the same command with --resume",
                    self._signals.signal_number or signal.SIGINT,
                )
        if self.cfg.data.val and self.state.last_eval_step != final_step:
            last_val = self.evaluate_and_log()
        if self.checkpoints.last_saved_step != final_step:
            self.save(last_val)
        self.metrics.close()
        self._write_plot_and_sample()
        comm.barrier()
        return {
            "step": final_step,
            "tokens": self.state.tokens_seen,
            "val": last_val,
            "skipped_steps": self.state.num_skipped_steps,
            "spike_steps": self.state.num_spike_steps,
            "rollbacks": self.state.num_rollbacks,
            "seconds": self.state.elapsed_seconds,
        }

    def _roll_back(self) -> None:
        """Undo the steps since the latest checkpoint after a run of spikes (every rank calls
        this at the same step: the spikes are decided from the sums over ranks)."""
        self.state = self.checkpoints.roll_back(self.state, self.metrics)

    def _deadline_passed(self) -> bool:
        return self._deadline is not None and time.perf_counter() >= self._deadline

    def _write_plot_and_sample(self) -> None:
        """``plots/loss.png`` and ``samples.txt`` in the run directory (DESIGN.md §5)."""
        from pretrain.train.plots import plot_losses

        if self.dist.is_main and self.cfg.log.plots:
            plot_losses(self.run_dir)
        write_sample(
            self.run_dir,
            self.cfg,
            self.model,
            self.train_module,
            self.tokenizer,
            self.state.step,
            self.device,
            self.dist.is_main,
        )

    def train_step(self) -> dict[str, Any]:
        """One optimizer step, read back at once (:meth:`queue_step`, then its values)."""
        return self._account(self.queue_step())

    def queue_step(self) -> QueuedStep:
        """One optimizer step over ``grad_accum`` micro-batches, queued on the device.

        The host does not wait for the device here (where the optimizer skips non-finite
        updates on the device, :func:`~pretrain.optim.skips_updates_on_device`): the loss, the
        gradient norm and the ranks' votes come back through ``QueuedStep.sums.result()``, which
        :meth:`fit` calls once the next step is queued. Else the values are read before the
        update, which then runs only if they are finite."""
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
        if self._marks_cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        batches = self.batches.take()
        # grad_clip <= 0 means no clipping (the norm is still measured and logged)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        shards = batches if self.context is None else [self.context.shard(b) for b in batches]
        if self.pipeline is None:
            losses = accumulate_gradients(self.train_module, shards, self.device, self.dist)
            grad_norm = clip_grad_norm(self.model.parameters(), max_norm)
        else:
            losses = pipeline_gradients(
                self.pipeline, self.loss_module, shards, self.device, self.dist
            )
            grad_norm = self.pipeline.clip_grad_norm(max_norm)
        if self.state.step + 1 < cfg.train.max_steps:
            self.batches.draw_ahead()  # on the host, while the device still runs this step
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        pending = sum_over_ranks(
            losses.ce_sum,
            losses.label_tokens,
            losses.per_task,
            batches[0].task_names,
            step_flops(self.flops_model, batches) / self.dist.cp_size,  # a share each
            signal_vote=self._signals.requested,
            deadline_vote=self.dist.is_main and self._deadline_passed(),  # one clock decides
            grad_norm=grad_norm,
            spikes=self.spikes,
            router_sum=losses.router_sum,
            counts=self.dist.counts_data,
        )
        if skips_updates_on_device(self.optimizer):
            step_unless(self.optimizer, pending.skip)
        elif is_applied(pending.result()):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_tokens = sum(b.input_ids.numel() for b in batches) * self.dist.dp_size
        self.state.step += 1
        self.state.tokens_seen += step_tokens
        return QueuedStep(self.state.step, self.state.tokens_seen, lr, step_tokens, pending)

    def _account(self, queued: QueuedStep) -> dict[str, Any]:
        """Read a queued step's values, count it if it was skipped; returns what to log."""
        return read_step(queued, self.state, self.cfg.train)

    # --- eval and checkpoints ----------------------------------------------------------

    def evaluate_and_log(self) -> dict[str, Any] | None:
        if self.val_batches is None:
            return None
        self.val_batches.reset()
        # Each data-parallel rank evaluates every dp_size-th batch, in lockstep (FSDP gathers
        # weights; a tensor-parallel group's ranks, a pipeline's, run each forward together).
        roots = [self.train_module] if self.pipeline is None else self.pipeline.modules
        objective = self.objective
        if self.context is not None:  # each context-parallel rank evaluates its positions

            def objective(tokens, generator, context=self.context):
                return context.shard(self.objective(tokens, generator))

        with gathered(*roots):
            result = evaluate(
                self.model,
                objective,
                self.val_batches,
                self.token_bytes,
                self.device,
                self.cfg.eval.max_batches,
                self._autocast,
                accuracy=self.objective.reports_accuracy,
                rank=self.dist.dp_rank,
                world_size=self.dist.dp_size,
                counts=self.dist.counts_data,
                forward=None if self.pipeline is None else self.pipeline.forward,
            )
        lr = self.optimizer.param_groups[0]["lr"]
        record = val_record(result, self.state.step, lr, self.state.tokens_seen)
        if self.downstream is not None:
            with gathered(self.train_module):
                record["downstream"] = self.downstream.evaluate(
                    self.model, self.device, self._autocast
                )
        self.metrics.write(record)
        self.state.last_eval_step = self.state.step
        if self.dist.is_main:
            tasks = "".join(
                f", {name} accuracy {r['accuracy']:.4f}"
                for name, r in record.get("downstream", {}).items()
            )
            log.info(
                "step %d: val loss %.4f, bits/byte %s%s",
                self.state.step,
                result["loss"],
                "n/a" if result["bits_per_byte"] is None else f"{result['bits_per_byte']:.4f}",
                tasks,
            )
        return record

    def save(self, last_val: dict[str, Any] | None) -> Path:
        """Write a checkpoint (every rank calls this; rank 0 writes the files)."""
        return self.checkpoints.save(self.state, self.batches, last_val)
