"""One scene across workers: the scene engine's passes as a map-reduce over bands of tile rows.

Every pass of :class:`~geocam.scene.engine._Scene` is a function over a band of whole tile
rows (:meth:`pass_zero_rows`, :meth:`pass_one_rows`, :meth:`map_rows`, :meth:`single_rows`)
whose results are reduced by :meth:`reduce` in tile-row order. A single process runs them over
all rows; here each band is a task on a worker (:func:`run_band`), and this process reduces
the bands' results in order: the scene's weights after pass 1 (each band's partial sums per
tile row), the products' strips after pass 2, written by this process's sinks. The float
operations and their order are those of the single-process run, so the outputs are bitwise
identical to it (deterministic algorithms on, the same device kind).

Grad-CAM++ with the predicted region: pass-0 bands return their cores' predictions; this
process records them and gives each pass-1 band the rows of the record its tiles read.

A band's task carries a :class:`BandJob` (the network, or the small
:class:`~geocam.batch.run.ModelConfig` that Dask workers load once); each worker process keeps
the scene it planned for the job, and computes one band at a time (threads share the network).
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from geocam.blend import Strip
from geocam.errors import GeocamError
from geocam.models import ModelSpec
from geocam.scene.engine import RowResult, SceneReport, SinkFactory, _Scene
from geocam.scene.options import Explanation, Products, Runtime, Tiling
from geocam.scene.predicted import PredictedRegion, PredictedRows
from geocam.sources import ArraySource, Grid, RasterSource, TileSource

if TYPE_CHECKING:
    from distributed import Client

    from geocam.batch.run import ModelConfig

Kind = Literal["zero", "one", "map", "single"]


@dataclass(frozen=True)
class RasterRecipe:
    """How a worker opens the scene's rasters (the arguments of :class:`RasterSource`)."""

    paths: tuple[str, ...]
    bands: tuple[tuple[int, ...], ...] = ()
    nodata: float | None = None
    fallback_nodata: float | None = None
    fill: tuple[float, ...] | None = None

    def open(self) -> RasterSource:
        """The rasters, opened on this machine (the paths must be readable here)."""
        return RasterSource(
            list(self.paths), self.bands, self.nodata, self.fallback_nodata, self.fill
        )


@dataclass(frozen=True)
class BandJob:
    """Everything a band task needs but its rows: small except ``model`` (sent once).

    The network travels as the bytes it pickled to when the job was made (:func:`pack`): a
    worker may pass the job on while it runs a band, and a network pickled mid-forward would
    carry the explanation's hooks along.
    """

    model: bytes | ModelConfig
    spec: ModelSpec
    explanation: Explanation
    tiling: Tiling
    runtime: Runtime
    products: Products
    source: RasterRecipe | PlanSource
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    deterministic: bool = field(default_factory=torch.are_deterministic_algorithms_enabled)
    """Deterministic algorithms were on where the job was made: on for its bands too."""
    threads: int | None = field(
        default_factory=lambda: (
            torch.get_num_threads() if torch.are_deterministic_algorithms_enabled() else None
        )
    )
    """Torch's threads for its bands: the maker's when deterministic (CPU kernels may round
    differently with the thread count), else the worker's own."""


