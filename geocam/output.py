"""Where results go: GeoTIFFs written in whole strips and renamed into place, or arrays.

Every file geocam writes goes through a :class:`Destination`: the outputs are checked before any
work (a ``.tif`` heatmap, no two products at one path, none of them an input), locked against a
concurrent run (``NAME.lock``), written under per-run scratch names (``NAME.RUNID.partial``) and
renamed into place together by :meth:`Destination.commit`, after every product succeeded; a
failed run removes only its own scratch files, so earlier results and the user's files survive.
Small files go through :func:`atomic_write` (temporary file, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geocam.errors import GeocamError, WriteFailed, first_line, gdal_reason
from geocam.sources import Grid

BLOCK = 512
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
RASTER_SUFFIXES = (".tif", ".tiff")


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
    unit: str = ""


def write_failed(path: Path, error: BaseException) -> WriteFailed:
    """The one-line error for a write that failed (disk full, quota, file size limit...)."""
    reason = getattr(error, "strerror", None) or gdal_reason(first_line(error))
    return WriteFailed(
        f"{path}: writing failed ({reason}); free disk space or choose another output folder"
    )


# --- durable writes -------------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk; a no-op where unsupported."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:  # some file systems cannot sync a folder
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` so that it exists only complete: temporary file, fsync, rename, fsync.

    A failure (a full disk) is one :class:`WriteFailed` line and leaves no temporary file.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_folder(path.parent)
    except OSError as error:
        raise write_failed(path, error) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def new_run_id() -> str:
    """A short random name for one run's scratch files."""
    return secrets.token_hex(4)


def scratch_name(path: Path, run_id: str) -> Path:
    """Where run ``run_id`` writes ``path`` before it is complete: ``NAME.RUNID.partial``."""
    return path.with_name(f"{path.name}.{run_id}{PARTIAL_SUFFIX}")


def remove_scratch(folder: Path, run_id: str) -> None:
    """Delete the scratch files run ``run_id`` left in ``folder`` (after it was killed)."""
    for pattern in (f"*.{run_id}{PARTIAL_SUFFIX}", f"*.{run_id}{PARTIAL_SUFFIX}.*"):
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    path.unlink()


# --- the destination ------------------------------------------------------------------------


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same inode (links included) or the same real path."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(
    outputs: Mapping[str, Path],
    inputs: Iterable[tuple[str, Path]] = (),
    scratch: Iterable[Path] = (),
) -> None:
    """Refuse, before any work, outputs that would destroy an input or one another.

    ``outputs`` maps product names to their paths (``heatmap`` first, a GeoTIFF); ``inputs``
    are the files the run reads, with what they are (``source``, ``config``...); ``scratch``
    are the other paths the run creates (journal folder, lock files).
    """
    heatmap = outputs.get("heatmap")
    if heatmap is not None and heatmap.suffix.lower() not in RASTER_SUFFIXES:
        raise GeocamError(
            f"--out {heatmap}: the heatmap is a GeoTIFF; give a name ending in .tif or .tiff"
        )
    seen: dict[str, str] = {}
    for name, path in outputs.items():
        real = os.path.realpath(path)
        if real in seen:
            raise GeocamError(
                f"--out {heatmap}: the {seen[real]} and the {name} would both be written to "
                f"{path}; choose another --out name"
            )
        seen[real] = name
    inputs = list(inputs)
    for path in [*outputs.values(), *scratch]:
        for kind, source in inputs:
            if same_file(path, source):
                raise GeocamError(
                    f"{path} is an input ({kind} {source}); geocam never writes over its inputs: "
                    "choose another --out"
                )


