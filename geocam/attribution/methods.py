"""The literature's baselines behind one call: pixel maps ``(B, K, H, W)`` of a region score.

:func:`attribute` is what the scene engine calls per batch of tiles for the methods of
:data:`PIXEL_METHODS`; each map is signed (the engine writes it and its positive part, as for
Grad-CAM) and at the input's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

import numpy as np
import torch
from torch import nn

from geocam.attribution.gradients import (
    guided_backprop_map,
    guided_gradcam_map,
    input_gradients,
    input_x_gradient_map,
    saliency_map,
)
from geocam.cam import CamOptions, Classes, explain, upsample
from geocam.errors import GeocamError
from geocam.regions import Region

PixelMethod: TypeAlias = Literal[
    "saliency", "inputxgradient", "guided-backprop", "guided-gradcam", "occlusion"
]
PIXEL_METHODS: tuple[PixelMethod, ...] = get_args(PixelMethod)


@dataclass(frozen=True)
class Attribution:
    """Pixel maps ``(B, K, H, W)`` (signed, raw) with the score they explain.

    ``scores`` and ``region_pixels`` ``(B, K)``, ``region`` the weights ``(B, K, H, W)``,
    ``output`` the network's output for the unperturbed input.
    """

    maps: torch.Tensor
    scores: torch.Tensor
    region_pixels: torch.Tensor
    classes: torch.Tensor
    output: torch.Tensor
    region: torch.Tensor
    method: PixelMethod


def attribute(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    method: PixelMethod,
    *,
    layer: str | None = None,
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
    occlusion: object | None = None,
) -> Attribution:
    """``method``'s maps of each class's region score for a batch of normalised images.

    ``layer`` is Grad-CAM's target layer for ``guided-gradcam``; ``occlusion`` the
    :class:`~geocam.attribution.occlusion.OcclusionOptions` of ``occlusion``. The model comes
    back exactly as it was given, also after an exception.
    """
    if method not in PIXEL_METHODS:
        raise GeocamError(f"unknown method {method!r}; choose one of {', '.join(PIXEL_METHODS)}")
    if method == "occlusion":
        raise GeocamError("occlusion: not implemented yet")
    guided = method in ("guided-backprop", "guided-gradcam")
    grads = input_gradients(
        model, images, classes, region=region, valid=valid, options=options, guided=guided
    )
    if method == "saliency":
        maps = saliency_map(grads.gradients)
    elif method == "inputxgradient":
        maps = input_x_gradient_map(grads.images, grads.gradients)
    elif method == "guided-backprop":
        maps = guided_backprop_map(grads.gradients)
    else:
        if layer is None:
            raise GeocamError("guided-gradcam needs Grad-CAM's target layer: give a layer")
        cam = explain(
            model, images, grads.classes, layer, method="gradcam", region=region, valid=valid,
            options=options,
        )  # fmt: skip
        positive = upsample(cam.positive, tuple(grads.images.shape[-2:]))  # type: ignore[arg-type]
        maps = guided_gradcam_map(grads.gradients, positive.to(grads.gradients.dtype))
    return Attribution(
        maps=maps,
        scores=grads.scores,
        region_pixels=grads.region_pixels,
        classes=grads.classes,
        output=grads.output,
        region=grads.region,
        method=method,
    )


def guided_backprop(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    *,
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
) -> torch.Tensor:
    """Guided Backpropagation of each class's region score: ``(B, K, H, W)``, summed over bands.

    The per-band gradients are :func:`~geocam.attribution.input_gradients` with
    ``guided=True``.
    """
    return attribute(
        model, images, classes, "guided-backprop", region=region, valid=valid, options=options
    ).maps