class PlanSource:
    """A scene's grid and band count without pixels: what a plan needs (reading fails)."""

    def __init__(self, grid: Grid, count: int) -> None:
        self.grid = grid
        self.count = count

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Never called: a band task reads the rows it was given (:class:`RowsSource`)."""
        raise RuntimeError("this source only plans: give the band its rows")


class RowsSource:
    """Rows ``top..`` of a scene held in memory, read with the scene's windows."""

    def __init__(self, rows: ArraySource, top: int, grid: Grid) -> None:
        self.rows = rows
        self.top = top
        self.grid = grid
        self.count = rows.count

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The window's pixels and validity, as the whole scene's source reads them."""
        top = int(window.row_off) - self.top
        if top < 0 or top + int(window.height) > self.rows.pixels.shape[1]:
            raise ValueError(f"{window} is outside the rows held ({self.top}..)")
        return self.rows.read(Window(window.col_off, top, window.width, window.height))


def split_rows(count: int, bands: int) -> list[range]:
    """``count`` tile rows as at most ``bands`` contiguous bands of near-equal size, in order."""
    if count < 1 or bands < 1:
        raise ValueError(f"cannot split {count} tile row(s) into {bands} band(s)")
    bands = min(bands, count)
    edges = [count * i // bands for i in range(bands + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(bands)]


def band_rows(scene: _Scene, rows: range) -> tuple[int, int]:
    """The source rows ``(top, bottom)`` that the windows of tile rows ``rows`` cover."""
    windows = [scene.layout.row_groups()[r][0] for r in rows]
    return int(windows[0].row_off), max(int(w.row_off + w.height) for w in windows)


# --- workers --------------------------------------------------------------------------------

_SCENES: dict[str, _Scene] = {}
_LOCK = threading.Lock()


def pack(model: nn.Module) -> bytes:
    """The network as a job carries it (pickled once, by this process, between forwards)."""
    return pickle.dumps(model)


def _model(job: BandJob) -> nn.Module:
    if isinstance(job.model, bytes):
        network: nn.Module = pickle.loads(job.model)  # this session's own network, sent by it
        return network
    from geocam.batch.run import load

    return load(job.model).model


def _worker_scene(job: BandJob) -> _Scene:
    """The scene planned for ``job`` in this process (the last job's only: memory stays flat)."""
    scene = _SCENES.get(job.token)
    if scene is None:
        for old in _SCENES.values():
            if isinstance(old.source, RasterSource):
                old.source.close()
        _SCENES.clear()
        source: TileSource = (
            job.source.open() if isinstance(job.source, RasterRecipe) else job.source
        )
        scene = _Scene(
            _model(job), job.spec, source, job.explanation, job.tiling, job.runtime, job.products
        )
        _SCENES[job.token] = scene
    return scene


def run_band(
    job: BandJob,
    kind: Kind,
    rows: range,
    *,
    activation_sums: torch.Tensor | None = None,
    predicted: PredictedRows | None = None,
    weights: torch.Tensor | None = None,
    pixels: np.ndarray | None = None,
    top: int = 0,
) -> list[RowResult]:
    """One pass over the tile rows ``rows``: what a worker computes for one band.

    ``kind``: ``"zero"`` (Grad-CAM++'s activation sums), ``"one"`` (partial sums of the
    weights, with pass 0's ``activation_sums`` and ``predicted`` rows), ``"map"`` (maps with
    the scene's ``weights``) or ``"single"`` (one-pass methods). ``pixels`` (the source rows
    ``top..`` as float32, NaN where nodata) replace the job's source for this band.
    """
    with _LOCK:  # threads of one process share the network (and its hooks): one band at a time
        torch.use_deterministic_algorithms(job.deterministic)
        if job.threads is not None and torch.get_num_threads() != job.threads:
            torch.set_num_threads(job.threads)
        scene = _worker_scene(job)
        if pixels is not None:
            fill = job.source.fill if isinstance(job.source, RasterRecipe) else _fill(job)
            scene.source = RowsSource(ArraySource(pixels, scene.source.grid, fill=fill), top,
                                      scene.source.grid)  # fmt: skip
        scene._forget_predicted()
        if kind == "zero":
            return list(scene.pass_zero_rows(rows))
        if kind == "one":
            return list(scene.pass_one_rows(rows, activation_sums, predicted))
        if kind == "map":
            assert weights is not None
            return list(scene.map_rows(rows, weights.to(scene.device)))
        return list(scene.single_rows(rows))


def _fill(job: BandJob) -> tuple[float, ...]:
    from geocam.sources import mean_fill

    return mean_fill(job.spec.normalisation, job.spec.in_channels)


# --- the reduce, in this process ------------------------------------------------------------


def explain_scene_distributed(
    model: nn.Module,
    spec: ModelSpec,
    source: TileSource,
    recipe: RasterRecipe,
    explanation: Explanation,
    sinks: SinkFactory,
    client: Client,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
    products: Products | None = None,
    row_bands: int | None = None,
    model_config: ModelConfig | None = None,
) -> SceneReport:
    """:func:`~geocam.scene.explain_scene` with every pass's bands computed on ``client``.

    ``source`` is this process's view of the scene (for the plan); workers open ``recipe``.
    The tile rows are split into ``row_bands`` bands (default: two per worker). Workers get the
    network once (scattered), or load ``model_config`` once per process. The products are
    bitwise identical to :func:`explain_scene`'s on the same kind of device.
    """
    start = time.perf_counter()
    tiling, runtime, products = tiling or Tiling(), runtime or Runtime(), products or Products()
    scene = _Scene(model, spec, source, explanation, tiling, runtime, products)
    job = BandJob(
        model_config if model_config is not None else pack(scene.model.cpu()),
        spec, replace(explanation, layer=scene.layer), tiling, runtime, products, recipe,
    )  # fmt: skip
    scene.model.to(scene.device)
    count = len(scene.layout.row_groups())
    if row_bands is None:
        workers = len(client.scheduler_info(n_workers=-1)["workers"]) or 1
        row_bands = 2 * workers
    parts = split_rows(count, row_bands)
    accs = scene.accumulators({s.name: sinks(s) for s in scene.specs})
    heat = {"heatmap": accs["heatmap"]}
    extras = {name: acc for name, acc in accs.items() if name != "heatmap"}
    bar = scene.progress_bar()
    if model_config is not None:  # built once per worker process, as a batch's
        from geocam.batch.dask import ModelPlugin

        client.register_plugin(ModelPlugin(model_config))
    shared = client.scatter(job, broadcast=True)  # type: ignore[no-untyped-call]
    try:

        def results(kind: Kind, **extra: Any) -> Iterator[RowResult]:
            return _gather(client, shared, kind, parts, bar.update, extra)

        if scene.scene_weights:
            sums = None
            if explanation.passes == 3:
                scene.start_predicted()
                sums = scene.activation_sums(scene.reduce(results("zero")))
            record = scene._predicted

            def predicted(rows: range) -> PredictedRows | None:
                return (
                    record.rows(*band_rows(scene, rows))
                    if isinstance(record, PredictedRegion)
                    else None
                )

            total = scene.reduce(results("one", activation_sums=sums, predicted=predicted), extras)
            weights = scene.weights_from(total)
            scene._forget_predicted()
            scene.reduce(results("map", weights=weights.cpu()), heat)
        else:
            scene.check_single_pass()
            scene.reduce(results("single"), accs)
            if scene.skipped == len(scene.windows):
                raise scene._all_nodata()
            scene._check_region()
    finally:
        bar.close()
        scene._forget_predicted()
        shared.release()
    return scene.report(time.perf_counter() - start)


def _gather(
    client: Client,
    job: Any,
    kind: Kind,
    parts: Sequence[range],
    progress: Callable[[int], object],
    extra: Mapping[str, Any],
    ahead: int | None = None,
) -> Iterator[RowResult]:
    """Submit a pass's bands and yield their rows in order, as the bands arrive.

    ``extra`` are the bands' keyword arguments (a callable: called with the band's rows).

    Up to ``ahead`` bands (default: twice the workers) run beyond the one being reduced, so
    memory holds a few bands' results, here and on the workers; a failing band raises.
    """
    if ahead is None:
        ahead = 2 * max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    pending: deque[Any] = deque()
    queued = iter(parts)

    def submit() -> None:
        rows = next(queued, None)
        if rows is not None:
            given = {k: v(rows) if callable(v) else v for k, v in extra.items()}
            pending.append(client.submit(run_band, job, kind, rows, pure=False, retries=1, **given))

    try:
        for _ in range(ahead + 1):
            submit()
        while pending:
            future = pending.popleft()
            band: list[RowResult] = future.result()
            future.release()
            submit()
            for _ in range(sum(r.tiles for r in band)):
                progress(1)  # tile by tile, as a single process reports them
            yield from band
    finally:
        for future in pending:
            future.cancel()


# --- lazy xarray --------------------------------------------------------------------------


def lazy_heatmap(
    model: nn.Module,
    spec: ModelSpec,
    pixels: Any,
    grid: Grid,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
    products: Products | None = None,
    row_bands: int | None = None,
) -> tuple[Any, _Scene]:
    """The heatmap of a dask array ``(bands, H, W)`` (float32, NaN where nodata) as a dask array.

    Nothing is computed here: the graph reads each band's rows (``row_bands`` bands of tile rows;
    default: as many as ``pixels`` has row chunks), runs pass 0/1 per band,
    reduces the weights, runs pass 2 per band and assembles output row blocks (one per band,
    each from the strips of the bands that touch it). Returns the array and the plan (its
    layer and stride). Computed by whatever scheduler the caller uses; the values equal
    :func:`~geocam.scene.explain_scene`'s on the same pixels.
    """
    import dask
    import dask.array as da

    tiling, runtime = tiling or Tiling(), runtime or Runtime()
    products = products or Products()
    plan = PlanSource(grid, int(pixels.shape[0]))
    scene = _Scene(model, spec, plan, explanation, tiling, runtime, products)
    named = replace(explanation, layer=scene.layer)  # a region file is opened where it runs
    job = BandJob(pack(scene.model), spec, named, tiling, runtime, products, plan)
    name = f"geocam-{job.token}"
    shared = dask.delayed(job, name=f"{name}-job")  # type: ignore[attr-defined]
    count = len(scene.layout.row_groups())
    parts = split_rows(count, row_bands or len(pixels.chunks[1]))  # as many as the row chunks
    reads = {}
    for i, rows in enumerate(parts):
        top, bottom = band_rows(scene, rows)
        reads[i] = (pixels[:, top:bottom, :], top)

    def band(kind: Kind, i: int, **extra: Any) -> Any:
        data, top = reads[i]
        return dask.delayed(run_band, pure=True)(  # type: ignore[attr-defined]
            shared, kind, parts[i], pixels=data, top=top, **extra,
            dask_key_name=f"{name}-{kind}-{i}",
        )  # fmt: skip

    indexes = range(len(parts))
    if scene.scene_weights:
        sums = predicted = None
        if explanation.passes == 3:
            zero = [band("zero", i) for i in indexes]
            sums = dask.delayed(_reduce_sums, pure=True)(  # type: ignore[attr-defined]
                shared, zero, dask_key_name=f"{name}-sums"
            )
            if scene.explanation.region == "predicted":
                predicted = {
                    i: dask.delayed(_predicted_rows, pure=True)(  # type: ignore[attr-defined]
                        band_rows(scene, parts[i]),
                        grid,
                        len(scene.classes),
                        zero,
                        dask_key_name=f"{name}-predicted-{i}",
                    )
                    for i in indexes
                }
        one = [
            band("one", i, activation_sums=sums, predicted=None if predicted is None else
                 predicted[i])
            for i in indexes
        ]  # fmt: skip
        weights = dask.delayed(_reduce_weights, pure=True)(  # type: ignore[attr-defined]
            shared, one, dask_key_name=f"{name}-weights"
        )
        maps = [band("map", i, weights=weights) for i in indexes]
    else:
        scene.check_single_pass()  # (occlusion times one batch of zeros, not the data)
        maps = [band("single", i) for i in indexes]
    spec0 = scene.specs[0]
    scale = scene._scale(spec0)
    height, width = spec0.grid.height, spec0.grid.width
    blocks = []
    for i, rows in enumerate(parts):
        first = 0 if rows.start == 0 else scene.layout.rows_final_after(rows.start - 1) // scale
        last = (
            height if rows.stop == count else scene.layout.rows_final_after(rows.stop - 1) // scale
        )
        touching = [j for j in indexes if _touches(scene, parts[j], first, last, scale)]
        block = dask.delayed(_assemble, pure=True)(  # type: ignore[attr-defined]
            shared, [maps[j] for j in touching], first, last,
            dask_key_name=f"{name}-heatmap-{i}",
        )  # fmt: skip
        blocks.append(
            da.from_delayed(block, shape=(len(spec0.bands), last - first, width), dtype=np.float32)  # type: ignore[no-untyped-call]
        )
    return da.concatenate(blocks, axis=1), scene  # type: ignore[no-untyped-call]


def _touches(scene: _Scene, rows: range, first: int, last: int, scale: int) -> bool:
    top, bottom = band_rows(scene, rows)
    return top // scale < last and -(-bottom // scale) > first


def _reduce_sums(job: BandJob, bands: list[list[RowResult]]) -> torch.Tensor:
    with _LOCK:
        scene = _worker_scene(job)
        return scene.activation_sums(scene.reduce(r for band in bands for r in band))


def _reduce_weights(job: BandJob, bands: list[list[RowResult]]) -> torch.Tensor:
    with _LOCK:
        scene = _worker_scene(job)
        return scene.weights_from(scene.reduce(r for band in bands for r in band)).cpu()


def _predicted_rows(
    rows: tuple[int, int], grid: Grid, classes: int, bands: list[list[RowResult]]
) -> PredictedRows:
    """Rows ``top..bottom`` of the predicted region from pass 0's core predictions."""
    top, bottom = rows
    mask = np.zeros((classes, bottom - top, grid.width), dtype=np.uint8)
    for band in bands:
        for result in band:
            for core, values in result.predicted:
                r0, r1 = int(core.row_off), int(core.row_off + core.height)
                a, b = max(r0, top), min(r1, bottom)
                if a < b:
                    cols = slice(int(core.col_off), int(core.col_off + core.width))
                    mask[:, a - top : b - top, cols] = values[:, a - r0 : b - r0]
    return PredictedRows(mask, top)


def _assemble(job: BandJob, bands: list[list[RowResult]], first: int, last: int) -> np.ndarray:
    """Heatmap rows ``first..last``: the strips that touch them, added in tile-row order."""
    with _LOCK:
        scene = _worker_scene(job)
    spec = scene.specs[0]
    width = spec.grid.width
    sums = np.zeros((len(spec.bands), last - first, width), dtype=np.float32)
    weights = np.zeros((last - first, width), dtype=np.float32)
    for band in bands:
        for result in band:
            strip = result.strips.get("heatmap")
            if strip is not None:
                _add_rows(sums, weights, strip, first, last)
    values: np.ndarray = scene._heat_mean(sums, weights)
    return values


def _add_rows(sums: np.ndarray, weights: np.ndarray, strip: Strip, first: int, last: int) -> None:
    a = max(strip.row, first)
    b = min(strip.row + strip.weights.shape[0], last)
    if a < b:
        sums[:, a - first : b - first] += strip.sums[:, a - strip.row : b - strip.row]
        weights[a - first : b - first] += strip.weights[a - strip.row : b - strip.row]


def recipe_of(
    sources: Sequence[str | Path],
    bands: Sequence[Sequence[int]],
    nodata: float | None,
    fallback_nodata: float | None,
    fill: Sequence[float] | None,
) -> RasterRecipe:
    """The :class:`RasterRecipe` of :class:`RasterSource`'s arguments."""
    return RasterRecipe(
        tuple(str(p) for p in sources),
        tuple(tuple(b) for b in bands),
        nodata,
        fallback_nodata,
        None if fill is None else tuple(fill),
    )


def check_split(resume: bool) -> None:
    """A split run keeps no journal of its state: ``--resume`` is refused in one line."""
    if resume:
        raise GeocamError(
            "--resume: a scene split across workers cannot resume; rerun it, or resume "
            "without --workers/--scheduler"
        )
