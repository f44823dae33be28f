"""One huge scene across workers (issue 15): the single-process engine against 2 Dask workers.

An 8192 x 8192 mosaic of the Itaipu Landsat-8 scene (3 bands uint16, 0 = nodata, tiled 4 x 5
times) explained with a small convolutional network (2 strided convolutions to a stride-4
layer, one 3 x 3 context convolution, 2 classes; random weights, seed 0), Grad-CAM with
scene-consistent weights (two passes), class b, predicted region, tile 512, overlap 64, heatmap
at source resolution, on the device asked for: in this process (torch threads: every core),
then split into 4 bands on a local cluster of 2 worker processes (1 thread each), started
before the timing (its start-up is a row of its own). Both write a GeoTIFF; the pixels must be
the same bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from common import Row, Settings, Target, log, measure, register
from torch import nn

from geocam import ModelSpec, Normalisation
from geocam.raster import explain_raster
from geocam.scene import Explanation, Runtime, Tiling

ROOT = Path(__file__).resolve().parents[1]
ITAIPU = ROOT.parent / "shared" / "data" / "itaipu" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
SPEC = ModelSpec(
    "mosaic", "none", 3, ("a", "b"), layer="encoder.2",
    normalisation=Normalisation((1 / 10000,) * 3, (0.0,) * 3),
)  # fmt: skip


class MosaicNet(nn.Module):
    """A small segmentation network: stride-4 features, a context convolution, upsampled logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.context = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(32, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.relu(self.context(self.encoder(x))))
        return logits


def mosaic(path: Path, size: int) -> None:
    """A ``size`` x ``size`` mosaic of the Itaipu scene, tiled 512, deflate, nodata 0."""
    with rasterio.open(ITAIPU) as src:
        scene = src.read()
        profile = src.profile
    reps = (1, -(-size // scene.shape[1]), -(-size // scene.shape[2]))
    pixels = np.tile(scene, reps)[:, :size, :size]
    profile.update(
        width=size, height=size, nodata=0, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", driver="GTiff",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)


def same_pixels(a: Path, b: Path) -> bool:
    """Whether two rasters hold the same pixel bytes (read in strips)."""
    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.count, x.height, x.width) != (y.count, y.height, y.width):
            return False
        for row in range(0, x.height, 512):
            window = ((row, min(row + 512, x.height)), (0, x.width))
            if x.read(window=window).tobytes() != y.read(window=window).tobytes():
                return False
    return True


@register("split")
def split(settings: Settings) -> list[Row]:
    """One 8192 x 8192 mosaic (Itaipu x 4 x 5, small 2-class convnet, Grad-CAM scene weights, tile 512, overlap 64) in one process against 2 Dask workers (4 bands)."""  # noqa: E501
    from geocam.batch.dask import dask_executor

    size = 1024 if settings.smoke else 2048 if settings.quick else 8192
    folder = Path(tempfile.mkdtemp(prefix="geocam-split-"))
    model = MosaicNet().eval()
    explanation = Explanation(("b",))
    options = {"tiling": Tiling(512, 64), "runtime": Runtime(settings.device, progress=False)}
    try:
        mosaic(folder / "mosaic.tif", size)
        start = time.perf_counter()
        with dask_executor(workers=2) as executor:
            started = time.perf_counter() - start
            log(f"  cluster of 2 workers started in {started:.1f} s")
            count = [0]

            def one() -> None:
                count[0] += 1
                out = folder / f"one_{count[0]}.tif"
                explain_raster(folder / "mosaic.tif", out, SPEC, explanation, model=model,
                               **options)  # type: ignore[arg-type]  # fmt: skip

            def two() -> None:
                count[0] += 1
                out = folder / f"two_{count[0]}.tif"
                explain_raster(folder / "mosaic.tif", out, SPEC, explanation, model=model,
                               client=executor.client, row_bands=4, **options)  # type: ignore[arg-type]  # fmt: skip

            timings = measure(
                {"one process": one, "2 workers": two}, settings.repeats, warm_up=False
            )
        ones = sorted(folder.glob("one_*.tif"))
        twos = sorted(folder.glob("two_*.tif"))
        same = float(all(same_pixels(ones[0], t) for t in twos))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    name = f"{size} x {size} mosaic"
    return [
        Row(f"{name}, one process", timings["one process"], "s"),
        Row(
            f"{name}, 2 Dask workers (4 bands, cluster already started)", timings["2 workers"], "s"
        ),
        Row("local cluster of 2 workers, start-up", started, "s"),
        Row(
            "speed-up, 2 workers against one process",
            timings.ratio("one process", "2 workers"),
            "x",
        ),
        Row(
            "split heatmap pixels equal the single-process ones (1 = bitwise)",
            same,
            "count",
            Target(">=", 1),
        ),
    ]
