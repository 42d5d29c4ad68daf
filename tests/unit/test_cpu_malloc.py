"""glibc malloc tuning for CPU training: freed temporaries are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from pretrain.train.cpu_malloc import user_chose_allocator

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings are glibc's",
)

# Training steps of a small decoder (forward, chunked loss, backward), each allocating and
# freeing the same activations and gradients: the median page faults of the last six of
# twenty steps (tuned, the heap reaches its peak within the first dozen).
PROBE = """
import json, resource, sys, torch
from pretrain.train.cpu_malloc import keep_freed_memory_mapped
from pretrain.models.decoder import DecoderConfig, DecoderLM
from pretrain.objectives.base import AttentionSpec, ModelBatch
from pretrain.losses import cross_entropy_sum
applied = keep_freed_memory_mapped() if sys.argv[1] == "tune" else False
torch.manual_seed(0); torch.set_num_threads(1)
cfg = DecoderConfig(vocab_size=4096, d_model=128, n_layers=2, n_heads=2, max_seq_len=256)
model = DecoderLM(cfg)
x = torch.randint(0, 4096, (4, 257))
batch = ModelBatch(input_ids=x[:, :-1], labels=x[:, 1:], attention=AttentionSpec())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_step = []
for step in range(20):
    start = faults()
    total, n, _ = cross_entropy_sum(model(batch), batch.labels, model.output_weight)
    (total / n).backward()
    model.zero_grad(set_to_none=True)
    per_step.append(faults() - start)
last = sorted(per_step[14:])
print(json.dumps({"applied": applied, "faults_per_step": (last[2] + last[3]) / 2}))
"""


APPLY_ONLY = """
import json
from pretrain.train.cpu_malloc import keep_freed_memory_mapped
print(json.dumps({"applied": keep_freed_memory_mapped()}))
"""


def probe(mode: str, script: str = PROBE, **env: str) -> dict:
    """Run ``script`` in a fresh process (malloc settings are per process) with ``env``."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    child_env.pop("LD_PRELOAD", None)
    child_env.pop("PRETRAIN_CPU_MALLOC", None)
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
        env={**child_env, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_malloc_reuses_freed_memory_without_page_faults() -> None:
    default = probe("default")
    tuned = probe("tune")
    assert tuned["applied"] is True
    # With glibc's defaults thousands of pages are mapped afresh every step (about 2,000 to
    # 4,000 in runs when written); tuned, the memory freed by one step serves the next (0).
    assert default["faults_per_step"] > 200, default
    assert tuned["faults_per_step"] < 0.1 * default["faults_per_step"], (tuned, default)


@glibc_only
def test_an_explicit_choice_of_the_user_is_left_alone() -> None:
    assert probe("tune", APPLY_ONLY)["applied"] is True
    assert probe("tune", APPLY_ONLY, PRETRAIN_CPU_MALLOC="0")["applied"] is False
    assert probe("tune", APPLY_ONLY, MALLOC_TRIM_THRESHOLD_="1000000")["applied"] is False


def test_user_choices_are_recognised() -> None:
    assert user_chose_allocator({}) is None
    assert user_chose_allocator({"PRETRAIN_CPU_MALLOC": "1"}) is None
    assert user_chose_allocator({"PRETRAIN_CPU_MALLOC": "0"}) == "PRETRAIN_CPU_MALLOC=0"
    assert user_chose_allocator({"MALLOC_MMAP_THRESHOLD_": "1"}) == "MALLOC_MMAP_THRESHOLD_"
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so"}) == "LD_PRELOAD"
    assert user_chose_allocator({"LD_PRELOAD": ""}) is None
