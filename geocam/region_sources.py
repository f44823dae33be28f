"""Regions of a scene given as files or map coordinates, read window by window on its grid.

``mask:PATH`` (a raster mask, warped onto the scene's grid if it is on another one),
``vector:PATH[:LAYER]`` (polygons in any CRS, optionally filtered by ``FIELD=VALUE``,
reprojected and rasterized per window) and ``bbox:MINX,MINY,MAXX,MAXY[,CRS]`` (map
coordinates, in the scene's CRS unless one is given).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geocam.errors import GeocamError, first_line
from geocam.sources import Grid, same_grid


def open_region(text: str, grid: Grid, where: str | None = None) -> MaskRegion | ShapeRegion:
    """The region described by ``text`` (``mask:``, ``vector:`` or ``bbox:``) on ``grid``."""
    kind, _, rest = text.partition(":")
    if kind == "mask" and rest:
        return MaskRegion(Path(rest), grid)
    if kind == "vector" and rest:
        path, _, layer = rest.partition(":")
        return ShapeRegion.from_vector(Path(path), layer or None, where, grid)
    if kind == "bbox" and rest:
        return ShapeRegion.from_bbox(rest, grid)
    raise GeocamError(
        f"--region {text!r}: use predicted, all, mask:PATH, vector:PATH[:LAYER] or "
        "bbox:MINX,MINY,MAXX,MAXY[,CRS]"
    )


class MaskRegion:
    """A raster mask (non-zero = in the region), on the scene's grid or warped onto it."""

    def __init__(self, path: Path, grid: Grid) -> None:
        if not path.is_file():
            raise GeocamError(f"--region mask: {path} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dataset = rasterio.open(path)
        except RasterioIOError:
            raise GeocamError(f"--region mask: {path} is not a readable raster") from None
        dataset = self._dataset
        self.reader: Any = dataset
        own = Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
        if not same_grid(grid, own):
            if dataset.crs is None or dataset.transform.is_identity:
                raise GeocamError(
                    f"--region mask: {path} is on another grid and has no georeferencing to "
                    "align it; georeference it or resample it onto the source's grid"
                )
            if not _overlaps(transform_bounds(dataset.crs, grid.crs, *dataset.bounds), grid):
                raise GeocamError(
                    f"--region mask: {path} does not overlap the scene; check its extent and CRS"
                )
            self.reader = WarpedVRT(
                dataset, crs=grid.crs, transform=grid.transform, width=grid.width,
                height=grid.height, resampling=Resampling.nearest, nodata=0,
            )  # fmt: skip
        self.name = f"mask:{path.name}"
        if not self._any(grid):
            raise GeocamError(
                f"--region mask: {path} has no non-zero pixels over the scene; nothing to "
                "explain: check the mask"
            )

    def _any(self, grid: Grid, rows: int = 1024) -> bool:
        """Whether any pixel of the scene is in the region (stops at the first strip with one)."""
        for row in range(0, grid.height, rows):
            strip = Window(0, row, grid.width, min(rows, grid.height - row))
            if self.read(strip).any():
                return True
        return False

    def read(self, window: Window) -> np.ndarray:
        """1 inside the region, 0 outside (and where the mask has nodata)."""
        data = self.reader.read(1, window=window, masked=True)
        return np.asarray(data.filled(0) != 0, dtype=np.float32)


class ShapeRegion:
    """Polygons in the scene's CRS, burnt into each window on demand."""

    def __init__(self, shapes: list[dict[str, Any]], grid: Grid, name: str) -> None:
        self.shapes = shapes
        self.grid = grid
        self.name = name
        probe = rasterize(
            [(s, 1) for s in shapes], out_shape=(grid.height, grid.width),
            transform=grid.transform, dtype="uint8", all_touched=True,
        ) if grid.height * grid.width <= 50_000_000 else None  # fmt: skip
        if probe is not None and not probe.any():
            raise GeocamError(
                f"--region {name}: the region lies outside the scene; check its coordinates and CRS"
            )

    @classmethod
    def from_vector(
        cls, path: Path, layer: str | None, where: str | None, grid: Grid
    ) -> ShapeRegion:
        """Polygons of a vector file (GeoPackage, Shapefile, GeoJSON), reprojected."""
        import fiona  # type: ignore[import-untyped]

        if not path.exists():
            raise GeocamError(f"--region vector: {path} does not exist")
        field, value = _parse_where(where)
        try:
            layers = fiona.listlayers(path)
        except (fiona.errors.DriverError, ValueError) as exc:
            raise GeocamError(f"--region vector: cannot read {path}: {first_line(exc)}") from None
        if layer is not None and layer not in layers:
            raise GeocamError(
                f"--region vector:{path}:{layer}: no layer {layer!r}; layers: {', '.join(layers)}"
            )
        try:
            with fiona.open(path, layer=layer) as collection:
                if not collection.crs:
                    raise GeocamError(
                        f"--region vector: {path} declares no CRS; add one (e.g. a .prj file)"
                    )
                try:
                    source_crs = CRS.from_user_input(collection.crs)
                except CRSError as exc:
                    raise GeocamError(
                        f"--region vector: {path} declares a CRS GDAL cannot use "
                        f"({first_line(exc)}); fix its CRS"
                    ) from None
                if field is not None and field not in collection.schema["properties"]:
                    raise GeocamError(
                        f"--where: {path} has no field {field!r}; fields: "
                        f"{', '.join(collection.schema['properties'])}"
                    )
                geometries = [
                    feature.geometry
                    for feature in collection
                    if feature.geometry is not None
                    and feature.geometry.coordinates  # an empty geometry covers nothing
                    and (field is None or str(feature.properties[field]) == value)
                ]
        except (fiona.errors.DriverError, ValueError) as exc:
            raise GeocamError(f"--region vector: cannot read {path}: {first_line(exc)}") from None
        if not geometries and field is not None:
            raise GeocamError(
                f"--where {field}={value}: no features in {path} match; check the field's values"
            )
        if not geometries:
            raise GeocamError(f"--region vector: {path} has no features; give a file with polygons")
        kinds = sorted({g.type for g in geometries} - {"Polygon", "MultiPolygon"})
        if kinds:
            raise GeocamError(
                f"--region vector: {path} holds {', '.join(kinds)} geometries; a region needs "
                "polygons (buffer points or lines first)"
            )
        try:
            shapes = [transform_geom(source_crs, grid.crs, dict(g)) for g in geometries]
        except CPLE_BaseError as exc:
            raise GeocamError(
                f"--region vector: cannot reproject {path} from {source_crs.to_string()} to the "
                f"scene's CRS ({first_line(exc)}); check that the file declares the CRS of its "
                "coordinates"
            ) from None
        name = f"vector:{path.name}" + (f":{layer}" if layer else "")
        return cls(shapes, grid, name + (f" where {field}={value}" if field else ""))

    @classmethod
    def from_bbox(cls, text: str, grid: Grid) -> ShapeRegion:
        """A rectangle ``MINX,MINY,MAXX,MAXY[,CRS]`` in map coordinates."""
        parts = text.split(",")
        try:
            minx, miny, maxx, maxy = (float(p) for p in parts[:4])
            crs = CRS.from_user_input(parts[4]) if len(parts) > 4 else grid.crs
        except (ValueError, CRSError):
            raise GeocamError(
                f"--region bbox:{text}: expected MINX,MINY,MAXX,MAXY[,CRS] with numbers"
            ) from None
        if len(parts) not in (4, 5) or minx >= maxx or miny >= maxy:
            raise GeocamError(f"--region bbox:{text}: needs MINX < MAXX and MINY < MAXY")
        if crs != grid.crs:
            minx, miny, maxx, maxy = transform_bounds(crs, grid.crs, minx, miny, maxx, maxy)
        ring = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
        return cls([{"type": "Polygon", "coordinates": [ring]}], grid, f"bbox:{text}")

    def read(self, window: Window) -> np.ndarray:
        """1 where a polygon covers a pixel's centre, else 0."""
        burnt = rasterize(
            [(s, 1) for s in self.shapes],
            out_shape=(int(window.height), int(window.width)),
            transform=window_transform(window, self.grid.transform),
            dtype="uint8",
        )
        weights: np.ndarray = burnt.astype(np.float32)
        return weights


def _overlaps(bounds: tuple[float, float, float, float], grid: Grid) -> bool:
    """Whether map ``bounds`` (left, bottom, right, top) in the grid's CRS touch the grid."""
    corners = [grid.transform * (col, row) for col in (0, grid.width) for row in (0, grid.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    left, bottom, right, top = bounds
    return left < max(xs) and right > min(xs) and bottom < max(ys) and top > min(ys)


def _parse_where(where: str | None) -> tuple[str | None, str | None]:
    if where is None:
        return None, None
    field, sep, value = where.partition("=")
    if not sep or not field:
        raise GeocamError(f"--where {where!r}: expected FIELD=VALUE")
    return field.strip(), value.strip()
