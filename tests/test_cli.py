"""The command line end to end on real scenes, reopening every output it writes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import tiny_preset
from safetensors.torch import save_file

from geocam import build_model, load_config
from geocam.cli import cli
from geocam.products import region_outline
from geocam.sources import Grid

ROOT = Path(__file__).resolve().parents[1]
LANDCOVER = ROOT / "configs" / "landcover_raleigh.yaml"
RALEIGH = "raleigh/nc_lsat7_2000_b123457_uint8.tif"
ANDROS = "andros/RGB.byte.tif"

TINY_RGB = tiny_preset("[land, sea]", tile=256, overlap=64)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_help_is_instant_and_imports_no_torch() -> None:
    code = "import sys, geocam.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    exit_code, output = invoke("--help")
    assert exit_code == 0 and "explain" in output and "layers" in output


def test_explain_raleigh_with_the_demo_model(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "forest.tif"
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "--config", str(LANDCOVER),
        "--class", "forest", "--class", "water", "--out", str(out), "--tile", "256",
        "--overlap", "64", "--class-map",
    )  # fmt: skip
    assert exit_code == 0, output
    assert f"heatmap: {out}" in output and "region: forest" in output
    with rasterio.open(shared_data / RALEIGH) as src, rasterio.open(out) as heat:
        assert heat.crs == src.crs and heat.transform == src.transform
        assert heat.shape == src.shape and heat.count == 4 and math.isnan(heat.nodata)
        assert heat.descriptions[0] == "forest positive"
        values = heat.read(1)
        nodata = src.dataset_mask() == 0
        assert np.isnan(values[nodata]).all() and np.isfinite(values[~nodata]).all()
        assert values[~nodata].max() > 0
    exit_code, output = invoke("info", str(out))
    assert exit_code == 0 and "method: gradcam" in output and "band forest positive" in output


def test_explain_andros_stripped_scene_with_a_bbox(shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RGB)
    with rasterio.open(shared_data / ANDROS) as src:
        left, bottom, _, top = src.bounds
        assert src.block_shapes[0][0] == 3  # stripped layout, three rows a strip
    box = f"bbox:{left + 30000},{bottom + 30000},{left + 90000},{top - 30000}"
    out = tmp_path / "andros.tif"
    exit_code, output = invoke(
        "explain", str(shared_data / ANDROS), "-c", str(config), "--class", "sea",
        "--region", box, "--method", "hirescam", "--resolution", "native", "-o", str(out), "-q",
    )  # fmt: skip
    assert exit_code == 0, output
    assert output == ""  # quiet
    with rasterio.open(shared_data / ANDROS) as src, rasterio.open(out) as heat:
        assert heat.crs == src.crs
        assert heat.transform == src.transform @ src.transform.scale(8)
        assert (heat.width, heat.height) == (math.ceil(src.width / 8), math.ceil(src.height / 8))
        assert heat.tags()["GEOCAM_REGION"] == box
        assert heat.tags()["GEOCAM_RESOLUTION"] == "native"


def test_vector_region_in_another_crs(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "poly.tif"
    polygons = shared_data / "raleigh" / "landsat96_polygons.shp"
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "-c", str(LANDCOVER), "--class", "forest",
        "--region", f"vector:{polygons}", "--method", "layercam", "-o", str(out),
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(out) as heat:
        tags = heat.tags()
        assert tags["GEOCAM_REGION"] == "vector:landsat96_polygons.shp"
        assert 0 < float(tags["GEOCAM_REGION_PIXELS_FOREST"]) < heat.width * heat.height


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # more bad inputs, each checked for leftovers too, are in test_bad_inputs.py
        (["--class", "forest", "--device", "cuda:3"], "--device cuda:3"),
        (["--class", "forest", "--precision", "fp16", "--device", "cpu"], "fp16 needs"),
    ],
)
def test_user_mistakes_exit_with_one_line(
    shared_data: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out.tif"
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "-c", str(LANDCOVER), "-o", str(out), *args
    )
    assert exit_code == 1
    assert output.count("\n") == 1 and output.startswith("geocam: error:")
    assert message in output
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    out.write_text("keep me")
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "-c", str(LANDCOVER), "--class", "forest",
        "-o", str(out),
    )  # fmt: skip
    assert exit_code == 1 and "--overwrite" in output and out.read_text() == "keep me"


def test_layers_and_models() -> None:
    exit_code, output = invoke("layers", "--config", str(LANDCOVER))
    assert exit_code == 0 and "<- default" in output
    exit_code, output = invoke("models")
    assert exit_code == 0 and output.startswith("smp")


def test_rio_plugin_is_registered() -> None:
    done = subprocess.run(["rio", "geocam", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "explain" in done.stdout


def forest_mask(shared_data: Path, path: Path, crs: str | None = None) -> int:
    """Write the ground-truth forest mask (class 5) of Raleigh, optionally reprojected."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(shared_data / "raleigh" / "nc_landclass_strata_uint8.tif") as truth:
        forest = (truth.read(1) == 5).astype("uint8")
        profile = truth.profile | {"nodata": None, "dtype": "uint8"}
        if crs is None:
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(forest, 1)
            return int(forest.sum())
        transform, width, height = calculate_default_transform(
            truth.crs, crs, truth.width, truth.height, *truth.bounds
        )
        profile |= {"crs": crs, "transform": transform, "width": width, "height": height}
        with rasterio.open(path, "w", **profile) as dst:
            reproject(forest, rasterio.band(dst, 1), src_transform=truth.transform,
                      src_crs=truth.crs, resampling=Resampling.nearest)  # fmt: skip
        return int(forest.sum())


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_mask_region_on_the_same_or_another_grid(
    shared_data: Path, tmp_path: Path, crs: str | None
) -> None:
    mask = tmp_path / "forest_mask.tif"
    forest = forest_mask(shared_data, mask, crs)
    out = tmp_path / "masked.tif"
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "-c", str(LANDCOVER), "--class", "forest",
        "--region", f"mask:{mask}", "--method", "hirescam", "-o", str(out), "-q",
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(out) as heat:
        pixels = float(heat.tags()["GEOCAM_REGION_PIXELS_FOREST"])
        assert heat.tags()["GEOCAM_REGION"] == "mask:forest_mask.tif"
    with rasterio.open(shared_data / RALEIGH) as src:
        nodata_forest = int((forest_pixels(shared_data) & (src.dataset_mask() == 0)).sum())
    if crs is None:  # same grid: exactly the mask's pixels that have data
        assert pixels == forest - nodata_forest
    else:  # warped there and back with nearest neighbours
        assert abs(pixels - (forest - nodata_forest)) < 0.03 * forest


