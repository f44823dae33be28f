"""``geocam evaluate``: reports reopened and checked, bad inputs in one line leaving nothing."""

from __future__ import annotations

import json
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import tiny_preset
from PIL import Image

from geocam.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "landcover_raleigh.yaml"
SCENE = "raleigh/nc_lsat7_2000_b123457_uint8.tif"
STRATA = "raleigh/nc_landclass_strata_uint8.tif"
FOREST = 5


def localisation(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "localisation", str(data / SCENE), "-c", str(PRESET), "--class", "forest",
        "--device", "cpu", "-o", str(out), *extra,
    ]  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def test_localisation_report_is_the_written_maps_against_the_strata(
    shared_data: Path, tmp_path: Path
) -> None:
    """The report's figures are those of the heatmap ``geocam explain`` writes, recomputed here."""
    metrics = pytest.importorskip("sklearn.metrics")
    strata = f"mask:{shared_data / STRATA}"
    args = localisation(shared_data, tmp_path / "forest", "--annotation", strata,
                        "--annotation-value", str(FOREST), "--tolerance-m", "60")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "relevance mass" in result.output and "lift" in result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["forest.json", "forest_map.png", "forest_roc.png"]
    report = json.loads((tmp_path / "forest.json").read_text())
    figures = {row["name"]: row for row in report["figures"]}
    assert report["settings"]["tolerance_m"] == 60.0 and report["settings"]["tile"] == 512

    heat_path = tmp_path / "heat.tif"
    explain = ["explain", str(shared_data / SCENE), "-c", str(PRESET), "--class", "forest",
               "--device", "cpu", "-o", str(heat_path), "-q", "--no-qml"]  # fmt: skip
    assert CliRunner().invoke(cli, explain).exit_code == 0
    with rasterio.open(heat_path) as heat, rasterio.open(shared_data / STRATA) as truth:
        positive, signed = heat.read().astype(np.float64)
        classes = truth.read(1)
        valid = np.isfinite(positive) & (classes != truth.nodata)
    inside = (classes == FOREST)[valid]
    share = inside.mean()
    assert report["annotation"]["area_share"] == pytest.approx(share, rel=1e-12)
    assert report["annotation"]["annotated_pixels"] == inside.sum()
    scores = positive[valid]
    mass = scores[inside].sum() / scores.sum()
    assert figures["relevance mass"]["value"] == pytest.approx(mass, rel=1e-9)
    assert figures["relevance mass"]["chance"] == pytest.approx(share, rel=1e-12)
    assert figures["relevance mass"]["lift"] == pytest.approx(mass / share, rel=1e-9)
    auc = metrics.roc_auc_score(inside, scores)
    assert figures["ROC-AUC"]["value"] == pytest.approx(auc, rel=1e-9)
    auc_signed = metrics.roc_auc_score(inside, signed[valid])
    assert figures["ROC-AUC signed"]["value"] == pytest.approx(auc_signed, rel=1e-9)
    for name in ("rank accuracy", "IoU top-q", "IoU Otsu", "pointing game"):
        row = figures[name]
        assert 0 <= row["value"] <= 1 and 0 < row["chance"] < 1, row
    for plot in ("forest_map.png", "forest_roc.png"):
        with Image.open(tmp_path / plot) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_polygons_in_another_crs_and_a_folder_output(shared_data: Path, tmp_path: Path) -> None:
    polygons = f"vector:{shared_data / 'raleigh' / 'landsat96_polygons.shp'}"
    folder = tmp_path / "reports"
    folder.mkdir()
    args = localisation(shared_data, folder, "--annotation", polygons,
                        "--annotation-where", "label=forest", "-q")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and result.output == "", result.output
    report = json.loads((folder / "localisation.json").read_text())
    assert report["annotation"]["name"] == "vector:landsat96_polygons.shp where label=forest"
    assert 0 < report["annotation"]["area_share"] < 0.05  # sparse training polygons
    assert (folder / "localisation_map.png").is_file()
    # a second run needs --overwrite, and leaves the first report as it was
    before = snapshot(folder)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    assert snapshot(folder) == before


