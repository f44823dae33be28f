"""Peak memory on a mostly-nodata scene against a fully valid scene of the same width.

Issue 11 ("huge runs"): memory must grow with a scene's width, whatever its share of nodata.
The sparse scene is ``NODATA_ROWS`` rows of nodata (value 0) above ``VALID_ROWS`` valid rows,
the dense one the same valid rows alone; both are 4-band mirrors of the Pucallpa 2020 Landsat
scene, each explained in a fresh process (HiResCAM, a shallow Unet, tile 512, overlap 128).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from common import Row, Settings, Target, log, register
from rasterio.transform import from_origin
from scene import CACHE, PUCALLPA, peak_memory

WIDTH = 8192
VALID_ROWS = 1024


def scene(width: int, valid_rows: int, nodata_rows: int) -> Path:
    """``nodata_rows`` of zeros above ``valid_rows`` of the mirrored Landsat scene."""
    path = CACHE / f"nodata_{width}x{valid_rows}+{nodata_rows}.tif"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"  building {path.name}")
    with rasterio.open(PUCALLPA) as src:
        pixels = src.read()
    tile = np.concatenate([pixels, pixels[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    tile = np.maximum(tile, 1)  # the valid rows hold no nodata value
    height = valid_rows + nodata_rows
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint8",
        "crs": "EPSG:32718", "transform": from_origin(500_000, 9_100_000, 30, 30), "nodata": 0,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    partial = path.with_suffix(".partial")
    with rasterio.open(partial, "w", **profile) as dst:
        for row in range(0, height, 1024):
            rows = np.arange(row, min(row + 1024, height))
            strip = np.zeros((4, rows.size, width), np.uint8)
            valid = rows >= nodata_rows
            cols = np.arange(width) % tile.shape[2]
            strip[:, valid] = tile[:, (rows[valid] % tile.shape[1])][:, :, cols]
            dst.write(strip, window=((row, row + rows.size), (0, width)))
    partial.rename(path)
    return path


@register("nodata", devices=False)
def nodata(settings: Settings) -> list[Row]:
    """CPU, a shallow smp Unet (resnet18, depth 3), HiResCAM, tile 512, overlap 128: peak memory of a scene of nodata above valid rows against the valid rows alone, same width; each in a fresh process."""  # noqa: E501
    nodata_rows = 8192 if settings.quick else 32768
    dense = peak_memory(scene(WIDTH, VALID_ROWS, 0))
    log(f"  dense: {dense}")
    sparse = peak_memory(scene(WIDTH, VALID_ROWS, nodata_rows))
    log(f"  sparse: {sparse}")
    ratio = sparse["peak_kib"] / dense["peak_kib"]
    share = nodata_rows / (nodata_rows + VALID_ROWS)
    return [
        Row(f"peak memory, {WIDTH} x {VALID_ROWS} valid", dense["peak_kib"] / 1024, "MiB"),
        Row(
            f"peak memory, {WIDTH} x {VALID_ROWS + nodata_rows} ({share:.0%} nodata)",
            sparse["peak_kib"] / 1024,
            "MiB",
        ),
        Row(f"time, {WIDTH} x {VALID_ROWS + nodata_rows}", sparse["seconds"], "s"),
        Row("peak memory ratio, mostly nodata / valid", ratio, "x", Target("<=", 1.25)),
    ]
