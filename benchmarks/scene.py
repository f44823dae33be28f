"""Scene groups: end-to-end overhead, peak memory against scene size, tiled-vs-untiled agreement.

Scenes are built from the real rasters in ../shared/data (mirrored into mosaics), never noise;
they are cached in the system's temporary folder between runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from common import Row, Settings, Target, log, measure, register
from rasterio.windows import Window

import geocam
from geocam.cam import CamOptions, combine, layer_gradients
from geocam.config import load_config
from geocam.models import ModelSpec, Normalisation
from geocam.raster import explain_raster
from geocam.scene import Explanation, Products, Runtime, Tiling
from geocam.sources import RasterSource
from geocam.tiling import TileLayout

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ITAIPU = DATA / "itaipu" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
PUCALLPA = DATA / "pucallpa" / "landsat_2020.tif"
RALEIGH = DATA / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"
CACHE = Path(tempfile.gettempdir()) / "geocam-benchmarks"


def mosaic(source: Path, size: int, name: str) -> Path:
    """A ``size`` x ``size`` scene of ``source`` mirrored in both directions, on its grid."""
    path = CACHE / f"{name}_{size}.tif"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"  building {path.name} from {source.name}")
    with rasterio.open(source) as src:
        pixels = src.read()
        profile = src.profile
    tile = np.concatenate([pixels, pixels[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    profile.update(
        width=size, height=size, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", nodata=profile.get("nodata"), BIGTIFF="IF_SAFER",
    )  # fmt: skip
    partial = path.with_suffix(".partial")
    with rasterio.open(partial, "w", **profile) as dst:
        strip = 2048
        for row in range(0, size, strip):
            rows = np.arange(row, min(row + strip, size)) % tile.shape[1]
            cols = np.arange(size) % tile.shape[2]
            dst.write(tile[:, rows][:, :, cols], window=Window(0, row, size, len(rows)))
    partial.rename(path)
    return path


# --- end-to-end overhead --------------------------------------------------------------------


def itaipu_spec() -> tuple[ModelSpec, torch.nn.Module]:
    spec = ModelSpec(
        "Unet", "resnet18", 3, ("a", "b", "c"),
        normalisation=Normalisation((1 / 10000,) * 3, (0.0,) * 3),
    )  # fmt: skip
    torch.manual_seed(0)
    return spec, geocam.build_model(spec)


def engine_alone(
    model: torch.nn.Module, path: Path, spec: ModelSpec, tiling: Tiling, layer: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The scene's tiles read, normalised and padded into memory, in batches, with masks."""
    assert spec.normalisation is not None
    images, masks = [], []
    with RasterSource([path], spec.bands, nodata=0) as source:
        grid = source.grid
        layout = TileLayout.plan(grid.height, grid.width, tiling.tile, tiling.overlap, 32)
        batch_px, batch_valid = [], []
        for window in layout.windows():
            pixels, valid = source.read(window)
            if not valid.any():
                continue
            normalised = spec.normalisation.apply(torch.from_numpy(pixels)) * torch.from_numpy(
                valid
            )
            h, w = layout.padded_shape(window)
            pad = (0, w - pixels.shape[2], 0, h - pixels.shape[1])
            batch_px.append(torch.nn.functional.pad(normalised[None], pad, "reflect")[0])
            batch_valid.append(torch.nn.functional.pad(torch.from_numpy(valid), pad))
            if len(batch_px) == tiling.batch_size:
                images.append(torch.stack(batch_px))
                masks.append(torch.stack(batch_valid))
                batch_px, batch_valid = [], []
        if batch_px:
            images.append(torch.stack(batch_px))
            masks.append(torch.stack(batch_valid))
    return images, masks