BAD = {
    "annotation outside the scene": (
        ["--annotation", "vector:{data}/itaipu/LC08_L1TP_224078_20200518_20200518_01_RT_polygons"
         ".gpkg", "--annotation-where", "name=tree"],
        "outside the scene",
    ),
    "mask outside the scene": (
        ["--annotation", "mask:{data}/andros/RGB.byte.tif"], "does not overlap the scene"),
    "mask in no CRS": (
        ["--annotation", "mask:{data}/zurich/response_img_1091-322_00.tif"], "has no CRS"),
    "empty: a value that does not occur": (
        ["--annotation", "mask:{data}/" + STRATA, "--annotation-value", "9"],
        "values there: 1, 2, 3, 4, 5, 6, 7"),
    "empty: no polygon of that label": (
        ["--annotation", "vector:{data}/raleigh/landsat96_polygons.shp",
         "--annotation-where", "label=tree"], "values of label: agriculture, developed, forest"),
    "a multi-class mask without a value": (
        ["--annotation", "mask:{data}/" + STRATA], "give the class's value"),
    "wrong class": (
        ["--annotation", "mask:{data}/" + STRATA, "--annotation-value", "5", "--class", "trees"],
        "unknown class 'trees'"),
    "where without a vector region": (
        ["--annotation", "mask:{data}/" + STRATA, "--annotation-value", "5", "--where", "a=b"],
        "--where a=b: filters a vector region"),
    "a folder that does not exist": (
        ["--annotation", "mask:{data}/" + STRATA, "--annotation-value", "5", "-o", "{out}/new/"],
        "output folder does not exist"),
    "report over the annotation": (  # GDAL opens a raster by its content, whatever its name
        ["--annotation", "mask:{out}/report.json", "--annotation-value", "5"],
        "is an input (annotation"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_leaves_nothing(
    shared_data: Path, tmp_path: Path, case: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    extra, expected = BAD[case]
    if "{out}/report.json" in " ".join(extra):  # an annotation where the report would go
        (out / "report.json").symlink_to(shared_data / STRATA)
    extra = [e.format(data=shared_data, out=out) for e in extra]
    args = localisation(shared_data, out / "report", *extra)
    if "--class" in extra:  # the case's class replaces forest
        at = args.index("--class")
        del args[at : at + 2]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("geocam: error: ") and result.output.count("\n") == 1
    assert expected in result.output, result.output
    assert snapshot(tmp_path) == before


def test_a_failing_plot_takes_the_report_with_it(
    tiny_scene: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON and the plots are committed together: a plot that fails leaves none of them."""
    from geocam.errors import GeocamError
    from geocam.evaluation import report

    def failing(*_: object) -> report.Plot:
        def plot(path: Path) -> None:
            path.write_bytes(b"half a PNG")
            raise GeocamError("the ROC plot failed")

        return plot

    monkeypatch.setattr(report, "roc_plot", failing)
    out = tmp_path / "out"
    out.mkdir()
    box = "bbox:500300,4999100,500700,4999500"
    args = tiny("localisation", *tiny_scene, out / "water", "--annotation", box)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output == "geocam: error: the ROC plot failed\n"
    assert list(out.iterdir()) == []


@pytest.fixture
def tiny_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A small 3-band scene (a dark block in noise, a nodata strip) and a tiny random network.

    The network's random weights come from torch's global generator: seeded here, so that
    they do not depend on which tests ran before.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (3, 96, 128)).astype(np.uint8)
    pixels[:, :40, :50] = 30
    pixels[:, :, :6] = 0
    scene = tmp_path / "inputs" / "scene.tif"
    scene.parent.mkdir()
    profile = {"driver": "GTiff", "width": 128, "height": 96, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32631", "nodata": 0,
               "transform": rasterio.transform.from_origin(500_000, 5_000_000, 10, 10)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dataset:
        dataset.write(pixels)
    preset = tmp_path / "inputs" / "tiny.yaml"
    preset.write_text(tiny_preset("[land, water]", tile=64, overlap=16))
    return scene, preset


def tiny(command: str, scene: Path, preset: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", command, str(scene), "-c", str(preset), "--class", "water",
            "--region", "all", "--device", "cpu", "-o", str(out), *extra]  # fmt: skip


def test_randomisation_report(tiny_scene: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = tiny("randomisation", *tiny_scene, out, "--cascading-only", "--seed", "3", "-q")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "randomisation.json",
        "randomisation_curve.png",
    ]
    report = json.loads((out / "randomisation.json").read_text())
    found = report["randomisation"]
    assert report["settings"]["seed"] == 3 and report["settings"]["method"] == "gradcam"
    assert found["independent"] == [] and len(found["cascading"]) == len(found["blocks"]) > 2
    assert found["blocks"][0] == "segmentation_head"  # from the output down
    assert found["final"] == found["cascading"][-1]["similarity"]
    assert isinstance(found["passed"], bool) and found["passed"] == (found["failures"] == [])
    with Image.open(out / "randomisation_curve.png") as image:
        assert image.format == "PNG"


def test_faithfulness_report(tiny_scene: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = tiny("faithfulness", *tiny_scene, out / "water", "--steps", "4", "--seeds", "2",
                "--score", "probabilities")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "deletion  AUC" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["water.json", "water_curves.png"]
    report = json.loads((out / "water.json").read_text())
    found = report["faithfulness"]
    assert report["settings"]["steps"] == 4 and found["auc"]["random_seeds"] == 2
    assert found["score"] == "probabilities"  # the shared options reach the library
    assert 0 < found["original_mean"] <= 1
    deletion = found["curves"]["deletion_morf"]
    assert deletion["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    area = np.trapezoid(deletion["mean"], deletion["fractions"])
    assert found["auc"]["deletion_morf"] == pytest.approx(area, rel=1e-12)
    assert found["valid_pixels"] == 96 * (128 - 6)  # the nodata strip is never perturbed


@pytest.mark.parametrize(
    ("command", "extra", "expected"),
    [
        ("randomisation", ["--class", "trees"], "unknown class 'trees'"),
        ("faithfulness", ["--class", "trees"], "unknown class 'trees'"),
        ("faithfulness", ["--baseline", "epoch"], "epoch"),
        ("randomisation", ["--where", "a=b"], "--where a=b: filters a vector region"),
        ("hotspots", ["--hotspot-threshold", "p200"], "--hotspot-threshold 'p200'"),
        ("hotspots", ["--baseline", "epoch"], "epoch"),
    ],
)
def test_bad_inputs_of_every_command_are_one_line_and_leave_nothing(
    tiny_scene: tuple[Path, Path], tmp_path: Path, command: str, extra: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = tiny(command, *tiny_scene, out / "report", "-q")
    if "--class" in extra:
        at = args.index("--class")
        del args[at : at + 2]
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("geocam: error: ") and result.output.count("\n") == 1
    assert expected in result.output, result.output
    assert snapshot(tmp_path) == before


def test_localisation_on_a_lon_lat_scene_measures_the_tolerance_in_metres(
    tiny_scene: tuple[Path, Path], tmp_path: Path
) -> None:
    """EPSG:4326 pixels (0.0009 degrees at 8.4 S, about Pucallpa's) are measured in metres."""
    scene, preset = tiny_scene
    with rasterio.open(scene) as source:
        pixels, profile = source.read(), source.profile
    step = 0.0009
    profile |= {"crs": "EPSG:4326",
                "transform": rasterio.transform.from_origin(-74.6, -8.4, step, step)}  # fmt: skip
    lonlat = tmp_path / "inputs" / "lonlat.tif"
    with rasterio.open(lonlat, "w", **profile) as out:
        out.write(pixels)
    box = f"bbox:{-74.6 + 60 * step},{-8.4 - 60 * step},{-74.6 + 100 * step},{-8.4 - 20 * step}"
    args = tiny("localisation", lonlat, preset, tmp_path / "box", "--annotation", box,
                "--tolerance-m", "150", "-q")  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "box.json").read_text())
    width, height = report["annotation"]["pixel_m"]
    # the WGS 84 ellipsoid's radii of curvature at the scene's centre
    latitude = np.radians(8.4 + 48 * step)
    a, flattening = 6_378_137.0, 1 / 298.257223563
    e2 = flattening * (2 - flattening)
    normal = a / np.sqrt(1 - e2 * np.sin(latitude) ** 2)
    meridional = a * (1 - e2) / (1 - e2 * np.sin(latitude) ** 2) ** 1.5
    assert width == pytest.approx(normal * np.cos(latitude) * np.radians(step), rel=1e-4)
    assert height == pytest.approx(meridional * np.radians(step), rel=1e-4)
    assert report["annotation"]["annotated_pixels"] == 40 * 40
    # 150 m is one pixel (~99 m) in every direction and the diagonal (~140 m): a 42 x 42 block
    game = {row["name"]: row for row in report["figures"]}["pointing game"]
    assert game["chance"] == pytest.approx(42 * 42 / (96 * (128 - 6)), rel=1e-12)


def test_hotspots_report(tiny_scene: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = tiny("hotspots", *tiny_scene, out / "water", "--patches", "3", "--shapley", "2", "-q")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "water.json", "water_drops.png", "water_hotspots.gpkg", "water_hotspots.qml",
    ]  # fmt: skip
    report = json.loads((out / "water.json").read_text())
    assert report["settings"]["patches"] == 3 and report["settings"]["shapley"] == 2
    spots = report["counterfactual"]["hotspots"]
    assert spots and all(len(h["random_drops"]) <= 3 for h in spots)
    for h in spots:  # the random patches' summary is of the drops listed beside it
        if h["random_drops"]:
            assert h["rand_drop"] == pytest.approx(np.mean(h["random_drops"]), rel=1e-12)
    with fiona.open(out / "water_hotspots.gpkg", layer="hotspots") as features:
        written = {int(f["properties"]["id"]): dict(f["properties"]) for f in features}
        crs = features.crs
    with rasterio.open(tiny_scene[0]) as scene:
        assert crs == scene.crs
    assert written.keys() == {h["id"] for h in spots}  # every hotspot carries its occlusion
    for h in spots:
        fields = written[h["id"]]
        assert fields["class"] == "water" and fields["occl_base"] == "mean"
        assert fields["drop"] == pytest.approx(h["drop"], rel=1e-12)
        assert fields["rand_n"] == len(h["random_drops"])
    shapley = report["shapley"]
    assert 1 <= len(shapley["players"]) <= 2 and shapley["efficiency_error"] < 1e-9
    total = sum(p["value"] for p in shapley["players"])
    assert total == pytest.approx(shapley["v_all"] - shapley["v_none"], rel=1e-9, abs=1e-9)
    with Image.open(out / "water_drops.png") as image:
        assert image.format == "PNG"
