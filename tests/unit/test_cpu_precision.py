"""bf16 on CPU: native only with AVX512-BF16 or AMX; a warning where it would be emulated."""

from __future__ import annotations

import logging

import pytest
import torch

from pretrain.train import cpu_precision


@pytest.mark.parametrize(
    ("machine", "avx512_bf16", "amx", "native"),
    [
        ("x86_64", True, False, True),
        ("x86_64", False, True, True),
        ("AMD64", True, False, True),  # Windows' name
        ("x86_64", False, False, False),  # AVX512 without BF16 (Skylake): emulated
        ("arm64", True, True, False),  # the x86 checks mean nothing on Arm
    ],
)
def test_native_bf16_needs_avx512_bf16_or_amx_on_x86(
    monkeypatch, machine, avx512_bf16, amx, native
):
    monkeypatch.setattr(cpu_precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_precision.cpu_has_native_bf16() is native


def test_the_warning_only_for_bf16_on_a_cpu_that_emulates_it(monkeypatch, caplog):
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pretrain.train.cpu_precision"):
        assert cpu_precision.warn_if_bf16_is_emulated(cpu, bf16)
        assert not cpu_precision.warn_if_bf16_is_emulated(cpu, None)  # fp32
        assert not cpu_precision.warn_if_bf16_is_emulated(torch.device("cuda"), bf16)
    assert len(caplog.records) == 1
    assert "likely no faster than --train.precision=fp32" in caplog.records[0].getMessage()
    monkeypatch.setattr(cpu_precision, "cpu_has_native_bf16", lambda: True)
    assert not cpu_precision.warn_if_bf16_is_emulated(cpu, bf16)


def test_the_quickstart_trains_in_bf16_only_where_it_is_native(monkeypatch, tmp_path):
    from pretrain import quickstart

    monkeypatch.setattr(quickstart.torch.cuda, "is_available", lambda: False)
    for native, precision in ((True, "bf16"), (False, "auto")):
        monkeypatch.setattr(quickstart, "cpu_has_native_bf16", lambda native=native: native)
        assert quickstart.quickstart_config(tmp_path, 10, 1.0).train.precision == precision
