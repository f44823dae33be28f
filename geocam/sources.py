"""Where scene pixels come from: rasters on disk (stacked, aligned) or arrays in memory.

A source answers one question: the pixels and the validity mask of a window of the scene.
Tiles are read ahead in a background thread, so reading overlaps with the network's work.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geocam.errors import GeocamError, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a scene: what every output is aligned to."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int


class TileSource(Protocol):
    """Pixels of a scene, window by window."""

    grid: Grid
    count: int

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(count, h, w)`` float32 pixels and the ``(h, w)`` bool mask, True where valid."""
        ...


class ArraySource:
    """A scene held in memory as a ``(bands, H, W)`` array (non-finite values are nodata)."""

    def __init__(self, pixels: np.ndarray, grid: Grid, valid: np.ndarray | None = None) -> None:
        if pixels.ndim != 3:
            raise GeocamError(f"pixels have shape {pixels.shape}; expected (bands, height, width)")
        if valid is not None and valid.shape != pixels.shape[1:]:
            raise GeocamError(f"valid mask {valid.shape} does not match pixels {pixels.shape[1:]}")
        self.pixels = pixels
        self.valid = valid
        self.grid = grid
        self.count = pixels.shape[0]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window's pixels as float32 and its validity."""
        rows, cols = window.toslices()
        data = np.asarray(self.pixels[:, rows, cols], dtype=np.float32)
        valid = np.asarray(np.isfinite(data).all(axis=0))
        if self.valid is not None:
            valid &= np.asarray(self.valid[rows, cols], dtype=bool)
        return data, valid


class RasterSource:
    """One or more rasters stacked band-wise as one network input, on the first one's grid.

    ``bands`` holds the 1-based bands to read from each raster (empty: all bands of each).
    Rasters on another grid are warped onto the first one's through ``WarpedVRT``. Nodata
    comes from each raster's masks, or from ``nodata`` for files that do not declare it; a
    pixel is valid where any selected band of every raster is valid and all values are finite.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        bands: Sequence[Sequence[int]] = (),
        nodata: float | None = None,
    ) -> None:
        if not paths:
            raise GeocamError("give at least one source raster")
        if bands and len(bands) != len(paths):
            raise GeocamError(
                f"the model reads {len(bands)} raster(s) but {len(paths)} were given: "
                f"pass {len(bands)} source file(s)"
            )
        self.paths = [Path(p) for p in paths]
        self.nodata = nodata
        self._datasets: list[DatasetReader | WarpedVRT] = []
        self._opened: list[DatasetReader] = []
        try:
            first = self._open(self.paths[0])
            self.grid = Grid(first.crs, first.transform, first.width, first.height)
            self._datasets.append(first)
            for path in self.paths[1:]:
                self._datasets.append(self._aligned(self._open(path)))
            self.bands = [
                self._check_bands(path, ds, tuple(sel) if bands else ())
                for path, ds, sel in zip(
                    self.paths, self._datasets, bands or [()] * len(paths), strict=True
                )
            ]
        except BaseException:
            self.close()
            raise
        self.count = sum(len(b) for b in self.bands)

    def _open(self, path: Path) -> DatasetReader:
        if not path.exists():
            raise GeocamError(f"{path}: no such file; check the path")
        try:
            with warnings.catch_warnings():  # a missing geotransform is reported below
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(path)
        except RasterioIOError as exc:
            detail = first_line(exc).replace(f"'{path}' ", "").removeprefix(f"{path.name}: ")
            raise GeocamError(
                f"{path}: not a readable raster ({detail}); give a GeoTIFF or another format "
                "GDAL opens"
            ) from None
        self._opened.append(dataset)
        no_transform = dataset.transform == Affine.identity()
        if dataset.crs is None and no_transform:
            raise GeocamError(
                f"{path}: the raster has no CRS and no geotransform; georeference it "
                "(gdal_edit.py -a_srs and -a_ullr, or copy them from the matching image)"
            )
        if dataset.crs is None:
            raise GeocamError(f"{path}: the raster has no CRS; assign one (gdal_edit.py -a_srs)")
        if no_transform:
            raise GeocamError(
                f"{path}: the raster has no geotransform; georeference it (gdal_edit.py -a_ullr)"
            )
        complex_bands = [i for i, t in enumerate(dataset.dtypes, 1) if t.startswith("complex")]
        if complex_bands:
            raise GeocamError(
                f"{path}: band(s) {complex_bands} hold complex values "
                f"({dataset.dtypes[complex_bands[0] - 1]}), which a network cannot read; "
                "convert them to real bands first (e.g. amplitude with gdal_calc.py)"
            )
        return dataset

    def _aligned(self, dataset: DatasetReader) -> DatasetReader | WarpedVRT:
        grid = self.grid
        same = (
            dataset.crs == grid.crs
            and dataset.transform.almost_equals(grid.transform)
            and (dataset.width, dataset.height) == (grid.width, grid.height)
        )
        if same:
            return dataset
        return WarpedVRT(
            dataset,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.bilinear,
        )

    def _check_bands(
        self, path: Path, dataset: DatasetReader | WarpedVRT, selected: tuple[int, ...]
    ) -> tuple[int, ...]:
        if not selected:
            return tuple(range(1, dataset.count + 1))
        bad = [b for b in selected if not 1 <= b <= dataset.count]
        if bad:
            raise GeocamError(
                f"{path}: band(s) {bad} do not exist; the raster has {dataset.count} band(s)"
            )
        return selected

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window's selected bands, stacked, as float32, and where they are valid."""
        stacks: list[np.ndarray] = []
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
        for path, dataset, bands in zip(self.paths, self._datasets, self.bands, strict=True):
            try:
                data = dataset.read(list(bands), window=window).astype(np.float32)
                if self.nodata is not None:
                    band_valid = data != np.float32(self.nodata)
                else:
                    band_valid = dataset.read_masks(list(bands), window=window) > 0
            except RasterioIOError as exc:
                rows = f"{int(window.row_off)}-{int(window.row_off + window.height) - 1}"
                raise GeocamError(
                    f"{path}: cannot read rows {rows} ({first_line(exc.__cause__ or exc)}); "
                    "the file is truncated or damaged: re-create or re-download it"
                ) from None
            valid &= band_valid.any(axis=0)
            stacks.append(data)
        pixels = np.concatenate(stacks, axis=0)
        valid &= np.isfinite(pixels).all(axis=0)
        return pixels, valid

    def close(self) -> None:
        """Close every dataset this source opened."""
        for dataset in [*self._datasets, *self._opened]:
            if not dataset.closed:
                dataset.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate over ``items`` produced in a background thread, up to ``depth`` ahead.

    An exception in the producer is raised in the consumer; stopping early stops the producer.
    """
    if depth < 1:
        yield from items
        return
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(("error", error))

    worker = threading.Thread(target=produce, name="geocam-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = slots.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(payload, BaseException)
                raise payload
            yield payload  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
