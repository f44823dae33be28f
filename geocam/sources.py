"""Where scene pixels come from: rasters on disk (stacked, aligned) or arrays in memory.

A source answers one question: the pixels and the validity mask of a window of the scene.
Tiles are read ahead in a background thread, so reading overlaps with the network's work.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geocam.errors import GeocamError, GeocamWarning, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a scene: what every output is aligned to."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int


def same_grid(a: Grid, b: Grid, tolerance_px: float = 1e-3) -> bool:
    """Whether ``b`` is ``a``'s grid, up to ``tolerance_px`` of ``a``'s pixels.

    Same CRS and size, and no corner of ``b`` farther than ``tolerance_px`` from the same
    corner of ``a``, in ``a``'s pixels (an affine map moves no pixel more than its corners).
    Measured in pixels, not map units: ``Affine.almost_equals``' absolute 1e-5 is a tenth of
    a pixel of a raster with 1e-4 degree pixels and ten pixels of one with 1e-6 degree pixels.
    """
    if a.crs != b.crs or (a.width, a.height) != (b.width, b.height):
        return False
    if a.transform.determinant == 0:
        return a.transform == b.transform
    to_a = ~a.transform @ b.transform  # b's pixel coordinates -> a's
    corners = [(col, row) for col in (0, a.width) for row in (0, a.height)]
    return all(
        abs(x - col) <= tolerance_px and abs(y - row) <= tolerance_px
        for (col, row), (x, y) in zip(corners, (to_a * c for c in corners), strict=True)
    )


def mean_fill(normalisation: Any, count: int) -> tuple[float, ...]:
    """Per band, the raw value that a normalisation maps to 0: the band's mean.

    ``normalisation`` is a :class:`geocam.models.Normalisation` (``x * scale + offset``) or
    None (the network reads raw values: 0).
    """
    if normalisation is None:
        return (0.0,) * count
    return tuple(-o / s for s, o in zip(normalisation.scale, normalisation.offset, strict=True))


def fill_nodata(
    pixels: np.ndarray,
    band_valid: np.ndarray,
    groups: Sequence[int],
    fill: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The valid pixels, and the pixels with each band that has no data set to its fill value.

    ``band_valid`` ``(C, h, w)`` says where each band has data (non-finite values never do);
    ``groups``, how many of the ``C`` bands each stacked raster gives. Without ``fill`` a
    pixel is valid only where every band has data. With ``fill`` (one raw value per band: the
    band's mean, :func:`mean_fill`) a pixel is valid where every raster has data in at least
    one of its bands, and a band without data there is fed as its mean: a nodata value (a
    -3.4e38 sentinel, 65535, 0) never reaches the network, and a pixel keeps the bands it has.
    """
    band_valid = band_valid & np.isfinite(pixels)
    if fill is None:
        return pixels, np.asarray(band_valid.all(axis=0))
    if len(fill) != len(pixels):
        raise ValueError(f"fill has {len(fill)} values for {len(pixels)} bands")
    valid = np.ones(pixels.shape[1:], dtype=bool)
    start = 0
    for size in groups:
        valid &= band_valid[start : start + size].any(axis=0)
        start += size
    holes = valid & ~band_valid
    if holes.any():
        values = np.asarray(fill, dtype=np.float32)[:, None, None]
        pixels = np.where(holes, values, pixels).astype(np.float32, copy=False)
    return pixels, valid


