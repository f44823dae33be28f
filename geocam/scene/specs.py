"""The products of a scene run: their grids, bands, tags, and how the class map is decided."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geocam.models import ModelSpec
from geocam.output import Band
from geocam.scene.options import Explanation, Products
from geocam.sources import Grid
from geocam.tiling import TileLayout, native_transform


@dataclass(frozen=True)
class ProductSpec:
    """One output raster as the engine will fill it, with tags describing the run.

    ``categories`` names the values of a class map (None for the other products).
    """

    name: str
    grid: Grid
    bands: list[Band]
    dtype: str
    nodata: float
    tags: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] | None = None


def class_map_names(classes: Sequence[str]) -> tuple[str, ...]:
    """The values of the class map: the classes, or ``not X``, ``X`` for a one-channel network.

    A one-channel (sigmoid) network predicts its class where the probability exceeds the
    threshold: its class map holds 1 there and 0 elsewhere, never "class 0 everywhere".
    """
    return (f"not {classes[0]}", classes[0]) if len(classes) == 1 else tuple(classes)


def class_code(spec: ModelSpec, index: int) -> int:
    """The class map's value for class ``index`` of ``spec`` (see :func:`class_map_names`)."""
    return 1 if len(spec.classes) == 1 else index


def classes_from_probabilities(
    sums: np.ndarray, weights: np.ndarray, threshold: float | None = None
) -> np.ndarray:
    """The class map ``(1, h, w)`` uint8 from blended probabilities; 255 where nodata.

    ``sums`` ``(K, h, w)`` are weighted probability sums and ``weights`` their weights. Several
    classes: the most probable one. One class: 1 where its probability exceeds ``threshold``
    (0.5 by default), the rule of the ``predicted`` region.
    """
    covered = weights > 1e-6
    if sums.shape[0] == 1:
        mean = np.divide(sums[0], weights, out=np.zeros_like(sums[0]), where=covered)
        classes = (mean > (0.5 if threshold is None else threshold)).astype(np.uint8)
    else:
        classes = sums.argmax(axis=0).astype(np.uint8)
    classes[~covered] = 255
    out: np.ndarray = classes[None]
    return out


def product_specs(
    grid: Grid,
    spec: ModelSpec,
    classes: Sequence[int],
    stride: int,
    explanation: Explanation,
    layout: TileLayout,
    products: Products,
    precision: str,
) -> list[ProductSpec]:
    """Every product of the run, the heatmap first (``explanation.layer`` resolved)."""
    heat_grid = grid
    if products.resolution == "native":
        heat_grid = Grid(
            grid.crs,
            native_transform(grid.transform, stride),
            -(-grid.width // stride),
            -(-grid.height // stride),
        )
    names = [spec.classes[i] for i in classes]
    tags = {
        "GEOCAM_CLASSES": ",".join(names),
        "GEOCAM_METHOD": explanation.method,
        "GEOCAM_LAYER": explanation.layer or "",
        "GEOCAM_LAYER_STRIDE": str(stride),
        "GEOCAM_REGION": explanation.describe_region(),
        "GEOCAM_SCORE": explanation.score,
        "GEOCAM_WEIGHTS": "scene" if explanation.scene_weights else "tile",
        "GEOCAM_RESOLUTION": products.resolution,
        "GEOCAM_TILE": str(layout.tile),
        "GEOCAM_TILES": str(len(layout.windows())),
        "GEOCAM_PASSES": str(explanation.passes),
        "GEOCAM_OVERLAP": str(layout.overlap),
        "GEOCAM_MODEL": f"{spec.arch}/{spec.encoder}",
        "GEOCAM_PRECISION": precision,
    }
    if explanation.method == "occlusion":  # the patch as resolved by the engine
        occ = explanation.occlusion
        tags["GEOCAM_OCCLUSION"] = f"patch {occ.patch}, stride {occ.stride}, {occ.baseline}"
    bands = [
        Band(
            f"{name} {kind}",
            {"CLASS": name, "CLASS_INDEX": str(index), "KIND": kind},
            f"raw {explanation.method} (not normalised)",
        )
        for index, name in zip(classes, names, strict=True)
        for kind in ("positive", "signed")
    ]
    made = [ProductSpec("heatmap", heat_grid, bands, "float32", float("nan"), tags)]
    if products.probabilities:
        prob_bands = [Band(f"{n} probability", {"CLASS": n}, "probability") for n in names]
        made.append(ProductSpec("probabilities", grid, prob_bands, "float32", float("nan"), tags))
    if products.class_map:
        categories = class_map_names(spec.classes)
        band = Band("predicted class", {"CLASS_NAMES": ",".join(categories)})
        made.append(ProductSpec("classes", grid, [band], "uint8", 255, tags, categories))
    return made
