"""Target layers: find them by name, list the candidates, pick a sensible default.

Layers are measured by a dry run on a non-square dummy input (160 x 224 first), which tells a
map's height from its width and so its layout: ``NCHW`` (convolutions), ``NHWC`` (channels-last
stages of Swin, pvt_v2's downsampling), ``tokens`` (``(B, N, C)`` on an h x w grid) and
``tokens+cls`` (the same after a class token). The CAM engine re-lays every layout as
``(B, C, h, w)`` for the maps (:func:`to_nchw`) and back for the network (:func:`from_nchw`).
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias, TypeVar

import torch
from torch import nn

from geocam._guard import explanation_mode
from geocam.errors import GeocamError, first_line

Layout: TypeAlias = Literal["NCHW", "NHWC", "tokens", "tokens+cls"]
T = TypeVar("T")

_DRY_RUN_SIZES = ((160, 224), (320, 448), (224, 224), (256, 256), (384, 384), (512, 512))
_MIN_SIZE = 128  # a map at this stride or coarser is a global vector, not a map

_HELPER_KINDS = (
    "Cast", "Constant", "Shape", "Pad", "Reshape", "Gather", "Unsqueeze", "Squeeze", "Slice",
    "Expand", "Range", "Identity", "Flatten", "Transpose", "Split", "Tile", "Where", "Equal",
)  # fmt: skip


@dataclass
class _Measured:
    layers: dict[str, LayerInfo]
    outputs: int | None  # the network's output channels (its class count)
    fixed: int | None  # the one square tile size the network takes, if it takes no other


_MEASURED: weakref.WeakKeyDictionary[nn.Module, _Measured] = weakref.WeakKeyDictionary()


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
    layout: Layout = "NCHW"
    helper: bool = False
    """A converted graph's module that only moves, casts or describes tensors (a Pad, a Cast)."""

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

    The dummy input is non-square (160 x 224, then 320 x 448) so that a map's height and width
    tell its layout; networks that take only a fixed square size (Swin's 224) are measured at
    it, and explaining them at another tile size fails with one line naming the size. The
    model is restored afterwards.
    """
    channels = infer_in_channels(model) if in_channels is None else in_channels
    measured = _Measured({}, None, None)

    def measure(dummy: torch.Tensor) -> None:
        found = _measure(model, dummy)
        measured.layers, measured.outputs = found
        if dummy.shape[-1] == dummy.shape[-2]:
            measured.fixed = int(dummy.shape[-1])

    dry_run(model, channels, measure)
    _MEASURED[model] = measured
    return list(measured.layers.values())


def dry_run(model: nn.Module, in_channels: int, run: Callable[[torch.Tensor], T]) -> T:
    """``run`` on zero dummies of growing sizes until the network accepts one.

    Any exception counts as "not this size"; when every size fails, the error names the
    likely cause and its fix (a fixed tile size, the wrong number of bands) in one line.
    """
    param = next(model.parameters(), None)
    device = torch.device("cpu") if param is None else param.device
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    errors: list[Exception] = []
    for height, width in _DRY_RUN_SIZES:
        dummy = torch.zeros(1, in_channels, height, width, device=device, dtype=dtype)
        try:
            with explanation_mode(model), torch.no_grad():
                return run(dummy)
        except GeocamError:
            raise
        except Exception as exc:  # this size is not accepted by the network: try another
            errors.append(exc)
    raise GeocamError(_rejection(in_channels, errors))


def _rejection(in_channels: int, errors: list[Exception]) -> str:
    """Why a network rejected every dummy input, and what to change."""
    first = errors[0]
    reason = f"{type(first).__name__}: {first_line(first)}"
    prefix = f"the network rejected dummy inputs of {in_channels} bands at every size tried"
    text = " ".join(str(e) for e in errors)
    channel = re.search(r"to have (\d+) channels|expected input\[.*?\] to have (\d+)", text)
    if channel:
        wanted = channel.group(1) or channel.group(2)
        return f"{prefix} ({reason}): it takes {wanted} bands; fix in_channels (and bands)"
    sizes = {int(n) for n in re.findall(r"\b(\d{2,4})\b", text)}
    tried = {d for size in _DRY_RUN_SIZES for d in size}
    fixed = sorted(n for n in sizes - tried if n >= 32 and n % 8 == 0)
    if fixed:
        size = fixed[0]
        return f"{prefix} ({reason}): this network takes {size} x {size} tiles: use --tile {size}"
    return f"{prefix} ({reason}); check in_channels and that the network is a segmentation one"


def fixed_tile(model: nn.Module) -> int | None:
    """The one square input size the network takes, when a dry run found it takes no other."""
    measured = _MEASURED.get(model)
    return None if measured is None else measured.fixed


def layer_info(model: nn.Module, name: str, in_channels: int | None = None) -> LayerInfo | None:
    """The measured facts of layer ``name`` (from the last dry run, else a new one)."""
    measured = _MEASURED.get(model)
    if measured is None:
        try:
            list_layers(model, in_channels)
        except GeocamError:
            return None
        measured = _MEASURED.get(model)
    return None if measured is None else measured.layers.get(name)


def output_channels(model: nn.Module) -> int | None:
    """The network's output channels seen in the last dry run (its class count)."""
    measured = _MEASURED.get(model)
    return None if measured is None else measured.outputs


def classify(
    shape: tuple[int, ...], height: int, width: int
) -> tuple[Layout, int, int, int] | None:
    """The layout, channels and grid ``(h, w)`` of an output of ``shape`` for an input size.

    None when the output is not a spatial map (a vector, a 1 x 1 pool, a sequence that is no
    grid). A 4-D output is NCHW when its last two sizes follow the input's aspect, NHWC when
    its middle two do; a 3-D one is tokens when ``N`` is ``h * w`` (or ``h * w + 1``).
    """
    if len(shape) == 4:
        if _is_grid(shape[2], shape[3], height, width):
            return "NCHW", shape[1], shape[2], shape[3]
        if _is_grid(shape[1], shape[2], height, width):
            return "NHWC", shape[3], shape[1], shape[2]
        return None
    if len(shape) == 3:
        grid = token_grid(shape[1], height, width)
        if grid is not None:
            layout: Layout = "tokens+cls" if grid[0] * grid[1] + 1 == shape[1] else "tokens"
            return layout, shape[2], grid[0], grid[1]
    return None


def token_grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    """The grid ``(h, w)`` of ``count`` tokens (or ``count - 1`` after a class token)."""
    for stride in range(1, min(height, width) // 2 + 1):
        for h in {height // stride, -(-height // stride)}:
            for w in {width // stride, -(-width // stride)}:
                if h * w > 1 and count in (h * w, h * w + 1):
                    return h, w
    return None


def _is_grid(h: int, w: int, height: int, width: int) -> bool:
    if h < 1 or w < 1 or (h, w) == (1, 1) or h > height or w > width:
        return False
    stride = height / h
    return abs(width / stride - w) <= 1.0 and abs(width / w - stride) <= max(1.0, 0.1 * stride)


def to_nchw(output: torch.Tensor, layout: Layout, height: int, width: int) -> torch.Tensor:
    """A layer's output in its own layout as a ``(B, C, h, w)`` map (a view where possible)."""
    if layout == "NCHW":
        return output
    if layout == "NHWC":
        return output.permute(0, 3, 1, 2)
    grid = token_grid(output.shape[1], height, width)
    if grid is None:
        raise GeocamError(
            f"{output.shape[1]} tokens do not form a grid on a {height} x {width} input"
        )
    tokens = output[:, 1:] if layout == "tokens+cls" else output
    return tokens.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)


def from_nchw(maps: torch.Tensor, layout: Layout, original: torch.Tensor) -> torch.Tensor:
    """A ``(B, C, h, w)`` map back in the network's layout (the class token kept as it was)."""
    if layout == "NCHW":
        return maps
    if layout == "NHWC":
        return maps.permute(0, 2, 3, 1)
    tokens = maps.flatten(2).transpose(1, 2)
    if layout == "tokens+cls":
        return torch.cat([original[:, :1], tokens], dim=1)
    return tokens


def _measure(model: nn.Module, dummy: torch.Tensor) -> tuple[dict[str, LayerInfo], int | None]:
    found: dict[str, LayerInfo] = {}
    height, width = int(dummy.shape[-2]), int(dummy.shape[-1])

    def recorder(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_: nn.Module, __: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                return
            facts = classify(tuple(output.shape), height, width)
            if facts is None:  # a vector, a global pool or squeeze-excite output: no map
                return
            if name in found:
                found[name] = replace(found[name], calls=found[name].calls + 1)
                return
            layout, channels, grid_h, _grid_w = facts
            kind = type(module).__name__
            found[name] = LayerInfo(
                name=name,
                kind=kind,
                channels=int(channels),
                stride=_stride(height, grid_h),
                order=len(found),
                layout=layout,
                helper=type(module).__module__.startswith("onnx2torch")
                and any(k in kind for k in _HELPER_KINDS),
            )

        return hook

    handles = [
        module.register_forward_hook(recorder(name, module))
        for name, module in model.named_modules()
        if name
    ]
    try:
        from geocam.cam import _main_output

        output = model(dummy)
        try:
            outputs: int | None = int(_main_output(output).shape[1])
        except GeocamError:
            outputs = None
    finally:
        for handle in handles:
            handle.remove()
    return found, outputs


def default_layer(model: nn.Module, in_channels: int | None = None, stage: int = -1) -> str:
    """The encoder's last stage: the shallowest, last-run module at the deepest stride.

    Looks under ``encoder.`` (smp) or ``backbone.`` (torchvision) when the network has one,
    else over all modules but a converted graph's helpers; never at the modules that end the
    graph with as many channels as classes (the logits head). Dilated backbones, whose last
    stages share a stride, give their last named stage (``backbone.layer4``).
    For a ResNet-encoded smp network this is ``encoder.layer4``; ``stage=-2`` gives the
    stage before it (``encoder.layer3``, at half the stride), and so on.
    """
    layers = [info for info in list_layers(model, in_channels) if not info.helper]
    classes = output_channels(model)
    while layers and layers[-1].channels == classes:  # the head, its upsampling: logits
        layers.pop()
    for prefix in ("encoder.", "backbone."):
        if hasattr(model, prefix[:-1]) and any(i.name.startswith(prefix) for i in layers):
            layers = [info for info in layers if info.name.startswith(prefix)]
            break
    # a target runs once per pass and keeps a spatial map (not a 1 x 1 squeeze-excite vector)
    layers = [info for info in layers if info.calls == 1 and info.stride < _MIN_SIZE]
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
