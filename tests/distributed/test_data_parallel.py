"""Data parallelism on CPU with gloo, 2 processes: DDP and FSDP2 compute what one process
computes with twice the gradient accumulation; ranks read disjoint data; an FSDP checkpoint
saved on 2 ranks resumes on 1; a dead rank stops the others with a clear error."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.config import ExperimentConfig, FewShotTaskConfig, load_config
from pretrain.distributed.env import free_port
from pretrain.eval.few_shot import few_shot_eval
from pretrain.runs import load_run
from pretrain.train.checkpoint import MODEL_FILE, SHARDED_DIR, step_dir_name
from pretrain.train.metrics import read_metrics
from pretrain.train.trainer import Trainer
from tests.helpers import losses

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
LOSS_RTOL = 1e-6
PARAM_ATOL = 1e-5


def _overrides(shards_dir: Path, tokenizer_dir: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "model.size": "debug",
        "model.d_model": 64,
        "model.n_layers": 2,
        "model.n_heads": 4,
        "data.train": f"[{shards_dir}]",
        "data.val": str(shards_dir),
        "data.tokenizer": str(tokenizer_dir),
        "train.seq_len": 32,
        "train.micro_batch_size": 2,
        # 8 windows a step: 4 micro-batches in one process, 2 on each of 2 ranks
        "train.tokens_per_batch": 256,
        "train.max_steps": STEPS,
        "train.device": "cpu",
        "optim.lr": 1e-3,
        "optim.warmup_steps": 2,
        "eval.every_steps": 5,
        "eval.max_batches": 2,
        "checkpoint.every_steps": 5,
        "checkpoint.keep_last": 3,
        "log.every_steps": 1,
        "log.progress": False,
        "log.plots": False,  # matplotlib's import: 1.5 s a process
        "log.tensorboard": False,
        "log.sample_tokens": 4,
        "run.dir": str(run_dir),
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"--{k}={v}" for k, v in base.items()]


def _env() -> dict[str, str]:
    # src first: the workers import this checkout's package, also from a copy of the repo
    # whose editable install points elsewhere; the root for the tests' worker scripts.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    env.pop("CI", None)  # optional-dependency checks are pytest's, not the workers'
    return env


def _torchrun(
    target: list[str], args: list[str], timeout: float = 120, nproc: int = 2, check: bool = True
) -> subprocess.CompletedProcess:
    """``torchrun`` of ``target`` on ``nproc`` local ranks; with ``check``, it must succeed."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *target,
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _losses(run_dir: Path, split: str = "train") -> list[float]:
    return [loss for _, loss in losses(run_dir, split)]


def _weights(run_dir: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / step_dir_name(step) / MODEL_FILE))


def _assert_same_run(
    run: Path, reference: Path, first_step: int = 1, param_atol: float = PARAM_ATOL
) -> dict[str, float]:
    """Same losses (relative 1e-6) and final weights (absolute ``param_atol``) as
    ``reference``."""
    got, want = _losses(run), _losses(reference)[first_step - 1 :]
    assert len(got) == len(want) == STEPS - first_step + 1
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(got, want, strict=True))
    assert loss_rel <= LOSS_RTOL, (got, want)
    # The gradient norm sees the loss normalization (the global label count, the rank
    # averaging), which Adam's scale invariance would hide from the weights.
    norms = [r["grad_norm"] for r in read_metrics(run) if r["split"] == "train"]
    ref_norms = [r["grad_norm"] for r in read_metrics(reference) if r["split"] == "train"]
    assert norms == pytest.approx(ref_norms[first_step - 1 :], rel=1e-5)
    a, b = _weights(run), _weights(reference)
    assert a.keys() == b.keys()
    param_abs = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert param_abs <= param_atol
    # training moved the weights far more than the tolerance: the comparison means something
    start = _weights(reference, 5)
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 100 * param_atol
    return {"loss_rel": loss_rel, "param_abs": param_abs}


def _few_shot_task(tmp_path: Path) -> tuple[str, FewShotTaskConfig]:
    """A labeled task of 15 questions (an odd number: the ranks' shares differ), as an
    ``eval.tasks`` override and as the config ``pretrain fewshot`` takes."""
    rng = random.Random(0)
    words = "the a of and to in was he it his".split()
    files = {}
    for name, n in (("train", 20), ("eval", 15)):
        lines = [
            json.dumps({"text": " ".join(rng.choices(words, k=4)), "label": rng.randrange(2)})
            for _ in range(n)
        ]
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(lines) + "\n")
    task = FewShotTaskConfig(name="words", train=[str(files["train"])], eval=[str(files["eval"])],
                             answers={"0": "no", "1": "yes"}, shots=2)  # fmt: skip
    override = (f"[{{name: words, train: [{files['train']}], eval: [{files['eval']}], "
                "answers: {0: 'no', 1: 'yes'}, shots: 2}]")  # fmt: skip
    return override, task


