"""Where results go: GeoTIFFs written in whole strips and renamed into place, or arrays.

A GeoTIFF is written to ``NAME.partial`` beside the destination, in block-aligned strips, and
renamed to ``NAME`` only when complete; a failed run removes the partial file, so nothing that
could be mistaken for a result is ever left at the destination.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geocam.errors import GeocamError, first_line
from geocam.sources import Grid

BLOCK = 512
PARTIAL_SUFFIX = ".partial"


class StripSink(Protocol):
    """Receives finished rows of a product, top to bottom."""

    def write(self, row_start: int, data: np.ndarray) -> None:
        """Store ``data`` ``(bands, rows, width)`` at rows ``row_start`` onwards."""
        ...


@dataclass
class BandStats:
    """Running statistics of one band: exact min, max, mean; percentiles from a regular sample."""

    step: int
    minimum: float = float("inf")
    maximum: float = float("-inf")
    total: float = 0.0
    count: int = 0
    sample: list[np.ndarray] = field(default_factory=list)

    def update(self, values: np.ndarray) -> None:
        """Add the finite values of a strip."""
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return
        self.minimum = min(self.minimum, float(finite.min()))
        self.maximum = max(self.maximum, float(finite.max()))
        self.total += float(finite.sum(dtype=np.float64))
        self.count += int(finite.size)
        self.sample.append(finite[:: self.step].copy())

    def tags(self) -> dict[str, str]:
        """GDAL-style statistics tags (``STATISTICS_*``) plus percentiles."""
        if self.count == 0:
            return {"STATISTICS_VALID_PERCENT": "0"}
        sample = np.concatenate(self.sample)
        p = np.percentile(sample, [1, 50, 95, 99]).tolist()
        return {
            "STATISTICS_MINIMUM": f"{self.minimum:.9g}",
            "STATISTICS_MAXIMUM": f"{self.maximum:.9g}",
            "STATISTICS_MEAN": f"{self.total / self.count:.9g}",
            "GEOCAM_P1": f"{p[0]:.9g}",
            "GEOCAM_P50": f"{p[1]:.9g}",
            "GEOCAM_P95": f"{p[2]:.9g}",
            "GEOCAM_P99": f"{p[3]:.9g}",
        }


@dataclass(frozen=True)
class Band:
    """Description and tags of one output band."""

    description: str
    tags: Mapping[str, str] = field(default_factory=dict)


def write_failed(path: Path, error: BaseException) -> GeocamError:
    """The one-line error for a write that failed (disk full, quota, file size limit...)."""
    reason = getattr(error, "strerror", None) or first_line(error)
    return GeocamError(
        f"{path}: writing failed ({reason}); free disk space or choose another output folder"
    )


def check_destination(path: Path, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite`` and a folder that cannot take it."""
    if path.exists() and not overwrite:
        raise GeocamError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise GeocamError(f"{folder} is a file, not a folder; choose another --out")
    if not folder.is_dir():
        raise GeocamError(f"{folder}: output folder does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise GeocamError(f"{folder}: output folder is not writable; choose another --out")


class GeoTiffWriter:
    """A GeoTIFF written strip by strip to a partial file, renamed into place by :meth:`commit`.

    float32 by default, tiled 512, ZSTD level 3 (or DEFLATE) with the floating-point
    predictor, ``BIGTIFF=IF_SAFER``; per-band statistics are collected while writing and stored
    as tags. Strips are compressed and written by a background thread, so that the network
    keeps running meanwhile; an error there is raised by the next call.
    """

    def __init__(
        self,
        path: Path,
        grid: Grid,
        bands: Sequence[Band],
        *,
        tags: Mapping[str, str] | None = None,
        dtype: str = "float32",
        nodata: float = float("nan"),
        compress: str = "zstd",
        overwrite: bool = False,
        categories: Sequence[str] | None = None,
        cog: bool = False,
    ) -> None:
        self.path = Path(path)
        self.committed = False
        self.cog = cog
        self.categories = list(categories) if categories is not None else None
        check_destination(self.path, overwrite)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.compress = compress
        floating = self.floating = np.dtype(dtype).kind == "f"
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": len(bands),
            "dtype": dtype,
            "crs": grid.crs,
            "transform": grid.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": BLOCK,
            "blockysize": BLOCK,
            "compress": compress,
            "predictor": 3 if floating else 2,
            "BIGTIFF": "IF_SAFER",
        }
        if compress == "zstd":  # GDAL's default, 9, is 3.6x slower for 5 % smaller heatmaps
            profile["zstd_level"] = 3
        self._dataset = rasterio.open(self.partial, "w", **profile)
        step = max(1, (grid.width * grid.height) // 1_000_000)
        self.stats = [BandStats(step) for _ in bands] if floating else []
        self._strips: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._drain, name="geocam-writer", daemon=True)
        self._worker.start()
        try:
            for index, band in enumerate(bands, start=1):
                self._dataset.set_band_description(index, band.description)
                if band.tags:
                    self._dataset.update_tags(index, **band.tags)
            if tags:
                self._dataset.update_tags(**tags)
            if self.categories is not None:
                self._dataset.write_colormap(1, class_colours(len(self.categories)))
        except BaseException:
            self.abort()
            raise

    def write(self, row_start: int, data: np.ndarray) -> None:
        """Queue whole rows for writing; strips should start on 512-row block boundaries."""
        self._raise_pending()
        self._strips.put((row_start, data))

    def _drain(self) -> None:
        while (item := self._strips.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that the producer never blocks
            try:
                row_start, data = item
                window = Window(0, row_start, data.shape[2], data.shape[1])
                self._dataset.write(data.astype(self._dataset.dtypes[0], copy=False), window=window)
                for stats, band in zip(self.stats, data, strict=False):
                    stats.update(band)
            except BaseException as error:  # raised in the caller's thread by _raise_pending
                self._error = error

    def _stop_worker(self) -> None:
        if self._worker.is_alive():
            self._strips.put(None)
            self._worker.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            if isinstance(self._error, OSError | RasterioError):
                raise write_failed(self.partial, self._error) from self._error
            raise self._error

    def commit(self, tags: Mapping[str, str] | None = None) -> Path:
        """Store statistics and ``tags``, close, and move the finished file into place.

        With ``cog`` the file is first converted to a Cloud-Optimized GeoTIFF with overviews
        (average resampling for continuous bands, nearest for a class map).
        """
        self._stop_worker()
        self._raise_pending()
        try:
            for index, stats in enumerate(self.stats, start=1):
                self._dataset.update_tags(index, **stats.tags())
            if tags:
                self._dataset.update_tags(**tags)
            self._dataset.close()  # writes the blocks still cached: may fail on a full disk
            if self.cog:
                self._to_cog()
            os.replace(self.partial, self.path)
        except (OSError, RasterioError) as error:
            raise write_failed(self.partial, error) from error
        self.committed = True
        if self.categories is not None:
            write_category_names(self.path, self.categories)
        return self.path

    def _to_cog(self) -> None:
        """Convert the partial file with GDAL's COG driver, which keeps every band's tags."""
        from rasterio.shutil import copy

        converted = self.partial.with_name(self.partial.name + ".cog")
        try:
            copy(
                self.partial,
                converted,
                driver="COG",
                COMPRESS=self.compress.upper(),
                PREDICTOR="FLOATING_POINT" if self.floating else "YES",
                BLOCKSIZE=BLOCK,
                BIGTIFF="IF_SAFER",
                OVERVIEWS="IGNORE_EXISTING",
                RESAMPLING="NEAREST" if self.categories is not None else "AVERAGE",
            )
            os.replace(converted, self.partial)
        finally:
            with contextlib.suppress(FileNotFoundError):
                converted.unlink()

    def abort(self) -> None:
        """Close and delete the partial file, or the finished one if already committed.

        The latter keeps a run all or nothing when a later product fails to commit.
        """
        self._stop_worker()
        if not self._dataset.closed:
            self._dataset.close()
        if self.committed:
            remove_output(self.path)
        for leftover in (self.partial, self.partial.with_name(self.partial.name + ".cog")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def remove_output(path: Path) -> None:
    """Delete a finished raster and its GDAL sidecar (``.aux.xml``), if they exist."""
    path.unlink(missing_ok=True)
    Path(f"{path}.aux.xml").unlink(missing_ok=True)


def class_colours(count: int) -> dict[int, tuple[int, int, int, int]]:
    """A qualitative colour table (Tableau 10, then greys) for class indexes; 255 transparent."""
    palette = [
        (78, 121, 167), (242, 142, 43), (225, 87, 89), (118, 183, 178), (89, 161, 79),
        (237, 201, 72), (176, 122, 161), (255, 157, 167), (156, 117, 95), (186, 176, 172),
    ]  # fmt: skip
    colours = {i: (*palette[i % len(palette)], 255) for i in range(count)}
    colours[255] = (0, 0, 0, 0)
    return colours


def write_category_names(path: Path, names: Sequence[str]) -> None:
    """Write GDAL category names for band 1 in a ``.aux.xml`` sidecar (read by GDAL and QGIS)."""
    categories = "".join(f"<Category>{escape(name)}</Category>" for name in names)
    Path(f"{path}.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames>'
        f"{categories}</CategoryNames></PAMRasterBand></PAMDataset>\n",
        encoding="utf-8",
    )


class ArraySink:
    """Collects a product in memory (for the xarray interface)."""

    def __init__(
        self, bands: int, height: int, width: int, dtype: str = "float32", fill: float = np.nan
    ) -> None:
        self.data = np.full((bands, height, width), fill, dtype=dtype)

    def write(self, row_start: int, data: np.ndarray) -> None:
        """Store ``data`` at rows ``row_start`` onwards."""
        self.data[:, row_start : row_start + data.shape[1]] = data
