"""The scene engine: explain a scene of any size, tile by tile, into georeferenced heatmaps.

Tiles are read ahead in a background thread, batched through the network, blended with
raised-cosine weights inside the overlaps, and streamed to the outputs in whole strips, so
memory grows with the scene's width, not its area.

Scene-consistent weights (the default for Grad-CAM and Grad-CAM++): the channel weights are
those of the *whole* scene's region, not of each tile. Pass 1 scores, in every tile, only the
region pixels of that tile's core (the cores partition the scene, so every region pixel counts
once) and sums the gradients over all of the tile's feature cells; that sum is the gradient
of the scene's score. Pass 2 forms every tile's map with those global weights, from
activations kept from pass 1 when the whole scene's fit the cache budget (decided before pass 1,
so a large scene never grows memory with its area), else from a new forward pass.
HiResCAM and LayerCAM are local and need one pass; ``weights="tile"`` keeps per-tile weights.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol, TypeAlias, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn
from tqdm import tqdm

from geocam.blend import BandAccumulator, weighted_mean
from geocam.cam import (
    CamOptions,
    Method,
    channel_weights,
    combine,
    layer_activations,
    layer_gradients,
)
from geocam.device import BatchSizer, Precision, autocast_dtype, resolve_device, to_device
from geocam.errors import GeocamError
from geocam.layers import LayerInfo, default_layer, list_layers, resolve_layer
from geocam.models import ModelSpec
from geocam.output import BLOCK, Band, StripSink
from geocam.region_sources import open_region
from geocam.regions import Region
from geocam.sources import Grid, TileSource, read_ahead
from geocam.tiling import TileLayout, native_transform

R = TypeVar("R")
Weights: TypeAlias = Literal["scene", "tile"]
Resolution: TypeAlias = Literal["source", "native"]


class RegionSource(Protocol):
    """Per-pixel region weights of a scene, window by window (a mask raster, polygons...)."""

    def read(self, window: Window) -> np.ndarray:
        """``(h, w)`` float32 weights of the window (0 outside the region)."""
        ...


SceneRegion: TypeAlias = str | RegionSource
"""``predicted``, ``all``, ``mask:PATH``, ``vector:PATH[:LAYER]``,
``bbox:MINX,MINY,MAXX,MAXY[,CRS]`` (see :mod:`geocam.region_sources`), or any object reading
region weights per window."""


@dataclass(frozen=True)
class Explanation:
    """What to explain: classes (names or indexes), method, target layer, region, weights.

    ``where`` (``FIELD=VALUE``) keeps only matching features of a ``vector:`` region.
    """

    classes: tuple[str | int, ...]
    method: Method = "gradcam"
    layer: str | None = None
    region: SceneRegion = "predicted"
    weights: Weights = "scene"
    score: Literal["logits", "probabilities"] = "logits"
    threshold: float | None = None
    where: str | None = None
    region_name: str = ""  # how the region is described in the outputs' tags

    def describe_region(self) -> str:
        """The region as recorded in the outputs."""
        if self.region_name:
            return self.region_name
        return self.region if isinstance(self.region, str) else type(self.region).__name__


@dataclass(frozen=True)
class Tiling:
    """How the scene is cut and fed: tile side, overlap, batch size, read-ahead, cache budget."""

    tile: int = 512
    overlap: int = 128
    batch_size: int = 4
    read_ahead: int = 2
    cache_mb: int = 1024


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs; ``progress`` None shows a bar only on a terminal.

    ``gdal_cache_mb`` caps GDAL's block cache while a scene is read, which otherwise grows
    towards 5 % of the machine's memory on a large scene (blocks read once stay cached).
    """

    device: str = "auto"
    precision: Precision = "fp32"
    progress: bool | None = None
    gdal_cache_mb: int = 256


