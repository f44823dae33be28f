"""Inputs that must not change the map (issue 10, items 6-9 and finite settings): one figure each.

``python benchmarks/inputs.py`` measures this checkout; ``PYTHONPATH=OLD python
benchmarks/inputs.py`` measures another one (e.g. a ``git worktree`` of an earlier commit).
Small synthetic scenes in EPSG:32618 / EPSG:4326 and a seeded 3-band Unet (stride 8); CPU only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.windows import Window

import geocam
from geocam import ModelSpec, Normalisation, build_model
from geocam.cli import cli
from geocam.raster import explain_raster
from geocam.scene import Explanation, Runtime, Tiling
from geocam.sources import RasterSource

UTM = from_origin(600_000.0, 4_500_000.0, 10.0, 10.0)
LONLAT = Affine(1e-6, 0, -78.9, 0, -1e-6, 35.8)  # ~0.1 m pixels
SENTINEL = np.float32(-3.4e38)
PRESET = """arch: Unet
encoder: resnet18
in_channels: 3
classes: [a, b]
normalisation: {scale: [0.01, 0.01, 0.01], offset: [0, 0, 0]}
options: {encoder_depth: 3, decoder_channels: [16, 8, 8]}
tile: 64
overlap: 16
nodata: 0
"""


def write(
    path: Path, pixels: np.ndarray, transform: Affine = UTM, crs: str = "EPSG:32618", **kw: Any
) -> Path:
    count, height, width = pixels.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count,
        dtype=pixels.dtype, crs=crs, transform=transform, **kw,
    ) as dst:  # fmt: skip
        dst.write(pixels)
    return path


def scene() -> np.ndarray:
    r, c = np.indices((64, 64)) / 64.0
    bands = [50 + 50 * np.sin(4 * r + 3 * c), 50 + 50 * np.cos(5 * r - 2 * c), 100 * r * c]
    return np.stack(bands).astype(np.float32)


def spec(bands: tuple[tuple[int, ...], ...] = ()) -> ModelSpec:
    return ModelSpec(
        "Unet", "resnet18", 3, ("a", "b"), bands=bands,
        normalisation=Normalisation((0.01,) * 3, (0.0,) * 3),
        options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)},
    )  # fmt: skip


def main() -> None:
    print(f"geocam from {geocam.__file__}")
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = build_model(spec())

    def heat(paths: list[Path], name: str, model_spec: ModelSpec) -> np.ndarray:
        out = tmp / name
        explain_raster(
            paths, out, model_spec, Explanation(("b",), region="all"), model=model,
            tiling=Tiling(64, 16), runtime=Runtime("cpu", progress=False),
        )  # fmt: skip
        with rasterio.open(out) as dataset:
            return np.asarray(dataset.read(1), dtype=np.float64)

    where = np.zeros((64, 64), dtype=bool)
    where[30:32, 40:42] = True
    clean = write(tmp / "clean.tif", scene(), nodata=float(SENTINEL))
    dirty_pixels = scene()
    dirty_pixels[1, where] = SENTINEL
    dirty = write(tmp / "dirty.tif", dirty_pixels, nodata=float(SENTINEL))
    before, after = heat([clean], "h0.tif", spec()), heat([dirty], "h1.tif", spec())
    print(
        f"6  -3.4e38 in one band of a 2x2 patch: positive max {np.nanmax(after):.4g} "
        f"(clean scene {np.nanmax(before):.4g}); patch heat finite: "
        f"{np.isfinite(after[where]).all()}"
    )

    declared = scene().astype(np.int16)
    declared[:, where] = -9999
    path = write(tmp / "declared.tif", declared, nodata=-9999)
    config = tmp / "preset.yaml"
    config.write_text(PRESET)
    args = ["explain", str(path), "-c", str(config), "--class", "b", "--region", "all", "-q"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp / "h7.tif")])
    with rasterio.open(tmp / "h7.tif") as dataset:
        got = np.isfinite(dataset.read(1)[where]).sum()
    print(
        f"7  file nodata -9999, preset nodata 0: exit {result.exit_code}, {got} of "
        f"{where.sum()} nodata pixels got heat"
    )

    first = write(tmp / "first.tif", scene()[:2])
    west = write(tmp / "west.tif", scene()[2:, :, :32])
    east = heat([first, west], "h8.tif", spec(((1, 2), (1,))))[:, 32:]
    print(
        f"8  a stacked raster covering the west half: {np.isfinite(east).sum()} of "
        f"{east.size} pixels east of it got heat"
    )

    columns = (np.indices((1, 8, 16))[2] + 1).astype(np.float32)
    a = write(tmp / "ll_a.tif", columns, LONLAT, "EPSG:4326")
    b = write(tmp / "ll_b.tif", columns, LONLAT @ Affine.translation(5, 0), "EPSG:4326")
    with RasterSource([a, b]) as source:
        data, _ = source.read(Window(0, 0, 16, 8))
    print(
        f"9  1e-6 deg raster shifted by 5 px: scene column 10 reads its column "
        f"{data[1, 0, 10] - 1:.0f} (right: 5)"
    )

    nan_config = tmp / "nan.yaml"
    nan_config.write_text(PRESET.replace("offset: [0, 0, 0]", "offset: [.nan, 0, 0]"))
    args = ["explain", str(clean), "-c", str(nan_config), "--class", "b", "--region", "all"]
    result = CliRunner().invoke(cli, [*args, "-q", "-o", str(tmp / "h10.tif")])
    said = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    if result.exit_code == 0:
        with rasterio.open(tmp / "h10.tif") as dataset:
            said = f"heatmap all NaN: {np.isnan(dataset.read()).all()}"
    print(f"10 NaN offset in a preset: exit {result.exit_code}; {said}")


if __name__ == "__main__":
    main()
