"""Pixel regions over which a class's score is summed (Seg-Grad-CAM), as weight tensors.

A region becomes a ``(B, K, H, W)`` float tensor of per-pixel weights at the network's output
resolution: one plane per image and requested class. Nodata pixels get weight 0 whatever the
region says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from geocam.errors import GeocamError


@dataclass(frozen=True)
class Box:
    """A rectangle of output pixels, half-open like a slice: rows ``[row_start, row_stop)``."""

    row_start: int
    col_start: int
    row_stop: int
    col_stop: int

    def __post_init__(self) -> None:
        if not (0 <= self.row_start < self.row_stop and 0 <= self.col_start < self.col_stop):
            raise GeocamError(
                f"box {self}: needs 0 <= row_start < row_stop and 0 <= col_start < col_stop"
            )


Region: TypeAlias = Literal["predicted", "all"] | Box | torch.Tensor | np.ndarray
"""``"predicted"`` (the class's predicted mask), ``"all"``, a :class:`Box`, or a mask of
weights shaped ``(H, W)``, ``(B, H, W)`` or ``(B, K, H, W)`` (bool or float)."""

Activation: TypeAlias = Literal["auto", "softmax", "sigmoid"]


def class_probabilities(
    output: torch.Tensor, classes: torch.Tensor, activation: Activation
) -> torch.Tensor:
    """Probabilities of the requested classes, ``(B, K, ...)``, from logits ``(B, C, ...)``.

    ``auto`` is softmax over classes, or sigmoid for a single-channel (binary) output.
    """
    if resolve_activation(activation, output.shape[1]) == "sigmoid":
        return torch.sigmoid(select_classes(output, classes))
    return select_classes(torch.softmax(output, dim=1), classes)


def resolve_activation(activation: Activation, channels: int) -> Literal["softmax", "sigmoid"]:
    """What ``auto`` means for a network with ``channels`` output channels."""
    if activation == "auto":
        return "sigmoid" if channels == 1 else "softmax"
    return activation


def select_classes(output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gather the planes of ``classes`` (``(B, K)`` indexes) from ``output`` ``(B, C, ...)``."""
    index = classes.view(*classes.shape, *([1] * (output.ndim - 2)))
    return torch.gather(output, 1, index.expand(-1, -1, *output.shape[2:]))


def region_weights(
    region: Region,
    output: torch.Tensor,
    classes: torch.Tensor,
    *,
    valid: torch.Tensor | np.ndarray | None = None,
    activation: Activation = "auto",
    threshold: float | None = None,
) -> torch.Tensor:
    """Per-pixel weights ``(B, K, H, W)`` of ``region`` for a segmentation output ``(B, C, H, W)``.

    ``predicted`` is the pixels whose most probable class is the requested one (softmax), or
    whose probability exceeds ``threshold`` (default 0.5 for sigmoid outputs). ``valid``
    (``(H, W)`` or ``(B, H, W)``, True where there is data) zeroes nodata pixels.
    """
    batch, _, height, width = output.shape
    shape = (batch, classes.shape[1], height, width)
    with torch.no_grad():
        if isinstance(region, str):
            if region == "all":
                weights = output.new_ones(shape)
            elif region == "predicted":
                weights = _predicted(output, classes, activation, threshold)
            else:
                raise GeocamError(
                    f"unknown region {region!r}: use 'predicted', 'all', a Box or a mask"
                )
        elif isinstance(region, Box):
            if region.row_stop > height or region.col_stop > width:
                raise GeocamError(f"{region} lies outside the {height} x {width} output")
            weights = output.new_zeros(shape)
            weights[..., region.row_start : region.row_stop, region.col_start : region.col_stop] = 1
        else:
            weights = _mask_weights(region, shape, output.device)
        if valid is not None:
            weights = weights * valid_at(valid, batch, (height, width)).to(weights.device)[:, None]
    return weights


def valid_at(valid: torch.Tensor | np.ndarray, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B, h, w)`` float validity mask at ``size``: a cell is valid only if all it covers is.

    Masks at a coarser or finer resolution than the input (a network whose output is smaller
    than its input) are reduced with a min-pool, so partly-nodata cells never count.
    """
    mask = torch.as_tensor(valid)
    if mask.ndim == 2:
        mask = mask.expand(batch, -1, -1)
    if mask.ndim != 3 or mask.shape[0] != batch:
        raise GeocamError(
            f"valid mask has shape {tuple(mask.shape)}; expected ({batch}, H, W) or (H, W)"
        )
    mask = mask.to(torch.float32)
    if tuple(mask.shape[-2:]) != size:
        mask = -F.adaptive_max_pool2d(-mask[:, None], size)[:, 0]
    return mask


def _predicted(
    output: torch.Tensor, classes: torch.Tensor, activation: Activation, threshold: float | None
) -> torch.Tensor:
    kind = resolve_activation(activation, output.shape[1])
    if kind == "softmax" and threshold is None:
        winner = output.argmax(dim=1, keepdim=True)
        return (winner == classes[:, :, None, None]).to(output.dtype)
    probability = class_probabilities(output, classes, kind)
    return (probability > (0.5 if threshold is None else threshold)).to(output.dtype)


def _mask_weights(
    mask: torch.Tensor | np.ndarray, shape: tuple[int, int, int, int], device: torch.device
) -> torch.Tensor:
    weights = torch.as_tensor(mask, device=device)
    if weights.dtype == torch.bool or not weights.is_floating_point():
        weights = weights.to(torch.float32)
    batch, classes, height, width = shape
    if weights.ndim == 2:
        weights = weights[None, None]
    elif weights.ndim == 3:
        if weights.shape[0] != batch:
            raise GeocamError(
                f"region mask has {weights.shape[0]} images but the batch has {batch}: "
                "give one mask per image"
            )
        weights = weights[:, None]
    elif weights.ndim != 4 or weights.shape[0] != batch or weights.shape[1] not in (1, classes):
        raise GeocamError(
            f"region mask has shape {tuple(weights.shape)}; expected (H, W), ({batch}, H, W) "
            f"or ({batch}, {classes}, H, W)"
        )
    if tuple(weights.shape[-2:]) != (height, width):
        raise GeocamError(
            f"region mask is {tuple(weights.shape[-2:])} pixels but the network output is "
            f"{(height, width)}"
        )
    return weights.to(torch.float32).expand(shape)
