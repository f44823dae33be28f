"""The pixel methods' names and what each returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geocam.methods import PixelMethod


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