def _assert_tasks_scored_as_one_process_scores_them(run: Path, task: FewShotTaskConfig) -> None:
    """The accuracies logged at each evaluation are those ``pretrain fewshot`` gives the
    checkpoint of that step in one process."""
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [5, 10]
    for record in val:
        during = record["downstream"]["words"]
        after = few_shot_eval(run, task, checkpoint=step_dir_name(record["step"]))
        assert during["examples"] == after["examples"] == 15
        for key in ("accuracy", "accuracy_per_char", "accuracy_calibrated"):
            assert during[key] == after[key], (record["step"], key, during, after)


def _one_process_and_two_ranks(
    shards_dir: Path,
    tokenizer_dir: Path,
    tmp_path: Path,
    strategy: str,
    launched_only: tuple[str, ...] = (),
    **overrides,
) -> tuple[Path, Path]:
    """The same run twice: in this process (one thread, as ``single_run``), then on 2 ranks
    under ``strategy`` (and the ``launched_only`` arguments); returns both run directories."""
    single, launched = tmp_path / "single", tmp_path / strategy
    torch.set_num_threads(1)
    try:
        args = _overrides(shards_dir, tokenizer_dir, single, **overrides)
        Trainer(load_config(ExperimentConfig, None, args)).fit()
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    args = _overrides(shards_dir, tokenizer_dir, launched, **overrides)
    _torchrun(
        ["-m", "pretrain", "train"],
        [*args, f"--distributed.strategy={strategy}", *launched_only],
    )
    return single, launched


@pytest.mark.parametrize("batch_worker", ["none", "process"])  # drawn by each rank, or its worker
def test_ddp_equals_one_process_with_twice_the_accumulation(
    batch_worker, single_run, shards_dir, tokenizer_dir, tmp_path
):
    run = tmp_path / "ddp"
    tasks, task = _few_shot_task(tmp_path)  # each rank scores its share of the questions
    args = _overrides(
        shards_dir,
        tokenizer_dir,
        run,
        distributed__strategy="ddp",
        data__batch_worker=batch_worker,
        eval__tasks=tasks,
    )
    _torchrun(["-m", "pretrain", "train"], args)
    diffs = _assert_same_run(run, single_run)
    _assert_tasks_scored_as_one_process_scores_them(run, task)
    print("ddp vs single:", diffs)
    val, ref_val = _losses(run, "val"), _losses(single_run, "val")
    assert val == pytest.approx(ref_val, rel=1e-6)
    state = json.loads((run / "checkpoints" / step_dir_name(STEPS) / "state.json").read_text())
    assert state["world_size"] == 2 and state["loader"]["num_samples_consumed"] == STEPS * 8
    assert not (run / "checkpoints" / step_dir_name(STEPS) / SHARDED_DIR).exists()
    records = read_metrics(run)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert records[-1]["tokens"] == STEPS * 256  # tokens of both ranks


def test_ddp_skips_the_spikes_one_process_skips(shards_dir, tokenizer_dir, tmp_path):
    """A tight spike threshold skips several steps; the two ranks skip the steps one process
    skips and stay equal to it. (Here the gradient norm decides: the loss falls every step.
    tests/unit/test_step_sums.py shows that the loss checked is the one of all ranks.)"""
    spikes = {"train__spike_sigma": 1.5, "train__spike_window_steps": 2}
    single, ddp = _one_process_and_two_ranks(shards_dir, tokenizer_dir, tmp_path, "ddp", **spikes)
    _assert_same_run(ddp, single)

    def spike_steps(run: Path) -> list[int]:
        return [r["spike_steps"] for r in read_metrics(run) if r["split"] == "train"]

    assert spike_steps(ddp) == spike_steps(single)
    assert 2 <= spike_steps(single)[-1] <= STEPS - 4, spike_steps(single)


# Muon's Newton-Schulz iterations in fp32 on any CPU: in bf16 (native on some CPUs) they
# amplify the last-bit differences of gradients added in another order, to 1.9e-5 of the
# loss by step 5 on 2 DDP ranks. Even in fp32 the orthogonalization amplifies them: the
# weights of 2 ranks met the 1e-5 bound on the AMD EPYC machines of earlier sessions, and
# were 1.17e-5 off on an Intel Xeon with AVX-512 (session 22).
MUON = {"optim__name": "muon", "optim__lr": 1e-2, "optim__muon_precision": "fp32"}
MUON_PARAM_ATOL = 3e-5


