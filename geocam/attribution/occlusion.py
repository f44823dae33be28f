"""Occlusion (Zeiler & Fergus 2014): how much the region score drops when a patch is hidden.

A square patch slides over the input (every band at once); at each position the patch's pixels
are replaced by a baseline and the network is run again. The drop of the region score,
``S(x) - S(x with the patch replaced)``, is credited to every pixel of the patch, and each
pixel's value is the mean drop over the patches covering it: Captum's ``Occlusion`` with a
``(C, patch, patch)`` window, so the two agree on a tile. Positions start at 0 and step by
``stride``; the last one may overhang the edge (its window is cut there), so every pixel is
covered when ``stride <= patch``.

The region's weights are those of the unoccluded input (for ``predicted``: the unoccluded
prediction), so every perturbed score sums the same pixels. Baselines, in the network's input
(the normalised tile): ``mean`` is 0, which a preset's normalisation makes each band's mean
(the value geocam feeds for a band without data); ``blur`` is the tile under a Gaussian blur
of sigma ``patch / 2`` (replicated edges), which hides the patch's detail but keeps its colour.

Model-agnostic (forward passes only, no gradient) and batched: ``batch_size`` perturbed
copies go through the network at once. It costs ``1 + positions`` forward passes per tile;
:func:`check_cost` estimates a scene's from one timed batch and refuses beyond a bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geocam._guard import explanation_mode
from geocam.attribution.result import Attribution
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
    class_values,
    region_sum,
)
from geocam.errors import GeocamError
from geocam.regions import Region

Baseline: TypeAlias = Literal["mean", "blur"]
BASELINES: tuple[Baseline, ...] = ("mean", "blur")


@dataclass(frozen=True)
class OcclusionOptions:
    """The sliding patch and the cost bound of occlusion.

    ``patch`` side and ``stride`` in pixels (None: the scene engine takes the target layer's
    stride for the patch, and the patch for the stride: one patch per feature cell);
    ``baseline`` what hides the patch; a scene run whose estimate exceeds ``max_seconds`` is
    refused unless ``force``. Those two say whether to run, not what the maps are: they are
    left out of comparisons and ``repr`` (a run's identity, so a resumed run may change them).
    """

    patch: int | None = None
    stride: int | None = None
    baseline: Baseline = "mean"
    max_seconds: float = field(default=300.0, compare=False, repr=False)
    force: bool = field(default=False, compare=False, repr=False)

    def resolved(self, layer_stride: int) -> OcclusionOptions:
        """These options with the defaults filled in from the target layer's stride."""
        patch = self.patch or layer_stride
        return OcclusionOptions(
            patch, self.stride or patch, self.baseline, self.max_seconds, self.force
        )


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one side: ``0, stride, ...`` up to ``ceil((size - patch) / stride)``."""
    return [i * stride for i in range(math.ceil((size - patch) / stride) + 1)]


def check_patch(patch: int, stride: int, height: int, width: int) -> None:
    """Refuse a patch larger than the tile, or a stride that leaves pixels uncovered."""
    if patch < 1 or stride < 1:
        raise GeocamError(
            f"OcclusionOptions.patch ({patch}) and OcclusionOptions.stride ({stride}) must be "
            "at least 1 pixel"
        )
    if patch > min(height, width):
        raise GeocamError(
            f"OcclusionOptions.patch ({patch}) is larger than the {height} x {width} tile: "
            "choose a smaller patch or a larger tile"
        )
    if stride > patch:
        raise GeocamError(
            f"OcclusionOptions.stride ({stride}) is larger than OcclusionOptions.patch "
            f"({patch}): pixels between patches would get no value; use a stride <= the patch"
        )


def forward_passes(tiles: int, height: int, width: int, patch: int, stride: int) -> int:
    """Forward passes (images through the network) of occlusion over ``tiles`` tiles."""
    count = len(positions(height, patch, stride)) * len(positions(width, patch, stride))
    return tiles * (1 + count)


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` under a separable Gaussian blur, edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = images
    for shape, pad in (((1, -1), (radius, radius, 0, 0)), ((-1, 1), (0, 0, radius, radius))):
        weight = kernel.view(1, 1, *shape).expand(channels, 1, -1, -1).contiguous()
        out = F.conv2d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def baseline_images(images: torch.Tensor, baseline: Baseline, patch: int) -> torch.Tensor:
    """What replaces an occluded patch, per pixel: zeros (``mean``) or the blurred tile."""
    if baseline == "mean":
        return torch.zeros_like(images)
    if baseline == "blur":
        return blurred(images, patch / 2)
    raise GeocamError(
        f"OcclusionOptions.baseline {baseline!r} is unknown; choose one of {', '.join(BASELINES)}"
    )


def fixed_region_scores(
    output: torch.Tensor, table: torch.Tensor, weights: torch.Tensor, opts: CamOptions
) -> torch.Tensor:
    """Scores ``(B, K)`` of ``output`` summed with given region ``weights`` (not re-derived)."""
    values = class_values(output, table, opts)
    return values if output.ndim == 2 else region_sum(weights, values)


def occlusion_maps(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    classes: Classes,
    *,
    region: Region = "predicted",
    valid: torch.Tensor | np.ndarray | None = None,
    options: CamOptions | None = None,
    occlusion: OcclusionOptions | None = None,
    batch_size: int = 4,
) -> Attribution:
    """Occlusion maps ``(B, K, H, W)``: each pixel's mean score drop over its patches.

    ``occlusion.patch`` must be set (the scene engine sets it from the layer's stride).
    """
    opts = options or CamOptions()
    occ = occlusion or OcclusionOptions()
    if occ.patch is None:
        raise GeocamError("OcclusionOptions.patch: give the patch side in pixels")
    patch, stride = occ.patch, occ.stride or occ.patch
    param = next(model.parameters(), None)
    device = torch.device("cpu") if param is None else param.device
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    batch = _as_images(images, device, dtype)
    height, width = int(batch.shape[-2]), int(batch.shape[-1])
    check_patch(patch, stride, height, width)
    if opts.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    windows = [
        (r, min(r + patch, height), c, min(c + patch, width))
        for r in positions(height, patch, stride)
        for c in positions(width, patch, stride)
    ]
    counts = torch.zeros(height, width, dtype=dtype, device=device)
    for r0, r1, c0, c1 in windows:
        counts[r0:r1, c0:c1] += 1
    with explanation_mode(model), torch.no_grad(), _autocast(device, opts.autocast):
        output = _main_output(_run(model, batch)).to(dtype)
        table = class_table(classes, batch.shape[0], batch.device)
        _check_classes(table, output)
        scores, weights = _region_scores(output, table, region, valid, opts)
        hidden = baseline_images(batch, occ.baseline, patch)
        drops = torch.zeros(*table.shape, height, width, dtype=dtype, device=device)
        for b in range(batch.shape[0]):
            for start in range(0, len(windows), max(1, batch_size)):
                chunk = windows[start : start + max(1, batch_size)]
                copies = batch[b : b + 1].repeat(len(chunk), 1, 1, 1)
                for i, (r0, r1, c0, c1) in enumerate(chunk):
                    copies[i, :, r0:r1, c0:c1] = hidden[b, :, r0:r1, c0:c1]
                if opts.channels_last:  # (repeat gives NCHW)
                    copies = copies.contiguous(memory_format=torch.channels_last)
                out = _main_output(_run(model, copies)).to(dtype)
                rows = table[b : b + 1].expand(len(chunk), -1)
                weight = weights[b : b + 1].expand(len(chunk), *weights.shape[1:])
                drop = scores[b] - fixed_region_scores(out, rows, weight, opts)
                for i, (r0, r1, c0, c1) in enumerate(chunk):
                    drops[b, :, r0:r1, c0:c1] += drop[i][:, None, None]
    return Attribution(
        maps=drops / counts,
        scores=scores,
        region_pixels=weights.sum(dim=(-2, -1)) if weights.ndim == 4 else weights,
        classes=table,
        output=output,
        region=weights,
        method="occlusion",
    )


def batch_seconds(
    model: nn.Module,
    bands: int,
    height: int,
    width: int,
    batch_size: int,
    device: torch.device,
    options: CamOptions | None = None,
) -> float:
    """Seconds of one forward pass of ``batch_size`` tiles (zeros), timed once, no gradient."""
    opts = options or CamOptions()
    param = next(model.parameters(), None)
    dtype = torch.float64 if param is not None and param.dtype == torch.float64 else torch.float32
    images = torch.zeros(batch_size, bands, height, width, dtype=dtype, device=device)
    if opts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with explanation_mode(model), torch.no_grad(), _autocast(device, opts.autocast):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _run(model, images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def check_cost(
    passes: int, seconds_per_batch: float, batch_size: int, occ: OcclusionOptions
) -> float:
    """The estimated seconds of ``passes`` forward passes; refused above ``occ.max_seconds``.

    The estimate and how it was made are in the message; ``occ.force`` runs regardless.
    """
    seconds = passes / max(1, batch_size) * seconds_per_batch
    if seconds > occ.max_seconds and not occ.force:
        raise GeocamError(
            f"occlusion would take about {seconds:.0f} s ({passes} forward passes, "
            f"{seconds_per_batch:.2f} s per batch of {batch_size} measured once), above "
            f"OcclusionOptions.max_seconds ({occ.max_seconds:g}): use a larger "
            "OcclusionOptions.stride or patch, fewer tiles, or set OcclusionOptions.force"
        )
    return seconds