@dataclass(frozen=True)
class Products:
    """Which rasters to make, at which resolution, and how to write them."""

    resolution: Resolution = "source"
    probabilities: bool = False
    class_map: bool = False
    cog: bool = False
    compress: Literal["zstd", "deflate"] = "zstd"
    overwrite: bool = False


@dataclass(frozen=True)
class ProductSpec:
    """One output raster as the engine will fill it, with tags describing the run."""

    name: str
    grid: Grid
    bands: list[Band]
    dtype: str
    nodata: float
    tags: dict[str, str] = field(default_factory=dict)


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


SinkFactory = Callable[[ProductSpec], StripSink]


class Checkpoint(Protocol):
    """Durable progress of an earlier, interrupted run (:class:`geocam.journal.Journal`)."""

    def stored_rows(self, product: str) -> int:
        """How many leading rows of ``product`` are stored."""
        ...

    def replay(self, product: str, rows: int) -> None:
        """Hand the stored rows above ``rows`` to the product's sink again."""
        ...

    def save_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Store what a resumed run needs besides the strips."""
        ...

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The stored state, if any."""
        ...


@dataclass
class _Cached:
    activations: torch.Tensor  # on the host
    valid: np.ndarray


_NOT_READ = np.zeros(0, np.float32)  # stands for pixels a cached pass 2 does not need


