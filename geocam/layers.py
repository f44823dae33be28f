"""Target layers: find them by name, list the candidates, pick a sensible default."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from geocam._guard import explanation_mode
from geocam.errors import GeocamError

_DRY_RUN_SIZES = (128, 256, 512)


@dataclass(frozen=True)
class LayerInfo:
    """A module whose output is a spatial feature map ``(B, C, h, w)``, measured by a dry run.

    Outputs of 1 x 1 cells (global pools, squeeze-excite vectors) are not maps and not listed:
    their apparent stride is the dummy's size, which would inflate the network's input multiple.

    ``stride`` is the input size divided by the map's size (a float when not whole), ``order``
    the position of the module's first call in the forward pass, ``calls`` how often it runs
    in one pass (a module that runs more than once, like a shared ReLU, cannot be a target).
    """

    name: str
    kind: str
    channels: int
    stride: float
    order: int
    calls: int = 1

    @property
    def depth(self) -> int:
        """Nesting depth of the module name (``encoder.layer4`` is 2)."""
        return self.name.count(".") + 1


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name fails with the closest names suggested."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise GeocamError(
            f"unknown layer {name!r}{hint}; list candidates with `geocam layers -c CONFIG` "
            "(geocam.list_layers in Python)"
        ) from None


def infer_in_channels(model: nn.Module) -> int:
    """Input channels of the first 2-D convolution, for dry runs of arbitrary networks."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise GeocamError("cannot infer the input channels (no Conv2d): pass in_channels")


def list_layers(model: nn.Module, in_channels: int | None = None) -> list[LayerInfo]:
    """Every module with a spatial output, in forward order, measured on a small dummy input.

    The dummy input grows (128, 256, 512 pixels) until the network accepts it, so networks that
    need a larger multiple of their stride work too. The model is restored afterwards.
    """
    channels = infer_in_channels(model) if in_channels is None else in_channels
    param = next(model.parameters(), None)
    device = torch.device("cpu") if param is None else param.device
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    last_error: Exception | None = None
    for size in _DRY_RUN_SIZES:
        try:
            return _measure(model, torch.zeros(1, channels, size, size, device=device, dtype=dtype))
        except RuntimeError as exc:  # size not accepted by the network: try a larger one
            last_error = exc
    raise GeocamError(
        f"the network rejected dummy inputs of {channels} x {_DRY_RUN_SIZES[-1]} pixels: "
        f"{last_error}"
    )


def _measure(model: nn.Module, dummy: torch.Tensor) -> list[LayerInfo]:
    found: dict[str, LayerInfo] = {}

    def recorder(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_: nn.Module, __: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                return
            if output.shape[-2:] == (1, 1):  # a global pool or squeeze-excite vector: no map
                return
            if name in found:
                found[name] = replace(found[name], calls=found[name].calls + 1)
                return
            found[name] = LayerInfo(
                name=name,
                kind=type(module).__name__,
                channels=int(output.shape[1]),
                stride=_stride(dummy.shape[-2], int(output.shape[-2])),
                order=len(found),
            )

        return hook

    handles = [
        module.register_forward_hook(recorder(name, module))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with explanation_mode(model), torch.no_grad():
            model(dummy)
    finally:
        for handle in handles:
            handle.remove()
    return list(found.values())


def default_layer(model: nn.Module, in_channels: int | None = None, stage: int = -1) -> str:
    """The encoder's last stage: the shallowest, last-run module at the deepest stride.

    Looks under ``encoder.`` when the network has an encoder (all smp networks do), else over
    all modules. For a ResNet-encoded smp network this is ``encoder.layer4``; ``stage=-2``
    gives the stage before it (``encoder.layer3``, at half the stride), and so on.
    """
    layers = list_layers(model, in_channels)
    if hasattr(model, "encoder"):
        layers = [info for info in layers if info.name.startswith("encoder.")]
    # a target runs once per pass and keeps a spatial map (not a 1 x 1 squeeze-excite vector)
    layers = [info for info in layers if info.calls == 1 and info.stride < _DRY_RUN_SIZES[0]]
    strides = sorted({info.stride for info in layers})
    if not strides:
        raise GeocamError("no module with a spatial output found: name the target layer")
    if not -len(strides) <= stage < 0:
        raise GeocamError(f"stage {stage}: the encoder has {len(strides)} stages (-1 is the last)")
    candidates = [info for info in layers if info.stride == strides[stage]]
    shallowest = min(info.depth for info in candidates)
    return max(
        (info for info in candidates if info.depth == shallowest), key=lambda i: i.order
    ).name


def _stride(size: int, height: int) -> float:
    stride = size / height
    return float(round(stride)) if abs(stride - round(stride)) < 1e-9 else stride
