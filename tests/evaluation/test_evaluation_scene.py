"""The evaluation's in-memory scene gives exactly the map that explain_raster writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from geocam import explain_raster
from geocam.config import load_config
from geocam.evaluation.scene import load_scene, scene_maps
from geocam.models import build_model
from geocam.scene import Explanation, Runtime, Tiling


def test_scene_maps_equal_the_written_heatmap(shared_data: Path, tmp_path: Path) -> None:
    preset = load_config(Path(__file__).parents[2] / "configs" / "landcover_raleigh.yaml")
    source = shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"
    model = build_model(preset.spec).eval()
    explanation = Explanation(classes=("forest",))
    tiling = Tiling(tile=256, overlap=64)
    runtime = Runtime(device="cpu", progress=False)
    out = tmp_path / "heat.tif"
    explain_raster(
        source, out, preset.spec, explanation, tiling=tiling, runtime=runtime,
        model=model, fallback_nodata=preset.nodata,
    )  # fmt: skip
    scene = load_scene(source, preset.spec, fallback_nodata=preset.nodata)
    heat, report = scene_maps(
        model, preset.spec, scene, explanation, tiling=tiling, runtime=runtime
    )
    with rasterio.open(out) as written:
        expected = written.read()
        assert scene.grid.transform == written.transform
    assert heat.shape == (1, 2, *expected.shape[1:])
    assert report.tiles > 1  # the tiler ran, not one tile
    np.testing.assert_array_equal(np.isnan(heat[0]), np.isnan(expected))
    np.testing.assert_array_equal(heat[0], expected)
    assert np.isnan(heat[0, 0][~scene.valid]).all()


def test_with_pixels_keeps_the_grid_and_checks_the_shape(shared_data: Path) -> None:
    preset = load_config(Path(__file__).parents[2] / "configs" / "landcover_raleigh.yaml")
    scene = load_scene(
        shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif", preset.spec,
        fallback_nodata=preset.nodata,
    )  # fmt: skip
    zeros = scene.with_pixels(np.zeros_like(scene.pixels))
    assert zeros.grid == scene.grid and (zeros.valid == scene.valid).all()
    with pytest.raises(ValueError, match="do not match"):
        scene.with_pixels(scene.pixels[:3])
