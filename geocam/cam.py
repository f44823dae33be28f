"""The core engine: Grad-CAM and its variants for a class score summed over a pixel region.

The score of class ``c`` over region ``M`` is ``sum_p M(p) * logit_c(p)`` (Seg-Grad-CAM); the
gradient of that score with respect to a target layer's activations ``A`` gives the maps.

The lean path: parameters are frozen for the duration of the call and only the hooked
activation requires grad, so autograd records nothing upstream of the target layer and never
computes a weight gradient. Everything stays in torch on the model's device. Maps are returned
raw and signed at the layer's resolution; the ReLU'd map is kept beside it, and upsampling is
an explicit, separate step. Nothing is normalised per image, so maps of different tiles and
scenes stay comparable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geocam._guard import explanation_mode
from geocam.errors import GeocamError
from geocam.layers import classify, fixed_tile, from_nchw, layer_info, resolve_layer, to_nchw
from geocam.methods import METHODS as METHODS
from geocam.methods import Method as Method
from geocam.regions import Activation, Region, class_probabilities, region_weights, select_classes

Classes: TypeAlias = int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor
"""One class, several classes shared by every image, or a ``(B, K)`` table, one row per image."""

_GRADCAM_PP_EPS = 1e-6  # the same guard against 0/0 as pytorch-grad-cam 1.5.7


@dataclass(frozen=True)
class CamOptions:
    """How the engine scores, differentiates and runs; the defaults suit most networks.

    - ``score``: sum class logits (Seg-Grad-CAM) or class probabilities over the region.
    - ``activation``: how logits become probabilities (``auto``: sigmoid for one channel).
    - ``threshold``: ``predicted`` region = probability above it, instead of the argmax.
    - ``backward``: for several classes, one vmapped backward (``batched``) or one backward
      per class over the retained graph (``sequential``); ``auto`` takes ``sequential`` on the
      CPU, where it measured faster, and ``batched`` on accelerators. Both share one forward.
    - ``channels_last``: feed the network NHWC tensors (faster convolutions, same maps).
    - ``autocast``: run the forward in this reduced precision (e.g. ``torch.bfloat16``);
      maps are always computed in float32.
    """

    score: Literal["logits", "probabilities"] = "logits"
    activation: Activation = "auto"
    threshold: float | None = None
    backward: Literal["auto", "batched", "sequential"] = "auto"
    channels_last: bool = True
    autocast: torch.dtype | None = None


@dataclass(frozen=True)
class LayerGradients:
    """What one forward and backward pass yields, before any map is formed.

    ``activations`` ``(B, C, h, w)``, ``gradients`` ``(B, K, C, h, w)`` of each requested
    class's region score, ``scores`` and ``region_pixels`` ``(B, K)`` (the score's value and the
    summed region weights), ``region`` the weights themselves (``(B, K, H, W)``; ``(B, K)``
    ones for a classifier), ``output`` the network's output, all detached, in the model's
    precision (float32, or float64 for a float64 model; never less than float32).
    """

    activations: torch.Tensor
    gradients: torch.Tensor
    scores: torch.Tensor
    region_pixels: torch.Tensor
    classes: torch.Tensor
    output: torch.Tensor
    region: torch.Tensor


@dataclass(frozen=True)
class CamResult:
    """Class activation maps ``(B, K, h, w)``, raw and never normalised.

    ``signed`` is the map before the ReLU (evidence for and against the class), ``positive``
    the map after it (the usual heatmap).
    """

    signed: torch.Tensor
    positive: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    region_pixels: torch.Tensor
    layer: str
    method: Method

    def upsample(self, size: tuple[int, int]) -> CamResult:
        """Both maps resized bilinearly to ``size`` (e.g. the input's), as a new result."""
        return replace(
            self, signed=upsample(self.signed, size), positive=upsample(self.positive, size)
        )


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, K, h, w)`` maps with pixel-centre alignment."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def explain(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    layer: str,
    *,
    method: Method = "gradcam",
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
) -> CamResult:
    """Class activation maps of ``classes`` over ``region`` at ``layer`` for a batch of images.

    ``images`` are ``(B, C, H, W)`` (or ``(C, H, W)``), already normalised for the network;
    ``valid`` (True where there is data) keeps nodata pixels out of every region. All requested
    classes share one forward pass. The model is returned exactly as it was given.
    """
    if method not in METHODS:
        raise GeocamError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    grads = layer_gradients(
        model, images, classes, layer, region=region, valid=valid, options=options
    )
    signed = combine(method, grads.activations, grads.gradients)
    return CamResult(
        signed=signed,
        positive=torch.relu(signed),
        classes=grads.classes,
        scores=grads.scores,
        region_pixels=grads.region_pixels,
        layer=layer,
        method=method,
    )