class _Lock:
    """An exclusive ``flock`` on ``NAME.lock`` beside an output, held for the whole run."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output.with_name(output.name + LOCK_SUFFIX)
        self.descriptor: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            descriptor = self._open()
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read(descriptor).split()
                os.close(descriptor)
                pid = owner[-1] if len(owner) == 3 else "unknown"
                raise GeocamError(
                    f"{self.output}: another geocam run is writing it (pid {pid}); wait for it "
                    "or choose another --out"
                ) from None
            try:  # the file may have been removed by its last holder meanwhile: start over
                if os.fstat(descriptor).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:
                os.close(descriptor)
                continue
            if not _read(descriptor).startswith("geocam pid"):
                os.close(descriptor)
                raise GeocamError(f"{self.path} exists and is not a geocam lock file; move it away")
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"geocam pid {os.getpid()}\n".encode(), 0)
            self.descriptor = descriptor
            return

    def _open(self) -> int:
        """The lock file, created with its content in one step (so it is never empty)."""
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temporary, "x") as handle:
                handle.write(f"geocam pid {os.getpid()}\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, self.path)
            return os.open(self.path, os.O_RDWR)
        except IsADirectoryError:
            raise GeocamError(
                f"{self.path} is a folder, not a geocam lock file; move it away"
            ) from None
        except OSError as error:
            raise write_failed(self.path, error) from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def release(self) -> None:
        if self.descriptor is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: a waiting run then finds the file gone
        os.close(self.descriptor)
        self.descriptor = None


def _read(descriptor: int) -> str:
    return os.pread(descriptor, 64, 0).decode(errors="replace")


class Destination:
    """The files of one run: checked, locked, staged under scratch names, committed together.

    ``outputs`` maps product names to their final paths; ``inputs`` lists the files the run
    reads (never written over). Use it as a context manager: entering checks every path and
    takes the locks, :meth:`scratch` gives the name to write a product to, :meth:`commit`
    moves every staged file into place once all succeeded, and leaving without a commit (an
    error) removes the scratch files, leaving earlier results as they were.
    """

    def __init__(
        self,
        outputs: Mapping[str, Path],
        *,
        inputs: Iterable[tuple[str, Path]] = (),
        overwrite: bool = False,
        run_id: str | None = None,
    ) -> None:
        from geocam.journal import journal_folder

        self.outputs = {name: Path(path) for name, path in outputs.items()}
        self.run_id = run_id or new_run_id()
        self.overwrite = overwrite
        self._locks = [_Lock(path) for path in self.outputs.values()]
        journal = [journal_folder(self.outputs["heatmap"])] if "heatmap" in self.outputs else []
        check_outputs(self.outputs, inputs, [*journal, *(lock.path for lock in self._locks)])
        for path in self.outputs.values():
            check_destination(path, overwrite)
        self._staged: dict[Path, Path] = {}
        self.committed = False

    def __enter__(self) -> Destination:
        try:
            for lock in self._locks:
                lock.acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()
        self.release()

    def scratch(self, final: Path) -> Path:
        """The scratch name to write ``final`` to; moved into place by :meth:`commit`."""
        final = Path(final)
        if final not in self._staged:
            partial = scratch_name(final, self.run_id)
            if partial.exists() or partial.is_symlink():
                raise GeocamError(f"{partial} exists and is not this run's; move it away")
            self._staged[final] = partial
        return self._staged[final]

    def current(self, final: Path) -> Path:
        """Where ``final``'s content is now: its scratch file until committed."""
        return self._staged.get(Path(final), Path(final))

    def commit(self) -> dict[Path, Path]:
        """Flush every staged file to the disk, then rename each into place."""
        try:
            for partial in self._staged.values():
                fsync_file(partial)
            for final, partial in self._staged.items():
                os.replace(partial, final)
            for folder in {final.parent for final in self._staged}:
                fsync_folder(folder)
        except OSError as error:
            raise write_failed(next(iter(self._staged), Path(".")), error) from error
        self.committed = True
        return dict(self._staged)

    def abort(self) -> None:
        """Remove this run's scratch files (nothing else)."""
        for partial in self._staged.values():
            for leftover in (partial, partial.with_name(partial.name + ".cog")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        self._staged.clear()

    def release(self) -> None:
        """Let other runs write these outputs again."""
        for lock in self._locks:
            lock.release()


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
    """A GeoTIFF written strip by strip to a scratch file, moved into place by a commit.

    float32 by default, tiled 512, ZSTD level 3 (or DEFLATE) with the floating-point
    predictor, ``BIGTIFF=IF_SAFER``; per-band statistics are collected while writing and stored
    as tags. Strips are compressed and written by a background thread, so that the network
    keeps running meanwhile; an error there is raised by the next call.

    With a ``destination`` the file is written to its scratch name and :meth:`commit` only
    finishes it: the destination moves it into place with the run's other products. Without
    one the writer has its own, and :meth:`commit` also renames the file into place.
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
        destination: Destination | None = None,
    ) -> None:
        self.path = Path(path)
        self.committed = False
        self.cog = cog
        self.categories = list(categories) if categories is not None else None
        self._own = destination is None
        if destination is None:
            destination = Destination({"file": self.path}, overwrite=overwrite).__enter__()
        self.destination = destination
        self.partial = destination.scratch(self.path)
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
        try:
            self._dataset = rasterio.open(self.partial, "w", **profile)
        except (OSError, RasterioError) as error:
            self._release()
            raise write_failed(self.partial, error) from error
        step = max(1, (grid.width * grid.height) // 1_000_000)
        self.stats = [BandStats(step) for _ in bands] if floating else []
        self._strips: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._drain, name="geocam-writer", daemon=True)
        self._worker.start()
        try:
            for index, band in enumerate(bands, start=1):
                self._dataset.set_band_description(index, band.description)
                if band.unit:  # stored inside the GeoTIFF: kept where a sidecar is not read
                    self._dataset.set_band_unit(index, band.unit)
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
        """Store statistics and ``tags``, close, and hand the finished file to the destination.

        With ``cog`` the file is first converted to a Cloud-Optimized GeoTIFF with overviews
        (average resampling for continuous bands, nearest for a class map). A writer without
        a destination of its own moves the file into place now.
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
            if self.categories is not None:
                sidecar = self.destination.scratch(Path(f"{self.path}.aux.xml"))
                write_category_names(self.path, self.categories, to=sidecar)
                style = self.destination.scratch(self.path.with_suffix(".qml"))
                style.write_text(classes_qml(self.categories), encoding="utf-8")
        except (OSError, RasterioError) as error:
            raise write_failed(self.partial, error) from error
        if self._own:
            self.destination.commit()
            self._release()
        self.committed = True
        return self.path

    def _to_cog(self) -> None:
        """Convert the partial file with GDAL's COG driver, which keeps every band's tags."""
        to_cog(
            self.partial,
            compress=self.compress.upper(),
            predictor="FLOATING_POINT" if self.floating else "YES",
            resampling="NEAREST" if self.categories is not None else "AVERAGE",
        )

    def abort(self) -> None:
        """Close and delete the scratch file; a committed file is the destination's business."""
        self._stop_worker()
        if not self._dataset.closed:
            with contextlib.suppress(OSError, RasterioError):
                self._dataset.close()
        if self.committed:
            return
        for leftover in (self.partial, self.partial.with_name(self.partial.name + ".cog")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        self._release()

    def _release(self) -> None:
        if self._own:
            self.destination.__exit__(None, None, None)


def to_cog(path: Path, *, compress: str, predictor: str, resampling: str) -> None:
    """Convert the GeoTIFF at ``path``, in place, to a Cloud-Optimized GeoTIFF with overviews."""
    from rasterio.shutil import copy

    converted = path.with_name(path.name + ".cog")
    try:
        copy(
            path,
            converted,
            driver="COG",
            COMPRESS=compress.upper(),
            PREDICTOR=predictor,
            BLOCKSIZE=BLOCK,
            BIGTIFF="IF_SAFER",
            OVERVIEWS="IGNORE_EXISTING",
            RESAMPLING=resampling,
        )
        os.replace(converted, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            converted.unlink()


def class_colours(count: int) -> dict[int, tuple[int, int, int, int]]:
    """A qualitative colour table (Tableau 10, then greys) for class indexes; 255 transparent."""
    palette = [
        (78, 121, 167), (242, 142, 43), (225, 87, 89), (118, 183, 178), (89, 161, 79),
        (237, 201, 72), (176, 122, 161), (255, 157, 167), (156, 117, 95), (186, 176, 172),
    ]  # fmt: skip
    colours = {i: (*palette[i % len(palette)], 255) for i in range(count)}
    colours[255] = (0, 0, 0, 0)
    return colours


def classes_renderer(names: Sequence[str], indent: str = "    ") -> str:
    """A QGIS ``paletted`` renderer listing only the named classes (not GDAL's 256 entries)."""
    colours = class_colours(len(names))
    entries = "".join(
        f'\n{indent}    <paletteEntry value="{value}" color="#{r:02x}{g:02x}{b:02x}" '
        f'alpha="{a}" label="{escape(name, {chr(34): "&quot;"})}"/>'
        for value, name in enumerate(names)
        for r, g, b, a in [colours[value]]
    )
    return f"""{indent}<rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1"
{indent}    nodataColor="">
{indent}  <rasterTransparency/>
{indent}  <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent></minMaxOrigin>
{indent}  <colorPalette>{entries}
{indent}  </colorPalette>
{indent}</rasterrenderer>
{indent}<brightnesscontrast brightness="0" contrast="0"/>"""


def classes_qml(names: Sequence[str]) -> str:
    """The class map's QGIS style (``NAME_classes.qml``, applied on load)."""
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.16" styleCategories="Symbology">\n  <pipe>\n'
        f"{classes_renderer(names)}\n  </pipe>\n  <blendMode>0</blendMode>\n</qgis>\n"
    )


def write_category_names(path: Path, names: Sequence[str], *, to: Path | None = None) -> None:
    """Write GDAL category names for band 1 in a ``.aux.xml`` sidecar (read by GDAL and QGIS).

    ``to`` is where the sidecar is written (its scratch name), ``PATH.aux.xml`` by default.
    """
    categories = "".join(f"<Category>{escape(name)}</Category>" for name in names)
    Path(to or f"{path}.aux.xml").write_text(
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


def check_room(out: Path, needed: Mapping[str, int], run: str = "") -> None:
    """Refuse a run whose files (``needed``: bytes by kind) do not fit on ``out``'s disk.

    ``run`` describes the work (e.g. ``"420 tile(s), 2 pass(es)"``) in the message.
    """
    import shutil

    folder = out.parent if str(out.parent) else Path(".")
    free = shutil.disk_usage(folder).free
    total = sum(needed.values())
    if total > free:
        parts = ", ".join(f"{kind} {_gib(size)}" for kind, size in needed.items())
        raise GeocamError(
            f"{out}: the run{f' ({run})' if run else ''} needs up to {_gib(total)} ({parts}) "
            f"but {folder} has "
            f"{_gib(free)} free; free space or choose another --out"
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"
