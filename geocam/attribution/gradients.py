"""Gradients of the region score with respect to the network's input, and their pixel maps.

The score is Grad-CAM's (:mod:`geocam.cam`): class ``c``'s logits (or probabilities) summed
over the region's pixels, nodata pixels excluded. The gradients are taken with respect to the
*normalised* input the network is fed (the tile after the preset's normalisation), one
backward per class over one shared forward, parameters frozen (no weight gradient).

Each method reduces the per-band gradients ``(B, K, C, H, W)`` to one map per class
``(B, K, H, W)`` at the input's resolution:

- saliency (Simonyan et al. 2014): ``max_c |dS/dx_c|``, never negative;
- input x gradient (Shrikumar et al. 2016): ``sum_c x_c * dS/dx_c``, signed;
- guided backprop (Springenberg et al. 2015): ``sum_c`` of the guided gradient, signed;
- guided Grad-CAM (Selvaraju et al. 2017): ``sum_c guided_c * up(relu(Grad-CAM))``, the
  Grad-CAM of the tile's own channel weights upsampled bilinearly to the input.

Per band, before the reduction, each equals Captum's ``Saliency(abs=True)``,
``InputXGradient``, ``GuidedBackprop`` and ``GuidedGradCam(interpolate_mode="bilinear")``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from geocam._guard import explanation_mode
from geocam.attribution.guided import guided_relus, refuse_functional, watch_activations
from geocam.cam import (
    CamOptions,
    Classes,
    _as_images,
    _autocast,
    _check_classes,
    _main_output,
    _region_scores,
    _run,
    class_table,
)
from geocam.regions import Region


@dataclass(frozen=True)
class InputGradients:
    """One forward and K backwards: the input and each class's region-score gradient.

    ``images`` ``(B, C, H, W)`` as fed (model precision), ``gradients`` ``(B, K, C, H, W)``,
    ``scores`` and ``region_pixels`` ``(B, K)``, ``region`` ``(B, K, H, W)`` weights, ``output``
    the network's output; all detached.
    """

    images: torch.Tensor
    gradients: torch.Tensor
    scores: torch.Tensor
    region_pixels: torch.Tensor
    classes: torch.Tensor
    output: torch.Tensor
    region: torch.Tensor


def input_gradients(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    *,
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
    guided: bool = False,
) -> InputGradients:
    """Gradients of each class's region score with respect to the (normalised) input.

    ``guided`` runs the pass inside :func:`~geocam.attribution.guided.guided_relus`: a network
    with smooth activation modules, or calling activation functions in its ``forward``, is
    refused in one line. The model comes back exactly as it was, also after an exception.
    """
    opts = options or CamOptions()
    param = next(model.parameters(), None)
    device = torch.device("cpu") if param is None else param.device
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    batch = _as_images(images, device, dtype)
    if opts.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    leaf = batch.detach().requires_grad_(True)
    swap = guided_relus(model) if guided else contextlib.nullcontext()
    with explanation_mode(model), swap, torch.enable_grad():
        with _autocast(device, opts.autocast):
            if guided:
                with watch_activations() as seen:
                    raw = _run(model, leaf)
                refuse_functional(seen)
            else:
                raw = _run(model, leaf)
            output = _main_output(raw).to(dtype)
        table = class_table(classes, batch.shape[0], batch.device)
        _check_classes(table, output)
        scores, weights = _region_scores(output, table, region, valid, opts)
        count = scores.shape[1]
        grads = [
            torch.autograd.grad(scores[:, k].sum(), leaf, retain_graph=k < count - 1)[0]
            for k in range(count)
        ]
    return InputGradients(
        images=batch.detach(),
        gradients=torch.stack(grads, dim=1).to(dtype),
        scores=scores.detach(),
        region_pixels=weights.sum(dim=(-2, -1)) if weights.ndim == 4 else weights,
        classes=table,
        output=output.detach(),
        region=weights,
    )


def saliency_map(gradients: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)``: the largest |gradient| over the bands (Simonyan et al.)."""
    return gradients.abs().amax(dim=2)


def input_x_gradient_map(images: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)``: input times gradient, summed over the bands."""
    return (images[:, None] * gradients).sum(dim=2)


def guided_backprop_map(gradients: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)``: guided gradients summed over the bands."""
    return gradients.sum(dim=2)


def guided_gradcam_map(gradients: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)``: guided gradients times the positive Grad-CAM, summed over the bands.

    ``gradients`` ``(B, K, C, H, W)``; ``cam`` ``(B, K, H, W)``, already at their resolution.
    """
    return (gradients * cam[:, :, None]).sum(dim=2)