@dataclass
class _Tile:
    window: Window
    pixels: np.ndarray | None  # (C, Hp, Wp) normalised, None for a skipped (all-nodata) tile
    valid: np.ndarray  # (Hp, Wp) bool, False in the padding
    region: np.ndarray | None  # (Hp, Wp) region weights when the region is a RegionSource


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
        self.explanation = explanation
        self.tiling = tiling or Tiling()
        self.runtime = runtime or Runtime()
        self.products = products or Products()
        if source.count != spec.in_channels:
            raise GeocamError(
                f"the sources have {source.count} band(s) but the model takes "
                f"{spec.in_channels}: check the sources and the config's bands"
            )
        if self.tiling.batch_size < 1:
            raise GeocamError("--batch-size must be at least 1")
        self.device = resolve_device(self.runtime.device)
        self.model = model.to(self.device)
        self.options = CamOptions(
            score=explanation.score,
            threshold=explanation.threshold,
            autocast=autocast_dtype(self.runtime.precision, self.device),
        )
        self.classes = [spec.class_index(c) for c in explanation.classes]
        if not self.classes:
            raise GeocamError("--class: name at least one class to explain")
        self.class_names = [spec.classes[i] for i in self.classes]
        layers = list_layers(self.model, spec.in_channels)
        self.layer = explanation.layer or spec.layer or default_layer(self.model, spec.in_channels)
        resolve_layer(self.model, self.layer)  # an unknown name fails with suggestions
        self.layer_info = _layer_info(layers, self.layer)
        self.stride = int(self.layer_info.stride)
        multiple = int(max(i.stride for i in layers if i.stride == int(i.stride)))
        grid = source.grid
        self.layout = TileLayout.plan(
            grid.height,
            grid.width,
            self.tiling.tile,
            self.tiling.overlap,
            multiple,
            margin=-(-self.stride // 2),
        )
        self.windows = self.layout.windows()
        self.scene_weights = explanation.weights == "scene" and explanation.method in (
            "gradcam",
            "gradcam++",
        )
        self.sizer = BatchSizer(self.tiling.batch_size)
        self._index = {_key_of(w): i for i, w in enumerate(self.windows)}
        self.skipped = 0
        self.region_counts = np.zeros((len(self.windows), len(self.classes)))
        """Region pixels counted per tile (in its core), summed in tile order at the end."""
        self.resume_row = 0
        """Source rows an earlier run finished: tiles above them are not computed again."""

    # --- the run ---------------------------------------------------------------------------

    def run(self, sinks: SinkFactory) -> SceneReport:
        start = time.perf_counter()
        heat_spec, extra_specs = self._product_specs()
        made = {spec.name: sinks(spec) for spec in (heat_spec, *extra_specs)}
        starts, state = self._resume([heat_spec, *extra_specs])
        heat = self._accumulator(heat_spec, made[heat_spec.name], starts[heat_spec.name])
        extras = [(s, self._accumulator(s, made[s.name], starts[s.name])) for s in extra_specs]
        passes = (3 if self.explanation.method == "gradcam++" else 2) if self.scene_weights else 1
        bar: tqdm[None] = tqdm(  # type: ignore[assignment]
            total=len(self.windows) * passes,
            unit="tile",
            disable=not _show_progress(self.runtime.progress),
            desc="geocam",
        )
        cached = False
        try:
            if self.scene_weights and state is not None:  # pass 1 was finished and stored
                bar.update(len(self.windows) * (passes - 1))
                weights = torch.from_numpy(state["weights"]).to(self.device)
                self._map_pass(bar, heat, weights, None, resumed=True)
            elif self.scene_weights:
                sums = self._activation_sums(bar) if passes == 3 else None
                weights, cache = self._global_weights(bar, extras, sums)
                cached = cache is not None
                self._save_state(weights)
                self._map_pass(bar, heat, weights, cache)
            else:
                self._single_pass(bar, heat, extras)
                if self.skipped == len(self.windows):
                    raise self._all_nodata()
        finally:
            bar.close()
        return SceneReport(
            layer=self.layer,
            stride=self.stride,
            tiles=len(self.windows),
            skipped=self.skipped,
            passes=passes,
            batch_size=self.sizer.size,
            seconds=time.perf_counter() - start,
            region_pixels=dict(
                zip(self.class_names, self.region_counts.sum(axis=0).tolist(), strict=True)
            ),
            cached_activations=cached,
            resumed_from_row=self.resume_row,
        )

    def _single_pass(
        self,
        bar: tqdm[None],
        heat: BandAccumulator,
        extras: list[tuple[ProductSpec, BandAccumulator]],
    ) -> None:
        """Per-tile maps (local methods, or ``weights="tile"``), blended as they come."""
        for group in self._groups(self.resume_row):
            tiles = [t for t in group if t.pixels is not None]
            results = dict(
                zip(map(_key, tiles), self._per_tile(tiles, self._tile_maps), strict=True)
            )
            for tile in group:
                if tile.pixels is not None:
                    signed, output = results[_key(tile)]
                    self._add_heat(heat, tile, signed)
                    self._add_extras(extras, tile, output)
                self._flush(tile, heat, *(acc for _, acc in extras))
                bar.update()

    def _tile_maps(self, tiles: Sequence[_Tile]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, valid, region = self._batch(tiles, core=False)
        grads = layer_gradients(
            self.model, images, self.classes, self.layer,
            region=region, valid=valid, options=self.options,
        )  # fmt: skip
        cores = torch.from_numpy(np.stack([self._core_mask(t) for t in tiles])).to(self.device)
        in_cores = grads.region * cores[:, None]  # count every region pixel once
        self._count_region(tiles, in_cores.sum(dim=(2, 3)))
        signed = combine(self.explanation.method, grads.activations, grads.gradients)
        return list(zip(signed, grads.output, strict=True))

    def _activation_sums(self, bar: tqdm[None]) -> torch.Tensor:
        """Pass 0 of Grad-CAM++: per-channel activation sums over the scene, each cell once."""
        total = torch.zeros(0)
        for group in self._groups():
            tiles = [t for t in group if t.pixels is not None]
            for tile, acts in zip(tiles, self._per_tile(tiles, self._activations), strict=True):
                core = torch.from_numpy(self._core_mask(tile)).float()[None, None]
                fractions = F.adaptive_avg_pool2d(core, (acts.shape[-2], acts.shape[-1]))[0].to(
                    acts.device
                )
                part = (acts * fractions).sum(dim=(1, 2))
                total = part if total.numel() == 0 else total + part
            bar.update(len(group))
        if total.numel() == 0:
            raise self._all_nodata()
        return total

    def _activations(self, tiles: Sequence[_Tile]) -> list[torch.Tensor]:
        images, _, _ = self._batch(tiles, core=False)
        acts, _ = layer_activations(self.model, images, self.layer, self.options)
        return list(acts)

    def _global_weights(
        self,
        bar: tqdm[None],
        extras: list[tuple[ProductSpec, BandAccumulator]],
        activation_sums: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[tuple[int, int], _Cached] | None]:
        """Pass 1: the scene's channel weights ``(K, C)``; activations kept if they fit."""
        total = torch.zeros(0)
        cache: dict[tuple[int, int], _Cached] | None = {} if self._cache_fits() else None
        for group in self._groups():
            tiles = [t for t in group if t.pixels is not None]
            outputs = {}
            for tile, (acts, grads, output) in zip(
                tiles, self._per_tile(tiles, self._tile_gradients), strict=True
            ):
                if self.explanation.method == "gradcam++":
                    sums = None if activation_sums is None else activation_sums[None]
                    weights = channel_weights("gradcam++", acts[None], grads[None], sums)
                    assert weights is not None
                    part = weights[0]
                else:
                    part = grads.sum(dim=(-2, -1))
                total = part if total.numel() == 0 else total + part
                outputs[_key(tile)] = output
                if cache is not None:
                    cache[_key(tile)] = _Cached(acts.cpu(), tile.valid)
            for tile in group:
                if tile.pixels is not None:
                    self._add_extras(extras, tile, outputs[_key(tile)])
                self._flush(tile, *(acc for _, acc in extras))
                bar.update()
        if total.numel() == 0:
            raise self._all_nodata()
        if self.explanation.method == "gradcam":
            grid = self.source.grid
            total = total / (grid.height * grid.width / self.stride**2)
        return total, cache

    def _cache_fits(self) -> bool:
        """Whether every tile's activations (float32 on the host) fit the cache budget."""
        height, width = self.layout.padded_shape(self.windows[0])
        cells = -(-height // self.stride) * -(-width // self.stride)
        needed = len(self.windows) * (self.layer_info.channels * cells * 4 + height * width)
        return needed <= self.tiling.cache_mb * 2**20

    def _tile_gradients(
        self, tiles: Sequence[_Tile]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        images, valid, region = self._batch(tiles, core=True)
        grads = layer_gradients(
            self.model, images, self.classes, self.layer,
            region=region, valid=valid, options=self.options,
        )  # fmt: skip
        self._count_region(tiles, grads.region_pixels)
        return list(zip(grads.activations, grads.gradients, grads.output, strict=True))

    def _map_pass(
        self,
        bar: tqdm[None],
        heat: BandAccumulator,
        weights: torch.Tensor,
        cache: dict[tuple[int, int], _Cached] | None,
        *,
        resumed: bool = False,
    ) -> None:
        """Pass 2: every tile's map with the scene's weights (from the cache: no reading).

        Without a cache the activations come from another forward pass; a resumed run takes
        them from the same function as the run it resumes (pass 1's when that one cached).
        """
        recompute = self._activations
        if resumed and self._cache_fits():
            recompute = self._pass_one_activations
        if cache is None:
            groups = self._groups(self.resume_row)
        else:  # pass 1 kept each tile's activations and validity; absent tiles were nodata
            groups = iter([[self._cached_tile(w, cache.get(_key_of(w))) for w in self.windows]])
        for group in groups:
            tiles = [t for t in group if t.pixels is not None]
            if cache is None:
                found = dict(zip(map(_key, tiles), self._per_tile(tiles, recompute), strict=True))
            for tile in group:
                if tile.pixels is not None:
                    acts = found[_key(tile)] if cache is None else cache.pop(_key(tile)).activations
                    signed = combine(
                        self.explanation.method, acts[None].to(self.device), None, weights[None]
                    )[0]
                    self._add_heat(heat, tile, signed)
                self._flush(tile, heat)
                bar.update()

    def _pass_one_activations(self, tiles: Sequence[_Tile]) -> list[torch.Tensor]:
        return [acts for acts, _, _ in self._tile_gradients(tiles)]

    def _cached_tile(self, window: Window, cached: _Cached | None) -> _Tile:
        """A tile of pass 2 rebuilt from the cache (no pixels are read again)."""
        if cached is None:
            return _Tile(window, None, np.zeros(self.layout.padded_shape(window), bool), None)
        return _Tile(window, _NOT_READ, cached.valid, None)

    def _per_tile(
        self, tiles: Sequence[_Tile], work: Callable[[Sequence[_Tile]], list[R]]
    ) -> list[R]:
        """``work`` over ``tiles`` in batches that shrink on out-of-memory errors."""
        return [item for chunk in self.sizer.run(tiles, work) for item in chunk]

    # --- tiles -----------------------------------------------------------------------------

    def _groups(self, after_row: int = 0) -> Iterator[list[_Tile]]:
        """Consecutive tiles, up to a batch of valid ones each, read ahead in a thread.

        Groups whose tiles all end above source row ``after_row`` (finished by an earlier run)
        are left out; the others are the same batches as in an uninterrupted run.
        """
        self.skipped = 0

        def needed(group: list[_Tile]) -> bool:
            return any(t.window.row_off + t.window.height > after_row for t in group)

        def produce() -> Iterator[list[_Tile]]:
            group: list[_Tile] = []
            valid_count = 0
            for window in self.windows:
                tile = self._read(window)
                if tile.pixels is None:
                    self.skipped += 1
                else:
                    valid_count += 1
                group.append(tile)
                if valid_count == self.tiling.batch_size:
                    if needed(group):
                        yield group
                    group, valid_count = [], 0
            if group and needed(group):
                yield group

        return read_ahead(produce(), self.tiling.read_ahead)

    def _read(self, window: Window) -> _Tile:
        pixels, valid = self.source.read(window)
        padded = self.layout.padded_shape(window)
        pad = ((0, padded[0] - pixels.shape[1]), (0, padded[1] - pixels.shape[2]))
        valid_padded = np.pad(valid, pad, constant_values=False)
        region = None
        if not isinstance(self.explanation.region, str):
            region = np.pad(self.explanation.region.read(window).astype(np.float32), pad)
        if not valid.any():
            return _Tile(window, None, valid_padded, region)
        if self.spec.normalisation is not None:
            scale = np.asarray(self.spec.normalisation.scale, dtype=np.float32)[:, None, None]
            offset = np.asarray(self.spec.normalisation.offset, dtype=np.float32)[:, None, None]
            pixels = pixels * scale + offset
        pixels = np.where(valid, pixels, np.float32(0))  # nodata: the normalised mean
        pixels = np.pad(pixels, ((0, 0), *pad), mode="reflect" if min(valid.shape) > 1 else "edge")
        return _Tile(window, pixels.astype(np.float32, copy=False), valid_padded, region)

    def _core_mask(self, tile: _Tile) -> np.ndarray:
        core = self.layout.core(tile.window)
        mask = np.zeros(tile.valid.shape, dtype=bool)
        top = int(core.row_off - tile.window.row_off)
        left = int(core.col_off - tile.window.col_off)
        mask[top : top + int(core.height), left : left + int(core.width)] = True
        return mask

    def _batch(
        self, tiles: Sequence[_Tile], *, core: bool
    ) -> tuple[torch.Tensor, torch.Tensor, Region]:
        """Images, validity (restricted to the cores in pass 1) and region, on the device."""
        images = to_device(torch.from_numpy(np.stack([t.pixels for t in tiles])), self.device)  # type: ignore[misc]
        masks = [t.valid & self._core_mask(t) if core else t.valid for t in tiles]
        valid = torch.from_numpy(np.stack(masks)).to(self.device)
        region: Region
        if self.explanation.region == "predicted":
            region = "predicted"
        elif self.explanation.region == "all":
            region = "all"
        else:
            region = torch.from_numpy(np.stack([t.region for t in tiles])).to(self.device)  # type: ignore[misc]
        return images, valid, region

    # --- accumulation ----------------------------------------------------------------------

    def _product_specs(self) -> tuple[ProductSpec, list[ProductSpec]]:
        grid = self.source.grid
        heat_grid = grid
        if self.products.resolution == "native":
            heat_grid = Grid(
                grid.crs,
                native_transform(grid.transform, self.stride),
                -(-grid.width // self.stride),
                -(-grid.height // self.stride),
            )
        bands = []
        for index, name in zip(self.classes, self.class_names, strict=True):
            for kind in ("positive", "signed"):
                bands.append(
                    Band(
                        f"{name} {kind}",
                        {"CLASS": name, "CLASS_INDEX": str(index), "KIND": kind},
                    )
                )
        tags = self._tags()
        heat = ProductSpec("heatmap", heat_grid, bands, "float32", float("nan"), tags)
        extras = []
        if self.products.probabilities:
            prob_bands = [Band(f"{n} probability", {"CLASS": n}) for n in self.class_names]
            extras.append(
                ProductSpec("probabilities", grid, prob_bands, "float32", float("nan"), tags)
            )
        if self.products.class_map:
            names = {"CLASS_NAMES": ",".join(self.spec.classes)}
            extras.append(
                ProductSpec("classes", grid, [Band("predicted class", names)], "uint8", 255, tags)
            )
        return heat, extras

    def _tags(self) -> dict[str, str]:
        """What the run was, recorded in every product."""
        e, t = self.explanation, self.layout
        return {
            "GEOCAM_CLASSES": ",".join(self.class_names),
            "GEOCAM_METHOD": e.method,
            "GEOCAM_LAYER": self.layer,
            "GEOCAM_LAYER_STRIDE": str(self.stride),
            "GEOCAM_REGION": e.describe_region(),
            "GEOCAM_SCORE": e.score,
            "GEOCAM_WEIGHTS": "scene" if self.scene_weights else "tile",
            "GEOCAM_RESOLUTION": self.products.resolution,
            "GEOCAM_TILE": str(t.tile),
            "GEOCAM_OVERLAP": str(t.overlap),
            "GEOCAM_MODEL": f"{self.spec.arch}/{self.spec.encoder}",
            "GEOCAM_PRECISION": self.runtime.precision,
        }

    def _accumulator(self, spec: ProductSpec, sink: StripSink, start: int) -> BandAccumulator:
        grid = self.source.grid
        bands, finish = len(spec.bands), weighted_mean
        if spec.name == "classes":
            bands, finish = len(self.spec.classes), _argmax_classes
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

    def _scale(self, spec: ProductSpec) -> int:
        """Source pixels per output pixel of a product (the stride for a native heatmap)."""
        native = spec.name == "heatmap" and self.products.resolution == "native"
        return self.stride if native else 1

    def _crop(self, tile: _Tile, maps: torch.Tensor) -> np.ndarray:
        """Upsample ``(K, h, w)`` maps to the padded tile and crop to the window, as numpy."""
        padded = tile.valid.shape
        full = F.interpolate(maps[None].float(), size=padded, mode="bilinear", align_corners=False)[
            0
        ]
        h, w = int(tile.window.height), int(tile.window.width)
        cropped: np.ndarray = full[:, :h, :w].cpu().numpy()
        return cropped

    def _weights(self, tile: _Tile) -> np.ndarray:
        h, w = int(tile.window.height), int(tile.window.width)
        weights: np.ndarray = self.layout.blend_weights(tile.window) * tile.valid[:h, :w]
        return weights

    def _add_heat(self, heat: BandAccumulator, tile: _Tile, signed: torch.Tensor) -> None:
        up = self._crop(tile, signed)
        positive = self._crop(tile, torch.relu(signed))
        values = np.stack([positive, up], axis=1).reshape(-1, *up.shape[1:])
        heat.add(tile.window, values, self._weights(tile))

    def _add_extras(
        self,
        extras: list[tuple[ProductSpec, BandAccumulator]],
        tile: _Tile,
        output: torch.Tensor,
    ) -> None:
        if not extras:
            return
        probabilities = (
            torch.softmax(output, dim=0) if output.shape[0] > 1 else torch.sigmoid(output)
        )
        h, w = int(tile.window.height), int(tile.window.width)
        for spec, acc in extras:
            if spec.name == "classes":
                values = probabilities[:, :h, :w].cpu().numpy()
            else:
                values = probabilities[self.classes, :h, :w].cpu().numpy()
            acc.add(tile.window, values, self._weights(tile))

    def _flush(self, tile: _Tile, *accumulators: BandAccumulator) -> None:
        """Flush every row above the next tile's first row: no later tile touches it."""
        index = self._index[_key(tile)]
        following = self.windows[index + 1] if index + 1 < len(self.windows) else None
        final = None if following is None else int(following.row_off)
        if not self.scene_weights and any(acc.ready(final) for acc in accumulators):
            self._save_state(None)  # the region counts of every tile whose rows get stored
        for acc in accumulators:
            acc.flush(final)

    # --- resuming --------------------------------------------------------------------------

    def _all_nodata(self) -> GeocamError:
        paths = getattr(self.source, "paths", None)
        names = ", ".join(str(p) for p in paths) if paths else "the scene"
        return GeocamError(
            f"{names}: every pixel is nodata (the nodata value, the mask, NaN or inf); nothing "
            "to explain: check the sources or --nodata"
        )

    def _count_region(self, tiles: Sequence[_Tile], counts: torch.Tensor) -> None:
        for tile, count in zip(tiles, counts.double().cpu().numpy(), strict=True):
            self.region_counts[self._index[_key(tile)]] = count

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
        """Rows of each product an earlier run stored (replayed now), and its state.

        Scene weights resume after pass 1 only (the extra products are complete then); every
        product restarts on a common source row that is a whole number of strips of each.
        """
        starts = {spec.name: 0 for spec in specs}
        checkpoint = self.checkpoint
        if checkpoint is None:
            return starts, None
        state = checkpoint.load_state()
        height = self.source.grid.height
        stored = {s.name: checkpoint.stored_rows(s.name) for s in specs}
        done = {s.name: stored[s.name] >= s.grid.height for s in specs}
        if self.scene_weights and not all(done[s.name] for s in specs[1:]):
            state = None  # pass 1 did not finish: it runs again, extra products included
        if state is not None and (not self.scene_weights or "weights" in state):
            active = [specs[0]] if self.scene_weights else list(specs)
            for spec in specs:  # extra products of scene weights are complete
                starts[spec.name] = spec.grid.height
            rows = [height if done[s.name] else stored[s.name] * self._scale(s) for s in active]
            unit = max(BLOCK * self._scale(s) for s in active)
            row = min(rows) if min(rows) >= height else min(rows) // unit * unit
            for spec in active:
                starts[spec.name] = spec.grid.height if row >= height else row // self._scale(spec)
            self.resume_row = row
            self.region_counts = state["region"].copy()
        else:
            state = None
        for spec in specs:
            checkpoint.replay(spec.name, starts[spec.name])
        return starts, state


def _key_of(window: Window) -> tuple[int, int]:
    return int(window.row_off), int(window.col_off)


def _key(tile: _Tile) -> tuple[int, int]:
    return _key_of(tile.window)


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


def _argmax_classes(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The most probable class per pixel from blended probabilities; 255 where nodata."""
    classes: np.ndarray = sums.argmax(axis=0).astype(np.uint8)
    classes[weights <= 1e-6] = 255
    return classes[None]


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress
