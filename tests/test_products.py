"""GIS products from a real run, opened with rasterio, fiona and GDAL's own gdalinfo."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geocam.cli import cli
from geocam.errors import GeocamError
from geocam.products import area_m2, composite_source, otsu, provenance
from geocam.sources import Grid

ROOT = Path(__file__).resolve().parents[1]
LANDCOVER = ROOT / "configs" / "landcover_raleigh.yaml"
SCENE = ROOT / "geocam" / "data" / "raleigh_lsat7_2000.tif"
PUCALLPA = [ROOT / "geocam" / "data" / f"pucallpa_landsat_{year}.tif" for year in (1985, 2020)]


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("products")
    result = CliRunner().invoke(cli, [
        "explain", str(SCENE), "-c", str(LANDCOVER), "--class", "forest", "-o",
        str(folder / "forest.tif"), "--tile", "256", "--overlap", "64", "--quicklook",
        "--overlay", "--hotspots", "--probabilities", "--class-map",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def gdalinfo(path: Path) -> dict:  # type: ignore[type-arg]
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdalinfo (Debian's gdal-bin) is not installed")
    done = subprocess.run(["gdalinfo", "-json", "-mdd", "all", str(path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    info: dict = json.loads(done.stdout)  # type: ignore[type-arg]
    return info


def test_heatmap_through_gdalinfo(products: Path) -> None:
    info = gdalinfo(products / "forest.tif")
    with rasterio.open(SCENE) as src:
        assert info["size"] == [src.width, src.height]
        assert info["geoTransform"] == list(src.transform.to_gdal())
        assert rasterio.crs.CRS.from_wkt(info["coordinateSystem"]["wkt"]) == src.crs
    bands = info["bands"]
    assert [b["description"] for b in bands] == ["forest positive", "forest signed"]
    assert all(b["type"] == "Float32" and b["noDataValue"] == "NaN" for b in bands)
    assert bands[0]["block"] == [512, 512]
    assert info["metadata"][""]["GEOCAM_METHOD"] == "gradcam"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "ZSTD"


def test_probabilities_through_gdalinfo(products: Path) -> None:
    info = gdalinfo(products / "forest_probability.tif")
    assert info["bands"][0]["description"] == "forest probability"
    with rasterio.open(products / "forest_probability.tif") as probs:
        values = probs.read(1)
        finite = values[np.isfinite(values)]
        assert finite.min() >= 0 and finite.max() <= 1


def test_class_map_through_gdalinfo(products: Path) -> None:
    info = gdalinfo(products / "forest_classes.tif")
    band = info["bands"][0]
    assert band["type"] == "Byte" and band["noDataValue"] == 255
    assert band["colorInterpretation"] == "Palette"
    assert band["categories"][:7] == [
        "developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment",
    ]  # fmt: skip
    with rasterio.open(products / "forest_classes.tif") as classes, rasterio.open(SCENE) as src:
        assert classes.transform == src.transform and classes.crs == src.crs
        values = classes.read(1)
        assert (values[src.dataset_mask() == 0] == 255).all() and values.max() <= 255


def test_hotspots_as_geojson(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "explain", str(SCENE), "-c", str(LANDCOVER), "--class", "forest", "-o",
        str(tmp_path / "f.tif"), "--hotspots", "--hotspot-format", "geojson",
        "--hotspot-threshold", "otsu", "--no-qml", "-q",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "f.tif", "f_hotspots.geojson", "f_hotspots.qml",
    ]  # fmt: skip
    with fiona.open(tmp_path / "f_hotspots.geojson") as hotspots:
        assert len(hotspots) >= 1 and hotspots.schema["geometry"] == "Polygon"
        assert rasterio.crs.CRS.from_wkt(hotspots.crs_wkt).to_epsg() == 4326  # RFC 7946
        xs, ys = zip(*(xy for f in hotspots for xy in f.geometry.coordinates[0]), strict=True)
    with rasterio.open(tmp_path / "f.tif") as heat:
        from rasterio.warp import transform_bounds

        west, south, east, north = transform_bounds(heat.crs, "EPSG:4326", *heat.bounds)
    assert west <= min(xs) and max(xs) <= east and south <= min(ys) and max(ys) <= north


def test_several_classes_get_their_own_products(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "explain", str(SCENE), "-c", str(LANDCOVER), "--class", "forest", "--class", "5", "-o",
        str(tmp_path / "f.tif"), "--tile", "256", "--overlap", "64", "--overlay", "--hotspots",
        "--probabilities", "--cog", "-q",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    for klass, band in (("forest", 1), ("water", 3)):
        for suffix in (".qml", "_overlay.tif", "_hotspots.gpkg", "_hotspots.qml"):
            assert f"f_{klass}{suffix}" in names, names
        style = ElementTree.parse(tmp_path / f"f_{klass}.qml").getroot()
        assert style.find("pipe/rasterrenderer").get("band") == str(band)  # type: ignore[union-attr]
        with fiona.open(tmp_path / f"f_{klass}_hotspots.gpkg") as hotspots:
            assert {f.properties["class"] for f in hotspots} == {klass}
        assert cog_valid(tmp_path / f"f_{klass}_overlay.tif")
    for name in ("f.qml", "f.qmd", "f_probability.qml", "f_probability.qmd"):
        assert name in names


def cog_valid(path: Path) -> bool:
    from rio_cogeo.cogeo import cog_validate

    valid, errors, warnings = cog_validate(str(path), strict=True)
    return bool(valid) and not errors and not warnings


def test_cog_overlay_is_a_valid_cog_with_overviews(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "explain", *map(str, PUCALLPA), "-c", str(ROOT / "configs" / "deforestation_pucallpa.yaml"),
        "--class", "deforestation", "-o", str(tmp_path / "d.tif"), "--tile", "256",
        "--overlap", "64", "--overlay", "--cog", "-q",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cog_valid(tmp_path / "d_overlay.tif")  # rio cogeo validate --strict
    with rasterio.open(tmp_path / "d_overlay.tif") as overlay:
        assert overlay.overviews(1) and overlay.colorinterp[3].name == "alpha"


def test_qml_sidecar(products: Path) -> None:
    root = ElementTree.parse(products / "forest.qml").getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    items = root.findall(".//colorrampshader/item")
    values = [float(item.get("value", "nan")) for item in items]
    with rasterio.open(products / "forest.tif") as heat:
        p99 = float(heat.tags(1)["GEOCAM_P99"])
    assert values[0] == 0 and values[-1] == pytest.approx(p99, rel=1e-4)
    assert values == sorted(values) and len(items) == 11
    alphas = [int(item.get("alpha", "255")) for item in items]
    assert alphas[0] == 0 and alphas == sorted(alphas)  # zero heat leaves the image as it is


def test_rasters_say_what_they_hold_without_a_sidecar(products: Path) -> None:
    # inside the GeoTIFF (GDAL_METADATA), so a COG read over HTTP keeps them
    with rasterio.open(products / "forest.tif") as heat:
        assert heat.descriptions == ("forest positive", "forest signed")
        assert heat.units == ("raw gradcam (not normalised)",) * 2
        assert heat.colorinterp[0].name == "gray"
    with rasterio.open(products / "forest_probability.tif") as probabilities:
        assert probabilities.units == ("probability",)
    with rasterio.open(products / "forest_classes.tif") as classes:
        assert classes.colorinterp[0].name == "palette" and classes.colormap(1)[4][3] == 255


def test_rgba_overlay(products: Path) -> None:
    with rasterio.open(products / "forest_overlay.tif") as overlay, rasterio.open(SCENE) as src:
        assert overlay.count == 4 and overlay.dtypes[0] == "uint8"
        assert overlay.crs == src.crs and overlay.transform == src.transform
        assert overlay.colorinterp[3].name == "alpha"
        alpha = overlay.read(4)
        assert (alpha[src.dataset_mask() == 0] == 0).all() and alpha.max() == 255
    info = gdalinfo(products / "forest_overlay.tif")
    assert [b["colorInterpretation"] for b in info["bands"]] == ["Red", "Green", "Blue", "Alpha"]


def test_hotspots(products: Path) -> None:
    with rasterio.open(products / "forest.tif") as heat:
        crs = heat.crs
        bounds = heat.bounds
    with fiona.open(products / "forest_hotspots.gpkg", layer="hotspots") as hotspots:
        assert rasterio.crs.CRS.from_wkt(hotspots.crs_wkt) == crs
        features = list(hotspots)
    assert features
    threshold = features[0].properties["threshold"]
    for feature in features:
        props = feature.properties
        assert props["class"] == "forest" and props["area_m2"] > 0
        assert threshold <= props["mean_heat"] <= props["max_heat"]
        xs, ys = zip(*feature.geometry.coordinates[0], strict=True)
        assert bounds.left <= min(xs) and max(xs) <= bounds.right
        assert bounds.bottom <= min(ys) and max(ys) <= bounds.top
    # polygons follow the CAM's own cells: the scene on a grid of stride-32 cells (EPSG:32119
    # is in metres, so the areas are the planar ones)
    cell = (
        (bounds.right - bounds.left)
        / math.ceil(489 / 32)
        * (bounds.top - bounds.bottom)
        / (math.ceil(443 / 32))
    )
    total = sum(f.properties["area_m2"] for f in features)
    assert math.isclose(total / cell, round(total / cell), rel_tol=1e-9)


def test_quicklook_png(products: Path) -> None:
    from PIL import Image

    with Image.open(products / "forest.png") as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 400
        assert cyan(np.asarray(image.convert("RGB"))).any()  # the predicted region's outline


def cyan(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the outline's cyan, also antialiased over any background the test draws."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r < 80) & (g > 180) & (b > 100)


def image_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the map in a quicklook whose composite has no white.

    The map is the leftmost block of columns that are mostly non-white (a white gap separates
    it from the colour bar); its rows are those where nearly every one of its columns is.
    """
    ink = (rgb < 240).any(axis=-1)
    columns = ink.sum(axis=0) > 0.5 * ink.sum(axis=0).max()
    left = int(np.argmax(columns))
    width = int(np.argmin(columns[left:]))
    rows = ink[:, left : left + width].mean(axis=1) > 0.95
    top = int(np.argmax(rows))
    height = int(np.argmin(rows[top:]))
    return top, left, height, width


def test_quicklook_draws_heat_outline_and_composite_where_they_are(tmp_path: Path) -> None:
    """A 64 x 64 scene whose every cell has a known colour in the quicklook.

    Composite: band 1 is 10 in the left half and 200 in the right, band 2 the same top and
    bottom, band 3 constant; the 2-98 % stretch makes the quadrants black, red (top right),
    green (bottom left) and yellow, blue nowhere. Heat: 1.0 (the P99: full colour at opacity
    0.75) in a block in the top-right quadrant, 0.25 in one in the bottom right, NaN in the
    bottom-left quadrant, -0.5 (no positive evidence: not drawn) in the top-left one, 0
    elsewhere. The region is a rectangle in the bottom-left quadrant, outlined in cyan. Every
    layout is asymmetric, so a transposed or flipped heat, composite or outline puts colours
    in the wrong cells.
    """
    from matplotlib import colormaps
    from PIL import Image

    from geocam.products import write_quicklook

    n = 64
    rows, cols = np.mgrid[:n, :n]
    profile = {
        "driver": "GTiff", "width": n, "height": n, "crs": "EPSG:32617",
        "transform": rasterio.transform.from_origin(500000, 4000000, 30, 30),
    }  # fmt: skip
    bands = [np.where(cols < 32, 10, 200), np.where(rows < 32, 10, 200), np.full((n, n), 50)]
    with rasterio.open(tmp_path / "scene.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(np.stack(bands).astype(np.uint8))
    hot = (rows >= 4) & (rows < 16) & (cols >= 40) & (cols < 60)
    heat = np.where(hot, 1.0, 0.0).astype(np.float32)
    warm = (rows >= 44) & (rows < 52) & (cols >= 34) & (cols < 40)
    heat[warm] = 0.25  # inferno(0.25) at opacity 0.75 * sqrt(0.25)
    heat[(rows >= 32) & (cols < 32)] = np.nan
    heat[(rows < 32) & (cols < 32)] = -0.5
    with rasterio.open(tmp_path / "heat.tif", "w", count=1, dtype="float32", **profile) as dst:
        dst.write(heat, 1)
        dst.update_tags(1, GEOCAM_P99="1.0")
    region = (rows >= 36) & (rows < 60) & (cols >= 6) & (cols < 26)

    def read_region(grid: Grid) -> np.ndarray:
        assert (grid.height, grid.width) == (n, n)
        return region

    out = write_quicklook(tmp_path / "heat.tif", tmp_path / "scene.tif", tmp_path / "q.png",
                          region=read_region)  # fmt: skip
    with Image.open(out) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB"))
    top, left, height, width = image_box(rgb)
    assert abs(height - width) <= 2 and height > 5 * n  # the square map, >= 5 pixels a cell

    def pixel(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The PNG pixel at map coordinates (row, column), cell centres at integers."""
        row, column = top + (y + 0.5) * height / n, left + (x + 0.5) * width / n
        return row.astype(int), column.astype(int)

    composite = np.stack([cols >= 32, rows >= 32, np.zeros((n, n), bool)], -1).astype(float)
    expected = composite.copy()
    for where, value in ((hot, 1.0), (warm, 0.25)):
        opacity = 0.75 * np.sqrt(value)
        colour = np.asarray(colormaps["inferno"](value)[:3])
        expected[where] = opacity * colour + (1 - opacity) * composite[where]
    seen = rgb[pixel(rows, cols)] / 255  # each cell's centre
    wrong = np.abs(seen - expected).max(axis=-1) > 10 / 255
    assert not wrong.any(), f"{wrong.sum()} cells off, e.g. (row, col) {np.argwhere(wrong)[:3]}"

    ys, xs = np.nonzero(cyan(rgb))
    y, x = (ys - top) / height * n - 0.5, (xs - left) / width * n - 0.5  # map coordinates
    assert ys.size, "no outline"
    # every cyan pixel on the rectangle's edge (rows 35.5 and 59.5, columns 5.5 and 25.5; the
    # contour cuts each corner diagonally, whence 0.4 of a cell) ...
    near_rows = (np.minimum(abs(y - 35.5), abs(y - 59.5)) <= 0.4) & (x > 5.1) & (x < 25.9)
    near_cols = (np.minimum(abs(x - 5.5), abs(x - 25.5)) <= 0.4) & (y > 35.1) & (y < 59.9)
    assert (near_rows | near_cols).all(), "outline pixels off the region's edge"
    # ... and all the way round it: cyan within a third of a cell of each edge's cell midpoints
    along = np.arange(0.0, 20.0) + 6
    down = np.arange(0.0, 24.0) + 36
    edge = [*((35.5, c) for c in along), *((59.5, c) for c in along),
            *((r, 5.5) for r in down), *((r, 25.5) for r in down)]  # fmt: skip
    for r, c in edge:
        assert (np.hypot(y - r, x - c) <= 0.34).any(), f"no outline at row {r}, column {c}"


def test_otsu_by_hand() -> None:
    # Two spikes, 100 values at 1 and 100 at 5, 256 bins over [1, 5]: bin width 4 / 256 =
    # 1/64, all 1s in bin 0, all 5s in bin 255 (the last bin is closed). A cut after bin k,
    # for any k in 0..254, puts 100 values at centre 1 + 1/128 below and 100 at centre
    # 5 - 1/128 above: the between-class variance 100 * 100 * (4 - 1/64)^2 is the same for
    # every k (no cut after bin 255: nothing above it). The first maximum, k = 0, wins, and
    # the threshold is its upper edge 1 + 1/64 = 1.015625 (exact in binary).
    values = np.concatenate([np.full(100, 1.0), np.full(100, 5.0)])
    assert otsu(values) == 1.015625
    # A unique maximum: [0, 0, 1, 2, 4, 4, 4] in 4 bins of width 1 -> counts [2, 1, 1, 3] at
    # centres [0.5, 1.5, 2.5, 3.5]. Between-class variance w_low * w_high * (m_low - m_high)^2:
    #   cut after bin 0: 2 * 5 * (0.5 - 14.5/5)^2       = 10 * 2.4^2     = 57.6
    #   cut after bin 1: 3 * 4 * (2.5/3 - 13/4)^2       = 12 * (29/12)^2 = 70.08
    #   cut after bin 2: 4 * 3 * (5/4 - 3.5)^2          = 12 * 2.25^2    = 60.75
    # -> the cut after bin 1, at its upper edge 2.
    assert otsu(np.array([0.0, 0, 1, 2, 4, 4, 4]), bins=4) == 2.0


def test_composite_source_maps_input_bands_to_a_raster() -> None:
    first, second = Path("a.tif"), Path("b.tif")
    pair = ((1, 2, 3, 4), (1, 2, 3, 4))
    assert composite_source([first, second], pair, (5, 6, 7)) == (second, (1, 2, 3))
    assert composite_source([first], ((4, 3, 2),), (1, 2, 3)) == (first, (4, 3, 2))
    assert composite_source([first], (), (3, 2, 1)) == (first, (3, 2, 1))
    with pytest.raises(GeocamError, match="different rasters"):
        composite_source([first, second], pair, (3, 5, 6))
    with pytest.raises(GeocamError, match="do not exist"):
        composite_source([first, second], pair, (7, 8, 9))


def square(x0: float, y0: float, side: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side), (x0, y0)]


def test_hotspot_areas_in_square_metres() -> None:
    feet = rasterio.crs.CRS.from_epsg(2264)  # NC State Plane in US survey feet
    with_hole = {"coordinates": [square(0, 0, 1000), square(100, 100, 500)]}
    survey_foot = 1200 / 3937
    expected = (1000**2 - 500**2) * survey_foot**2
    assert math.isclose(area_m2([with_hole], feet)[0], expected, rel_tol=1e-9)
    # one degree square at the equator, against the authalic sphere (R = 6371007.2 m)
    degree = area_m2([{"coordinates": [square(0, 0, 1)]}], rasterio.crs.CRS.from_epsg(4326))[0]
    sphere = 6371007.2**2 * math.radians(1) * math.sin(math.radians(1))
    assert math.isclose(degree, sphere, rel_tol=5e-3)


@pytest.mark.parametrize(
    ("method", "kind"),
    [("gradcam", "Grad-CAM"), ("layercam", "Grad-CAM"), ("occlusion", "occlusion")],
)
def test_the_provenance_names_what_the_values_are(method: str, kind: str) -> None:
    """A pixel baseline's output is not called Grad-CAM in its QGIS metadata."""
    text = provenance({"GEOCAM_METHOD": method, "GEOCAM_CLASSES": "forest"}, [])
    assert text.startswith(f"{kind} ") and f"Values are raw {kind}" in text
    assert ("Grad-CAM" in text) == (kind == "Grad-CAM")
