"""geocam's outputs in a real QGIS (headless PyQGIS through tests/qgis_runner.py).

QGIS's Python bindings live in the system Python (Debian's python3-qgis), not in the project's:
every check runs ``/usr/bin/python3 tests/qgis_runner.py`` and reads its JSON. Without QGIS the
tests skip, saying so. What is checked is what a user sees: the style QGIS applies on load, the
map it renders (the scene keeps its brightness where the heat is zero), the legends, where the
vectors land, the metadata it reads.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geocam.cli import cli

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("qgis_runner.py")
SYSTEM_PYTHON = os.environ.get("GEOCAM_QGIS_PYTHON", "/usr/bin/python3")
PUCALLPA = [ROOT / "geocam" / "data" / f"pucallpa_landsat_{year}.tif" for year in (1985, 2020)]
RALEIGH = ROOT.parent / "shared" / "data" / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"
if not RALEIGH.exists():  # the same scene, shipped with the package
    RALEIGH = ROOT / "geocam" / "data" / "raleigh_lsat7_2000.tif"
FIGURE = ROOT / "notebooks" / "figures" / "qgis_pucallpa_deforestation.png"

pytestmark = pytest.mark.slow


@functools.cache
def qgis_missing() -> str | None:
    """Why QGIS cannot be used here, or None."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{SYSTEM_PYTHON} cannot run ({error})"
    if done.returncode != 0:
        return (
            f"QGIS's Python bindings are not installed for {SYSTEM_PYTHON} "
            "(apt-get install qgis python3-qgis qgis-providers)"
        )
    return None


