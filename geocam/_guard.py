"""Run a caller's network in explanation mode and give it back exactly as it was."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters; restore both in ``finally``.

    Frozen parameters are the lean path: autograd then records nothing upstream of the hooked
    activation and never computes a weight gradient. Every module's own ``training`` flag and
    every parameter's ``requires_grad`` flag are restored one by one, so mixed states set by
    the caller (a frozen encoder, a BatchNorm kept in eval) survive the call.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