def test_ddp_with_muon_equals_one_process(shards_dir, tokenizer_dir, tmp_path):
    """Muon orthogonalizes the all-reduced gradient's momentum on every rank: the ranks take
    the update one process takes, and stay equal to it."""
    muon = MUON
    single, ddp = _one_process_and_two_ranks(shards_dir, tokenizer_dir, tmp_path, "ddp", **muon)
    _assert_same_run(ddp, single, param_atol=MUON_PARAM_ATOL)
    optim = torch.load(ddp / "checkpoints" / step_dir_name(STEPS) / "optim.pt", weights_only=True)[
        "optimizer"
    ]
    muon_group = optim["param_groups"][0]
    assert muon_group["algorithm"] == "muon"
    assert all("momentum_buffer" in optim["state"][i] for i in muon_group["params"])


def test_fsdp_with_muon_equals_one_process(shards_dir, tokenizer_dir, tmp_path):
    """Each sharded matrix's update is gathered whole, orthogonalized (q, k, v and gate, up as
    their own blocks) and added shard by shard: one process's update. The momentum stays
    sharded in the checkpoint."""
    muon = MUON
    single, fsdp = _one_process_and_two_ranks(shards_dir, tokenizer_dir, tmp_path, "fsdp", **muon)
    _assert_same_run(fsdp, single, param_atol=MUON_PARAM_ATOL)
    shards = list((fsdp / "checkpoints" / step_dir_name(STEPS) / SHARDED_DIR).glob("*.distcp"))
    assert len(shards) == 2


def test_fsdp_trains_a_mixture_of_experts_as_one_process(shards_dir, tokenizer_dir, tmp_path):
    """The stacked expert weights are sharded by expert, the load-balancing loss is on, and
    the run is one process's. One window a micro-batch: the balancing loss is a statistic of
    the micro-batch's tokens, so it is the same only where the micro-batches are (the ranks
    read every other window). With equal micro-batches this cannot tell how each term is
    weighted; tests/unit/test_moe.py checks the weighting by label tokens."""
    moe = {"model__n_experts": 4, "model__d_ff": 64, "train__micro_batch_size": 1}
    single, fsdp = _one_process_and_two_ranks(shards_dir, tokenizer_dir, tmp_path, "fsdp", **moe)
    _assert_same_run(fsdp, single)
    assert _weights(fsdp)["blocks.0.mlp.gate_up"].shape == (4, 128, 64)


@pytest.mark.slow
def test_fsdp_with_blocks_compiled_follows_one_eager_process(
    single_run, shards_dir, tokenizer_dir, tmp_path
):
    """Each block compiled in place, then sharded: FSDP2's gather and reduce hooks run around
    the compiled blocks, and training follows the eager single process (to compiled
    arithmetic's rounding, 1e-5)."""
    run = tmp_path / "fsdp_compiled"
    args = _overrides(
        shards_dir, tokenizer_dir, run, distributed__strategy="fsdp", train__compile="true"
    )
    _torchrun([str(REPO / "tests" / "distributed" / "record_compile.py"), str(tmp_path)], args, 300)
    assert _losses(run) == pytest.approx(_losses(single_run), rel=1e-5)
    assert _losses(run, "val") == pytest.approx(_losses(single_run, "val"), rel=1e-5)
    for rank in (0, 1):
        facts = json.loads((tmp_path / f"compile_rank{rank}.json").read_text())
        print(f"rank {rank}:", facts)
        assert facts["compiled_blocks"] == [True, True]
        assert facts["fsdp_blocks"] == [True, True]
        # The first step compiled two graphs: one serves both blocks, the other is the loss's
        # chunk. The evaluation after step 5 adds the blocks' no-grad graph; nothing else
        # recompiles.
        assert facts["graphs_after_each_step"] == [2] * 5 + [3] * (STEPS - 5)
        assert facts["graph_breaks"] == 0