def qgis(*jobs: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``jobs`` in QGIS; their results (the first entry, QGIS's version, dropped)."""
    reason = qgis_missing()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [SYSTEM_PYTHON, str(RUNNER)], input=json.dumps(jobs, default=str), capture_output=True,
        text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout)[1:]
    for result in results:
        assert "error" not in result, result
    return results


def explain(folder: Path, sources: list[Path], config: str, *extra: str) -> Path:
    result = CliRunner().invoke(cli, [
        "explain", *map(str, sources), "-c", str(ROOT / "configs" / config), "-o",
        str(folder / "heat.tif"), "--tile", "256", "--overlap", "64", "--hotspots", "--overlay",
        "--probabilities", "--class-map", "--qgis-project", "-q", *extra,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / "heat.tif"


@pytest.fixture(scope="module")
def pucallpa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if qgis_missing():
        pytest.skip(str(qgis_missing()))
    folder = tmp_path_factory.mktemp("pucallpa")
    return explain(folder, PUCALLPA, "deforestation_pucallpa.yaml", "--class", "deforestation")


@pytest.fixture(scope="module")
def raleigh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if qgis_missing():
        pytest.skip(str(qgis_missing()))
    folder = tmp_path_factory.mktemp("raleigh")
    return explain(
        folder, [RALEIGH], "landcover_raleigh.yaml", "--class", "forest",
        "--hotspot-format", "geojson",
    )  # fmt: skip


SCENES = {
    "pucallpa": (PUCALLPA[1], [1, 2, 3]),  # rgb [5, 6, 7] of the pair: the 2020 image
    "raleigh": (RALEIGH, [3, 2, 1]),
}


def luminance(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return np.asarray(rgb @ [0.2126, 0.7152, 0.0722])


def brightness_kept(heatmap: Path, scene: str, folder: Path) -> tuple[float, float]:
    """Mean luminance of the scene under the styled heatmap over the scene alone.

    Where the positive map is zero, and where it is above its 95th percentile (which must
    show: a style that hides nothing is no style).
    """
    source, rgb = SCENES[scene]
    with rasterio.open(heatmap) as heat:
        values = heat.read(1)
        width, height = heat.width, heat.height
        p95 = float(heat.tags(1)["GEOCAM_P95"])
    alone, over = folder / f"{scene}_alone.png", folder / f"{scene}_heat.png"
    copy = folder / source.name  # QGIS stores the stretch's statistics beside the source
    shutil.copyfile(source, copy)
    base = {"path": str(copy), "rgb": rgb}
    qgis(
        {"op": "render", "layers": [base], "out": str(alone), "width": width, "height": height},
        {"op": "render", "layers": [base, {"path": str(heatmap)}], "out": str(over),
         "width": width, "height": height},
    )  # fmt: skip
    a, b = luminance(alone), luminance(over)
    assert a.shape == values.shape
    zero, hot = values == 0, values > p95
    assert zero.sum() > 1000 and hot.sum() > 100
    return float(b[zero].mean() / a[zero].mean()), float(np.abs(b - a)[hot].mean())


@pytest.mark.parametrize("scene", ["pucallpa", "raleigh"])
def test_heatmap_style_keeps_the_scene_bright_where_there_is_no_heat(
    scene: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    heatmap: Path = request.getfixturevalue(scene)
    (layer,) = qgis({"op": "layer", "path": str(heatmap)})
    assert layer["valid"] and layer["renderer"] == "singlebandpseudocolor"  # the .qml applied
    kept, change = brightness_kept(heatmap, scene, tmp_path)
    print(f"{scene}: brightness kept where heat is 0: {kept:.3f}; change where hot: {change:.1f}")
    assert kept >= 0.9
    assert change > 20  # the heat does show where it is high (0..255 luminance)
    ramp = layer["ramp"]
    assert ramp[0][0] == 0 and ramp[0][1] == 0  # zero heat: fully transparent
    assert [alpha for _, alpha, _ in ramp] == sorted(alpha for _, alpha, _ in ramp)
    assert "no evidence" in ramp[0][2] and "99th percentile" in ramp[-1][2]  # what values are


@pytest.mark.parametrize("scene", ["pucallpa", "raleigh"])
def test_metadata_and_band_names_reach_qgis(scene: str, request: pytest.FixtureRequest) -> None:
    heatmap: Path = request.getfixturevalue(scene)
    with rasterio.open(heatmap) as heat:
        tags = heat.tags()
    (layer,) = qgis({"op": "layer", "path": str(heatmap)})
    abstract = layer["abstract"]
    assert layer["title"].startswith("geocam heatmap")
    for key in ("GEOCAM_CLASSES", "GEOCAM_METHOD", "GEOCAM_LAYER", "GEOCAM_REGION",
                "GEOCAM_MODEL", "GEOCAM_MODEL_SHA256"):  # fmt: skip
        assert tags[key] in abstract, key
    assert "raw Grad-CAM, not normalised" in abstract
    assert any("positive" in name for name in layer["bands"])


@pytest.mark.parametrize("scene", ["pucallpa", "raleigh"])
def test_class_legend_lists_only_named_classes(scene: str, request: pytest.FixtureRequest) -> None:
    heatmap: Path = request.getfixturevalue(scene)
    names = {
        "pucallpa": ["other", "deforestation"],
        "raleigh": ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water",
                    "sediment"],
    }[scene]  # fmt: skip
    classes, probabilities = qgis(
        {"op": "layer", "path": str(heatmap.with_name("heat_classes.tif"))},
        {"op": "layer", "path": str(heatmap.with_name("heat_probability.tif"))},
    )
    assert classes["renderer"] == "paletted"
    assert classes["legend"] == names
    assert [value for value, _ in classes["classes"]] == list(range(len(names)))
    assert probabilities["renderer"] == "singlebandpseudocolor"  # its own style
    assert probabilities["title"].startswith("geocam class probabilities")


@pytest.mark.parametrize("scene", ["pucallpa", "raleigh"])
def test_hotspots_are_styled_and_inside_the_raster(
    scene: str, request: pytest.FixtureRequest
) -> None:
    heatmap: Path = request.getfixturevalue(scene)
    suffix = {"pucallpa": "gpkg", "raleigh": "geojson"}[scene]
    vectors = str(heatmap.with_name(f"heat_hotspots.{suffix}"))
    raster, hotspots = qgis(
        {"op": "layer", "path": str(heatmap)},
        {"op": "layer", "path": vectors, "in_crs_of": str(heatmap)},
    )
    assert hotspots["valid"] and hotspots["features"] > 0
    assert hotspots["symbol"]["outline_color"].startswith("0,255,255")  # the sidecar's style
    assert hotspots["symbol"]["color"].endswith(",40")  # a light fill
    if suffix == "geojson":
        assert hotspots["crs_authid"] == "EPSG:4326"  # RFC 7946
    xmin, ymin, xmax, ymax = raster["extent"]
    tolerance = 1e-6 * max(xmax - xmin, ymax - ymin)
    for x0, y0, x1, y1 in hotspots["feature_extents"]:  # as QGIS draws them over the raster
        assert xmin - tolerance <= x0 and x1 <= xmax + tolerance
        assert ymin - tolerance <= y0 and y1 <= ymax + tolerance


def test_cog_overlay_renders_without_a_style(raleigh: Path) -> None:
    (overlay,) = qgis({"op": "layer", "path": str(raleigh.with_name("heat_overlay.tif"))})
    assert overlay["valid"] and overlay["renderer"] == "multibandcolor"


@pytest.mark.parametrize("scene", ["pucallpa", "raleigh"])
def test_project_opens_with_every_layer_valid(
    scene: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    heatmap: Path = request.getfixturevalue(scene)
    import zipfile

    with zipfile.ZipFile(heatmap.with_suffix(".qgz")) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode()
    sources = [s.split("</datasource>")[0] for s in text.split("<datasource>")[1:]]
    assert len(sources) == 5 and all(s.startswith(("./", "../")) for s in sources)  # relative
    screenshot = tmp_path / "project.png"
    (project,) = qgis(
        {"op": "project", "path": str(heatmap.with_suffix(".qgz")), "out": str(screenshot),
         "width": 900}
    )  # fmt: skip
    assert project["read"]
    layers = project["layers"]
    assert [layer["name"] for layer in layers] == [
        "region", f"{heatmap_class(heatmap)} hotspots", f"{heatmap_class(heatmap)} Grad-CAM",
        "predicted classes", "source",
    ]  # fmt: skip
    assert all(layer["valid"] for layer in layers), layers
    assert [layer["renderer"] for layer in layers] == [
        "singleSymbol", "singleSymbol", "singlebandpseudocolor", "paletted", "multibandcolor",
    ]  # fmt: skip
    assert [layer["visible"] for layer in layers] == [True, True, True, False, True]
    with rasterio.open(heatmap) as heat:
        assert rasterio.crs.CRS.from_wkt(project["crs_wkt"]) == heat.crs
        assert layers[2]["extent"] == pytest.approx(list(heat.bounds))
    assert screenshot.stat().st_size > 10_000
    if scene == "pucallpa" and os.environ.get("GEOCAM_UPDATE_FIGURES"):
        shutil.copyfile(screenshot, FIGURE)  # the README's screenshot


def heatmap_class(heatmap: Path) -> str:
    with rasterio.open(heatmap) as heat:
        return heat.tags()["GEOCAM_CLASSES"]
