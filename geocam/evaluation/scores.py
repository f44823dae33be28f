"""The region score of a whole (perturbed) scene, through the scene engine's own tiling.

Faithfulness checks ask how the explained class's region score moves when pixels are
replaced. The score of a scene is what the maps explain: the sum over tiles of each tile's
region score over its *core* (the cores partition the scene, so every pixel counts once),
with the same :class:`~geocam.tiling.TileLayout`, tile reading, normalisation and forward
pass as :mod:`geocam.scene.engine`. The region is fixed once, from the unperturbed scene (for
``predicted``: each core's own prediction, as the engine's Grad-CAM pass decides it), so a
perturbation changes the score, never the pixels it is summed over.

A tile whose pixels a perturbation leaves untouched keeps its unperturbed score, and tiles
with the same replaced pixels and fill are computed once (:class:`Occlusion` ``key``): an
occlusion or a Shapley coalition costs only the tiles it touches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from geocam.cam import CamOptions, class_table, class_values, layer_activations
from geocam.device import autocast_dtype, resolve_device, to_device
from geocam.errors import GeocamError
from geocam.evaluation.scene import Scene
from geocam.layers import default_layer, fixed_tile, list_layers, resolve_layer
from geocam.models import ModelSpec
from geocam.region_sources import open_region
from geocam.regions import region_weights
from geocam.scene import Explanation, Runtime, Tiling
from geocam.scene.tiles import Tile, core_in_tile, read_tile
from geocam.sources import ArraySource, Grid
from geocam.tiling import TileLayout


@dataclass(frozen=True)
class Occlusion:
    """A perturbed scene: the pixels of ``mask`` ``(H, W)`` replaced by those of ``fill``.

    ``fill`` is ``(C, H, W)`` raw pixels, as :class:`~geocam.evaluation.scene.Scene` holds
    them. ``key`` names the fill: tiles of occlusions with the same key and the same replaced
    pixels are computed once (None: never shared). Nodata pixels are never replaced.
    """

    mask: np.ndarray
    fill: np.ndarray
    key: Hashable | None = None


@dataclass
class _Pending:
    tiles: list[Tile] = field(default_factory=list)
    keys: list[Hashable] = field(default_factory=list)
    waiting: dict[Hashable, list[int]] = field(default_factory=dict)


class RegionScorer:
    """Region scores ``(K,)`` of a scene and of perturbed copies of it, tile by tile.

    ``explanation`` gives the classes, the region (any the engine takes), the score
    (``logits`` or ``probabilities``), the threshold and the layer (its forward pass is the
    engine's: same hooks, precision and memory layout). The region and its pixel count are
    those of the unperturbed ``scene``.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        scene: Scene,
        explanation: Explanation,
        *,
        tiling: Tiling | None = None,
        runtime: Runtime | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.scene = scene
        self.tiling = tiling or Tiling()
        runtime = runtime or Runtime(progress=False)
        self.batch_size = batch_size or self.tiling.batch_size
        if self.batch_size < 1:
            raise GeocamError("batch_size must be at least 1")
        if scene.pixels.shape[0] != spec.in_channels:
            raise GeocamError(
                f"the scene has {scene.pixels.shape[0]} band(s) but the model takes "
                f"{spec.in_channels}: check the sources and the config's bands"
            )
        self.device = resolve_device(runtime.device)
        self.model = model.to(self.device)
        self.options = CamOptions(
            score=explanation.score,
            threshold=explanation.threshold,
            autocast=autocast_dtype(runtime.precision, self.device),
        )
        self.classes = [spec.class_index(c) for c in explanation.classes]
        if not self.classes:
            raise GeocamError("Explanation.classes: name at least one class to explain")
        self.class_names = [spec.classes[i] for i in self.classes]
        layers = list_layers(self.model, spec.in_channels)
        self.layer = explanation.layer or spec.layer or default_layer(self.model, spec.in_channels)
        resolve_layer(self.model, self.layer)
        multiple = int(max(i.stride for i in layers if i.stride == int(i.stride)))
        grid = scene.grid
        self.layout = TileLayout.plan(
            grid.height, grid.width, self.tiling.tile, self.tiling.overlap, multiple,
            fixed=fixed_tile(self.model),
        )  # fmt: skip
        self.windows = self.layout.windows()
        self._cache: dict[Hashable, np.ndarray] = {}
        self.region, self.tile_scores = self._original(explanation)
        self.region_pixels = self.region.sum(axis=(1, 2))
        """Pixels (summed weights) of each class's region, ``(K,)``."""
        empty = [n for n, c in zip(self.class_names, self.region_pixels, strict=True) if c == 0]
        if empty:
            raise GeocamError(
                f"the region ({explanation.describe_region()}) holds no valid pixel of "
                f"{', '.join(empty)}: nothing to score; choose another region or class"
            )
        self.original = self.tile_scores.sum(axis=0)
        """The unperturbed scene's region scores, ``(K,)`` sums."""

    # --- public ------------------------------------------------------------------------------

    def scores(self, occlusions: Iterable[Occlusion]) -> np.ndarray:
        """Region scores ``(S, K)`` (sums over the original region) of perturbed scenes."""
        totals: list[np.ndarray] = []
        pending = _Pending()
        for index, occlusion in enumerate(occlusions):
            self._check(occlusion)
            totals.append(np.zeros(len(self.classes)))
            mask = occlusion.mask & self.scene.valid
            for t, window in enumerate(self.windows):
                rows, cols = window.toslices()
                part = mask[rows, cols]
                if not part.any():
                    totals[index] += self.tile_scores[t]
                    continue
                digest = hashlib.blake2b(np.packbits(part).tobytes(), digest_size=16).digest()
                shared = occlusion.key is not None
                key: Hashable = (t, digest, ("fill", occlusion.key) if shared else ("own", index))
                if key in self._cache:
                    totals[index] += self._cache[key]
                    continue
                if key not in pending.waiting:
                    tile = read_tile(_Occluded(self.scene, mask, occlusion.fill), self.layout,
                                     window, self.spec)  # fmt: skip
                    pending.tiles.append(tile)
                    pending.keys.append(key)
                    pending.waiting[key] = []
                pending.waiting[key].append(index)
                if len(pending.tiles) == self.batch_size:
                    self._run(pending, totals)
                    pending = _Pending()
        if pending.tiles:
            self._run(pending, totals)
        return np.stack(totals) if totals else np.zeros((0, len(self.classes)))

    def score_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Region scores ``(K,)`` of the scene with other ``(C, H, W)`` raw pixels."""
        everywhere = np.ones(self.scene.valid.shape, dtype=bool)
        scores: np.ndarray = self.scores([Occlusion(everywhere, pixels)])[0]
        return scores

    # --- internals ---------------------------------------------------------------------------

    def _check(self, occlusion: Occlusion) -> None:
        if occlusion.mask.shape != self.scene.valid.shape or occlusion.mask.dtype != bool:
            raise GeocamError(
                f"occlusion mask {occlusion.mask.shape} ({occlusion.mask.dtype}): expected a "
                f"bool mask of the scene's {self.scene.valid.shape}"
            )
        if occlusion.fill.shape != self.scene.pixels.shape:
            raise GeocamError(
                f"occlusion fill {occlusion.fill.shape} does not match the scene's pixels "
                f"{self.scene.pixels.shape}"
            )

    def _run(self, pending: _Pending, totals: list[np.ndarray]) -> None:
        values, _ = self._forward(pending.tiles)
        for tile, key, value in zip(pending.tiles, pending.keys, values, strict=True):
            rows, cols = core_in_tile(self.layout, tile.window)
            core = self.layout.core(tile.window)
            region = self.region[(slice(None), *core.toslices())]
            score = _weighted_sum(region, value[:, rows, cols])
            if key[2][0] == "fill":  # type: ignore[index]
                self._cache[key] = score
            for index in pending.waiting[key]:
                totals[index] += score

    def _forward(self, tiles: Sequence[Tile]) -> tuple[list[np.ndarray], torch.Tensor]:
        """Each tile's class values ``(K, Hp, Wp)`` (float64, host) and the raw outputs."""
        images = to_device(torch.from_numpy(np.stack([t.pixels for t in tiles])), self.device)  # type: ignore[misc]
        _, output = layer_activations(self.model, images, self.layer, self.options)
        if output.ndim != 4 or output.shape[-2:] != images.shape[-2:]:
            raise GeocamError(
                f"the network's output {tuple(output.shape)} is not one value per input pixel "
                f"of {tuple(images.shape[-2:])}: the scene engine needs one output per pixel"
            )
        table = class_table(self.classes, len(tiles), output.device)
        values = class_values(output, table, self.options)
        return list(values.double().cpu().numpy()), output

    def _original(self, explanation: Explanation) -> tuple[np.ndarray, np.ndarray]:
        """The region ``(K, H, W)`` (float64 weights) and the unperturbed per-tile scores."""
        scene, grid = self.scene, self.scene.grid
        source = ArraySource(scene.pixels, grid, valid=scene.valid)
        region = np.zeros((len(self.classes), grid.height, grid.width))
        named = explanation.region
        if isinstance(named, str) and named not in ("predicted", "all"):
            named = open_region(named, grid, explanation.where)
        if named == "all":
            region[:] = scene.valid
        elif not isinstance(named, str):
            read = named.read(Window(0, 0, grid.width, grid.height))
            region[:] = np.asarray(read, dtype=np.float64) * scene.valid
        values: list[tuple[Tile, np.ndarray]] = []
        tiles = [read_tile(source, self.layout, w, self.spec) for w in self.windows]
        present = [t for t in tiles if not t.skipped]
        for start in range(0, len(present), self.batch_size):
            batch = present[start : start + self.batch_size]
            found, output = self._forward(batch)
            values.extend(zip(batch, found, strict=True))
            if named == "predicted":
                self._record_predicted(region, batch, output)
        tile_scores = np.zeros((len(self.windows), len(self.classes)))
        index = {(w.row_off, w.col_off): i for i, w in enumerate(self.windows)}
        for tile, value in values:
            rows, cols = core_in_tile(self.layout, tile.window)
            core = self.layout.core(tile.window)
            score = _weighted_sum(region[(slice(None), *core.toslices())], value[:, rows, cols])
            tile_scores[index[(tile.window.row_off, tile.window.col_off)]] = score
        return region, tile_scores

    def _record_predicted(
        self, region: np.ndarray, tiles: list[Tile], output: torch.Tensor
    ) -> None:
        """Each core's own prediction of the classes, as the engine's Grad-CAM pass scores it."""
        valid = torch.from_numpy(np.stack([t.valid for t in tiles])).to(output.device)  # type: ignore[misc]
        table = class_table(self.classes, len(tiles), output.device)
        weights = region_weights(
            "predicted", output, table, valid=valid,
            activation=self.options.activation, threshold=self.options.threshold,
        )  # fmt: skip
        for tile, plane in zip(tiles, weights.double().cpu().numpy(), strict=True):
            rows, cols = core_in_tile(self.layout, tile.window)
            core = self.layout.core(tile.window)
            region[(slice(None), *core.toslices())] = plane[:, rows, cols]


def _weighted_sum(region: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``sum(region * values)`` per class in float64, 0 outside the region (never 0 * inf)."""
    total: np.ndarray = np.where(region != 0, region * values, 0.0).sum(axis=(1, 2))
    return total


class _Occluded:
    """The scene with an occlusion's pixels replaced, read window by window (a TileSource)."""

    def __init__(self, scene: Scene, mask: np.ndarray, fill: np.ndarray) -> None:
        self.scene, self.mask, self.fill = scene, mask, fill
        self.grid: Grid = scene.grid
        self.count = scene.pixels.shape[0]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = window.toslices()
        mask = self.mask[rows, cols]
        pixels = np.where(mask, self.fill[:, rows, cols], self.scene.pixels[:, rows, cols])
        valid = self.scene.valid[rows, cols]
        inner = ArraySource(pixels.astype(np.float32, copy=False), self.grid, valid=valid)
        return inner.read(Window(0, 0, int(window.width), int(window.height)))
