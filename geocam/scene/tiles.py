"""Tiles as the network sees them: read, normalised once, padded, with validity and region."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geocam.models import ModelSpec
from geocam.scene.options import RegionSource
from geocam.sources import TileSource
from geocam.tiling import TileLayout


@dataclass
class Tile:
    """One tile of the layout.

    ``pixels`` ``(C, Hp, Wp)`` are normalised and padded to the network's multiple; ``valid``
    ``(Hp, Wp)`` is False in nodata and in the padding; ``region`` holds the region weights
    when the region is read from a :class:`RegionSource`. A skipped tile (no valid pixel)
    keeps only its window, so a scene of mostly nodata costs no memory per skipped tile.
    """

    window: Window
    pixels: np.ndarray | None = None
    valid: np.ndarray | None = None
    region: np.ndarray | None = None

    @property
    def skipped(self) -> bool:
        """Whether the tile has no valid pixel (it is not fed to the network)."""
        return self.valid is None

    @property
    def key(self) -> tuple[int, int]:
        """The tile's (row, column) offset: its identity within a layout."""
        return window_key(self.window)


def window_key(window: Window) -> tuple[int, int]:
    """A window's (row, column) offset."""
    return int(window.row_off), int(window.col_off)


def normalise(pixels: np.ndarray, valid: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Pixels as the network expects them: the spec's normalisation, nodata at the mean (0).

    The one place inputs are normalised, so every pass feeds the network the same values.
    """
    if spec.normalisation is not None:
        scale = np.asarray(spec.normalisation.scale, dtype=np.float32)[:, None, None]
        offset = np.asarray(spec.normalisation.offset, dtype=np.float32)[:, None, None]
        pixels = pixels * scale + offset
    return np.where(valid, pixels, np.float32(0)).astype(np.float32, copy=False)


def read_tile(
    source: TileSource,
    layout: TileLayout,
    window: Window,
    spec: ModelSpec,
    region: RegionSource | None = None,
) -> Tile:
    """Read, normalise and pad one tile; a tile without a valid pixel comes back skipped."""
    pixels, valid = source.read(window)
    if not valid.any():
        return Tile(window)
    padded = layout.padded_shape(window)
    pad = ((0, padded[0] - pixels.shape[1]), (0, padded[1] - pixels.shape[2]))
    weights = None if region is None else np.pad(region.read(window).astype(np.float32), pad)
    normalised = normalise(pixels, valid, spec)
    if min(valid.shape) > 1:
        pixels = np.pad(normalised, ((0, 0), *pad), mode="reflect")
    else:
        pixels = np.pad(normalised, ((0, 0), *pad), mode="edge")
    return Tile(window, pixels, np.pad(valid, pad, constant_values=False), weights)


def core_in_tile(layout: TileLayout, window: Window) -> tuple[slice, slice]:
    """The rows and columns of ``window``'s core, in the tile's own coordinates."""
    core = layout.core(window)
    top = int(core.row_off - window.row_off)
    left = int(core.col_off - window.col_off)
    return slice(top, top + int(core.height)), slice(left, left + int(core.width))


def core_mask(layout: TileLayout, tile: Tile) -> np.ndarray:
    """``(Hp, Wp)`` bool: True on the pixels of the tile's core (the scene pixels it owns)."""
    assert tile.valid is not None
    mask = np.zeros(tile.valid.shape, dtype=bool)
    mask[core_in_tile(layout, tile.window)] = True
    return mask
