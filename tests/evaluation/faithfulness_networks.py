"""A network whose region score is a known linear function of the pixels, and its scene.

``LinearScoreNet``: a 1 x 1 identity convolution (the target layer ``feat``), then a 1 x 1
head with hand-set weights: ``logit_c(p) = W[c] . x(p) + B[c]``. With the region ``all`` and
logits, the scene's score is ``sum_p (W[c] . x(p) + B[c])`` over the valid pixels: every
deletion curve and Shapley value can be worked out with numpy.
"""

from __future__ import annotations

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from torch import nn

from geocam.evaluation.scene import Scene
from geocam.models import ModelSpec
from geocam.sources import Grid

W = np.array([[0.5, -1.0, 0.25], [1.0, -2.0, 0.5]])
B = np.array([0.0, 0.375])
SPEC = ModelSpec("linear", "none", 3, ("other", "target"), layer="feat")
GRID_CRS = CRS.from_epsg(32618)


class LinearScoreNet(nn.Module):
    """``logit_c = W[c] . x + B[c]`` per pixel, through an identity 1 x 1 layer ``feat``."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 3, 1, bias=False)
        self.head = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.feat.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.head.weight.copy_(torch.from_numpy(W).view(2, 3, 1, 1))
            self.head.bias.copy_(torch.from_numpy(B))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


def linear_net() -> nn.Module:
    """The network in float64, so that scores are exact to float64 rounding."""
    return LinearScoreNet().double().eval()


def linear_scene(height: int = 40, width: int = 48, seed: int = 0, nodata: bool = True) -> Scene:
    """Pixels on a grid of eighths (exact in float32); a nodata corner when ``nodata``."""
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 64, (3, height, width)) / 8).astype(np.float32)
    valid = np.ones((height, width), dtype=bool)
    if nodata:
        valid[:5, :7] = False
        pixels[:, :5, :7] = 0
    grid = Grid(GRID_CRS, Affine(30, 0, 500000, 0, -30, 4000000), width, height)
    return Scene(pixels, valid, grid)


def contributions(scene: Scene, fill: np.ndarray, k: int = 1) -> np.ndarray:
    """Each pixel's change of class ``k``'s score when it is replaced by ``fill``'s, ``(H, W)``."""
    delta = np.einsum("c,chw->hw", W[k], fill.astype(np.float64) - scene.pixels)
    return np.where(scene.valid, delta, 0.0)


def score(scene: Scene, pixels: np.ndarray, k: int = 1) -> float:
    """Class ``k``'s score over the valid pixels (region ``all``), by numpy."""
    logits = np.einsum("c,chw->hw", W[k], pixels.astype(np.float64)) + B[k]
    return float(logits[scene.valid].sum())
