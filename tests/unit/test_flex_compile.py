"""``flex.compile_model``: Inductor's prologue fusion is off for modules that run
FlexAttention, whatever the compile mode, and untouched for the others."""

import pytest
import torch

from pretrain.models.common.flex import compile_model

pytestmark = pytest.mark.skipif(
    not hasattr(torch._inductor.config, "prologue_fusion"),
    reason="this PyTorch has no prologue fusion to switch off",
)


@pytest.mark.parametrize("mode", [None, "default", "max-autotune-no-cudagraphs"])
def test_flex_modules_compile_without_prologue_fusion(mode):
    config = compile_model(torch.nn.Linear(4, 4), True, mode=mode).get_compiler_config()
    assert config["prologue_fusion"] is False
    assert config["max_autotune"] is (mode == "max-autotune-no-cudagraphs")


def test_other_modules_keep_inductor_defaults():
    default = torch.compile(torch.nn.Linear(4, 4)).get_compiler_config()
    config = compile_model(torch.nn.Linear(4, 4), False).get_compiler_config()
    assert config["prologue_fusion"] == default["prologue_fusion"]
    assert config == default


def test_compiled_flex_module_computes_what_the_module_does():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 8)
    torch.testing.assert_close(compile_model(model, True)(x), model(x))
