"""An annotation of one class on a scene's grid: a mask raster's value, or polygons.

``mask:PATH`` is read on the scene's grid, or warped onto it (nearest neighbour) when it is on
another; one of its values marks the class (``value``; a 0/non-zero mask needs none); the
mask's nodata, and the scene's pixels it does not reach, say nothing. ``vector:PATH[:LAYER]``
(any CRS, optionally ``where`` ``FIELD=VALUE``) and ``bbox:...`` are read as the regions of
``geocam explain`` are (:mod:`geocam.region_sources`), by pixel centre; polygons are taken as
complete: outside them is not the class. Mistakes are one line naming the option to fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geocam.errors import GeocamError
from geocam.sources import Grid, same_grid

SHOWN_VALUES = 20
"""At most this many of a file's values are named in a message."""


@dataclass(frozen=True)
class Annotation:
    """Where a class is annotated on a scene's grid, and where the annotation says anything."""

    inside: np.ndarray
    """``(H, W)`` bool: annotated as the class (only where ``valid``)."""
    valid: np.ndarray
    """``(H, W)`` bool: the annotation has data there (warped masks may not reach everywhere)."""
    name: str
    """How the annotation is described in reports, e.g. ``mask:strata.tif value 5``."""
    path: Path | None = None


def read_annotation(
    text: str,
    grid: Grid,
    *,
    value: float | None = None,
    where: str | None = None,
    scene_valid: np.ndarray | None = None,
) -> Annotation:
    """The annotation ``text`` (``mask:PATH``, ``vector:PATH[:LAYER]``, ``bbox:...``) on ``grid``.

    ``value`` selects a mask's class value, ``where`` (``FIELD=VALUE``) a vector's features.
    With ``scene_valid``, an annotation with no annotated pixel, or nothing but annotated
    pixels, among the scene's valid ones is refused.
    """
    kind, _, rest = text.partition(":")
    if kind == "mask" and rest:
        if where is not None:
            raise GeocamError(
                f"--annotation-where {where}: filters polygons; for a mask use --annotation-value"
            )
        annotation = _read_mask(Path(rest), grid, value, scene_valid)
    elif kind in ("vector", "bbox") and rest:
        if value is not None:
            raise GeocamError(
                f"--annotation-value {value:g}: selects a mask's value; for polygons use "
                "--annotation-where FIELD=VALUE"
            )
        annotation = _read_shapes(text, grid, where)
    else:
        raise GeocamError(
            f"--annotation {text!r}: use mask:PATH, vector:PATH[:LAYER] or "
            "bbox:MINX,MINY,MAXX,MAXY[,CRS]"
        )
    if scene_valid is not None:
        check_coverage(annotation, scene_valid)
    return annotation


def check_coverage(annotation: Annotation, scene_valid: np.ndarray) -> None:
    """Refuse an annotation with no annotated pixel, or no other pixel, where the scene is valid."""
    valid = annotation.valid & scene_valid
    inside = int(np.count_nonzero(annotation.inside & valid))
    if inside == 0:
        raise GeocamError(
            f"--annotation {annotation.name}: no annotated pixel over the scene's valid pixels; "
            "check the class value and the file's extent"
        )
    if inside == int(np.count_nonzero(valid)):
        raise GeocamError(
            f"--annotation {annotation.name}: annotates every valid pixel of the scene, so "
            "there is nothing to tell the class from; choose a class value"
        )