def channel_weights(
    method: Method,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    activation_sums: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Per-channel weights ``(B, K, C)`` of the global methods; None for the local ones.

    Grad-CAM: the spatial mean of the gradients. Grad-CAM++: the positive gradients weighted
    by its closed-form alpha (Chattopadhay et al. 2018, as in pytorch-grad-cam), whose
    per-channel activation sums ``(B, C)`` can be given (a whole scene's) instead of taken
    from these activations.
    """
    if method == "gradcam":
        return gradients.mean(dim=(-2, -1))
    if method == "gradcam++":
        sums = activations.sum(dim=(-2, -1)) if activation_sums is None else activation_sums
        return gradcam_pp_terms(gradients, sums).sum(dim=(-2, -1))
    return None


def gradcam_pp_terms(gradients: torch.Tensor, activation_sums: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s per-cell terms ``relu(G) * alpha(G)``, ``(B, K, C, h, w)``.

    ``alpha = G^2 / (2 G^2 + sum(A) G^3)`` per cell, with the per-channel activation sums
    ``(B, C)`` over the whole map (or scene). Summed over the cells they give the weights; the
    terms are not additive in ``G``, so a scene's weights need each cell's *total* gradient.
    """
    squared = gradients.pow(2)
    alpha = squared / (
        2 * squared + activation_sums[:, None, :, None, None] * gradients.pow(3) + _GRADCAM_PP_EPS
    )
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    return torch.relu(gradients) * alpha


def combine(
    method: Method,
    activations: torch.Tensor,
    gradients: torch.Tensor | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The signed map ``(B, K, h, w)`` of ``method``.

    Global methods use ``weights`` ``(B, K, C)`` when given (e.g. accumulated over a whole
    scene) instead of the weights of these activations alone. HiResCAM is
    ``sum_c G_c * A_c``, LayerCAM ``sum_c relu(G_c) * A_c``: both local, element-wise.
    """
    if method in ("gradcam", "gradcam++") and weights is not None:
        return torch.einsum("bkc,bchw->bkhw", weights, activations)
    if gradients is None:
        raise ValueError(f"{method} needs gradients, or channel weights for a global method")
    if method in ("gradcam", "gradcam++"):
        weights = channel_weights(method, activations, gradients)
        assert weights is not None
        return torch.einsum("bkc,bchw->bkhw", weights, activations)
    if method == "hirescam":
        return torch.einsum("bkchw,bchw->bkhw", gradients, activations)
    if method == "layercam":
        return torch.einsum("bkchw,bchw->bkhw", torch.relu(gradients), activations)
    raise GeocamError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def layer_gradients(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    layer: str,
    *,
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
) -> LayerGradients:
    """One shared forward and the region-score gradients of every requested class at ``layer``.

    The building block of :func:`explain`; the scene engine uses it to accumulate channel
    weights over a whole scene before forming maps.
    """
    opts = options or CamOptions()
    with _forward(model, images, layer, opts, track=True) as (batch, activations, output):
        table = class_table(classes, batch.shape[0], batch.device)
        _check_classes(table, output)
        scores, weights = _region_scores(output, table, region, valid, opts)
        gradients = _score_gradients(scores, activations, opts, layer)
    return LayerGradients(
        activations=activations.detach().to(output.dtype),
        gradients=gradients.to(output.dtype),
        scores=scores.detach(),
        region_pixels=weights.sum(dim=(-2, -1)) if weights.ndim == 4 else weights,
        classes=table,
        output=output.detach(),
        region=weights,
    )


def layer_activations(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    layer: str,
    options: CamOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target layer's activations and the network's output, from a forward pass alone.

    What the second pass of a scene needs when activations were not kept from the first.
    """
    with _forward(model, images, layer, options or CamOptions(), track=False) as (_, acts, out):
        return acts.detach().to(out.dtype), out.detach()


@contextlib.contextmanager
def _forward(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    layer: str,
    opts: CamOptions,
    *,
    track: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the network in explanation mode with the target layer's output captured.

    Yields the input batch, the captured activations as computed (a leaf that requires grad
    when ``track``) and the main output in the model's precision (at least float32).
    """
    param = next(model.parameters(), None)
    device = torch.device("cpu") if param is None else param.device
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    batch = _as_images(images, device, dtype)
    if opts.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    target = resolve_layer(model, layer)
    height, width = int(batch.shape[-2]), int(batch.shape[-1])
    info = layer_info(model, layer, int(batch.shape[1]))
    captured: list[torch.Tensor] = []

    def capture(_: nn.Module, __: object, output: object) -> torch.Tensor | None:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        facts = classify(shape, height, width) if shape else None
        layout = info.layout if info is not None else (facts[0] if facts else None)
        if layout is None and len(shape) == 4:
            layout = "NCHW"  # e.g. a 1 x 1 map of a tiny tile: as the network gives it
        if not isinstance(output, torch.Tensor) or layout is None:
            kind = shape or type(output)
            raise GeocamError(
                f"layer {layer!r} outputs {kind}, not a (B, C, H, W) feature map (nor (B, H, W, C) "
                "or tokens (B, N, C)); choose another layer (see geocam.list_layers)"
            )
        if captured:
            raise GeocamError(
                f"layer {layer!r} runs more than once per forward pass; "
                "choose a layer that runs once"
            )
        maps = to_nchw(output, layout, height, width)
        if not track:
            captured.append(maps)
            return None
        leaf = maps.detach().requires_grad_(True)
        captured.append(leaf)
        # downstream in-place ops must not alter the captured activation; the network gets its
        # own layout back, and the gradients flow through the re-layout to the leaf
        return from_nchw(leaf, layout, output).clone()

    handle = target.register_forward_hook(capture)
    grad_mode = torch.enable_grad() if track else torch.no_grad()
    try:
        with explanation_mode(model), grad_mode, _autocast(device, opts.autocast):
            output = _main_output(_run(model, batch))
            if not captured:
                raise GeocamError(f"layer {layer!r} did not run in the forward pass")
            yield batch, captured[0], output.to(dtype)
    finally:
        handle.remove()


def _run(model: nn.Module, batch: torch.Tensor) -> object:
    """The forward pass; a network that takes one fixed tile size says so in one line."""
    try:
        return model(batch)
    except GeocamError:
        raise
    except Exception as exc:
        fixed = fixed_tile(model)
        if fixed is None or batch.shape[-2:] == (fixed, fixed):
            raise
        raise GeocamError(
            f"this network takes {fixed} x {fixed} tiles, not {batch.shape[-2]} x "
            f"{batch.shape[-1]} ({type(exc).__name__}): use --tile {fixed}"
        ) from None


def class_table(classes: Classes, batch: int, device: torch.device) -> torch.Tensor:
    """Requested classes as a ``(B, K)`` index table; a per-image table must match the batch."""
    table = torch.as_tensor(classes, dtype=torch.long, device=device)
    if table.ndim == 0:
        table = table.view(1)
    if table.ndim == 1:
        if table.numel() == 0:
            raise GeocamError("classes: request at least one class")
        return table.expand(batch, -1)
    if table.ndim != 2 or table.shape[0] != batch:
        raise GeocamError(
            f"classes give targets for {table.shape[0]} images but the batch has {batch}; "
            "give one row of classes per image, or a flat list shared by all"
        )
    return table


def _as_images(
    images: torch.Tensor | np.ndarray, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    batch = torch.as_tensor(images).to(device=device, dtype=dtype).detach()
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4:
        raise GeocamError(
            f"images have shape {tuple(batch.shape)}; expected (B, C, H, W) or (C, H, W)"
        )
    return batch


def _main_output(output: object) -> torch.Tensor:
    """The logits of a network's output.

    A tensor; a tuple or list (smp with an aux head: the first); a dict under ``out``
    (torchvision), ``logits`` (transformers' dicts), else its first 4-D tensor value; an
    object with a ``.logits`` tensor (transformers' ``ModelOutput``).
    """
    if isinstance(output, dict):
        key = next((k for k in ("out", "logits") if isinstance(output.get(k), torch.Tensor)), None)
        if key is None:
            key = next(
                (k for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim == 4), None
            )
        if key is not None:
            output = output[key]
    elif isinstance(output, tuple | list) and output:
        output = output[0]
    elif not isinstance(output, torch.Tensor) and isinstance(
        getattr(output, "logits", None), torch.Tensor
    ):
        output = output.logits  # type: ignore[attr-defined]
    if not isinstance(output, torch.Tensor) or output.ndim not in (2, 4):
        kind = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise GeocamError(f"the network's output is {kind}; expected logits (B, C, H, W) or (B, C)")
    return output


def _check_classes(table: torch.Tensor, output: torch.Tensor) -> None:
    channels = output.shape[1]
    if int(table.min()) < 0 or int(table.max()) >= channels:
        raise GeocamError(
            f"class index {int(table.max()) if int(table.max()) >= channels else int(table.min())}"
            f" does not exist: the network outputs {channels} classes (0..{channels - 1})"
        )


def _region_scores(
    output: torch.Tensor,
    table: torch.Tensor,
    region: Region,
    valid: torch.Tensor | np.ndarray | None,
    opts: CamOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-summed class scores ``(B, K)`` (in the graph) and the region's weights."""
    values = class_values(output, table, opts)
    if output.ndim == 2:  # a classifier: the score is the class's own logit
        if not (isinstance(region, str) and region in ("predicted", "all")):
            raise GeocamError("a classification network has no pixels: region must be 'all'")
        return values, torch.ones_like(values).detach()
    weights = region_weights(
        region, output, table, valid=valid, activation=opts.activation, threshold=opts.threshold
    )
    return region_sum(weights, values), weights


def class_values(output: torch.Tensor, table: torch.Tensor, opts: CamOptions) -> torch.Tensor:
    """What a region score sums: the classes' logits, or their probabilities (``opts.score``)."""
    if opts.score == "probabilities":
        return class_probabilities(output, table, opts.activation)
    return select_classes(output, table)


def region_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum(weights * values)`` over the pixels, 0 outside the region (never ``0 * inf``)."""
    return torch.where(weights != 0, weights * values, torch.zeros_like(values)).sum(dim=(-2, -1))


def _score_gradients(
    scores: torch.Tensor, activations: torch.Tensor, opts: CamOptions, layer: str
) -> torch.Tensor:
    """Gradients ``(B, K, C, h, w)`` of each class's scores; images are independent in eval mode."""
    count = scores.shape[1]
    strategy = opts.backward
    if strategy == "auto":
        strategy = "sequential" if activations.device.type == "cpu" else "batched"
    try:
        if count == 1:
            (grad,) = torch.autograd.grad(scores.sum(), activations)
            return grad[:, None]
        if strategy == "batched":
            basis = torch.eye(count, dtype=scores.dtype, device=scores.device)
            grad_outputs = basis[:, None, :].expand(count, scores.shape[0], count)
            (grads,) = torch.autograd.grad(
                scores, activations, grad_outputs=grad_outputs, is_grads_batched=True
            )
            return grads.movedim(0, 1)
        return torch.stack(
            [
                torch.autograd.grad(scores[:, k].sum(), activations, retain_graph=k < count - 1)[0]
                for k in range(count)
            ],
            dim=1,
        )
    except RuntimeError as exc:
        if "does not require grad" in str(exc) or "not have been used" in str(exc):
            raise GeocamError(
                f"the output does not depend on layer {layer!r}; choose a layer on the path "
                "to the output"
            ) from None
        raise


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