def run_engine(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    masks: list[torch.Tensor],
    layer: str,
    device: torch.device | None = None,
) -> None:
    """Both passes of scene-consistent Grad-CAM on tiles in memory: no I/O, no blending.

    The tiles are in host memory; on an accelerator each batch is copied over, as in a run.
    """
    total = None
    kept = []
    for host_batch, host_valid in zip(images, masks, strict=True):
        batch, valid = host_batch.to(device), host_valid.to(device)
        grads = layer_gradients(model, batch, [1], layer, valid=valid, options=CamOptions())
        part = grads.gradients.sum(dim=(0, 3, 4))
        total = part if total is None else total + part
        kept.append(grads.activations)
    assert total is not None
    for acts, batch in zip(kept, images, strict=True):  # (only the shape of the batch is used)
        signed = combine("gradcam", acts, None, total[None].expand(acts.shape[0], -1, -1))
        geocam.upsample(signed, (batch.shape[-2], batch.shape[-1]))


@register("scene")
def scene(settings: Settings) -> list[Row]:
    """smp Unet resnet18 (random weights) on --device, Grad-CAM with scene-consistent weights, tile 512, overlap 128, batch 4, predicted region: explain_raster (read, blend, write a GeoTIFF) against the engine alone on the same tiles already in memory."""  # noqa: E501
    spec, model = itaipu_spec()
    device = settings.torch_device
    model.to(device)
    runtime = Runtime(settings.device, progress=False)
    tiling = Tiling(256, 64) if settings.quick else Tiling(512, 128)
    scenes = [("Itaipu 2041 x 1860", ITAIPU)]
    if not settings.quick:
        scenes.append(("Itaipu mosaic 8192 x 8192", mosaic(ITAIPU, 8192, "itaipu")))
    rows = []
    out = CACHE / "scene-out.tif"
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, path in scenes:
        log(f"scene: {name}")
        images, masks = engine_alone(model, path, spec, tiling, "encoder.layer4")

        def full(path: Path = path) -> object:
            return explain_raster(
                path, out, spec, Explanation(("b",)), model=model, tiling=tiling,
                runtime=runtime, products=Products(overwrite=True), nodata=0,
            )  # fmt: skip

        def engine(images: list[torch.Tensor] = images, masks: list[torch.Tensor] = masks) -> None:
            run_engine(model, images, masks, "encoder.layer4", device)

        mosaic_run = "mosaic" in name  # minutes per run: one round, warm from the scene before
        timings = measure(
            {"explain_raster": full, "engine alone": engine},
            1 if mosaic_run else settings.repeats,
            warm_up=not mosaic_run,
            device=device,
        )
        with rasterio.open(path) as src:
            megapixels = src.width * src.height / 1e6
        rows += [
            Row(f"{name}: explain_raster", timings["explain_raster"], "s"),
            Row(f"{name}: engine alone, tiles in memory", timings["engine alone"], "s"),
            Row(
                f"{name}: overhead explain_raster / engine",
                timings.ratio("explain_raster", "engine alone"),
                "x",
                Target("<=", 1.15),
            ),
            Row(
                f"{name}: throughput of explain_raster",
                megapixels / timings["explain_raster"],
                "MP/s",
            ),
        ]
    return rows


# --- peak memory ----------------------------------------------------------------------------

MEMORY_PROBE = """
import json, resource, sys, torch
import geocam
from geocam.models import ModelSpec, Normalisation
from geocam.raster import explain_raster
from geocam.scene import Explanation, Products, Runtime, Tiling
spec = ModelSpec("Unet", "resnet18", 4, ("a", "b"),
                 normalisation=Normalisation((1 / 255,) * 4, (0.0,) * 4),
                 options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)})
torch.manual_seed(0)
report = explain_raster(sys.argv[1], sys.argv[2], spec, Explanation(("b",), method="hirescam"),
                        tiling=Tiling(512, 128), runtime=Runtime("cpu", progress=False),
                        products=Products(overwrite=True))
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": report.seconds, "tiles": report.tiles}))
"""


