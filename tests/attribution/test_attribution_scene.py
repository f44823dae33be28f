"""The pixel baselines through the scene engine and the command line: same tiler, same products."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scene_networks import LocalNet, run, scene

from geocam.attribution import PIXEL_METHODS, OcclusionOptions, attribute
from geocam.cam import METHODS
from geocam.cli import cli
from geocam.errors import GeocamError
from geocam.scene import Explanation, Products, Tiling

TILED = ["saliency", "inputxgradient", "guided-backprop", "occlusion"]


def untiled(model: torch.nn.Module, pixels: np.ndarray, method: str) -> np.ndarray:
    """The whole scene as one image, float64: the reference the tiled scene must reproduce."""
    images = torch.from_numpy(pixels)[None].double()
    result = attribute(
        model, images, [1], method,  # type: ignore[arg-type]
        layer="encoder.2", occlusion=OcclusionOptions(8, 8),
    )  # fmt: skip
    return result.maps[0, 0].numpy()


@pytest.mark.parametrize("method", TILED)
def test_tiled_scene_equals_untiled_for_a_local_network(method: str) -> None:
    # LocalNet sees nothing beyond its 4 x 4 cell, and occlusion's 8-pixel patches fall on the
    # same scene grid in every tile (tile stride 24): each tile's map is the scene's map on its
    # pixels, so the blend must reproduce it (float64 network; float32 accumulators: ~1e-7).
    # The maps are at the input's resolution: the engine's resize must be the identity.
    model = LocalNet().eval().double()
    pixels = scene()
    explanation = Explanation(("b",), method=method, occlusion=OcclusionOptions(8, 8))  # type: ignore[arg-type]
    maps, report = run(model, pixels, explanation, Tiling(32, 8))
    assert report.tiles == 20 and report.passes == 1
    expected = untiled(model, pixels, method)
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(maps["heatmap"][1], expected, rtol=0, atol=1e-6 * scale)
    np.testing.assert_array_equal(maps["heatmap"][0], np.maximum(maps["heatmap"][1], 0))


def test_guided_gradcam_of_a_one_tile_scene_is_the_tiles() -> None:
    # guided Grad-CAM's Grad-CAM factor has each tile's own weights: on a scene of one tile
    # the engine's map is exactly attribute()'s
    model = LocalNet().eval().double()
    pixels = scene()
    maps, report = run(model, pixels, Explanation(("b",), method="guided-gradcam"), Tiling(128, 0))
    assert report.tiles == 1
    expected = untiled(model, pixels, "guided-gradcam")
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(maps["heatmap"][1], expected, rtol=0, atol=1e-6 * scale)


def test_native_resolution_is_refused_for_pixel_methods() -> None:
    with pytest.raises(GeocamError, match=r"Products\.resolution source") as error:
        run(
            LocalNet().eval(), scene(), Explanation(("b",), method="saliency"), Tiling(32, 8),
            products=Products(resolution="native"),
        )  # fmt: skip
    assert "\n" not in str(error.value)


def test_occlusion_cost_is_refused_before_any_tile_unless_forced() -> None:
    model = LocalNet().eval()
    slow = OcclusionOptions(8, 8, max_seconds=1e-9)
    with pytest.raises(GeocamError) as error:
        run(model, scene(), Explanation(("b",), method="occlusion", occlusion=slow), Tiling(32, 8))
    # 20 tiles of 32 x 32, 4 x 4 patch positions each, plus the unoccluded pass
    assert "340 forward passes" in str(error.value)
    # by default the patch and its stride are the layer's stride (4): 8 x 8 positions a tile
    default = OcclusionOptions(max_seconds=1e-9)
    with pytest.raises(GeocamError, match="1300 forward passes"):
        run(
            model,
            scene(),
            Explanation(("b",), method="occlusion", occlusion=default),
            Tiling(32, 8),
        )
    forced = OcclusionOptions(8, 8, max_seconds=1e-9, force=True)
    maps, _ = run(
        model, scene(), Explanation(("b",), method="occlusion", occlusion=forced), Tiling(32, 8)
    )
    assert np.isfinite(maps["heatmap"]).all()
    assert OcclusionOptions().resolved(4) == OcclusionOptions(4, 4)
    assert OcclusionOptions(6).resolved(4) == OcclusionOptions(6, 6)


def test_every_command_offers_every_method() -> None:
    """explain, batch and every evaluate command take the methods the library computes."""
    evaluate = cli.commands["evaluate"]
    assert isinstance(evaluate, click.Group) and evaluate.commands
    commands = [cli.commands["explain"], cli.commands["batch"], *evaluate.commands.values()]
    for command in commands:
        option = next(p for p in command.params if p.name == "method")
        assert isinstance(option.type, click.Choice)
        assert tuple(option.type.choices) == METHODS + PIXEL_METHODS, command.name


@pytest.mark.slow  # loads the demo model and times one batch of 256-pixel tiles (5-15 s)
def test_command_line_occlusion_refusal_writes_nothing(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "forest.tif"
    result = CliRunner().invoke(
        cli,
        [
            "explain", str(shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"),
            "-c", "configs/landcover_raleigh.yaml", "--class", "forest", "-o", str(out),
            "--method", "occlusion", "--occlusion-max-seconds", "0.001", "-q",
        ],
    )  # fmt: skip
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geocam: error: occlusion would take about")
    assert "--occlusion-max-seconds (0.001)" in lines[0] and "--occlusion-force" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_guided_backprop_of_the_relu6_demo_model_through_scene_maps(shared_data: Path) -> None:
    # what model randomisation needs: the demo model (44 ReLU6 modules) through scene_maps,
    # given back exactly as it was
    from geocam.config import load_config
    from geocam.evaluation.scene import Scene, load_scene, scene_maps
    from geocam.models import build_model
    from geocam.sources import Grid

    preset = load_config("configs/landcover_raleigh.yaml")
    model = build_model(preset.spec)
    whole = load_scene(
        shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif", preset.spec,
        fallback_nodata=preset.nodata,
    )  # fmt: skip
    grid = whole.grid
    crop = Scene(
        whole.pixels[:, 200:328, 200:328], whole.valid[200:328, 200:328],
        Grid(grid.crs, grid.transform, 128, 128),
    )  # fmt: skip
    before = [(m, dict(m.__dict__)) for m in model.modules()]
    heat, report = scene_maps(
        model, preset.spec, crop, Explanation(("forest",), method="guided-backprop"),
        tiling=Tiling(128, 64),
    )  # fmt: skip
    assert heat.shape == (1, 2, 128, 128) and report.passes == 1
    assert np.isfinite(heat).all() and np.abs(heat[0, 1]).max() > 0
    assert [(m, dict(m.__dict__)) for m in model.modules()] == before


@pytest.mark.slow  # the whole command line with its GIS products (3-15 s)
def test_command_line_occlusion_writes_the_same_products(tmp_path: Path) -> None:
    # a 64 x 64 scene of one tile through geocam explain: the heatmap's bands and tags say
    # which method and patch made it; native resolution is refused naming its flag
    import rasterio
    from conftest import tiny_preset
    from test_sources import declared

    scene = declared(tmp_path, "nodata", size=64)
    config = tmp_path / "preset.yaml"
    config.write_text(tiny_preset() + "bands: [[1, 2, 3]]\n")
    out = tmp_path / "heat.tif"
    args = [
        "explain", str(scene), "-c", str(config), "--class", "land", "--region", "all",
        "--method", "occlusion", "--occlusion-patch", "16", "--occlusion-stride", "8", "-q",
    ]  # fmt: skip
    native = CliRunner().invoke(cli, [*args, "-o", str(out), "--resolution", "native"])
    assert native.exit_code != 0 and not out.exists()
    assert native.output.strip() == (
        "geocam: error: occlusion maps input pixels and has no layer grid: use --resolution source"
    )
    result = CliRunner().invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as heat:
        tags = heat.tags()
        values = heat.read()
        assert heat.descriptions == ("land positive", "land signed")
    assert tags["GEOCAM_METHOD"] == "occlusion" and tags["GEOCAM_PASSES"] == "1"
    assert tags["GEOCAM_OCCLUSION"] == "patch 16, stride 8, mean"
    finite = np.isfinite(values[1])
    assert finite.any() and np.abs(values[1][finite]).max() > 0
    np.testing.assert_array_equal(values[0][finite], np.maximum(values[1][finite], 0))
