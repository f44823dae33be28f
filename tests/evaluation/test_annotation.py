"""Annotations read onto a scene's grid: mask values, warped masks, polygons, and bad inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import calculate_default_transform, reproject

from geocam.errors import GeocamError
from geocam.evaluation.annotation import read_annotation
from geocam.sources import Grid

UTM = CRS.from_epsg(32631)
GRID = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 5_000_000), 40, 30)


def write_mask(
    path: Path,
    data: np.ndarray,
    *,
    crs: CRS | None = UTM,
    transform: Affine = GRID.transform,
    nodata: float | None = None,
) -> Path:
    profile = {
        "driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype.name, "nodata": nodata,
    }  # fmt: skip
    if crs is not None:
        profile |= {"crs": crs, "transform": transform}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(data, 1)
    return path


def classes() -> np.ndarray:
    data = np.full((30, 40), 1, dtype=np.uint8)
    data[5:15, 10:30] = 5
    data[20:, :8] = 2
    data[0, :] = 0  # nodata
    return data


def test_a_mask_value_on_the_scene_grid(tmp_path: Path) -> None:
    data = classes()
    path = write_mask(tmp_path / "classes.tif", data, nodata=0)
    found = read_annotation(f"mask:{path}", GRID, value=5)
    np.testing.assert_array_equal(found.inside, data == 5)
    np.testing.assert_array_equal(found.valid, data != 0)  # the mask's nodata says nothing
    assert found.name == "mask:classes.tif value 5"


def test_a_value_that_does_not_occur_names_those_that_do(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "classes.tif", classes(), nodata=0)
    with pytest.raises(GeocamError, match=r"--annotation-value 9: .* values there: 1, 2, 5$"):
        read_annotation(f"mask:{path}", GRID, value=9)
    with pytest.raises(GeocamError, match=r"holds values 1, 2, 5: give the class's value"):
        read_annotation(f"mask:{path}", GRID)


def test_a_binary_mask_needs_no_value(tmp_path: Path) -> None:
    data = (classes() == 5).astype(np.uint8) * 255
    found = read_annotation(f"mask:{write_mask(tmp_path / 'm.tif', data)}", GRID)
    np.testing.assert_array_equal(found.inside, data == 255)
    assert found.valid.all()


def test_a_mask_on_a_coarser_grid_is_warped_and_valid_only_where_it_reaches(
    tmp_path: Path,
) -> None:
    data = np.zeros((15, 10), dtype=np.uint8)  # 20 m pixels over the left half of the scene
    data[2:7, 5:] = 1
    path = write_mask(tmp_path / "coarse.tif", data, transform=Affine(20, 0, 500_000, 0, -20, 5e6))
    found = read_annotation(f"mask:{path}", GRID)
    expected = np.zeros((30, 40), dtype=bool)
    expected[4:14, 10:20] = True
    np.testing.assert_array_equal(found.inside, expected)
    assert found.valid[:, :20].all() and not found.valid[:, 20:].any()


def test_a_mask_in_another_crs_is_warped_onto_the_scene(tmp_path: Path) -> None:
    truth = classes() == 5
    transform, width, height = calculate_default_transform(
        UTM, "EPSG:4326", 40, 30, *rasterio.transform.array_bounds(30, 40, GRID.transform)
    )
    lonlat = np.zeros((height, width), dtype=np.uint8)
    reproject(
        truth.astype(np.uint8), lonlat, src_transform=GRID.transform, src_crs=UTM,
        dst_transform=transform, dst_crs="EPSG:4326", resampling=Resampling.nearest,
    )  # fmt: skip
    path = write_mask(tmp_path / "lonlat.tif", lonlat, crs=CRS.from_epsg(4326), transform=transform)
    found = read_annotation(f"mask:{path}", GRID)
    # away from the block's edge (two resamplings by nearest neighbour) the block comes back
    core = np.zeros_like(truth)
    core[7:13, 12:28] = True
    ring = np.ones_like(truth)
    ring[3:17, 8:32] = False
    assert found.inside[core].all() and not found.inside[ring].any()


def test_a_mask_without_crs_is_refused_with_a_fix(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "plain.tif", classes(), crs=None)
    with pytest.raises(GeocamError, match=r"plain.tif has no CRS .* rio edit-info"):
        read_annotation(f"mask:{path}", GRID, value=5)


def test_a_mask_outside_the_scene_is_refused(tmp_path: Path) -> None:
    far = Affine(10, 0, 600_000, 0, -10, 5_000_000)
    path = write_mask(tmp_path / "far.tif", classes(), transform=far)
    with pytest.raises(GeocamError, match=r"far.tif does not overlap the scene"):
        read_annotation(f"mask:{path}", GRID, value=5)


def test_empty_and_full_annotations_are_refused(tmp_path: Path) -> None:
    data = classes()
    path = write_mask(tmp_path / "classes.tif", data, nodata=0)
    outside_the_class = data != 5
    binary = write_mask(tmp_path / "binary.tif", (data == 5).astype(np.uint8))
    with pytest.raises(GeocamError, match=r"no annotated pixel over the scene's valid pixels"):
        read_annotation(f"mask:{binary}", GRID, scene_valid=outside_the_class)
    with pytest.raises(GeocamError, match=r"annotates every valid pixel"):
        read_annotation(f"mask:{path}", GRID, value=5, scene_valid=data == 5)
    # the value must occur over the scene's valid pixels, not merely in the file
    with pytest.raises(GeocamError, match=r"values there: 1, 2$"):
        read_annotation(f"mask:{path}", GRID, value=5, scene_valid=outside_the_class)


def write_polygons(path: Path, crs: str | None, shift: float = 0.0) -> Path:
    """A tree square and a water square (scene pixels [5:15, 10:20] and [20:25, 30:35])."""

    def square(col0: int, row0: int, col1: int, row1: int) -> dict[str, object]:
        corners = [GRID.transform * (c, r) for c, r in ((col0, row0), (col1, row0), (col1, row1),
                                                        (col0, row1), (col0, row0))]  # fmt: skip
        return {"type": "Polygon", "coordinates": [[(x + shift, y) for x, y in corners]]}

    schema = {"geometry": "Polygon", "properties": {"name": "str"}}
    driver = "GPKG" if path.suffix == ".gpkg" else "ESRI Shapefile"
    options = {"crs": crs} if crs else {}
    with fiona.open(path, "w", driver=driver, schema=schema, **options) as layer:
        for name, shape in (("tree", square(10, 5, 20, 15)), ("water", square(30, 20, 35, 25))):
            layer.write({"geometry": shape, "properties": {"name": name}})
    return path


def test_polygons_selected_by_field(tmp_path: Path) -> None:
    path = write_polygons(tmp_path / "labels.gpkg", "EPSG:32631")
    found = read_annotation(f"vector:{path}", GRID, where="name=tree")
    expected = np.zeros((30, 40), dtype=bool)
    expected[5:15, 10:20] = True
    np.testing.assert_array_equal(found.inside, expected)
    assert found.valid.all()
    both = read_annotation(f"vector:{path}", GRID)
    assert both.inside.sum() == 100 + 25


def test_polygons_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    path = write_polygons(tmp_path / "labels.gpkg", "EPSG:32631")
    with fiona.open(path) as layer:
        features = list(layer)
    lonlat = tmp_path / "lonlat.gpkg"
    schema = {"geometry": "Polygon", "properties": {"name": "str"}}
    with fiona.open(lonlat, "w", driver="GPKG", schema=schema, crs="EPSG:4326") as out:
        for feature in features:
            geometry = rasterio.warp.transform_geom(UTM, "EPSG:4326", feature.geometry)
            out.write({"geometry": geometry, "properties": dict(feature.properties)})
    found = read_annotation(f"vector:{lonlat}", GRID, where="name=tree")
    assert found.inside.sum() == 100
    assert found.inside[5:15, 10:20].all()


def test_a_field_value_that_does_not_occur_names_those_that_do(tmp_path: Path) -> None:
    path = write_polygons(tmp_path / "labels.gpkg", "EPSG:32631")
    with pytest.raises(GeocamError, match=r"no feature of .* has name=grass; values of name: "):
        read_annotation(f"vector:{path}", GRID, where="name=grass")
    with pytest.raises(GeocamError, match=r"values of name: tree, water$"):
        read_annotation(f"vector:{path}", GRID, where="name=grass")
    with pytest.raises(GeocamError, match=r"^--annotation-where: .* no field 'kind'"):
        read_annotation(f"vector:{path}", GRID, where="kind=tree")


def test_polygons_without_crs_or_outside_the_scene_are_refused(tmp_path: Path) -> None:
    path = write_polygons(tmp_path / "labels.shp", None)
    with pytest.raises(GeocamError, match=r"^--annotation vector: .*labels.shp declares no CRS"):
        read_annotation(f"vector:{path}", GRID)
    far = write_polygons(tmp_path / "far.gpkg", "EPSG:32631", shift=50_000)
    with pytest.raises(GeocamError, match=r"^--annotation vector:far.gpkg: .* outside the scene"):
        read_annotation(f"vector:{far}", GRID)


def test_options_of_the_other_kind_are_refused(tmp_path: Path) -> None:
    mask = write_mask(tmp_path / "classes.tif", classes(), nodata=0)
    polygons = write_polygons(tmp_path / "labels.gpkg", "EPSG:32631")
    with pytest.raises(GeocamError, match=r"^--annotation-where name=tree: filters polygons"):
        read_annotation(f"mask:{mask}", GRID, where="name=tree")
    with pytest.raises(GeocamError, match=r"^--annotation-value 5: selects a mask's value"):
        read_annotation(f"vector:{polygons}", GRID, value=5)
    with pytest.raises(GeocamError, match=r"^--annotation 'classes.tif': use mask:PATH"):
        read_annotation("classes.tif", GRID)
    with pytest.raises(GeocamError, match=r"^--annotation mask: .*missing.tif does not exist"):
        read_annotation(f"mask:{tmp_path / 'missing.tif'}", GRID)


def test_a_float_mask_with_nan_nodata_on_another_grid(tmp_path: Path) -> None:
    data = np.where(classes() == 5, 1.0, 0.0).astype(np.float32)
    data[:, :4] = np.nan  # nodata, on the left of the scene
    shifted = Affine(10, 0, 499_990, 0, -10, 5_000_000)  # one pixel west: warped
    path = write_mask(tmp_path / "float.tif", data, transform=shifted, nodata=float("nan"))
    found = read_annotation(f"mask:{path}", GRID)
    # its columns 0-3 (NaN) are the scene's -1-2; the scene's last column it does not reach
    assert not found.valid[:, :3].any() and found.valid[:, 3:39].all()
    assert not found.valid[:, 39].any()
    np.testing.assert_array_equal(found.inside[:, :-1], (classes() == 5)[:, 1:])


def test_nan_in_a_float_mask_without_declared_nodata_says_nothing(tmp_path: Path) -> None:
    data = np.where(classes() == 5, 1.0, 0.0).astype(np.float32)
    data[:, :4] = np.nan  # no nodata declared: NaN is still no data
    found = read_annotation(f"mask:{write_mask(tmp_path / 'float.tif', data)}", GRID)
    assert not found.valid[:, :4].any() and found.valid[:, 4:].all()
    np.testing.assert_array_equal(found.inside, classes() == 5)
