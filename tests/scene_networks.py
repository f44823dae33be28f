"""Small networks and a synthetic scene for the scene engine's tests and its maths benchmark.

Kept apart from the tests so that ``benchmarks/maths.py`` can run them against any checkout of
geocam (this module uses only what every version of the scene engine has).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.crs import CRS
from torch import nn

from geocam import ModelSpec
from geocam.output import ArraySink
from geocam.scene import (
    Explanation,
    Products,
    ProductSpec,
    Runtime,
    SceneReport,
    Tiling,
    explain_scene,
)
from geocam.sources import ArraySource, Grid

GRID_CRS = CRS.from_epsg(32618)


class LocalNet(nn.Module):
    """Purely local (no context beyond its 4x4 cell): tiles see exactly what the scene sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AvgPool2d(4))
        self.head = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(8, 3, 1))
        with torch.no_grad():  # weights that split the test scene between the classes
            self.encoder[0].weight.normal_()
            self.head[1].weight.normal_()
            self.head[1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


SPEC = ModelSpec("local", "none", 3, ("a", "b", "c"), layer="encoder.2")


def scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.random((3, height // 8, width // 8)).repeat(8, 1).repeat(8, 2)
    return (smooth + 0.2 * rng.random((3, height, width))).astype(np.float32)


def run(
    model: nn.Module,
    pixels: np.ndarray,
    explanation: Explanation,
    tiling: Tiling,
    spec: ModelSpec = SPEC,
    valid: np.ndarray | None = None,
    products: Products | None = None,
) -> tuple[dict[str, np.ndarray], SceneReport]:
    grid = Grid(GRID_CRS, Affine(10, 0, 500000, 0, -10, 4000000), pixels.shape[2], pixels.shape[1])
    sinks: dict[str, ArraySink] = {}

    def sink(product: ProductSpec) -> ArraySink:
        fill = 255 if product.dtype == "uint8" else np.nan
        bands = 1 if product.name == "classes" else len(product.bands)
        sinks[product.name] = ArraySink(
            bands, product.grid.height, product.grid.width, product.dtype, fill
        )
        return sinks[product.name]

    report = explain_scene(
        model, spec, ArraySource(pixels, grid, valid), explanation, sink,
        tiling=tiling, runtime=Runtime("cpu", progress=False), products=products,
    )  # fmt: skip
    return {name: s.data for name, s in sinks.items()}, report


class ContextNet(LocalNet):
    """LocalNet with a 3x3 convolution on the cell grid after the target layer: one cell of
    context past the layer, so tiles agree with the scene only where the overlap covers it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.context = nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.head[1].weight.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.context(self.encoder(x)))


class OneChannelNet(LocalNet):
    """A sigmoid network: one output channel, the class where its probability exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, 1:2] - 2.0


ONE_CHANNEL = ModelSpec("local", "none", 3, ("water",), layer="encoder.2")


class CoarseNet(LocalNet):
    """Logits at half the input's resolution (a head without the final upsampling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), 2)


class OverflowNet(LocalNet):
    """Activations so large that the class score overflows: gradients are not finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return self.head(features * 1e30) * 1e30


class DeadNet(LocalNet):
    """The output depends on the target layer, with a zero gradient: every map is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        return self.head(features.detach()) + 0 * features.mean()
