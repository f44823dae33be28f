"""The literature's baselines behind one call: pixel maps ``(B, K, H, W)`` of a region score.

:func:`attribute` is what the scene engine calls per batch of tiles for the methods of
:data:`PIXEL_METHODS`; each map is signed (the engine writes it and its positive part, as for
Grad-CAM) and at the input's resolution.
"""

from __future__ import annotations

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
from geocam.attribution.occlusion import OcclusionOptions, occlusion_maps
from geocam.attribution.result import Attribution
from geocam.cam import CamOptions, Classes, explain, upsample
from geocam.errors import GeocamError
from geocam.methods import PIXEL_METHODS, PixelMethod
from geocam.regions import Region


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
    occlusion: OcclusionOptions | None = None,
    batch_size: int = 4,
) -> Attribution:
    """``method``'s maps of each class's region score for a batch of normalised images.

    ``layer`` is Grad-CAM's target layer for ``guided-gradcam``; ``occlusion`` the
    :class:`~geocam.attribution.occlusion.OcclusionOptions` of ``occlusion`` (which runs
    ``batch_size`` perturbed copies per forward pass). The model comes
    back exactly as it was given, also after an exception.
    """
    if method not in PIXEL_METHODS:
        raise GeocamError(f"unknown method {method!r}; choose one of {', '.join(PIXEL_METHODS)}")
    if method == "occlusion":
        return occlusion_maps(
            model, images, classes, region=region, valid=valid, options=options,
            occlusion=occlusion,
            batch_size=batch_size,
        )  # fmt: skip
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
