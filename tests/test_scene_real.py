"""The proof of scene consistency on real data: tiled against untiled, and no seams.

The trained Raleigh land-cover model explains class forest over its predicted mask. The whole
scene (489 x 443, padded to 512 x 448) also fits the network as one tile, which gives the
untiled reference; the tiled run uses tiles of 256 with an overlap of 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geocam import build_model, default_layer, explain
from geocam.config import load_config
from geocam.output import ArraySink
from geocam.scene import Explanation, ProductSpec, Runtime, Tiling, explain_scene
from geocam.sources import RasterSource
from geocam.tiling import TileLayout

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "landcover_raleigh.yaml"
RALEIGH = "raleigh/nc_lsat7_2000_b123457_uint8.tif"
TILING = Tiling(256, 64)
pytestmark = pytest.mark.slow


def untiled(model: torch.nn.Module, path: Path, layer: str) -> tuple[np.ndarray, np.ndarray]:
    preset = load_config(CONFIG)
    assert preset.spec.normalisation is not None
    with rasterio.open(path) as src:
        pixels = torch.from_numpy(src.read().astype(np.float32))
        valid = (src.read_masks() > 0).all(axis=0)  # geocam's rule: every band has data
    pixels = preset.spec.normalisation.apply(pixels) * torch.from_numpy(valid)
    height, width = valid.shape
    padded = torch.nn.functional.pad(pixels[None], (0, 512 - width, 0, 448 - height), "reflect")
    mask = np.zeros((448, 512), bool)
    mask[:height, :width] = valid
    forest = preset.spec.class_index("forest")
    result = explain(model, padded, forest, layer, valid=torch.from_numpy(mask)[None])
    return result.upsample((448, 512)).positive[0, 0, :height, :width].numpy(), valid


def tiled(
    model: torch.nn.Module,
    path: Path,
    layer: str,
    weights: str,
    tiling: Tiling = TILING,
) -> np.ndarray:
    preset = load_config(CONFIG)
    sinks: dict[str, ArraySink] = {}

    def sink(product: ProductSpec) -> ArraySink:
        sinks[product.name] = ArraySink(len(product.bands), product.grid.height, product.grid.width)
        return sinks[product.name]

    with RasterSource([path], preset.spec.bands) as source:
        explain_scene(
            model, preset.spec, source,
            Explanation(("forest",), layer=layer, weights=weights),  # type: ignore[arg-type]
            sink, tiling=tiling, runtime=Runtime("cpu", progress=False),
        )  # fmt: skip
    return sinks["heatmap"].data[0]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(load_config(CONFIG).spec)


@pytest.mark.parametrize(("stage", "target"), [(-1, 0.95), (-2, 0.99)])
def test_tiled_matches_untiled(
    shared_data: Path, model: torch.nn.Module, stage: int, target: float
) -> None:
    """Pearson r of the positive maps; `benchmarks/run.py agreement` reports all figures.

    Asserted: scene weights make the tiled map agree with the untiled one to r >= 0.95 at the
    last stage (measured 0.9637) and r >= 0.99 at the stage before (0.9963), better than
    per-tile weights do (0.44, 0.92); what remains is tile context, layers that see beyond the
    64-pixel overlap. The figures are the network's, not the CPU's: the same runs in float64
    give the same r to 6 decimals (the maps move by 8e-7 untiled and 1.5e-5 tiled, relative
    to their maximum, on an AMD EPYC). Bound: kernels off by d (relative to each map's
    maximum) move r by at most d * (max / std of each map, 6.1 and 5.9 here, by
    Cauchy-Schwarz on the centred maps) = 12 d, so the margins (0.0137 and 0.0063) hold for
    any d up to 1.1e-3 and 5e-4: 35x to 75x what was measured. float64 itself is not run
    here: 150 s (last stage) to 600 s (stage before) on 2 cores, against ~25 s in float32.
    """
    layer = default_layer(model, 6, stage=stage)
    reference, valid = untiled(model, shared_data / RALEIGH, layer)
    scene = tiled(model, shared_data / RALEIGH, layer, "scene")
    correlation = np.corrcoef(scene[valid], reference[valid])[0, 1]
    assert correlation >= target, f"{layer}: r = {correlation:.3f}"
    per_tile = tiled(model, shared_data / RALEIGH, layer, "tile")
    assert np.corrcoef(per_tile[valid], reference[valid])[0, 1] < correlation
    assert ((np.isnan(scene) | ~valid) == ~valid).all()  # NaN exactly at nodata


def test_seams_no_worse_than_the_maps_own_gradient(
    shared_data: Path, model: torch.nn.Module
) -> None:
    """Mean absolute step across the lines where one tile hands over to the next, against the
    mean step elsewhere.

    Those lines are the core boundaries, halfway across each overlap: at a tile's own edge the
    margin gives the edge pixel no weight, so no seam can show there. Tiles of 128 give several
    boundaries per axis. With an overlap of twice the layer's stride (32) the taper hides
    them (measured 1.42 and 1.66; the untiled map scores 1.34 and 0.94 on the same lines); with
    an overlap of one stride tiles meet at a hard cut (measured 27 and 25), which the same
    bound catches.
    """
    preset = load_config(CONFIG)
    assert preset.spec.layer is not None
    path = shared_data / RALEIGH
    reference, valid = untiled(model, path, preset.spec.layer)
    for overlap, seamless in ((64, True), (32, False)):
        scene = tiled(model, path, preset.spec.layer, "scene", Tiling(128, overlap))
        layout = TileLayout.plan(*scene.shape, 128, overlap, 32)
        ratios = handover_step_ratios(scene, layout)
        untiled_ratios = handover_step_ratios(np.where(valid, reference, np.nan), layout)
        bound = 2 * max(1.0, *untiled_ratios)
        assert (max(ratios) <= bound) == seamless, f"overlap {overlap}: ratios {ratios} ({bound})"


def handover_step_ratios(scene: np.ndarray, layout: TileLayout) -> list[float]:
    """Per axis: mean |step| across the core boundaries / mean |step| elsewhere."""
    ratios = []
    cores = [layout.core(w) for w in layout.windows()]
    for axis in (1, 0):
        steps = np.abs(np.diff(scene, axis=axis))
        starts = {int(c.col_off if axis == 1 else c.row_off) for c in cores} - {0}
        at_boundary = np.zeros(steps.shape[axis], bool)
        at_boundary[[b - 1 for b in starts]] = True  # the step from pixel b - 1 to pixel b
        across = np.take(steps, np.flatnonzero(at_boundary), axis=axis)
        elsewhere = np.take(steps, np.flatnonzero(~at_boundary), axis=axis)
        ratios.append(float(np.nanmean(across) / np.nanmean(elsewhere)))
    return ratios
