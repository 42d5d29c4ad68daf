"""``flex.training_kernel_options``: differentiated calls stay off the flex-decoding kernel
(made for generation), and this PyTorch accepts the option it names."""

import torch
from torch.nn.attention.flex_attention import flex_attention

from pretrain.models.common import flex


def operands(rows: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, rows, 16, generator=g, requires_grad=requires_grad)
    k = torch.randn(1, 2, 128, 16, generator=g)
    v = torch.randn(1, 2, 128, 16, generator=g)
    return q, k, v


def test_training_calls_force_the_main_kernel():
    options = flex.training_kernel_options(*operands(85, requires_grad=True))
    assert options in ({"BACKEND": "TRITON"}, {"FORCE_USE_FLEX_ATTENTION": True})


def test_calls_without_gradients_keep_the_heuristic():
    assert flex.training_kernel_options(*operands(1, requires_grad=False)) == {}
    with torch.no_grad():
        assert flex.training_kernel_options(*operands(85, requires_grad=True)) == {}


def test_this_pytorch_accepts_the_option_and_computes_the_same():
    q, k, v = operands(85, requires_grad=True)
    options = flex.training_kernel_options(q, k, v)
    q = q.detach()  # no flex backward on CPU; the options are checked in the forward
    forced = flex_attention(q, k, v, kernel_options=options)
    torch.testing.assert_close(forced, flex_attention(q, k, v))
