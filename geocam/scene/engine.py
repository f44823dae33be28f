"""The scene engine: plan the tiles, run the passes, stream every product to its sink.

Tiles are read ahead in a background thread, batched through the network, blended with
raised-cosine weights inside the overlaps, and streamed to the outputs in whole strips, so
memory grows with the scene's width, not its area.

Scene-consistent weights (the default for Grad-CAM and Grad-CAM++): the channel weights are
those of the *whole* scene's region, not of each tile, summed from per-tile partials (see
:mod:`geocam.scene.passes` for the decomposition and when it is exact). Pass 2 forms every
tile's map with those weights, from activations kept from pass 1 when the whole scene's fit
the cache budget (decided before pass 1, so a large scene never grows memory with its area),
else from a new forward pass. HiResCAM and LayerCAM are local and need one pass;
``weights="tile"`` keeps per-tile weights.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn
from tqdm import tqdm

from geocam.attribution import PIXEL_METHODS, attribute
from geocam.attribution import occlusion as occlusion_
from geocam.blend import BandAccumulator, RowStrip, Strip, block_sum, weighted_mean
from geocam.cam import (
    CamOptions,
    LayerGradients,
    class_table,
    combine,
    layer_activations,
    layer_gradients,
)
from geocam.device import BatchSizer, autocast_dtype, resolve_device, to_device
from geocam.errors import GeocamError, GeocamWarning, ZeroMap
from geocam.layers import LayerInfo, default_layer, fixed_tile, list_layers, resolve_layer
from geocam.models import ModelSpec
from geocam.output import StripSink
from geocam.region_sources import open_region
from geocam.regions import Region, class_probabilities, region_weights
from geocam.scene import passes
from geocam.scene.options import Explanation, Products, Runtime, Tiling
from geocam.scene.predicted import PredictedRegion, PredictedRows
from geocam.scene.resume import Checkpoint, plan_resume
from geocam.scene.specs import ProductSpec, classes_from_probabilities, product_specs
from geocam.scene.tiles import Tile, core_in_tile, core_mask, read_tile, window_key
from geocam.sources import TileSource, read_ahead
from geocam.tiling import TileLayout

R = TypeVar("R")
SinkFactory = Callable[[ProductSpec], StripSink]


@dataclass
class SceneReport:
    """What a scene run did."""

    layer: str
    stride: int
    tiles: int
    skipped: int
    passes: int
    batch_size: int
    seconds: float
    region_pixels: dict[str, float]
    cached_activations: bool = False
    resumed_from_row: int = 0
    """Source rows taken from an earlier, interrupted run (0: computed from the top)."""
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Cached:
    activations: torch.Tensor  # on the host
    valid: np.ndarray


@dataclass
class RowResult:
    """What one tile row gives a pass, reduced in tile-row order by :meth:`_Scene.reduce`.

    ``part``: the row's partial sum (its tiles' sums added in tile order; None when every tile
    is nodata); ``counts``: region pixels of each of its tiles; ``strips``: each product's
    zero-started strip; ``predicted``: Grad-CAM++'s core predictions (pass 0).
    """

    index: int
    tiles: int = 0
    skipped: int = 0
    part: torch.Tensor | None = None
    counts: np.ndarray | None = None
    strips: dict[str, Strip] = field(default_factory=dict)
    predicted: list[tuple[Window, np.ndarray]] = field(default_factory=list)


_NOT_READ = np.zeros(0, np.float32)  # stands for pixels a cached pass 2 does not need


def explain_scene(
    model: nn.Module,
    spec: ModelSpec,
    source: TileSource,
    explanation: Explanation,
    sinks: SinkFactory,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
    products: Products | None = None,
    checkpoint: Checkpoint | None = None,
) -> SceneReport:
    """Explain ``source`` tile by tile and stream every product into the sinks made for it.

    ``sinks`` is called once per product (heatmap first) with its grid, bands and dtype, before
    any tile is processed. The model is moved to the chosen device. With a ``checkpoint`` the
    run stores its progress there and continues from what an earlier run stored: the rows
    already stored are replayed into the sinks and only the missing ones are computed, with the
    same tiles and batches, so the result is bitwise identical to an uninterrupted run.

    Raises :class:`GeocamError` when the region holds no valid pixel, or when the maps are not
    finite or zero everywhere: never a map that says nothing.
    """
    scene = _Scene(model, spec, source, explanation, tiling, runtime, products, checkpoint)
    return scene.run(sinks)


class _Scene:
    """One run over one scene; holds the plan shared by the passes."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        source: TileSource,
        explanation: Explanation,
        tiling: Tiling | None,
        runtime: Runtime | None,
        products: Products | None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.spec = spec
        self.checkpoint = checkpoint
        self.source = source
        if isinstance(explanation.region, str) and explanation.region not in ("predicted", "all"):
            opened = open_region(explanation.region, source.grid, explanation.where)
            explanation = replace(explanation, region=opened, region_name=opened.name)
        self.tiling = tiling or Tiling()
        self.runtime = runtime or Runtime()
        self.products = products or Products()
        if source.count != spec.in_channels:
            raise GeocamError(
                f"the sources have {source.count} band(s) but the model takes "
                f"{spec.in_channels}: check the sources and the config's bands"
            )
        if self.tiling.batch_size < 1:
            raise GeocamError("Tiling.batch_size must be at least 1")
        self.device = resolve_device(self.runtime.device)
        self.model = model.to(self.device)
        self.options = CamOptions(
            score=explanation.score,
            threshold=explanation.threshold,
            autocast=autocast_dtype(self.runtime.precision, self.device),
        )
        self.classes = [spec.class_index(c) for c in explanation.classes]
        if not self.classes:
            raise GeocamError("Explanation.classes: name at least one class to explain")
        self.class_names = [spec.classes[i] for i in self.classes]
        layers = list_layers(self.model, spec.in_channels)
        layer = explanation.layer or spec.layer or default_layer(self.model, spec.in_channels)
        resolve_layer(self.model, layer)  # an unknown name fails with suggestions
        self.explanation = replace(explanation, layer=layer)
        self.layer = layer
        self.layer_info = _layer_info(layers, layer)
        self.stride = int(self.layer_info.stride)
        multiple = int(max(i.stride for i in layers if i.stride == int(i.stride)))
        if multiple % self.stride:
            raise GeocamError(
                f"layer {layer!r} has a stride of {self.stride}, which does not divide the "
                f"network's input multiple ({multiple}): tiles would not share its cell grid"
            )
        grid = source.grid
        self.layout = TileLayout.plan(
            grid.height,
            grid.width,
            self.tiling.tile,
            self.tiling.overlap,
            multiple,
            margin=-(-self.stride // 2),
            fixed=fixed_tile(self.model),  # a scene smaller than Swin's 224 is padded to it
        )
        _warn_hard_cuts(self.layout, self.stride)
        self.windows = self.layout.windows()
        if self.explanation.method in PIXEL_METHODS:  # geocam.attribution's baselines
            self._check_pixel_method()
        self.scene_weights = self.explanation.scene_weights
        self.sizer = BatchSizer(self.tiling.batch_size)
        self._index = {window_key(w): i for i, w in enumerate(self.windows)}
        self.skipped = 0
        self.region_counts = np.zeros((len(self.windows), len(self.classes)))
        """Region pixels counted per tile (in its core), summed in tile order at the end."""
        self.resume_row = 0
        """Source rows an earlier run finished: tiles above them are not computed again."""
        self.heat_peak = 0.0
        """The largest finite |value| of the heatmap written so far."""
        self._scene_activation_sums: torch.Tensor | None = None
        """Grad-CAM++'s per-channel activation sums over the scene (pass 0)."""
        self._predicted: PredictedRegion | PredictedRows | None = None
        """Grad-CAM++'s predicted region as each tile's core decided it (pass 0)."""
        self._core_predictions: list[tuple[Window, np.ndarray]] = []
        """Core predictions of the batches run since the last tile row ended (pass 0)."""
        self._current: RowResult | None = None
        self._progress: Callable[[int], object] = _ignore
        """Called with the number of tiles of every batch done (the progress bar's update)."""
        self.specs = self.product_specs()
        """Every product's grid, bands and tags (heatmap first)."""

    # --- the run ---------------------------------------------------------------------------

    def run(self, sinks: SinkFactory) -> SceneReport:
        """The whole scene in this process: every pass over all tile rows, reduced in order."""
        start = time.perf_counter()
        made = {spec.name: sinks(spec) for spec in self.specs}
        starts, state = self._resume(self.specs)
        accs = self.accumulators(made, starts)
        heat = {"heatmap": accs["heatmap"]}
        extras = {name: acc for name, acc in accs.items() if name != "heatmap"}
        passes_ = self.explanation.passes
        bar = self.progress_bar()
        self._progress = bar.update
        everything = range(len(self.layout.row_groups()))
        cached = False
        try:
            if self.scene_weights and state is not None:  # pass 1 was finished and stored
                bar.update(len(self.windows) * (passes_ - 1))
                weights = torch.from_numpy(state["weights"]).to(self.device)
                recompute = self._cache_fits()  # the function of the run it resumes
                self.reduce(self.map_rows(everything, weights, pass_one=recompute), heat)
            elif self.scene_weights:
                sums = None
                if passes_ == 3:
                    self.start_predicted()
                    sums = self.activation_sums(self.reduce(self.pass_zero_rows(everything)))
                cache: dict[tuple[int, int], _Cached] | None = {} if self._cache_fits() else None
                total = self.reduce(self.pass_one_rows(everything, sums, cache=cache), extras)
                weights = self.weights_from(total)
                self._forget_predicted()
                cached = cache is not None
                self._save_state(weights)
                self.reduce(self.map_rows(everything, weights, cache=cache), heat)
            else:
                self.check_single_pass()
                self.reduce(self.single_rows(everything), accs)
                if self.skipped == len(self.windows):
                    raise self._all_nodata()
                self._check_region()
        finally:
            bar.close()
            self._forget_predicted()
        return self.report(time.perf_counter() - start, cached)

    # --- what the passes share, whichever process runs them ---------------------------------

    def product_specs(self) -> list[ProductSpec]:
        """Every product's grid, bands and tags (heatmap first)."""
        return product_specs(
            self.source.grid, self.spec, self.classes, self.stride, self.explanation,
            self.layout, self.products, self.runtime.precision,
        )  # fmt: skip

    def accumulators(
        self, sinks: Mapping[str, StripSink], starts: Mapping[str, int] | None = None
    ) -> dict[str, BandAccumulator]:
        """Every product's accumulator by name, writing into ``sinks`` from ``starts``."""
        return {
            s.name: self._accumulator(s, sinks[s.name], (starts or {}).get(s.name, 0))
            for s in self.specs
        }

    def progress_bar(self) -> tqdm[None]:
        """The run's progress over every pass's tiles (a callable progress is called too)."""
        bar: tqdm[None] = tqdm(  # type: ignore[assignment]
            total=len(self.windows) * self.explanation.passes,
            unit="tile",
            disable=not _show_progress(self.runtime.progress),
            desc="geocam",
        )
        if callable(self.runtime.progress):  # tiles done and total, after every update
            bar.update = _reporting(bar, self.runtime.progress)  # type: ignore[method-assign]
        return bar

    def report(self, seconds: float, cached: bool = False) -> SceneReport:
        """The run's report; refuses a heatmap that is zero everywhere."""
        if self.heat_peak == 0 and self.resume_row == 0:  # (a resumed run replays part)
            raise ZeroMap(
                f"the maps of {', '.join(self.class_names)} at layer {self.layer!r} are zero "
                "everywhere: the region's score does not depend on that layer here; choose "
                "another layer or region"
            )
        return SceneReport(
            layer=self.layer,
            stride=self.stride,
            tiles=len(self.windows),
            skipped=self.skipped,
            passes=self.explanation.passes,
            batch_size=self.sizer.size,
            seconds=seconds,
            region_pixels=self._region_pixels(),
            cached_activations=cached,
            resumed_from_row=self.resume_row,
        )

    def reduce(
        self,
        results: Iterable[RowResult],
        accumulators: Mapping[str, BandAccumulator] | None = None,
    ) -> torch.Tensor | None:
        """Reduce one pass's tile rows, in tile-row order, whoever computed them.

        Partial sums are added row after row (each row's own sum first), region counts stored
        per tile, strips added to the accumulators (matched by product name) and finished rows
        flushed, predicted cores recorded: the same float operations in the same order for one
        process and for any split into bands.
        """
        total: torch.Tensor | None = None
        self.skipped = 0
        last = len(self.layout.row_groups()) - 1
        accs = dict(accumulators or {})
        for result in results:
            self.skipped += result.skipped
            if result.part is not None:
                total = result.part if total is None else total + result.part
            if result.counts is not None:
                first = self._first_tile(result.index)
                self.region_counts[first : first + len(result.counts)] = result.counts
            if isinstance(self._predicted, PredictedRegion):
                for core, values in result.predicted:
                    self._predicted.record(core, values)
            for name, strip in result.strips.items():
                accs[name].add_strip(strip)
            final = None if result.index == last else self.layout.rows_final_after(result.index)
            if not self.scene_weights and any(a.ready(final) for a in accs.values()):
                self._save_state(None)  # the region counts of every tile whose rows get stored
            for acc in accs.values():
                acc.flush(final)
        return total

    def weights_from(self, total: torch.Tensor | None) -> torch.Tensor:
        """The scene's channel weights from pass 1's reduced partial sums."""
        if total is None:
            raise self._all_nodata()
        self._check_region()
        grid = self.source.grid
        cells = grid.height * grid.width / self.stride**2
        weights = passes.scene_weights(self.explanation.method, total, cells)  # type: ignore[arg-type]
        if not torch.isfinite(weights).all():
            raise GeocamError(
                f"the gradients at layer {self.layer!r} are not finite (float16 overflow?): "
                "run in full precision (Runtime.precision fp32) or choose another layer"
            )
        return weights.to(self.device)

    def activation_sums(self, total: torch.Tensor | None) -> torch.Tensor:
        """Pass 0's reduced activation sums (every tile nodata: an error)."""
        if total is None:
            raise self._all_nodata()
        return total

    def start_predicted(self) -> None:
        """Grad-CAM++ with the predicted region: pass 0 records each core's prediction."""
        if self.explanation.region == "predicted":
            grid = self.source.grid
            self._predicted = PredictedRegion(len(self.classes), grid.height, grid.width)

    def _first_tile(self, row: int) -> int:
        return sum(len(g) for g in self.layout.row_groups()[:row])

    def _region_pixels(self) -> dict[str, float]:
        totals = self.region_counts.sum(axis=0).tolist()
        return dict(zip(self.class_names, totals, strict=True))

    def _check_region(self) -> None:
        """An empty region explains nothing: refuse it rather than write a zero map."""
        empty = [name for name, count in self._region_pixels().items() if count == 0]
        if empty:
            raise GeocamError(
                f"the region ({self.explanation.describe_region()}) holds no valid pixel of "
                f"{', '.join(empty)}: nothing to explain; choose another region or class"
            )

    # --- the passes over a band of tile rows (one engine for one process and for workers) ---

    def single_rows(self, rows: range, after_row: int | None = None) -> Iterator[RowResult]:
        """Per-tile maps (local methods, or ``weights="tile"``) of the tile rows ``rows``."""
        heat, extras = self._strips()
        after = self.resume_row if after_row is None else after_row
        for index, group, last, needed in self._groups(rows, after):
            result = self._row_result(index, group)
            if needed:
                tiles = [t for t in group if not t.skipped]
                maps = self._per_tile(tiles, self._tile_maps)
                for tile, (signed, output) in zip(tiles, maps, strict=True):
                    self._add_heat(heat, tile, signed)
                    self._add_extras(extras, tile, output)
            self._tick(group)
            if last:
                yield self._finish_row(result, heat, extras, counts=needed)
                heat, extras = self._strips()

    def pass_zero_rows(self, rows: range) -> Iterator[RowResult]:
        """Pass 0 of Grad-CAM++: each tile row's activation sums, each cell once.

        With the predicted region, each core's prediction comes with its row, to be recorded
        for pass 1 (:mod:`geocam.scene.predicted`).
        """
        for index, group, last, _ in self._groups(rows):
            result = self._row_result(index, group)
            tiles = [t for t in group if not t.skipped]
            for part in self._per_tile(tiles, self._activation_sum_parts):
                result.part = part if result.part is None else result.part + part
            result.predicted += self._core_predictions
            self._core_predictions = []
            self._tick(group)
            if last:
                yield self._finish_row(result)

    def pass_one_rows(
        self,
        rows: range,
        activation_sums: torch.Tensor | None,
        predicted: PredictedRows | PredictedRegion | None = None,
        cache: dict[tuple[int, int], _Cached] | None = None,
    ) -> Iterator[RowResult]:
        """Pass 1: each tile row's partial sums of the scene's weights, region counts, products.

        Grad-CAM++'s predicted region is read from ``predicted`` (the record of pass 0, or the
        part of it these rows need); ``cache`` keeps each tile's activations for pass 2.
        """
        self._scene_activation_sums = activation_sums
        if predicted is not None:
            self._predicted = predicted
        _, extras = self._strips(heat=False)
        for index, group, last, _ in self._groups(rows):
            result = self._row_result(index, group)
            tiles = [t for t in group if not t.skipped]
            outputs = self._per_tile(tiles, self._tile_gradients)
            for tile, (acts, part, output) in zip(tiles, outputs, strict=True):
                result.part = part if result.part is None else result.part + part
                if cache is not None:
                    assert tile.valid is not None
                    cache[tile.key] = _Cached(acts.cpu(), tile.valid)
                self._add_extras(extras, tile, output)
            self._tick(group)
            if last:
                yield self._finish_row(result, None, extras, counts=True)
                _, extras = self._strips(heat=False)

    def map_rows(
        self,
        rows: range,
        weights: torch.Tensor,
        *,
        cache: dict[tuple[int, int], _Cached] | None = None,
        pass_one: bool | None = None,
    ) -> Iterator[RowResult]:
        """Pass 2: every tile's map with the scene's ``weights`` (from ``cache``: no reading).

        Without a cache the activations come from another forward pass: with pass 1's function
        when ``pass_one`` (what a run that cached used: the same values), else a plain forward.
        ``pass_one=None`` decides as a single-process run would (whether the cache fits).
        """
        if pass_one is None:
            pass_one = self._cache_fits()
        recompute = self._pass_one_activations if pass_one else self._activations
        heat, _ = self._strips(extras=False)
        if cache is None:
            groups = self._groups(rows, self.resume_row)
        else:  # pass 1 kept each tile's activations and validity; absent tiles were nodata
            tile_rows = self.layout.row_groups()
            groups = iter(
                [
                    (
                        r,
                        [self._cached_tile(w, cache.get(window_key(w))) for w in tile_rows[r]],
                        True,
                        True,
                    )
                    for r in rows
                ]
            )
        for index, group, last, needed in groups:
            result = self._row_result(index, group)
            tiles = [t for t in group if not t.skipped] if needed else []
            if cache is None:
                found = self._per_tile(tiles, recompute)
            else:
                found = [cache.pop(t.key).activations for t in tiles]
            for tile, acts in zip(tiles, found, strict=True):
                acts = acts[None].to(self.device)
                signed = combine(
                    self.explanation.method, acts, None, weights[None].to(acts.dtype)  # type: ignore[arg-type]
                )  # fmt: skip
                self._add_heat(heat, tile, signed[0])
            self._tick(group)
            if last:
                yield self._finish_row(result, heat)
                heat, _ = self._strips(extras=False)

    def _tick(self, group: Sequence[Tile]) -> None:
        """Report every tile of a batch done, one by one (progress counts tiles)."""
        for _ in group:
            self._progress(1)

    def _row_result(self, index: int, group: Sequence[Tile]) -> RowResult:
        """The row's result, begun at its first group (later groups of the row add to it)."""
        if self._current is None or self._current.index != index:
            self._current = RowResult(index)
        self._current.tiles += len(group)
        self._current.skipped += sum(t.skipped for t in group)
        return self._current

    def _finish_row(
        self,
        result: RowResult,
        heat: RowStrip | None = None,
        extras: list[tuple[ProductSpec, RowStrip]] | None = None,
        *,
        counts: bool = False,
    ) -> RowResult:
        self._current = None
        targets = ([] if heat is None else [("heatmap", heat)]) + [
            (spec.name, strip) for spec, strip in extras or []
        ]
        for name, target in targets:
            strip = target.strip()
            if strip is not None:
                result.strips[name] = strip
        if counts and result.tiles:
            first = self._first_tile(result.index)
            result.counts = self.region_counts[first : first + result.tiles].copy()
        return result

    def _strips(
        self, *, heat: bool = True, extras: bool = True
    ) -> tuple[RowStrip, list[tuple[ProductSpec, RowStrip]]]:
        """Zero-started strips of one tile row, for the heatmap and the other products."""
        width, tile = self.source.grid.width, self.layout.tile
        made = [
            (spec, RowStrip(self._bands(spec), width, tile, scale=self._scale(spec)))
            for spec in self.specs
            if (spec.name == "heatmap" and heat) or (spec.name != "heatmap" and extras)
        ]
        if heat:
            return made[0][1], made[1:]
        return RowStrip(0, 0, 0), made

    def _bands(self, spec: ProductSpec) -> int:
        """Bands accumulated for a product (the class map: every class's probability)."""
        return len(self.spec.classes) if spec.name == "classes" else len(spec.bands)

    def _gradients(self, tiles: Sequence[Tile], *, core: bool) -> LayerGradients:
        """One forward and backward for a batch (the region restricted to the cores with ``core``).

        Region pixels are counted in the cores, so each scene pixel counts once.
        """
        images, valid = self._batch(tiles, core=core)
        region = self._region(tiles)
        grads = layer_gradients(
            self.model, images, self.classes, self.layer,
            region=region, valid=valid, options=self.options,
        )  # fmt: skip
        self._check_output(images, grads.output)
        self._count_region(tiles, grads.region)
        return grads

    def _tile_maps(self, tiles: Sequence[Tile]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.explanation.method in PIXEL_METHODS:
            return self._pixel_maps(tiles)
        grads = self._gradients(tiles, core=False)
        signed = combine(self.explanation.method, grads.activations, grads.gradients)  # type: ignore[arg-type]
        return list(zip(signed, grads.output, strict=True))

    def _pixel_maps(self, tiles: Sequence[Tile]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A pixel method's maps at the tile's resolution (``_add_heat``'s resize is exact)."""
        images, valid = self._batch(tiles, core=False)
        result = attribute(
            self.model, images, self.classes, self.explanation.method,  # type: ignore[arg-type]
            layer=self.layer, region=self._region(tiles), valid=valid, options=self.options,
            occlusion=self.explanation.occlusion, batch_size=self.sizer.size,
        )  # fmt: skip
        self._check_output(images, result.output)
        self._count_region(tiles, result.region)
        return list(zip(result.maps, result.output, strict=True))

    def _check_pixel_method(self) -> None:
        """Pixel methods map input pixels: no native grid; occlusion's defaults, its patch."""
        method = self.explanation.method
        if self.products.resolution == "native":
            raise GeocamError(
                f"{method} maps input pixels and has no layer grid: use Products.resolution source"
            )
        if method == "occlusion":
            occ = self.explanation.occlusion.resolved(self.stride)
            assert occ.patch is not None and occ.stride is not None
            occlusion_.check_patch(
                occ.patch, occ.stride, *self.layout.padded_shape(self.windows[0])
            )
            self.explanation = replace(self.explanation, occlusion=occ)

    def check_single_pass(self) -> None:
        """What a one-pass run checks before any tile is computed (occlusion's cost)."""
        if self.explanation.method == "occlusion":
            self._check_occlusion_cost()

    def _check_occlusion_cost(self) -> None:
        """Refuse occlusion beyond its bound before any tile is computed.

        Forward passes over every tile, seconds from one timed batch; refused above
        ``OcclusionOptions.max_seconds`` unless forced.
        """
        occ = self.explanation.occlusion
        assert occ.patch is not None and occ.stride is not None
        height, width = self.layout.padded_shape(self.windows[0])
        passes_ = occlusion_.forward_passes(len(self.windows), height, width, occ.patch, occ.stride)
        size = self.sizer.size
        seconds = occlusion_.batch_seconds(
            self.model, self.spec.in_channels, height, width, size, self.device, self.options
        )
        occlusion_.check_cost(passes_, seconds, size, occ)

    def _activation_sum_parts(self, tiles: Sequence[Tile]) -> list[torch.Tensor]:
        images, valid = self._batch(tiles, core=False)
        acts, output = layer_activations(self.model, images, self.layer, self.options)
        self._check_output(images, output)
        if self.explanation.region == "predicted":  # each core's own prediction, for pass 1
            table = class_table(self.classes, len(tiles), output.device)
            options = self.options
            region = region_weights(
                "predicted", output, table, valid=valid,
                activation=options.activation, threshold=options.threshold,
            )  # fmt: skip
            for tile, weights in zip(tiles, region.cpu().numpy(), strict=True):
                rows, cols = core_in_tile(self.layout, tile.window)
                self._core_predictions.append(
                    (self.layout.core(tile.window), weights[:, rows, cols])
                )
        return list(passes.activation_sums(acts, self._shares(tiles, acts)).cpu())

    def _activations(self, tiles: Sequence[Tile]) -> list[torch.Tensor]:
        images, _ = self._batch(tiles, core=False)
        acts, _ = layer_activations(self.model, images, self.layer, self.options)
        return list(acts)

    def _cache_fits(self) -> bool:
        """Whether every tile's activations (float32 on the host) fit the cache budget."""
        height, width = self.layout.padded_shape(self.windows[0])
        cells = -(-height // self.stride) * -(-width // self.stride)
        needed = len(self.windows) * (self.layer_info.channels * cells * 4 + height * width)
        return needed <= self.tiling.cache_mb * 2**20

    def _pass_one_forward(self, tiles: Sequence[Tile]) -> LayerGradients:
        """Pass 1's forward and backward for a batch.

        Grad-CAM scores each tile's core region, Grad-CAM++ its whole region (see
        :mod:`geocam.scene.passes`).
        """
        return self._gradients(tiles, core=self.explanation.method == "gradcam")

    def _tile_gradients(
        self, tiles: Sequence[Tile]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Pass 1 for a batch: activations, partial weight sums (float64, host), outputs."""
        grads = self._pass_one_forward(tiles)
        shares = self._shares(tiles, grads.activations)
        parts = passes.weight_sums(
            self.explanation.method, grads.gradients, shares, self._scene_activation_sums  # type: ignore[arg-type]
        )  # fmt: skip
        return list(zip(grads.activations, parts.cpu(), grads.output, strict=True))

    def _pass_one_activations(self, tiles: Sequence[Tile]) -> list[torch.Tensor]:
        return list(self._pass_one_forward(tiles).activations)

    def _cached_tile(self, window: Window, cached: _Cached | None) -> Tile:
        """A tile of pass 2 rebuilt from the cache (no pixels are read again)."""
        if cached is None:
            return Tile(window)
        return Tile(window, _NOT_READ, cached.valid)

    def _per_tile(
        self, tiles: Sequence[Tile], work: Callable[[Sequence[Tile]], list[R]]
    ) -> list[R]:
        """``work`` over ``tiles`` in batches that shrink on out-of-memory errors."""
        return [item for chunk in self.sizer.run(tiles, work) for item in chunk]

    # --- tiles -----------------------------------------------------------------------------

    def _groups(
        self, rows: range, after_row: int = 0
    ) -> Iterator[tuple[int, list[Tile], bool, bool]]:
        """The tiles of tile rows ``rows``, in batches of up to a batch of valid tiles each.

        Yields ``(tile row, tiles, last of its row, needed)``; a batch never crosses a tile row,
        so a band of tile rows has the same batches in any process. Rows whose tiles all end
        above source row ``after_row`` (finished by an earlier run) are read but not needed.
        Read ahead in a thread; skipped (all-nodata) tiles keep only their window, so memory
        does not grow with the nodata.
        """
        region = self.explanation.region
        reader = None if isinstance(region, str) else region
        tile_rows = self.layout.row_groups()

        def produce() -> Iterator[tuple[int, list[Tile], bool, bool]]:
            for index in rows:
                windows = tile_rows[index]
                needed = int(windows[0].row_off + windows[0].height) > after_row
                group: list[Tile] = []
                valid_count = 0
                for number, window in enumerate(windows):
                    tile = read_tile(self.source, self.layout, window, self.spec, reader)
                    valid_count += not tile.skipped
                    group.append(tile)
                    last = number == len(windows) - 1
                    if valid_count == self.tiling.batch_size or last:
                        yield index, group, last, needed
                        group, valid_count = [], 0

        return read_ahead(produce(), self.tiling.read_ahead)

    def _batch(self, tiles: Sequence[Tile], *, core: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and validity (restricted to the cores with ``core``), on the device."""
        images = to_device(torch.from_numpy(np.stack([t.pixels for t in tiles])), self.device)  # type: ignore[misc]
        masks = [t.valid & core_mask(self.layout, t) if core else t.valid for t in tiles]
        valid = torch.from_numpy(np.stack(masks)).to(self.device)  # type: ignore[arg-type]
        return images, valid

    def _region(self, tiles: Sequence[Tile]) -> Region:
        """The region of a batch: a name, or weights read per tile.

        Weights come from a region source, or from the predicted region that Grad-CAM++'s
        pass 0 recorded.
        """
        if self._predicted is not None:
            shape = self.layout.padded_shape(tiles[0].window)
            read = [self._predicted.read(t.window, shape) for t in tiles]
            return torch.from_numpy(np.stack(read)).to(self.device)
        if self.explanation.region in ("predicted", "all"):
            return self.explanation.region  # type: ignore[return-value]
        return torch.from_numpy(np.stack([t.region for t in tiles])).to(self.device)  # type: ignore[misc]

    def _forget_predicted(self) -> None:
        if self._predicted is not None:
            self._predicted.close()
            self._predicted = None

    def _cores(self, tiles: Sequence[Tile]) -> torch.Tensor:
        cores = np.stack([core_mask(self.layout, t) for t in tiles])
        return torch.from_numpy(cores).to(self.device)

    def _shares(self, tiles: Sequence[Tile], activations: torch.Tensor) -> torch.Tensor:
        """Each feature cell's share of its tile's core, ``(B, h, w)`` float64."""
        cells = (int(activations.shape[-2]), int(activations.shape[-1]))
        return passes.core_shares(self._cores(tiles), cells)

    def _check_output(self, images: torch.Tensor, output: torch.Tensor) -> None:
        """The scene engine blends per-pixel outputs: a coarser output is refused up front."""
        if output.ndim == 4 and output.shape[-2:] != images.shape[-2:]:
            raise GeocamError(
                f"the network's output ({output.shape[-2]} x {output.shape[-1]}) is not the size "
                f"of its input ({images.shape[-2]} x {images.shape[-1]}): the scene engine "
                "needs one output per input pixel; upsample the logits inside the network "
                "(e.g. smp's upsampling=) or explain batches with geocam.explain"
            )

    # --- accumulation ----------------------------------------------------------------------

    def _accumulator(self, spec: ProductSpec, sink: StripSink, start: int) -> BandAccumulator:
        grid = self.source.grid
        bands = self._bands(spec)
        finish: Callable[[np.ndarray, np.ndarray], np.ndarray] = self._heat_mean
        if spec.name == "classes":
            threshold = self.explanation.threshold

            def finish(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
                return classes_from_probabilities(sums, weights, threshold)

        elif spec.name != "heatmap":
            finish = weighted_mean
        return BandAccumulator(
            bands,
            grid.height,
            grid.width,
            self.layout.tile,
            sink,
            scale=self._scale(spec),
            finish=finish,
            start=start,
        )

    def _heat_mean(self, sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The blended heatmap; a non-finite value where there is data stops the run."""
        values = weighted_mean(sums, weights)
        covered = np.broadcast_to(weights > 1e-6, values.shape)
        finite = np.isfinite(values)
        if not finite[covered].all():
            raise GeocamError(
                f"the maps at layer {self.layer!r} are not finite (float16 overflow?): run in "
                "full precision (Runtime.precision fp32) or choose another layer"
            )
        if finite.any():
            self.heat_peak = max(self.heat_peak, float(np.abs(values[finite]).max()))
        return values

    def _scale(self, spec: ProductSpec) -> int:
        """Source pixels per output pixel of a product (the stride for a native heatmap)."""
        native = spec.name == "heatmap" and self.products.resolution == "native"
        return self.stride if native else 1

    def _pixel_weights(self, tile: Tile) -> np.ndarray:
        """The tile's blend weights on its window, zero where nodata."""
        assert tile.valid is not None
        h, w = int(tile.window.height), int(tile.window.width)
        weights: np.ndarray = self.layout.blend_weights(tile.window) * tile.valid[:h, :w]
        return weights

    def _add_heat(self, heat: RowStrip, tile: Tile, signed: torch.Tensor) -> None:
        """Add a tile's ``(K, h, w)`` signed maps and their positive part to the heatmap.

        At source resolution the maps are upsampled bilinearly to the tile; at native
        resolution the cells are added as they are, each weighted by the blend weights of the
        valid pixels it covers, so one tile's native output is exactly its map.
        """
        row, col = int(tile.window.row_off), int(tile.window.col_off)
        maps = torch.stack([torch.relu(signed), signed], dim=1).flatten(0, 1)
        weights = self._pixel_weights(tile)
        if heat.scale > 1:
            s = heat.scale
            cells = block_sum(weights, s)
            values = maps[:, : cells.shape[0], : cells.shape[1]].float().cpu().numpy()
            heat.add(row // s, col // s, values, cells)
            return
        assert tile.valid is not None
        full = F.interpolate(
            maps[None].float(), size=tile.valid.shape, mode="bilinear", align_corners=False
        )[0]
        h, w = weights.shape
        heat.add(row, col, full[:, :h, :w].cpu().numpy(), weights)

    def _add_extras(
        self,
        extras: list[tuple[ProductSpec, RowStrip]],
        tile: Tile,
        output: torch.Tensor,
    ) -> None:
        if not extras:
            return
        every = torch.arange(output.shape[0], device=output.device)[None]
        activation = self.options.activation  # the rule of the predicted region
        probabilities = class_probabilities(output[None], every, activation)[0]
        h, w = int(tile.window.height), int(tile.window.width)
        row, col = int(tile.window.row_off), int(tile.window.col_off)
        for spec, acc in extras:
            if spec.name == "classes":
                values = probabilities[:, :h, :w].cpu().numpy()
            else:
                values = probabilities[self.classes, :h, :w].cpu().numpy()
            acc.add(row, col, values, self._pixel_weights(tile))

    # --- bookkeeping -----------------------------------------------------------------------

    def _all_nodata(self) -> GeocamError:
        paths = getattr(self.source, "paths", None)
        names = ", ".join(str(p) for p in paths) if paths else "the scene"
        return GeocamError(
            f"{names}: every pixel is nodata (the nodata value, the mask, NaN or inf); nothing "
            "to explain: check the sources or --nodata"
        )

    def _count_region(self, tiles: Sequence[Tile], region: torch.Tensor) -> None:
        """Region pixels of each tile's core: every scene pixel counts once."""
        counts = (region * self._cores(tiles)[:, None]).sum(dim=(2, 3))
        for tile, count in zip(tiles, counts.double().cpu().numpy(), strict=True):
            self.region_counts[self._index[tile.key]] = count

    def _save_state(self, weights: torch.Tensor | None) -> None:
        if self.checkpoint is None:
            return
        state = {"region": self.region_counts}
        if weights is not None:
            state["weights"] = weights.detach().cpu().numpy()
        self.checkpoint.save_state(state)

    def _resume(
        self, specs: Sequence[ProductSpec]
    ) -> tuple[dict[str, int], dict[str, np.ndarray] | None]:
        """Rows of each product an earlier run stored (replayed now), and its state."""
        if self.checkpoint is None:
            return {spec.name: 0 for spec in specs}, None
        checkpoint = self.checkpoint
        plan = plan_resume(
            specs,
            {s.name: self._scale(s) for s in specs},
            {s.name: checkpoint.stored_rows(s.name) for s in specs},
            checkpoint.load_state(),
            self.scene_weights,
            self.source.grid.height,
        )
        if plan.state is not None:
            self.resume_row = plan.row
            self.region_counts = plan.state["region"].copy()
        for spec in specs:
            checkpoint.replay(spec.name, plan.starts[spec.name])
        return plan.starts, plan.state


def _layer_info(layers: list[LayerInfo], name: str) -> LayerInfo:
    for info in layers:
        if info.name == name:
            if info.stride != int(info.stride):
                raise GeocamError(f"layer {name!r} has a fractional stride ({info.stride})")
            return info
    raise GeocamError(
        f"layer {name!r} has no spatial output or did not run in the forward pass; list the "
        "candidates with `geocam layers -c CONFIG`"
    )


def _warn_hard_cuts(layout: TileLayout, stride: int) -> None:
    """Warn when tiles meet at a hard cut: an overlap below twice the layer's stride.

    The half cell at a tile edge gets no blend weight (upsampling has no neighbour there), so
    an overlap of one stride or less leaves no room for a taper.
    """
    several = len(layout.offsets(layout.height)) > 1 or len(layout.offsets(layout.width)) > 1
    if not several or layout.overlap >= 2 * stride:
        return
    step = layout.multiple
    good = layout.tile - (layout.tile - 2 * stride) // step * step
    warnings.warn(
        f"Tiling.overlap ({layout.overlap}) is less than twice the layer's stride ({stride}): "
        f"neighbouring tiles meet at a hard cut; use an overlap of at least {good}",
        GeocamWarning,
        stacklevel=4,
    )


def _show_progress(progress: bool | Callable[[int, int], None] | None) -> bool:
    if callable(progress):
        return False
    return sys.stderr.isatty() if progress is None else progress


def _reporting(bar: tqdm[None], report: Callable[[int, int], None]) -> Callable[..., bool | None]:
    """``bar.update`` that also calls ``report(done, total)`` (a disabled bar counts nothing)."""
    update, done = bar.update, [0]

    def reporting(n: float | None = 1) -> bool | None:
        done[0] += int(n or 0)
        report(done[0], int(bar.total or 0))
        return update(n)

    return reporting


def _ignore(count: int) -> None:
    """No progress to report (a band computed on a worker)."""
