"""Tiling arithmetic for streaming a large scene through a network tile by tile.

A :class:`TileLayout` cuts a ``height x width`` scene into overlapping square tiles (the last
tile along each axis snapped to the scene edge), says how far to pad each tile for the network,
gives per-pixel blend weights that sum to one over all tiles everywhere (so heatmaps blend
without seams and without a weight accumulator), and assigns each scene pixel to exactly one
tile's *core* (so statistics count every pixel once). Windows are :class:`rasterio.windows.Window`.
Everything here is pure integer and numpy arithmetic: no I/O, no torch.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from rasterio.windows import Window

from geocam.errors import GeocamError

__all__ = ["TileLayout", "native_transform"]


@dataclass(frozen=True)
class TileLayout:
    """Overlapping square tiles over a scene, in row-major order.

    Build it with :meth:`plan`, which rounds the tile up to the network's input multiple.
    """

    height: int
    """Scene rows."""
    width: int
    """Scene columns."""
    tile: int
    """Tile side in pixels, a multiple of ``multiple``."""
    overlap: int
    """Nominal overlap between neighbouring tiles in pixels (a snapped last tile overlaps more)."""
    multiple: int
    """The network's required input multiple (32 for smp encoders)."""
    margin: int = 0
    """Pixels at a tile edge facing another tile that get no weight (at most half of each
    overlap): the scene engine sets half the target layer's stride there, the band in which
    bilinear upsampling of a tile's map clamps at the tile's edge for want of the next cell."""
    fixed: int | None = None
    """The one square input size the network takes (Swin's 224), if it takes no other: a
    scene smaller than it is padded up to it."""

    def __post_init__(self) -> None:
        _check_positive(self.multiple, "the network's input multiple", "check the model")
        _check_positive(self.tile, "Tiling.tile", "raise Tiling.tile")
        if self.height < 1 or self.width < 1:
            raise GeocamError(
                f"scene size ({self.height} x {self.width}) must be at least 1 x 1 pixel: "
                "check the input raster or window"
            )
        if self.tile % self.multiple:
            raise GeocamError(
                f"tile ({self.tile}) must be a multiple of {self.multiple}: "
                "build the layout with TileLayout.plan, which rounds it up"
            )
        if self.overlap < 0:
            raise GeocamError(
                f"Tiling.overlap ({self.overlap}) must be at least 0: raise Tiling.overlap"
            )
        if self.margin < 0:
            raise GeocamError(f"margin ({self.margin}) must be at least 0")
        if self.overlap < self.tile and (self.tile - self.overlap) % self.multiple:
            stride = self.tile - self.overlap
            low = self.tile - -(-stride // self.multiple) * self.multiple
            options = " or ".join(str(o) for o in (low, low + self.multiple) if o >= 0)
            raise GeocamError(
                f"tile - overlap ({self.tile} - {self.overlap}) must be a multiple of the "
                f"network's {self.multiple} px so tiles share its cell grid: use Tiling.overlap "
                f"{options}"
            )
        if self.overlap >= self.tile:
            raise GeocamError(
                f"Tiling.overlap ({self.overlap}) must be smaller than the tile ({self.tile}): "
                "lower Tiling.overlap or raise Tiling.tile"
            )

    @classmethod
    def plan(
        cls,
        height: int,
        width: int,
        tile: int = 512,
        overlap: int = 128,
        multiple: int = 32,
        margin: int = 0,
        fixed: int | None = None,
    ) -> TileLayout:
        """Lay out tiles of side ``tile`` (rounded up to ``multiple``) overlapping by ``overlap``.

        ``fixed``: the one input size the network takes, if any (see :attr:`fixed`).

        Raises :class:`GeocamError` naming the offending option when the numbers cannot work.
        """
        height, width, tile, overlap, multiple, margin = (
            operator.index(v) for v in (height, width, tile, overlap, multiple, margin)
        )
        _check_positive(multiple, "the network's input multiple", "check the model")
        _check_positive(tile, "Tiling.tile", "raise Tiling.tile")
        tile = -(-tile // multiple) * multiple
        return cls(height, width, tile, overlap, multiple, margin, fixed)

    @property
    def stride(self) -> int:
        """Distance between the offsets of neighbouring tiles (before the last one is snapped)."""
        return self.tile - self.overlap

    def offsets(self, length: int) -> list[int]:
        """Tile offsets along an axis of ``length`` pixels: strictly increasing, covering it.

        ``0, stride, 2 * stride, ...`` while the tile ends inside the axis, then one last tile
        snapped to the edge: ``length - tile`` rounded up to the network's multiple, so that
        every tile's feature cells lie on the scene's cell grid (tiles then agree on what a
        cell is). That last tile sticks out by less than the multiple and is reflect-padded.
        ``[0]`` if one tile covers the axis.
        """
        return list(_axis_offsets(length, self.tile, self.stride, self.multiple))

    def windows(self) -> list[Window]:
        """All tile windows, row-major, clipped to the scene (the last row and column clip)."""
        return [window for group in self.row_groups() for window in group]

    def row_groups(self) -> list[list[Window]]:
        """The windows grouped by tile-row (same ``row_off``), top to bottom."""
        cols = self.offsets(self.width)
        return [
            [
                Window(
                    col, row, min(self.tile, self.width - col), min(self.tile, self.height - row)
                )
                for col in cols
            ]
            for row in self.offsets(self.height)
        ]

    def rows_final_after(self, group_index: int) -> int:
        """Leading scene rows no later tile-row touches once tile-rows ``0..group_index`` ran.

        That is the next tile-row's row offset (or the height after the last tile-row): the
        streaming writer can flush those rows.
        """
        rows = self.offsets(self.height)
        if not 0 <= group_index < len(rows):
            raise IndexError(f"tile-row {group_index} out of range(0, {len(rows)})")
        return rows[group_index + 1] if group_index + 1 < len(rows) else self.height

    def padded_shape(self, window: Window) -> tuple[int, int]:
        """The network input size for ``window``: each side rounded up to ``multiple``.

        A window is already ``tile`` (a multiple) unless the scene is smaller than the tile; the
        scene engine reflect-pads the tile to this shape and crops the output back. A network
        that takes one size only (:attr:`fixed`) gets at least that size.
        """
        m, least = self.multiple, self.fixed or 0
        height = -(-int(window.height) // m) * m
        width = -(-int(window.width) // m) * m
        return max(height, least), max(width, least)

    def blend_weights(self, window: Window) -> np.ndarray:
        """Per-pixel blend weights of ``window``'s tile, ``(height, width)`` float32.

        The outer product of 1-D weights which are flat except for raised-cosine ramps over the
        overlaps with neighbouring tiles (none on edges facing the scene border), normalised so
        the weights of all tiles sum to one at every scene position: weighted tiles can simply
        be added up. The 1-D weights are cached, so this is cheap to call per tile.
        """
        row_index, col_index = self._tile_index(window)
        rows = _axis_weights(self.height, self.tile, self.stride, self.multiple, self.margin)[
            row_index
        ]
        cols = _axis_weights(self.width, self.tile, self.stride, self.multiple, self.margin)[
            col_index
        ]
        return np.outer(rows, cols).astype(np.float32)

    def core(self, window: Window) -> Window:
        """The part of the scene assigned to ``window``'s tile alone, inside the window.

        The cores of all tiles partition the scene, so statistics accumulated over cores count
        every scene pixel exactly once. Neighbouring cores meet halfway across their overlap.
        """
        row_index, col_index = self._tile_index(window)
        row_bounds = _axis_core_bounds(self.height, self.tile, self.stride, self.multiple)
        col_bounds = _axis_core_bounds(self.width, self.tile, self.stride, self.multiple)
        row_start, row_stop = row_bounds[row_index], row_bounds[row_index + 1]
        col_start, col_stop = col_bounds[col_index], col_bounds[col_index + 1]
        return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)

    def _tile_index(self, window: Window) -> tuple[int, int]:
        """The (tile-row, tile-column) index of one of this layout's windows."""
        rows = _axis_offsets(self.height, self.tile, self.stride, self.multiple)
        cols = _axis_offsets(self.width, self.tile, self.stride, self.multiple)
        row, col = int(window.row_off), int(window.col_off)
        if (
            row not in rows
            or col not in cols
            or int(window.height) != min(self.tile, self.height - row)
            or int(window.width) != min(self.tile, self.width - col)
        ):
            raise ValueError(f"{window} is not a window of {self}")
        return rows.index(row), cols.index(col)


def native_transform(transform: Affine, stride: int) -> Affine:
    """Georeferencing of a map at a feature map's resolution, ``stride`` source pixels per cell.

    Cell ``(0, 0)`` covers source pixels ``[0, stride)`` along both axes, so the native map
    shares the source's top-left corner and its pixels are ``stride`` times larger: cell
    centres land on the centres of the source pixel blocks they summarise.

    This is ``transform * Affine.scale(stride)``, written out so it works the same with
    affine 2.x (no ``@``) and affine 3.x (which deprecates ``*`` between transforms).
    """
    t = transform
    return Affine(t.a * stride, t.b * stride, t.c, t.d * stride, t.e * stride, t.f)


def _check_positive(value: int, name: str, fix: str) -> None:
    """Raise :class:`GeocamError` unless ``value`` is at least 1."""
    if value < 1:
        raise GeocamError(f"{name} ({value}) must be at least 1: {fix}")


@lru_cache(maxsize=256)
def _axis_offsets(length: int, tile: int, stride: int, multiple: int) -> tuple[int, ...]:
    """Tile offsets along one axis (see :meth:`TileLayout.offsets`)."""
    if length <= tile:
        return (0,)
    offsets = list(range(0, length - tile, stride))  # every offset with offset + tile < length
    offsets.append(-(-(length - tile) // multiple) * multiple)  # the edge, on the cell grid
    return tuple(offsets)


def _axis_ends(length: int, tile: int, stride: int, multiple: int) -> list[int]:
    """Tile ends (exclusive) along one axis, clipped to the axis."""
    offsets = _axis_offsets(length, tile, stride, multiple)
    return [min(offset + tile, length) for offset in offsets]


@lru_cache(maxsize=256)
def _axis_weights(
    length: int, tile: int, stride: int, multiple: int, margin: int = 0
) -> tuple[np.ndarray, ...]:
    """Normalised 1-D blend weights of every tile along one axis (read-only float64 arrays).

    Raw weights are 1 with a ramp ``0.5 - 0.5 cos(pi (j + 0.5) / L)`` up over the ``L`` pixels
    shared with the previous tile and its mirror image down over those shared with the next
    one (where the two ramps meet, with three tiles overlapping, they multiply). The first
    ``margin`` pixels at an edge facing a neighbour (at most half of the overlap) weigh 0 and
    the ramp spans the rest of the overlap. The up and
    down ramps over one overlap sum to one; dividing by the per-position sum of raw weights
    makes that exact everywhere, also where the snapped last tile makes three tiles overlap.
    """
    offsets = _axis_offsets(length, tile, stride, multiple)
    ends = _axis_ends(length, tile, stride, multiple)
    raws: list[np.ndarray] = []
    total = np.zeros(length)
    for i, (start, stop) in enumerate(zip(offsets, ends, strict=True)):
        raw = np.ones(stop - start)
        if i > 0 and (shared := ends[i - 1] - start) > 0:
            m = min(margin, shared // 2)
            raw[:m] = 0
            raw[m:shared] *= _ramp_up(shared - m)
        if i + 1 < len(offsets) and (shared := stop - offsets[i + 1]) > 0:
            m = min(margin, shared // 2)
            raw[len(raw) - m :] = 0
            raw[len(raw) - shared : len(raw) - m] *= _ramp_up(shared - m)[::-1]
        raws.append(raw)
        total[start:stop] += raw
    weights = []
    for start, stop, raw in zip(offsets, ends, raws, strict=True):
        weight = raw / total[start:stop]
        weight.setflags(write=False)
        weights.append(weight)
    return tuple(weights)


def _ramp_up(length: int) -> np.ndarray:
    """A raised-cosine ramp of ``length`` pixels rising from near 0 to near 1 (pixel centres)."""
    return 0.5 - 0.5 * np.cos(math.pi * (np.arange(length) + 0.5) / length)


@lru_cache(maxsize=256)
def _axis_core_bounds(length: int, tile: int, stride: int, multiple: int) -> tuple[int, ...]:
    """Core boundaries along one axis: core ``i`` is ``[bounds[i], bounds[i + 1])``.

    ``0``, then halfway (rounded down) across each overlap, then ``length``.
    """
    offsets = _axis_offsets(length, tile, stride, multiple)
    ends = _axis_ends(length, tile, stride, multiple)
    middle = [(offsets[i] + ends[i - 1]) // 2 for i in range(1, len(offsets))]
    return (0, *middle, length)