def forest_pixels(shared_data: Path) -> np.ndarray:
    with rasterio.open(shared_data / "raleigh" / "nc_landclass_strata_uint8.tif") as truth:
        return np.asarray(truth.read(1) == 5)


def test_bbox_in_another_crs(shared_data: Path, tmp_path: Path) -> None:
    from rasterio.warp import transform_bounds

    with rasterio.open(shared_data / RALEIGH) as src:
        left, bottom = src.bounds.left, src.bounds.bottom
        box = (left + 2850, bottom + 2850, left + 2850 + 100 * 28.5, bottom + 2850 + 100 * 28.5)
        lonlat = transform_bounds(src.crs, "EPSG:4326", *box)
    out = tmp_path / "box.tif"
    exit_code, output = invoke(
        "explain", str(shared_data / RALEIGH), "-c", str(LANDCOVER), "--class", "forest",
        "--region", "bbox:" + ",".join(f"{v:.7f}" for v in lonlat) + ",EPSG:4326",
        "--method", "layercam", "-o", str(out), "-q",
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(out) as heat:
        pixels = float(heat.tags()["GEOCAM_REGION_PIXELS_FOREST"])
    # a 100 x 100 pixel box, a little distorted by going to lon/lat and back
    assert 0.97 * 100 * 100 <= pixels <= 1.05 * 100 * 100


def test_the_group_alone_shows_its_help_and_a_typo_one_line() -> None:
    alone = CliRunner().invoke(cli, [], prog_name="geocam")
    assert alone.exit_code != 0 and alone.output.startswith("Usage: geocam")
    assert "geocam: error" not in alone.output and "explain" in alone.output
    typo = CliRunner().invoke(cli, ["explian"], prog_name="geocam")
    assert typo.exit_code == 2
    assert typo.output.startswith("geocam: error: No such command 'explian'")
    assert typo.output.count("\n") == 1 and "geocam --help" in typo.output


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_a_presets_nodata_does_not_override_the_files_own(tmp_path: Path, kind: str) -> None:
    from test_sources import declared, patch

    scene = declared(tmp_path, kind, size=64)  # patch() is nodata by the file's own metadata
    config = tmp_path / "preset.yaml"
    config.write_text(tiny_preset() + "bands: [[1, 2, 3]]\nnodata: 0\n")  # as the demo presets
    out = tmp_path / "heat.tif"
    exit_code, output = invoke(
        "explain", str(scene), "-c", str(config), "--class", "land", "--region", "all",
        "-o", str(out), "-q",
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(out) as heat:
        values = heat.read()
    where = patch(64, 64)
    assert np.isnan(values[:, where]).all()  # the file's nodata: no heat
    assert np.isfinite(values[:, ~where]).all()  # the zeros at (0, 0) are data here
    # --nodata overrides the file's own: its nodata pixels are data, the zeros are not
    exit_code, output = invoke(
        "explain", str(scene), "-c", str(config), "--class", "land", "--region", "all",
        "-o", str(out), "-q", "--overwrite", "--nodata", "0",
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(out) as heat:
        values = heat.read()
    assert np.isfinite(values[:, where]).all() and np.isnan(values[:, 0, 0]).all()


def test_one_channel_network_class_map_outline_and_region_follow_one_rule(
    shared_data: Path, tmp_path: Path
) -> None:
    # a sigmoid network: class map, quicklook outline and region are all "p > threshold"
    # (one tile, so that the region, decided per tile, and the blended class map coincide)
    config = tmp_path / "water.yaml"
    preset = tiny_preset("[water]", tile=800, overlap=64)
    config.write_text(preset)
    torch.manual_seed(0)  # one set of weights for both runs, from a checkpoint
    save_file(build_model(load_config(config).spec).state_dict(), tmp_path / "water.safetensors")
    config.write_text(preset + "checkpoint: water.safetensors\n")
    out = tmp_path / "water.tif"
    args = ["explain", str(shared_data / ANDROS), "-c", str(config), "--class", "water"]
    exit_code, output = invoke(*args, "-o", str(out), "--probabilities", "-q")
    assert exit_code == 0, output
    with rasterio.open(tmp_path / "water_probability.tif") as probabilities:
        probability = probabilities.read(1)
    threshold = float(np.nanmedian(probability))  # so that both values occur
    out = tmp_path / "rule.tif"
    exit_code, output = invoke(
        *args, "-o", str(out), "--class-map", "--quicklook", "--threshold", f"{threshold!r}"
    )
    assert exit_code == 0, output
    with rasterio.open(tmp_path / "rule_classes.tif") as classes, rasterio.open(out) as heat:
        values = classes.read(1)
        valid = np.isfinite(probability)
        expected = (probability > threshold).astype(np.uint8)
        np.testing.assert_array_equal(values[valid], expected[valid])
        assert 0 < (values == 1).sum() < valid.sum()
        region_pixels = float(heat.tags()["GEOCAM_REGION_PIXELS_WATER"])
    assert region_pixels == (values == 1).sum()
    names = Path(f"{tmp_path / 'rule_classes.tif'}.aux.xml").read_text()
    assert "<Category>not water</Category><Category>water</Category>" in names
    with rasterio.open(out) as heat:
        grid = Grid(heat.crs, heat.transform, heat.width, heat.height)
    outline = region_outline("predicted", None, tmp_path / "rule_classes.tif", 1)
    assert outline is not None
    np.testing.assert_array_equal(outline(grid), values == 1)


def test_tiles_meeting_at_a_hard_cut_warn_in_one_line(shared_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RGB)
    exit_code, output = invoke(
        "explain", str(shared_data / ANDROS), "-c", str(config), "--class", "sea",
        "--method", "hirescam", "--tile", "256", "--overlap", "8", "-o", str(tmp_path / "a.tif"),
    )  # fmt: skip
    assert exit_code == 0, output
    warning = (
        "geocam: warning: --overlap (8) is less than twice the layer's stride (8): neighbouring "
        "tiles meet at a hard cut; use an overlap of at least 16\n"
    )
    assert warning in output and output.count("warning") == 1


def test_a_raster_inside_a_zip_through_a_gdal_virtual_path(
    shared_data: Path, tmp_path: Path
) -> None:
    import zipfile

    archive = tmp_path / "andros.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(shared_data / ANDROS, "RGB.byte.tif")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RGB)
    out = tmp_path / "zipped.tif"
    exit_code, output = invoke(
        "explain", f"/vsizip/{archive}/RGB.byte.tif", "-c", str(config), "--class", "sea",
        "--region", "all", "--method", "hirescam", "--quicklook", "-o", str(out), "-q",
    )  # fmt: skip
    assert exit_code == 0, output
    with rasterio.open(shared_data / ANDROS) as src, rasterio.open(out) as heat:
        assert heat.crs == src.crs and heat.transform == src.transform
        assert np.isfinite(heat.read(1)[src.dataset_mask() > 0]).all()
    assert (tmp_path / "zipped.png").is_file()