def peak_memory(scene_path: Path) -> dict[str, float]:
    """Peak resident memory of a fresh process explaining ``scene_path``."""
    out = CACHE / f"memory-out-{scene_path.stem}.tif"
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(scene_path), str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    out.unlink(missing_ok=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@register("memory", devices=False)
def memory(settings: Settings) -> list[Row]:
    """CPU, a shallow smp Unet (resnet18, depth 3), HiResCAM, tile 512, overlap 128, 4-band mosaics of the Pucallpa 2020 Landsat scene; each size in a fresh process."""  # noqa: E501
    small, large = (1024, 4096) if settings.quick else (2048, 16384)
    figures = {}
    for size in (small, large):
        log(f"memory: {size} x {size}")
        figures[size] = peak_memory(mosaic(PUCALLPA, size, "pucallpa"))
        log(f"  {figures[size]}")
    ratio = figures[large]["peak_kib"] / figures[small]["peak_kib"]
    return [
        Row(f"peak memory, {small} x {small}", figures[small]["peak_kib"] / 1024, "MiB"),
        Row(f"peak memory, {large} x {large}", figures[large]["peak_kib"] / 1024, "MiB"),
        Row(f"time, {large} x {large}", figures[large]["seconds"], "s"),
        Row(f"peak memory ratio ({(large // small) ** 2}x the pixels)", ratio, "x",
            Target("<=", 1.25)),
    ]  # fmt: skip


# --- agreement ------------------------------------------------------------------------------


@register("agreement", devices=False)
def agreement(settings: Settings) -> list[Row]:
    """The Raleigh land-cover demo model, class forest, predicted region, tile 256, overlap 64: Pearson r of the tiled positive map against the untiled one (scene padded to 512 x 448)."""  # noqa: E501
    sys.path.insert(0, str(ROOT / "tests"))
    from test_scene_real import CONFIG, tiled, untiled  # type: ignore[import-not-found]

    preset = load_config(CONFIG)
    model = geocam.build_model(preset.spec)
    rows = []
    for stage, target in ((-1, 0.95), (-2, 0.99)):
        layer = geocam.default_layer(model, preset.spec.in_channels, stage=stage)
        reference, valid = untiled(model, RALEIGH, layer)
        label = "last stage" if stage == -1 else "stage before"
        for mode in ("scene", "tile", "tile min-max"):
            log(f"agreement: {layer} {mode}")
            if mode == "tile min-max":
                tiled_map = per_tile_minmax(model, preset.spec, layer)
            else:
                tiled_map = tiled(model, RALEIGH, layer, mode)
            r = float(np.corrcoef(tiled_map[valid], reference[valid])[0, 1])
            diff = float(np.abs(tiled_map[valid] - reference[valid]).max())
            rows.append(
                Row(f"{label} ({layer}), {mode} weights: Pearson r", r, "r",
                    Target(">=", target) if mode == "scene" else None)
            )  # fmt: skip
            if mode != "tile min-max":
                rows.append(Row(f"{label}, {mode} weights: max abs difference", diff, "diff"))
    return rows


def per_tile_minmax(model: torch.nn.Module, spec: ModelSpec, layer: str) -> np.ndarray:
    """What pytorch-grad-cam would give: per-tile Grad-CAM, each tile min-max scaled, blended."""
    with RasterSource([RALEIGH], spec.bands) as source:
        grid = source.grid
        layout = TileLayout.plan(grid.height, grid.width, 256, 64, 32)
        total = np.zeros((grid.height, grid.width))
        weight = np.zeros((grid.height, grid.width))
        assert spec.normalisation is not None
        for window in layout.windows():
            pixels, valid = source.read(window)
            x = spec.normalisation.apply(torch.from_numpy(pixels)) * torch.from_numpy(valid)
            result = geocam.explain(model, x[None], spec.class_index("forest"), layer,
                                    valid=torch.from_numpy(valid)[None])  # fmt: skip
            cam = result.upsample((pixels.shape[1], pixels.shape[2])).positive[0, 0].numpy()
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
            w = layout.blend_weights(window) * valid
            rows, cols = window.toslices()
            total[rows, cols] += cam * w
            weight[rows, cols] += w
    return np.where(weight > 0, total / np.maximum(weight, 1e-12), np.nan)
