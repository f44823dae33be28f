"""Scenes in, georeferenced heatmaps out: GeoTIFF paths, or xarray DataArrays with ``.rio``.

Thin layers over :func:`geocam.scene.explain_scene` that choose the source and the sinks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from torch import nn

from geocam.errors import GeocamError, WriteFailed
from geocam.journal import Journal, identities, journal_folder, journal_size, local_file
from geocam.models import ModelSpec, build_model, file_sha256
from geocam.output import ArraySink, Destination, GeoTiffWriter, StripSink, check_room
from geocam.scene import (
    Explanation,
    Products,
    ProductSpec,
    Runtime,
    SceneReport,
    Tiling,
    explain_scene,
)
from geocam.sources import ArraySource, Grid, RasterSource, mean_fill
from geocam.tiling import native_transform

if TYPE_CHECKING:
    import xarray as xr
    from distributed import Client

    from geocam.batch.run import ModelConfig

SUFFIXES = {"heatmap": "", "probabilities": "_probability", "classes": "_classes"}


def product_paths(out: str | Path, products: Products) -> dict[str, Path]:
    """Where each product goes: the heatmap at ``out``, the others beside it."""
    out = Path(out)
    names = ["heatmap"]
    if products.probabilities:
        names.append("probabilities")
    if products.class_map:
        names.append("classes")
    suffix = out.suffix or ".tif"
    return {name: out.with_name(f"{out.stem}{SUFFIXES[name]}{suffix}") for name in names}


def run_inputs(
    sources: str | Path | Sequence[str | Path], spec: ModelSpec, explanation: Explanation
) -> list[tuple[str, Path]]:
    """Every file a run reads, with what it is: sources, checkpoint, region files."""
    inputs = [("source", Path(p)) for p in _as_list(sources)]
    inputs += [("source", local) for p in _as_list(sources) if (local := local_file(p)) is not None]
    if spec.checkpoint is not None:
        inputs.append(("checkpoint", Path(spec.checkpoint)))
    inputs += [("region", path) for path in region_files(explanation.region)]
    return inputs


def region_files(region: object) -> list[Path]:
    """The file a ``mask:`` or ``vector:`` region is read from (none for the others)."""
    if isinstance(region, str):
        kind, _, rest = region.partition(":")
        if kind == "mask" and rest:
            return [Path(rest)]
        if kind == "vector" and rest:
            return [Path(rest.partition(":")[0])]
    return []


def explain_raster(
    sources: str | Path | Sequence[str | Path],
    out: str | Path,
    spec: ModelSpec,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
    products: Products | None = None,
    nodata: float | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    destination: Destination | None = None,
    fallback_nodata: float | None = None,
    provenance: Mapping[str, str] | None = None,
    client: Client | None = None,
    row_bands: int | None = None,
    model_config: ModelConfig | None = None,
) -> SceneReport:
    """Explain one scene (one or more stacked rasters) and write its GeoTIFF products.

    The heatmap goes to ``out`` (bands: positive and signed map per class); probabilities and
    the class map, when asked for, go beside it. ``nodata`` overrides the sources' own nodata
    and masks; ``fallback_nodata`` (a preset's) applies only to files that declare none.
    Before any work the outputs are checked (none may be an input or another product), locked
    against a concurrent run, and the disk is checked to hold the run (outputs and journal).
    Every file is written under a per-run scratch name and all are renamed into place only
    when all are complete. With a ``destination`` (entered, holding every product of a larger
    run) the files are only staged there: the caller commits them with its own products.

    Progress is kept in ``OUT.resume`` while the run works (see :mod:`geocam.journal`). It is
    removed on success and on errors, and kept when the run is killed or interrupted or a write
    fails (a full disk); with ``resume`` a later run with the same inputs and settings
    continues from it and writes outputs bitwise identical to an uninterrupted run's.
    ``provenance`` (a model source's :meth:`~geocam.models.ModelSource.tags`: its kind and
    the SHA-256 of its weights file) is recorded in every output.

    With a Dask ``client`` the scene's tile rows are split into ``row_bands`` bands computed on its
    workers (:mod:`geocam.scene.distributed`; the workers must read the same paths), written
    here, bitwise identical to a run in this process; workers get the network once, or load
    ``model_config`` once per process. Such a run cannot ``resume``.
    """
    products = products or Products()
    split = None if client is None else _Split(client, row_bands, model_config)
    if split is not None:
        from geocam.scene.distributed import check_split

        check_split(resume)
    paths = product_paths(out, products)
    if destination is not None:
        missing = [name for name, path in paths.items() if destination.outputs.get(name) != path]
        if missing:
            raise ValueError(f"the destination does not hold the product(s) {missing}")
        return _explain_into(
            destination, sources, paths, spec, explanation, tiling, runtime, products, nodata,
            model, resume, fallback_nodata, provenance, split,
        )  # fmt: skip
    inputs = run_inputs(sources, spec, explanation)
    with Destination(paths, inputs=inputs, overwrite=products.overwrite) as own:
        report = _explain_into(
            own, sources, paths, spec, explanation, tiling, runtime, products, nodata, model,
            resume, fallback_nodata, provenance, split,
        )  # fmt: skip
        own.commit()
    return report


def _explain_into(
    destination: Destination,
    sources: str | Path | Sequence[str | Path],
    paths: dict[str, Path],
    spec: ModelSpec,
    explanation: Explanation,
    tiling: Tiling | None,
    runtime: Runtime | None,
    products: Products,
    nodata: float | None,
    model: nn.Module | None,
    resume: bool,
    fallback_nodata: float | None,
    provenance: Mapping[str, str] | None = None,
    split: _Split | None = None,
) -> SceneReport:
    """:func:`explain_raster`'s work, with the products staged in ``destination``."""
    network = build_model(spec) if model is None else model
    source_paths = [Path(p) for p in _as_list(sources)]
    runtime = runtime or Runtime()
    extra_tags = {"GEOCAM_SOURCES": ",".join(p.name for p in source_paths)}
    if spec.checkpoint is not None:
        extra_tags["GEOCAM_CHECKPOINT_SHA256"] = file_sha256(spec.checkpoint)
        extra_tags["GEOCAM_MODEL_SOURCE"] = "checkpoint"
        extra_tags["GEOCAM_MODEL_SHA256"] = extra_tags["GEOCAM_CHECKPOINT_SHA256"]
    extra_tags.update(provenance or {})
    from geocam import __version__

    extra_tags["GEOCAM_VERSION"] = __version__
    writers: dict[str, GeoTiffWriter] = {}
    folder = journal_folder(paths["heatmap"])

    def sink(product: ProductSpec) -> StripSink:
        if product.name == "heatmap":  # the first: every product's size is known from it
            tiles, passes = product.tags["GEOCAM_TILES"], product.tags["GEOCAM_PASSES"]
            run = f"{tiles} tile(s), {passes} pass(es)"
            check_room(paths["heatmap"], _needed(product, products, journal_size(folder)), run)
        writer = GeoTiffWriter(
            paths[product.name],
            product.grid,
            product.bands,
            tags={**product.tags, **extra_tags},
            dtype=product.dtype,
            nodata=product.nodata,
            compress=products.compress,
            overwrite=products.overwrite,
            categories=product.categories,
            cog=products.cog,
            destination=destination,
        )
        writers[product.name] = writer
        return journal.record(product.name, writer)

    fill = mean_fill(spec.normalisation, spec.in_channels)  # what a band without data reads
    with (
        rasterio.Env(GDAL_CACHEMAX=runtime.gdal_cache_mb),
        RasterSource(_as_list(sources), spec.bands, nodata, fallback_nodata, fill) as source,
    ):
        fingerprint = {
            "sources": identities(source_paths),
            "regions": identities(region_files(explanation.region)),
            "spec": repr(spec),
            "explanation": repr(explanation),
            "tiling": repr(tiling or Tiling()),
            "precision": runtime.precision,
            "products": repr(replace(products, overwrite=False)),
            "nodata": repr(nodata),
            "fallback_nodata": repr(fallback_nodata),
            "tags": extra_tags,
        }
        journal = Journal(folder, fingerprint, resume=resume, run_id=destination.run_id)
        try:
            if split is None:
                report = explain_scene(
                    network, spec, source, explanation, sink,
                    tiling=tiling, runtime=runtime, products=products, checkpoint=journal,
                )  # fmt: skip
            else:
                from geocam.scene.distributed import explain_scene_distributed, recipe_of

                recipe = recipe_of(_as_list(sources), spec.bands, nodata, fallback_nodata, fill)
                report = explain_scene_distributed(
                    network, spec, source, recipe, explanation, sink, split.client,
                    tiling=tiling, runtime=runtime, products=products, row_bands=split.row_bands,
                    model_config=split.model_config,
                )  # fmt: skip
            region = {
                f"GEOCAM_REGION_PIXELS_{k.upper()}": f"{v:.0f}"
                for k, v in report.region_pixels.items()
            }
            for writer in writers.values():
                writer.commit(region)
        except BaseException as error:
            for writer in writers.values():
                writer.abort()
            if isinstance(error, WriteFailed):
                raise WriteFailed(  # the journal stays: the work done is not lost
                    f"{error}; then rerun with --resume to continue from {folder.name}"
                ) from error
            if not isinstance(error, KeyboardInterrupt):
                journal.discard()  # kept only for a run that was stopped, to be resumed
            raise
    journal.discard()
    report.outputs = {name: paths[name] for name in writers}
    return report


@dataclass(frozen=True)
class _Split:
    """A run split across a Dask client's workers."""

    client: Client
    row_bands: int | None
    model_config: ModelConfig | None


def _needed(heat: ProductSpec, products: Products, stored: int) -> dict[str, int]:
    """Bytes a run needs at most: every product uncompressed, and its journal of strips."""
    pixels = heat.grid.width * heat.grid.height
    raw = pixels * len(heat.bands) * 4
    if products.probabilities:
        raw += pixels * len(heat.bands) // 2 * 4
    if products.class_map:
        raw += pixels
    return {"outputs": raw * (2 if products.cog else 1), "resume journal": max(0, raw - stored)}


def explain_xarray(
    data: xr.DataArray,
    spec: ModelSpec,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
    resolution: str = "source",
    model: nn.Module | None = None,
    row_bands: int | None = None,
) -> xr.DataArray:
    """Explain a ``(band, y, x)`` DataArray with a CRS and transform (rioxarray ``.rio``).

    Returns the heatmap as a ``(band, y, x)`` float32 DataArray on the same grid (or the
    feature map's grid for ``resolution="native"``) with the same CRS, NaN where nodata: where
    every selected band holds the DataArray's nodata or is not finite. A band without data at
    a pixel that has others is fed as its mean (:func:`geocam.sources.fill_nodata`).

    A dask-backed DataArray gives a lazy heatmap: nothing is read or computed until it is
    (``.compute()``, by whatever Dask scheduler is in use); its row blocks come from
    ``row_bands`` bands of tile rows (:func:`geocam.scene.distributed.lazy_heatmap`), equal to
    the eager result. Its checks (non-finite maps; with scene weights an empty region or every pixel
    nodata) are raised by the computation; a map zero everywhere is not refused.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    if data.ndim != 3:
        raise GeocamError(f"the DataArray has dims {data.dims}; expected (band, y, x)")
    lazy = data.chunks is not None
    pixels = data.data if lazy else np.asarray(data.values)
    if spec.bands:
        if len(spec.bands) != 1:
            raise GeocamError("a DataArray is one raster; stack multi-raster inputs into one first")
        pixels = pixels[[b - 1 for b in spec.bands[0]]]
    transform = data.rio.transform()
    grid = Grid(data.rio.crs, transform, pixels.shape[2], pixels.shape[1])
    nodata = data.rio.nodata if data.rio.nodata is not None else data.rio.encoded_nodata
    where = _lazy_where if lazy else np.where
    if nodata is not None and not np.isnan(nodata):  # a band's nodata is never data: NaN
        pixels = where(pixels == nodata, np.float32(np.nan), pixels.astype(np.float32))
    products = Products(resolution="native" if resolution == "native" else "source")
    network = build_model(spec) if model is None else model
    if lazy:
        from geocam.scene.distributed import lazy_heatmap

        heat, scene = lazy_heatmap(
            network, spec, pixels.astype(np.float32), grid, explanation,
            tiling=tiling, runtime=runtime, products=products, row_bands=row_bands,
        )  # fmt: skip
        layer, stride = scene.layer, scene.stride
    else:
        heat, report = _eager_heatmap(network, spec, pixels, grid, explanation, tiling, runtime,
                                      products)  # fmt: skip
        layer, stride = report.layer, report.stride
    out_transform = transform
    if resolution == "native":
        out_transform = native_transform(transform, stride)
    height, width = heat.shape[1:]
    xs = out_transform.c + out_transform.a * (np.arange(width) + 0.5)
    ys = out_transform.f + out_transform.e * (np.arange(height) + 0.5)
    names = [
        f"{spec.classes[spec.class_index(c)]} {kind}"
        for c in explanation.classes
        for kind in ("positive", "signed")
    ]
    result = xr.DataArray(
        heat,
        dims=("band", "y", "x"),
        coords={"band": names, "y": ys, "x": xs},
        attrs={"method": explanation.method, "layer": layer},
        name="geocam",
    )
    result = result.rio.write_crs(data.rio.crs).rio.write_transform(out_transform)
    written: xr.DataArray = result.rio.write_nodata(np.nan, encoded=False)
    return written


def _eager_heatmap(
    network: nn.Module,
    spec: ModelSpec,
    pixels: np.ndarray,
    grid: Grid,
    explanation: Explanation,
    tiling: Tiling | None,
    runtime: Runtime | None,
    products: Products,
) -> tuple[np.ndarray, SceneReport]:
    """The heatmap of pixels in memory, computed now."""
    source = ArraySource(pixels, grid, fill=mean_fill(spec.normalisation, len(pixels)))
    sinks: dict[str, ArraySink] = {}

    def sink(product: ProductSpec) -> ArraySink:
        sinks[product.name] = ArraySink(len(product.bands), product.grid.height, product.grid.width)
        return sinks[product.name]

    report = explain_scene(
        network, spec, source, explanation, sink,
        tiling=tiling, runtime=runtime, products=products,
    )  # fmt: skip
    return sinks["heatmap"].data, report


def _lazy_where(condition: Any, value: Any, other: Any) -> Any:
    import dask.array as da

    return da.where(condition, value, other)


def _as_list(sources: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [sources] if isinstance(sources, str | Path) else list(sources)