def test_fsdp_equals_one_process_reads_disjoint_data_and_resumes_on_one_rank(
    single_run, shards_dir, tokenizer_dir, tmp_path, caplog
):
    run = tmp_path / "fsdp"
    tasks, task = _few_shot_task(tmp_path)  # every rank scores every question, in lockstep
    args = _overrides(
        shards_dir, tokenizer_dir, run, distributed__strategy="fsdp", eval__tasks=tasks
    )
    _torchrun([str(REPO / "tests" / "distributed" / "record_samples.py"), str(tmp_path)], args)
    diffs = _assert_same_run(run, single_run)
    _assert_tasks_scored_as_one_process_scores_them(run, task)
    print("fsdp vs single:", diffs)
    # evaluation split over the ranks (FSDP: in lockstep) reports what one process reports
    assert _losses(run, "val") == pytest.approx(_losses(single_run, "val"), rel=1e-6)

    # Each rank read its own stride; together exactly the samples one process reads.
    seen = [json.loads((tmp_path / f"samples_rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(STEPS * 8))
    assert all(s % 2 == 0 for s in seen[0]) and all(s % 2 == 1 for s in seen[1])

    # The sharded checkpoint: DCP shards of both ranks plus consolidated weights.
    step_dir = run / "checkpoints" / step_dir_name(STEPS)
    assert {p.name for p in (step_dir / SHARDED_DIR).iterdir()} >= {
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    }
    assert not list((run / "checkpoints").glob("*.tmp"))
    loaded = load_run(run)  # export, eval and generate read the consolidated weights
    assert loaded.step == STEPS
    ref = _weights(single_run)
    for name, value in loaded.model.state_dict().items():
        if name in ref:
            torch.testing.assert_close(value, ref[name], atol=PARAM_ATOL, rtol=0)

    # Saved on 2 ranks at step 5, resumed in one plain process: the rest of the run is the
    # single-process one (same samples, same optimizer moments), up to summation order.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / step_dir_name(STEPS))
    cfg = load_config(ExperimentConfig, None, _overrides(shards_dir, tokenizer_dir, resumed))
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.simplefilter("always")
            Trainer(cfg, resume=True).fit()
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert "the checkpoint was saved on 2 rank(s), this run has 1" in caplog.text
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]
    records = [r for r in read_metrics(resumed) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    got = [r["loss"] for r in records[5:]]
    want = _losses(single_run)[5:]
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    a, b = _weights(resumed), _weights(single_run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= PARAM_ATOL


def _launch_two_ranks(args: list[str]) -> list[subprocess.Popen]:
    """``pretrain train`` as ranks 0 and 1 of one group, started by hand (not torchrun), so a
    test can stop or kill one of them."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = _env() | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pretrain", "train", *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def test_a_dead_rank_stops_the_other_with_a_clear_error(shards_dir, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    timeout_s = 20
    args = _overrides(
        shards_dir,
        tokenizer_dir,
        run,
        distributed__strategy="ddp",
        distributed__timeout_seconds=timeout_s,
        train__max_steps=100_000,
        eval__every_steps=0,
        checkpoint__every_steps=0,
    )
    procs = _launch_two_ranks(args)
    try:
        deadline = time.monotonic() + 90
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, "training did not start"
            assert all(p.poll() is None for p in procs), procs[0].communicate()
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=timeout_s + 30)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()  # reap it and close its pipes
    assert procs[0].returncode not in (0, None)
    assert "another rank died" in stderr, stderr[-3000:]
    assert waited < timeout_s + 10
    print(f"rank 0 exited {waited:.1f} s after rank 1 was killed")


def test_ddp_rolls_back_after_spikes_as_one_process_does(shards_dir, tokenizer_dir, tmp_path):
    """Spikes in the 7th and 8th queued steps: the run goes back to step 5's checkpoint and
    trains steps 6-10 on later data. Both ranks decide it from the summed loss and the same
    gradient norm and load the checkpoint together; the run is the single process's."""
    from tests.distributed.spike_in_steps import spiking

    spikes = "7:100,8:1e4"
    settings = dict(
        train__spike_sigma=6, train__spike_window_steps=8, train__spike_rollback_after=2
    )
    single = tmp_path / "single"
    torch.set_num_threads(1)
    try:
        cfg = load_config(
            ExperimentConfig, None, _overrides(shards_dir, tokenizer_dir, single, **settings)
        )
        with spiking({7: 100.0, 8: 1e4}):
            Trainer(cfg).fit()
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    ddp = tmp_path / "ddp"
    args = _overrides(shards_dir, tokenizer_dir, ddp, distributed__strategy="ddp", **settings)
    _torchrun([str(REPO / "tests" / "distributed" / "spike_in_steps.py"), spikes], args)
    # (Step 5's gradient norm also stands out of a window of 4 this flat: both runs agree.)
    rollbacks = [(run / "rollbacks.jsonl").read_text().splitlines() for run in (single, ddp)]
    assert rollbacks[0] == rollbacks[1] and len(rollbacks[0]) == 1
    record = json.loads(rollbacks[0][0])
    assert record["step"] == 5 and 7 in record["spike_steps"]
    _assert_same_run(ddp, single)
