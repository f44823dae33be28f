"""The scene engine: explain a scene of any size, tile by tile, into georeferenced heatmaps.

- :mod:`~geocam.scene.options`: what a run is asked to do (explanation, tiling, products).
- :mod:`~geocam.scene.tiles`: tiles as the network sees them (read, normalised, padded).
- :mod:`~geocam.scene.passes`: the maths of the passes, pure tensor functions.
- :mod:`~geocam.scene.specs`: the products' grids, bands and tags; the class-map rule.
- :mod:`~geocam.scene.resume`: what an interrupted run stored and where to continue.
- :mod:`~geocam.scene.engine`: the orchestrator that plans, runs the passes and flushes.
"""

from geocam.scene.engine import SceneReport, SinkFactory, explain_scene
from geocam.scene.options import (
    Explanation,
    Products,
    RegionSource,
    Resolution,
    Runtime,
    SceneRegion,
    Tiling,
    Weights,
)
from geocam.scene.resume import Checkpoint
from geocam.scene.specs import ProductSpec, class_code, class_map_names

__all__ = [
    "Checkpoint",
    "Explanation",
    "ProductSpec",
    "Products",
    "RegionSource",
    "Resolution",
    "Runtime",
    "SceneRegion",
    "SceneReport",
    "SinkFactory",
    "Tiling",
    "Weights",
    "class_code",
    "class_map_names",
    "explain_scene",
]