class TileSource(Protocol):
    """Pixels of a scene, window by window."""

    grid: Grid
    count: int

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(count, h, w)`` float32 pixels and the ``(h, w)`` bool mask, True where valid."""
        ...


class ArraySource:
    """A scene held in memory as a ``(bands, H, W)`` array; non-finite values are nodata.

    Which pixels are valid, and what a band without data is fed as: :func:`fill_nodata`
    (``fill``: None, valid only where every band is finite; else each band's mean value).
    ``valid``, when given, also marks pixels as nodata.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        grid: Grid,
        valid: np.ndarray | None = None,
        fill: Sequence[float] | None = None,
    ) -> None:
        if pixels.ndim != 3:
            raise GeocamError(f"pixels have shape {pixels.shape}; expected (bands, height, width)")
        if valid is not None and valid.shape != pixels.shape[1:]:
            raise GeocamError(f"valid mask {valid.shape} does not match pixels {pixels.shape[1:]}")
        self.pixels = pixels
        self.valid = valid
        self.fill = fill
        self.grid = grid
        self.count = pixels.shape[0]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window's pixels as float32 and its validity."""
        rows, cols = window.toslices()
        data = np.asarray(self.pixels[:, rows, cols], dtype=np.float32)
        data, valid = fill_nodata(data, np.isfinite(data), (self.count,), self.fill)
        if self.valid is not None:
            valid &= np.asarray(self.valid[rows, cols], dtype=bool)
        return data, valid