def _read_mask(
    path: Path, grid: Grid, value: float | None, scene_valid: np.ndarray | None
) -> Annotation:
    """A mask raster's band 1 on ``grid``, its class value, and where it has data."""
    if not path.is_file():
        raise GeocamError(f"--annotation mask: {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioIOError:
        raise GeocamError(f"--annotation mask: {path} is not a readable raster") from None
    with dataset:
        if dataset.crs is None or dataset.transform.is_identity:
            raise GeocamError(
                f"--annotation mask: {path} has no CRS or no geotransform, so it cannot be "
                "placed on the scene; copy the scene's georeferencing into a copy of it (e.g. "
                "rio edit-info COPY.tif --like SCENE.tif --crs like --transform like)"
            )
        own = Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
        if same_grid(grid, own):
            masked = dataset.read(1, masked=True)
            values, valid = np.asarray(masked.data), ~np.ma.getmaskarray(masked)
        else:
            if not _overlaps(transform_bounds(dataset.crs, grid.crs, *dataset.bounds), grid):
                raise GeocamError(
                    f"--annotation mask: {path} does not overlap the scene; check its extent "
                    "and CRS"
                )
            with WarpedVRT(
                dataset, crs=grid.crs, transform=grid.transform, width=grid.width,
                height=grid.height, resampling=Resampling.nearest, add_alpha=True,
            ) as vrt:  # fmt: skip
                window = Window(0, 0, grid.width, grid.height)
                values = vrt.read(1, window=window)
                valid = vrt.read(vrt.count, window=window) > 0  # the alpha: where it reaches
                if dataset.nodata is not None:
                    valid &= values != dataset.nodata
        if values.dtype.kind == "f":  # NaN says nothing, declared as nodata or not
            valid &= np.isfinite(values)
    present = np.unique(values[valid & (True if scene_valid is None else scene_valid)])
    if value is None:
        if present.size > 2 or (present.size == 2 and present[0] != 0):
            raise GeocamError(
                f"--annotation mask: {path} holds values {_listed(present)}: give the class's "
                "value with --annotation-value"
            )
        inside = valid & (values != 0)
        return Annotation(inside, valid, f"mask:{path.name}", path)
    if value not in present:
        raise GeocamError(
            f"--annotation-value {value:g}: no pixel of {path} over the scene has that value; "
            f"values there: {_listed(present)}"
        )
    return Annotation(valid & (values == value), valid, f"mask:{path.name} value {value:g}", path)


def _read_shapes(text: str, grid: Grid, where: str | None) -> Annotation:
    """Polygons (or a box) burnt onto ``grid`` by pixel centre; the whole scene is valid."""
    from geocam.region_sources import ShapeRegion, open_region

    try:
        region = open_region(text, grid, where)
    except GeocamError as error:
        message = str(error)
        if where is not None and message.startswith("--where") and "no features" in message:
            raise GeocamError(_no_match(text, where)) from None
        message = message.replace("--region", "--annotation", 1).replace(
            "--where", "--annotation-where", 1
        )
        raise GeocamError(message) from None
    assert isinstance(region, ShapeRegion)
    inside = region.read(Window(0, 0, grid.width, grid.height)) > 0
    valid = np.ones_like(inside)
    path = Path(text.partition(":")[2].partition(":")[0]) if text.startswith("vector:") else None
    return Annotation(inside, valid, region.name, path)


def _no_match(text: str, where: str) -> str:
    """The message for a ``FIELD=VALUE`` that no feature has: the values that occur."""
    import fiona  # type: ignore[import-untyped]

    path, _, layer = text.partition(":")[2].partition(":")
    field, _, value = (part.strip() for part in where.partition("="))
    with fiona.open(path, layer=layer or None) as collection:
        found = sorted({str(f.properties[field]) for f in collection})
    return (
        f"--annotation-where {where}: no feature of {path} has {field}={value}; values of "
        f"{field}: {_listed(found)}"
    )


def _listed(values: Iterable[object]) -> str:
    """Values as a short list: ``1, 2, 5`` (floats without trailing zeros)."""
    items = [f"{v:g}" if isinstance(v, float | np.floating) else str(v) for v in values]
    more = len(items) - SHOWN_VALUES
    return ", ".join(items[:SHOWN_VALUES]) + (f" (and {more} more)" if more > 0 else "")


def _overlaps(bounds: tuple[float, float, float, float], grid: Grid) -> bool:
    """Whether map ``bounds`` (left, bottom, right, top) in the grid's CRS touch the grid."""
    corners = [grid.transform * (col, row) for col in (0, grid.width) for row in (0, grid.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    left, bottom, right, top = bounds
    return left < max(xs) and right > min(xs) and bottom < max(ys) and top > min(ys)
