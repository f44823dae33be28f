"""A scene held in memory, and its maps and region scores through the scene engine.

Evaluation perturbs a scene's pixels many times (deletion curves, occlusion, Shapley values)
and explains it with many models (randomisation), so the scene is read once, as the network
reads it (bands stacked, nodata found, bands without data filled), and every map comes from
:func:`geocam.scene.explain_scene` on an :class:`~geocam.sources.ArraySource` of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from torch import nn

from geocam.models import ModelSpec
from geocam.output import ArraySink
from geocam.scene import Explanation, Runtime, SceneReport, Tiling, explain_scene
from geocam.scene.options import Products
from geocam.scene.specs import ProductSpec
from geocam.sources import ArraySource, Grid, RasterSource, mean_fill


@dataclass(frozen=True)
class Scene:
    """A scene's ``(bands, H, W)`` float32 pixels as the network reads them, and validity."""

    pixels: np.ndarray
    valid: np.ndarray
    grid: Grid
    paths: tuple[Path, ...] = ()

    def with_pixels(self, pixels: np.ndarray) -> Scene:
        """The same scene (grid, validity) with other pixels: a perturbed copy."""
        if pixels.shape != self.pixels.shape:
            raise ValueError(f"pixels {pixels.shape} do not match the scene's {self.pixels.shape}")
        return replace(self, pixels=np.asarray(pixels, dtype=np.float32))

    def source(self) -> ArraySource:
        """The scene as the scene engine's tile source."""
        return ArraySource(self.pixels, self.grid, valid=self.valid)


def load_scene(
    paths: str | Path | Sequence[str | Path],
    spec: ModelSpec,
    nodata: float | None = None,
    fallback_nodata: float | None = None,
) -> Scene:
    """Read one or more rasters stacked as ``spec`` reads them (bands, nodata rules, fill).

    ``nodata`` overrides the files' own; ``fallback_nodata`` (a preset's) applies to files
    that declare none, as in :func:`geocam.explain_raster`.
    """
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    fill = mean_fill(spec.normalisation, spec.in_channels)
    with RasterSource(paths, spec.bands, nodata, fallback_nodata, fill) as source:
        grid = source.grid
        pixels, valid = source.read(Window(0, 0, grid.width, grid.height))
    return Scene(pixels, valid, grid, tuple(Path(p) for p in paths))


def scene_maps(
    model: nn.Module,
    spec: ModelSpec,
    scene: Scene,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
) -> tuple[np.ndarray, SceneReport]:
    """The heatmap of ``scene`` at source resolution, ``(K, 2, H, W)``: positive and signed.

    Exactly the map :func:`geocam.explain_raster` writes for the same settings; NaN where
    nodata.
    """
    sinks: dict[str, ArraySink] = {}

    def sink(product: ProductSpec) -> ArraySink:
        grid = product.grid
        sinks[product.name] = ArraySink(len(product.bands), grid.height, grid.width)
        return sinks[product.name]

    runtime = runtime or Runtime(progress=False)
    report = explain_scene(
        model, spec, scene.source(), explanation, sink,
        tiling=tiling, runtime=runtime, products=Products(),
    )  # fmt: skip
    heat = sinks["heatmap"].data
    return heat.reshape(-1, 2, *heat.shape[1:]), report