class RasterSource:
    """One or more rasters stacked band-wise as one network input, on the first one's grid.

    ``bands`` holds the 1-based bands to read from each raster (empty: all bands of each).
    Rasters on another grid (:func:`same_grid`) are warped onto the first one's through
    ``WarpedVRT`` (bilinear, each band's nodata kept apart); where a raster does not reach,
    the scene is nodata.

    What is nodata, raster by raster: ``nodata`` when given (it overrides the files' own);
    else the file's own nodata value, internal mask or alpha band; else ``fallback_nodata``
    (a preset's value, for files that declare none). Non-finite values are nodata too.
    Which pixels are valid, and what a band without data is fed as: :func:`fill_nodata`
    (``fill`` None: valid only where every band has data; else valid where every raster has
    data in some band, the others fed as their mean).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        bands: Sequence[Sequence[int]] = (),
        nodata: float | None = None,
        fallback_nodata: float | None = None,
        fill: Sequence[float] | None = None,
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
        self.fallback_nodata = fallback_nodata
        self.fill = fill
        self._datasets: list[DatasetReader | WarpedVRT] = []
        self._opened: list[DatasetReader] = []
        try:
            opened = [self._open(Path(p), os.fspath(p)) for p in paths]
            first = opened[0]
            self.grid = Grid(first.crs, first.transform, first.width, first.height)
            self.bands = [
                self._check_bands(path, ds, tuple(sel) if bands else ())
                for path, ds, sel in zip(
                    self.paths, opened, bands or [()] * len(paths), strict=True
                )
            ]
            self._values = [
                self._nodata_value(ds, b) for ds, b in zip(opened, self.bands, strict=True)
            ]
            self._datasets = [first] + [
                self._aligned(ds, value)
                for ds, value in zip(opened[1:], self._values[1:], strict=True)
            ]
        except BaseException:
            self.close()
            raise
        self.count = sum(len(b) for b in self.bands)
        self._warn_scaled_bands(opened)

    def _warn_scaled_bands(self, datasets: Sequence[DatasetReader]) -> None:
        """Band scale/offset metadata is not applied: say so once, naming the bands.

        geocam feeds the stored values, as rasterio reads them and as training pipelines
        usually did; a preset's normalisation must expect those values.
        """
        for path, dataset, bands in zip(self.paths, datasets, self.bands, strict=True):
            scaled = [b for b in bands if dataset.scales[b - 1] != 1 or dataset.offsets[b - 1] != 0]
            if scaled:
                b = scaled[0]
                warnings.warn(
                    f"{path}: band(s) {scaled} carry scale/offset metadata (band {b}: scale "
                    f"{dataset.scales[b - 1]:g}, offset {dataset.offsets[b - 1]:g}) that geocam "
                    "does not apply: the network gets the stored values, so the preset's "
                    "normalisation must expect them",
                    GeocamWarning,
                    stacklevel=3,
                )

    def _nodata_value(self, dataset: DatasetReader, bands: tuple[int, ...]) -> float | None:
        """The value that marks nodata in ``dataset``; None where its own masks say."""
        if self.nodata is not None:
            return self.nodata
        flags = dataset.mask_flag_enums
        if any(flags[b - 1] != [MaskFlags.all_valid] for b in bands):
            return None  # the file declares nodata, a mask or an alpha band
        return self.fallback_nodata

    def _open(self, path: Path, location: str) -> DatasetReader:
        """Open one raster.

        ``location`` is the path as given: ``/vsizip//tmp/...`` keeps its double slash, which
        a :class:`Path` would fold.
        """
        if not is_gdal_virtual(location) and not path.exists():
            raise GeocamError(f"{path}: no such file; check the path")
        try:
            with warnings.catch_warnings():  # a missing geotransform is reported below
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(location)
        except RasterioIOError as exc:
            detail = first_line(exc).replace(f"'{path}' ", "").removeprefix(f"{path.name}: ")
            raise GeocamError(
                f"{path}: not a readable raster ({detail}); give a GeoTIFF or another format "
                "GDAL opens"
            ) from None
        self._opened.append(dataset)
        no_transform = dataset.transform == Affine.identity()
        gcps, gcp_crs = dataset.gcps
        if no_transform and gcps:
            target = f" -t_srs {gcp_crs.to_string()}" if gcp_crs else ""
            raise GeocamError(
                f"{path}: the raster is georeferenced by {len(gcps)} ground control points, not "
                f"a grid; warp it onto one first, which uses them (gdalwarp{target} -r bilinear "
                f"{path.name} warped.tif)"
            )
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

    def _aligned(self, dataset: DatasetReader, nodata: float | None) -> DatasetReader | WarpedVRT:
        """``dataset`` on the scene's grid: as it is, or warped with NaN where it has no data.

        ``nodata`` (when not None) replaces the file's own nodata and masks as the source's
        nodata; ``UNIFIED_SRC_NODATA=NO`` keeps each band's nodata apart, so a nodata value
        in one band is neither blended into its neighbours nor copied as data.
        """
        own = Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
        if same_grid(self.grid, own):
            return dataset
        source_nodata = {} if nodata is None else {"src_nodata": nodata}
        return WarpedVRT(
            dataset,
            crs=self.grid.crs,
            transform=self.grid.transform,
            width=self.grid.width,
            height=self.grid.height,
            resampling=Resampling.bilinear,
            dtype="float32",
            nodata=float("nan"),
            UNIFIED_SRC_NODATA="NO",
            **source_nodata,
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
        masks: list[np.ndarray] = []
        rasters = zip(self.paths, self._datasets, self.bands, self._values, strict=True)
        for path, dataset, bands, nodata in rasters:
            try:
                raw = dataset.read(list(bands), window=window)
                if nodata is not None:  # compared before the cast: exact for any dtype
                    band_valid = raw != nodata
                else:
                    band_valid = dataset.read_masks(list(bands), window=window) > 0
                data = raw.astype(np.float32)
            except RasterioIOError as exc:
                rows = f"{int(window.row_off)}-{int(window.row_off + window.height) - 1}"
                raise GeocamError(
                    f"{path}: cannot read rows {rows} ({first_line(exc.__cause__ or exc)}); "
                    "the file is truncated or damaged: re-create or re-download it"
                ) from None
            stacks.append(data)
            masks.append(band_valid)
        groups = [len(b) for b in self.bands]
        return fill_nodata(np.concatenate(stacks), np.concatenate(masks), groups, self.fill)

    def close(self) -> None:
        """Close every dataset this source opened."""
        for dataset in [*self._datasets, *self._opened]:
            if not dataset.closed:
                dataset.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_gdal_virtual(path: str | Path) -> bool:
    """Whether ``path`` names a GDAL virtual file (``/vsizip/...``, ``/vsicurl/...``)."""
    return str(path).startswith("/vsi")


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
