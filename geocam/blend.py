"""Stitching tiles without seams in memory bounded by the scene's width, not its area.

Weighted tile values and their weights are summed in a rolling band of rows; rows that no later
tile can touch are divided out and handed to a sink in whole strips, top to bottom. A product
can be accumulated at a coarser grid (``scale`` source pixels per cell, e.g. the feature map's
stride): tiles then add values per cell, weighted by the blend weights of the valid source
pixels each cell covers (:func:`block_sum`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from geocam.output import BLOCK, StripSink

Finish = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Turns summed values ``(bands, rows, width)`` and weights ``(rows, width)`` into output."""


def block_sum(values: np.ndarray, scale: int) -> np.ndarray:
    """Sums over ``scale x scale`` blocks of the last two axes (a partial last block too).

    How a tile's per-pixel blend weights become the weights of its feature cells: a cell
    weighs as much as the valid, blended pixels it covers.
    """
    *lead, h, w = values.shape
    cells_h, cells_w = -(-h // scale), -(-w // scale)
    padded = np.zeros((*lead, cells_h * scale, cells_w * scale), dtype=values.dtype)
    padded[..., :h, :w] = values
    blocks = padded.reshape(*lead, cells_h, scale, cells_w, scale)
    summed: np.ndarray = blocks.sum(axis=(-3, -1))
    return summed


def weighted_mean(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Values divided by their weights; NaN where nothing valid was accumulated."""
    out = np.full(sums.shape, np.nan, dtype=np.float32)
    covered = weights > 1e-6
    np.divide(sums, weights, out=out, where=np.broadcast_to(covered, sums.shape))
    return out


@dataclass
class Strip:
    """One tile row's contribution to a product: weighted values and weights summed from zero.

    ``row`` is on the product's grid; ``sums`` are ``(bands, rows, width)`` and ``weights``
    ``(rows, width)``, float32, over the whole width. Strips of successive tile rows overlap;
    they are added to a :class:`BandAccumulator` in tile-row order, which fixes the order of
    every float addition whichever process computed them (bitwise-identical splits).
    """

    row: int
    sums: np.ndarray
    weights: np.ndarray


class RowStrip:
    """Sums the tiles of one tile row (in column order) into a zero-started :class:`Strip`."""

    def __init__(self, bands: int, width: int, tile_rows: int, *, scale: int = 1) -> None:
        self.scale = scale
        self.width = -(-width // scale)
        capacity = -(-tile_rows // scale) + 2
        self.sums = np.zeros((bands, capacity, self.width), dtype=np.float32)
        self.weights = np.zeros((capacity, self.width), dtype=np.float32)
        self.row: int | None = None
        self.rows = 0

    def add(self, row: int, col: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``values`` ``(bands, h, w)`` with ``weights`` ``(h, w)`` (0 = nodata)."""
        weighted = values * weights
        if self.row is None:
            self.row = row
        top = row - self.row
        height = weights.shape[0]
        if top < 0 or top + height > self.weights.shape[0]:
            raise RuntimeError(f"tile rows {row}..{row + height} are not in one tile row")
        self.sums[:, top : top + height, col : col + weights.shape[1]] += weighted
        self.weights[top : top + height, col : col + weights.shape[1]] += weights
        self.rows = max(self.rows, top + height)

    def strip(self) -> Strip | None:
        """The tile row's strip (None when no tile added anything)."""
        if self.row is None:
            return None
        return Strip(self.row, self.sums[:, : self.rows], self.weights[: self.rows])


class BandAccumulator:
    """A rolling band of ``(bands, rows, width)`` sums plus weights, flushed in strips.

    Tiles must arrive in row-major order of their row offsets (the order of
    :meth:`TileLayout.windows`): then every row above the next tile's first row is final.
    """

    def __init__(
        self,
        bands: int,
        height: int,
        width: int,
        tile_rows: int,
        sink: StripSink,
        *,
        scale: int = 1,
        finish: Finish = weighted_mean,
        strip: int = BLOCK,
        start: int = 0,
    ) -> None:
        self.scale = scale
        self.height = -(-height // scale)  # rows and columns of the (coarser) output grid
        self.width = -(-width // scale)
        self.sink = sink
        self.finish = finish
        self.strip = strip
        self.capacity = strip + -(-tile_rows // scale) + 2
        self.sums = np.zeros((bands, self.capacity, self.width), dtype=np.float32)
        self.weights = np.zeros((self.capacity, self.width), dtype=np.float32)
        self.start = start  # output row held at index 0 of the band
        self.origin = start  # rows above it were stored by an earlier run: contributions dropped

    def add(self, row: int, col: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``values`` ``(bands, h, w)`` with ``weights`` ``(h, w)`` (0 = nodata).

        ``row`` and ``col`` are on the accumulator's own grid (source pixels, or cells of
        ``scale`` pixels).
        """
        self._place(row, col, values * weights, weights)

    def add_strip(self, strip: Strip) -> None:
        """Add a tile row's :class:`Strip` (strips must come in tile-row order)."""
        self._place(strip.row, 0, strip.sums, strip.weights)

    def _place(self, row: int, col: int, weighted: np.ndarray, weights: np.ndarray) -> None:
        if row < self.origin:  # a resumed run: keep only the rows still missing
            cut = min(self.origin - row, weights.shape[0])
            weighted, weights, row = weighted[:, cut:], weights[cut:], row + cut
            if weights.shape[0] == 0:
                return
        top = row - self.start
        if top < 0 or top + weights.shape[0] > self.capacity:
            raise RuntimeError(
                f"tile rows {row}..{row + weights.shape[0]} fall outside the band held in memory "
                f"({self.start}..{self.start + self.capacity}): tiles out of order"
            )
        rows = slice(top, top + weights.shape[0])
        cols = slice(col, col + weights.shape[1])
        self.sums[:, rows, cols] += weighted
        self.weights[rows, cols] += weights

    def ready(self, final_row: int | None = None) -> bool:
        """Whether :meth:`flush` with ``final_row`` would hand a strip to the sink."""
        limit = self.height if final_row is None else min(self.height, final_row // self.scale)
        return self.start < self.height and min(self.start + self.strip, self.height) <= limit

    def flush(self, final_row: int | None = None) -> None:
        """Hand every complete strip above source row ``final_row`` (None: all rows) to the sink."""
        limit = self.height if final_row is None else min(self.height, final_row // self.scale)
        while self.start < self.height:
            end = min(self.start + self.strip, self.height)
            if end > limit:
                return
            self._emit(end - self.start)

    def _emit(self, rows: int) -> None:
        self.sink.write(self.start, self.finish(self.sums[:, :rows], self.weights[:rows]))
        self.sums[:, :-rows] = self.sums[:, rows:]
        self.sums[:, -rows:] = 0
        self.weights[:-rows] = self.weights[rows:]
        self.weights[-rows:] = 0
        self.start += rows
