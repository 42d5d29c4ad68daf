"""``flex.main_kernel_options``: training and evaluation calls stay off the flex-decoding
kernel, which generation steps keep; this PyTorch accepts the option it names."""

import torch

from pretrain.models.common import flex

MAIN = ({"BACKEND": "TRITON"}, {"FORCE_USE_FLEX_ATTENTION": True})


def operands(rows: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, rows, 16, generator=g, requires_grad=requires_grad)
    k = torch.randn(1, 2, 128, 16, generator=g)
    v = torch.randn(1, 2, 128, 16, generator=g)
    return q, k, v


def test_training_calls_take_the_main_kernel_whatever_their_length():
    for rows in (1, 85):
        assert flex.main_kernel_options(*operands(rows, requires_grad=True)) in MAIN


def test_evaluation_of_a_longer_query_takes_the_main_kernel():
    with torch.no_grad():
        rows = flex.DECODING_ROWS + 1
        assert flex.main_kernel_options(*operands(rows, requires_grad=True)) in MAIN
        assert flex.main_kernel_options(*operands(85, requires_grad=False)) in MAIN


def test_generation_steps_keep_the_heuristic():
    assert flex.main_kernel_options(*operands(1, requires_grad=False)) == {}
    rows = flex.DECODING_ROWS
    assert flex.main_kernel_options(*operands(rows, requires_grad=False)) == {}
    with torch.no_grad():
        assert flex.main_kernel_options(*operands(1, requires_grad=True)) == {}


def test_the_option_is_one_this_pytorch_defines():
    """The eager CPU path ignores kernel options, so check the name (and BACKEND's value)
    against this PyTorch's own declaration of them."""
    import typing

    from torch.nn.attention import flex_attention as module

    options = flex.main_kernel_options(*operands(85, requires_grad=True))
    ((name, value),) = options.items()
    assert name in module.FlexKernelOptions.__annotations__
    if name == "BACKEND":
        assert value in typing.get_args(module._Backend)
