"""The predicted region of a whole scene, recorded tile by tile, for Grad-CAM++'s pass 1.

Grad-CAM++ scores each tile's *whole* region (see :mod:`geocam.scene.passes`). When that region
is the network's own prediction, a tile decides it badly near its edges, where the network
lacks context; the tile that owns those pixels (its core) decides them well. Pass 0 already
runs the network over every tile: it records each core's prediction here, and pass 1 reads the
region of every tile back from this record, so that every pixel's membership is decided where
its context is. The record is a ``(classes, height, width)`` uint8 array in a temporary file
(1 byte per pixel and class, less than the resume journal's 4 per band), removed on close.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from rasterio.windows import Window


class PredictedRegion:
    """A scene-sized record of the predicted region, written by core windows, read by tiles."""

    def __init__(self, classes: int, height: int, width: int) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="geocam-region-")
        path = Path(self._folder.name) / "predicted.u8"
        self.mask = np.memmap(path, dtype=np.uint8, mode="w+", shape=(classes, height, width))

    def record(self, core: Window, values: np.ndarray) -> None:
        """Store ``values`` ``(classes, h, w)`` (0 or 1) at the core window ``core``."""
        rows, cols = core.toslices()
        self.mask[:, rows, cols] = values

    def read(self, window: Window, shape: tuple[int, int]) -> np.ndarray:
        """The region of ``window`` as float32 ``(classes, *shape)``, zero-padded to ``shape``."""
        rows, cols = window.toslices()
        out = np.zeros((self.mask.shape[0], *shape), dtype=np.float32)
        block = self.mask[:, rows, cols]
        out[:, : block.shape[1], : block.shape[2]] = block
        return out

    def rows(self, top: int, bottom: int) -> PredictedRows:
        """A copy of the record's source rows ``top..bottom``: what a band of tiles reads."""
        return PredictedRows(np.array(self.mask[:, top:bottom]), top)

    def close(self) -> None:
        """Remove the record."""
        del self.mask
        self._folder.cleanup()


class PredictedRows:
    """Part of the record, rows ``top..`` of the scene, in memory: what a worker's band reads.

    Reads windows in the scene's coordinates exactly as :class:`PredictedRegion` does.
    """

    def __init__(self, mask: np.ndarray, top: int) -> None:
        self.mask = mask
        self.top = top

    def read(self, window: Window, shape: tuple[int, int]) -> np.ndarray:
        """The region of ``window`` as float32 ``(classes, *shape)``, zero-padded to ``shape``."""
        shifted = Window(window.col_off, window.row_off - self.top, window.width, window.height)
        if shifted.row_off < 0 or shifted.row_off + shifted.height > self.mask.shape[1]:
            raise ValueError(f"{window} is outside the rows held ({self.top}..)")
        rows, cols = shifted.toslices()
        out = np.zeros((self.mask.shape[0], *shape), dtype=np.float32)
        block = self.mask[:, rows, cols]
        out[:, : block.shape[1], : block.shape[2]] = block
        return out

    def close(self) -> None:
        """Nothing to remove (the rows are in memory)."""
