"""Guided Backpropagation (Springenberg et al. 2015): ReLU gradients gated by their sign too.

Inside :func:`guided_relus` every ``nn.ReLU`` and ``nn.ReLU6`` (any ``nn.Hardtanh`` clamping
at 0) computes its usual forward, but its backward passes only *positive* gradients where the
unit was active: ``grad_in = relu(grad_out) * [lower < x < upper]``, Captum's definition
(``GuidedBackprop`` relus the ReLU's input gradient). The swap replaces the module's
``forward`` by an instance attribute and removes it again in ``finally``: the caller keeps the
very same module objects, ``inplace`` flags and hooks, also after an exception.

A network with smooth activations (SiLU, GELU, Mish, ELU, LeakyReLU, Sigmoid, Tanh, ...) has
no guided gradient: :func:`guided_relus` refuses it in one line naming them, rather than guide
only its ReLUs. Activations called as functions in ``forward`` (``F.relu``, ``torch.sigmoid``)
cannot be swapped; :func:`watch_activations` sees such calls during the forward pass so that
the caller can refuse them too (see :func:`geocam.attribution.input_gradients`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from geocam.errors import GeocamError

_SMOOTH_TYPES: tuple[type[nn.Module], ...] = (
    nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.CELU, nn.SELU,
    nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.LogSigmoid,
    nn.Softsign, nn.Tanhshrink, nn.GLU, nn.Hardtanh,
)  # fmt: skip
"""Activation modules without a guided gradient (a Hardtanh clamping at 0, e.g. ReLU6, has one)."""

_SMOOTH_NAMES = ("silu", "swish", "gelu", "mish", "sigmoid", "tanh", "softplus", "selu", "celu",
                 "glu", "leaky", "prelu")  # fmt: skip
"""Class-name fragments of other libraries' activation modules (timm's Swish, GELUTanh...)."""

_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu", F.relu_: "relu", torch.relu: "relu", torch.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu", F.relu6: "relu6",
    F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh", F.silu: "silu", F.gelu: "gelu",
    F.mish: "mish", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.leaky_relu: "leaky_relu", F.softplus: "softplus",
    F.prelu: "prelu", F.sigmoid: "sigmoid", torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid", F.tanh: "tanh", torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
}  # fmt: skip
"""Activation functions a ``forward`` may call directly; guided backprop cannot swap those."""


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, lower, upper)`` whose backward keeps only positive gradients (guided)."""

    @staticmethod
    def forward(x: torch.Tensor, lower: float, upper: float | None) -> torch.Tensor:
        return x.clamp(min=lower, max=upper)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, lower, upper = inputs
        ctx.save_for_backward(x)
        ctx.bounds = (lower, upper)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return guided_gate(x, grad, *ctx.bounds), None, None


def guided_gate(
    x: torch.Tensor, grad: torch.Tensor, lower: float = 0.0, upper: float | None = None
) -> torch.Tensor:
    """The guided gradient of a clamp: ``relu(grad)`` where ``lower < x < upper``, else 0.

    The plain gradient of ReLU (``lower`` 0) and ReLU6 (``upper`` 6) with its negative part
    removed, as in Springenberg et al. and Captum.
    """
    active = x > lower
    if upper is not None:
        active = active & (x < upper)
    return torch.where(active, grad.clamp(min=0), torch.zeros_like(grad))


def _bounds(module: nn.Module) -> tuple[float, float | None] | None:
    """The clamp a ReLU-like module computes, or None for any other module."""
    if isinstance(module, nn.ReLU):
        return 0.0, None
    if isinstance(module, nn.Hardtanh) and module.min_val == 0:  # ReLU6 and its kin
        return 0.0, float(module.max_val)
    return None


def smooth_activations(model: nn.Module) -> Counter[str]:
    """Activation modules of ``model`` with no guided gradient, counted by class name."""
    found: Counter[str] = Counter()
    for module in model.modules():
        if _bounds(module) is not None:
            continue
        name = type(module).__name__
        lower = name.lower()
        if (
            isinstance(module, _SMOOTH_TYPES)
            or lower == "elu"
            or any(part in lower for part in _SMOOTH_NAMES)
        ):
            found[name] += 1
    return found


def check_guidable(model: nn.Module) -> None:
    """Refuse, in one line naming them, a network with activations that cannot be guided."""
    smooth = smooth_activations(model)
    if smooth:
        names = ", ".join(f"{name} x{count}" for name, count in sorted(smooth.items()))
        raise GeocamError(
            f"guided backprop is defined for ReLU and ReLU6 only, and this network has other "
            f"activations ({names}): choose --method saliency, inputxgradient, occlusion or a "
            "CAM method"
        )


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Every ReLU/ReLU6 module of ``model`` backpropagates guided gradients inside the block.

    Yields how many modules were swapped. Refuses smooth activations first (nothing is changed
    then). Each swapped module gets an instance ``forward`` that is removed in ``finally`` (an
    instance ``forward`` the caller had set is put back), so modules, flags and hooks are
    exactly the caller's afterwards. The guided forward is out of place whatever ``inplace``
    says (the values are the same; a network that relies on a ReLU modifying its input in
    place would differ).
    """
    check_guidable(model)
    swapped: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            bounds = _bounds(module)
            if bounds is None:
                continue
            swapped.append((module, module.__dict__.get("forward", _ABSENT)))
            module.forward = _guided_forward(*bounds)
        yield len(swapped)
    finally:
        for module, before in reversed(swapped):
            if before is _ABSENT:
                del module.forward
            else:
                module.forward = before


_ABSENT = object()


def _guided_forward(lower: float, upper: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _GuidedClamp.apply(x, lower, upper)
        return out

    return forward


class _ActivationWatch(TorchFunctionMode):
    """Records activation functions called (as functions, not modules) while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = _FUNCTIONS.get(func)
        if name is not None:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def watch_activations() -> Iterator[Counter[str]]:
    """Count the activation functions called directly (``F.relu``, ``torch.sigmoid``...) inside.

    Swapped modules (see :func:`guided_relus`) call none, so inside both a non-empty count
    means activations that guided backprop did not reach.
    """
    watch = _ActivationWatch()
    with watch:
        yield watch.seen


def refuse_functional(seen: Counter[str]) -> None:
    """One line naming the activation functions a guided pass met, if any."""
    if seen:
        names = ", ".join(f"{name} x{count}" for name, count in sorted(seen.items()))
        raise GeocamError(
            f"guided backprop swaps activation modules, and this network calls activation "
            f"functions in its forward ({names}), which it cannot swap: choose --method "
            "saliency, inputxgradient, occlusion or a CAM method"
        )
