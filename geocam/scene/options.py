"""What a scene run is asked to do: the explanation, the tiling, the runtime and the products."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

import numpy as np
from rasterio.windows import Window

from geocam.attribution.occlusion import OcclusionOptions
from geocam.device import Precision
from geocam.methods import Method, PixelMethod

Weights: TypeAlias = Literal["scene", "tile"]
Resolution: TypeAlias = Literal["source", "native"]


class RegionSource(Protocol):
    """Per-pixel region weights of a scene, window by window (a mask raster, polygons...)."""

    def read(self, window: Window) -> np.ndarray:
        """``(h, w)`` float32 weights of the window (0 outside the region)."""
        ...


SceneRegion: TypeAlias = str | RegionSource
"""``predicted``, ``all``, ``mask:PATH``, ``vector:PATH[:LAYER]``,
``bbox:MINX,MINY,MAXX,MAXY[,CRS]`` (see :mod:`geocam.region_sources`), or any object reading
region weights per window."""


@dataclass(frozen=True)
class Explanation:
    """What to explain: classes (names or indexes), method, target layer, region, weights.

    ``where`` (``FIELD=VALUE``) keeps only matching features of a ``vector:`` region.
    ``threshold``: the ``predicted`` region (and the class map of a one-channel network) is
    probability above it (default 0.5 for one-channel networks, the argmax otherwise).
    ``method`` is a CAM method or one of the literature's pixel baselines
    (:mod:`geocam.attribution`: saliency, input x gradient, guided backprop, guided Grad-CAM,
    occlusion, the last set by ``occlusion``): those are local, one pass, ``weights`` unused.
    """

    classes: tuple[str | int, ...]
    method: Method | PixelMethod = "gradcam"
    layer: str | None = None
    region: SceneRegion = "predicted"
    weights: Weights = "scene"
    score: Literal["logits", "probabilities"] = "logits"
    threshold: float | None = None
    where: str | None = None
    region_name: str = ""  # how the region is described in the outputs' tags
    occlusion: OcclusionOptions = field(default_factory=OcclusionOptions)

    def describe_region(self) -> str:
        """The region as recorded in the outputs."""
        if self.region_name:
            return self.region_name
        return self.region if isinstance(self.region, str) else type(self.region).__name__

    @property
    def scene_weights(self) -> bool:
        """Whether the channel weights are the whole scene's (two or three passes)."""
        return self.weights == "scene" and self.method in ("gradcam", "gradcam++")

    @property
    def passes(self) -> int:
        """Passes over the scene: 3 for scene-weighted Grad-CAM++, 2 for Grad-CAM, else 1."""
        if not self.scene_weights:
            return 1
        return 3 if self.method == "gradcam++" else 2


@dataclass(frozen=True)
class Tiling:
    """How the scene is cut and fed: tile side, overlap, batch size, read-ahead, cache budget."""

    tile: int = 512
    overlap: int = 128
    batch_size: int = 4
    read_ahead: int = 2
    cache_mb: int = 1024


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs; ``progress`` None shows a bar only on a terminal.

    A callable ``progress`` is called with the tiles done and the total (every pass's tiles)
    instead of showing a bar.

    ``gdal_cache_mb`` caps GDAL's block cache while a scene is read, which otherwise grows
    towards 5 % of the machine's memory on a large scene (blocks read once stay cached).
    """

    device: str = "auto"
    precision: Precision = "fp32"
    progress: bool | Callable[[int, int], None] | None = None
    gdal_cache_mb: int = 256


@dataclass(frozen=True)
class Products:
    """Which rasters to make, at which resolution, and how to write them."""

    resolution: Resolution = "source"
    probabilities: bool = False
    class_map: bool = False
    cog: bool = False
    compress: Literal["zstd", "deflate"] = "zstd"
    overwrite: bool = False
