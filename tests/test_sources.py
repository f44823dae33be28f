"""Where scene pixels come from: which pixels count as valid, stacking and grid comparison.

Every case writes a small raster in ``tmp_path`` with a real CRS and reads it back through
:class:`RasterSource` (or :class:`ArraySource`), checking values and the validity mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from geocam.sources import ArraySource, Grid, RasterSource, same_grid

UTM = "EPSG:32618"
UTM_ORIGIN = from_origin(600_000.0, 4_500_000.0, 10.0, 10.0)
SENTINEL = np.float32(-3.4e38)  # a float scene's usual nodata


def write(
    path: Path,
    pixels: np.ndarray,
    transform: Affine = UTM_ORIGIN,
    crs: str = UTM,
    mask: np.ndarray | None = None,
    alpha: bool = False,
    **profile: Any,
) -> Path:
    """A GeoTIFF of ``(bands, h, w)`` pixels; ``mask`` (bool, True = valid) as an internal mask."""
    count, height, width = pixels.shape
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path, "w", driver="GTiff", width=width, height=height, count=count,
            dtype=pixels.dtype, crs=crs, transform=transform, **profile,
        ) as dst,
    ):  # fmt: skip
        if alpha:
            colours = [ColorInterp.red, ColorInterp.green, ColorInterp.blue][: count - 1]
            dst.colorinterp = [*colours, ColorInterp.alpha]
        dst.write(pixels)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def read_all(source: RasterSource) -> tuple[np.ndarray, np.ndarray]:
    return source.read(Window(0, 0, source.grid.width, source.grid.height))


def patch(height: int = 8, width: int = 8) -> np.ndarray:
    """True on a 2 x 2 patch at rows 2-3, columns 4-5."""
    where = np.zeros((height, width), dtype=bool)
    where[2:4, 4:6] = True
    return where


def ramp(count: int, height: int = 8, width: int = 8, dtype: str = "float32") -> np.ndarray:
    """Distinct positive values per band and pixel: ``50 b + 10 row + col + 1`` (< 256)."""
    b, r, c = np.indices((count, height, width))
    return (50 * b + 10 * r + c + 1).astype(dtype)


# --- defect 6: a pixel is valid only where every selected band is --------------------------


def test_nodata_in_one_band_makes_the_pixel_invalid(tmp_path: Path) -> None:
    pixels = ramp(3)
    pixels[1, patch()] = SENTINEL  # only the second band is nodata there
    path = write(tmp_path / "scene.tif", pixels, nodata=float(SENTINEL))
    with RasterSource([path]) as source:
        data, valid = read_all(source)
    assert not valid[patch()].any()
    assert valid[~patch()].all()
    np.testing.assert_array_equal(data[:, ~patch()], pixels[:, ~patch()])


def test_nodata_in_one_band_of_a_second_raster_makes_the_pixel_invalid(tmp_path: Path) -> None:
    second = ramp(2)
    second[0, patch()] = 0
    first = write(tmp_path / "a.tif", ramp(2))
    other = write(tmp_path / "b.tif", second.astype("uint16"), nodata=0)
    with RasterSource([first, other]) as source:
        _, valid = read_all(source)
    assert not valid[patch()].any() and valid[~patch()].all()


def test_an_array_source_needs_every_band_finite() -> None:
    pixels = ramp(2)
    pixels[0, patch()] = np.nan
    grid = Grid(CRS.from_string(UTM), UTM_ORIGIN, 8, 8)
    _, valid = ArraySource(pixels, grid).read(Window(0, 0, 8, 8))
    assert not valid[patch()].any() and valid[~patch()].all()


# --- defect 7: an explicit nodata > the file's own nodata or masks > the preset's ----------


def declared(tmp_path: Path, kind: str) -> Path:
    """A 3-band uint8 scene whose own metadata marks ``patch()`` invalid; 0 is valid data."""
    pixels = ramp(3, dtype="uint8")
    pixels[:, 0, 0] = 0  # valid zeros: a preset's ``nodata: 0`` must not mask them
    if kind == "nodata":
        data = pixels.astype("int16")
        data[:, patch()] = -9999
        return write(tmp_path / "nodata.tif", data, nodata=-9999)
    if kind == "mask":
        return write(tmp_path / "mask.tif", pixels, mask=~patch())
    alpha = np.where(patch(), 0, 255).astype("uint8")[None]
    return write(tmp_path / "alpha.tif", np.concatenate([pixels, alpha]), alpha=True)


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_the_files_own_nodata_wins_over_the_fallback(tmp_path: Path, kind: str) -> None:
    path = declared(tmp_path, kind)
    with RasterSource([path], [(1, 2, 3)], fallback_nodata=0) as source:
        _, valid = read_all(source)
    assert not valid[patch()].any()
    assert valid[~patch()].all()  # the zeros at (0, 0) are data


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_an_explicit_nodata_overrides_the_files_own(tmp_path: Path, kind: str) -> None:
    path = declared(tmp_path, kind)
    with RasterSource([path], [(1, 2, 3)], nodata=0, fallback_nodata=7) as source:
        _, valid = read_all(source)
    expected = np.ones((8, 8), dtype=bool)
    expected[0, 0] = False  # only the explicit value counts
    if kind == "nodata":  # -9999 is data when the user says nodata is 0
        assert valid[patch()].all()
    np.testing.assert_array_equal(valid, expected)


def test_the_fallback_applies_to_a_file_that_declares_nothing(tmp_path: Path) -> None:
    pixels = ramp(3)
    pixels[2, patch()] = 0
    path = write(tmp_path / "plain.tif", pixels)
    with RasterSource([path], fallback_nodata=0) as source:
        _, valid = read_all(source)
    assert not valid[patch()].any() and valid[~patch()].all()
    with RasterSource([path]) as source:
        assert read_all(source)[1].all()


# --- defect 8: a stacked raster that covers part of the scene is nodata elsewhere ----------


@pytest.mark.parametrize("fallback", [None, 0.0])
def test_a_stacked_raster_is_nodata_outside_its_extent(
    tmp_path: Path, fallback: float | None
) -> None:
    first = write(tmp_path / "full.tif", ramp(2, 8, 16))
    half = write(tmp_path / "half.tif", ramp(1, 8, 8))  # the west half only
    with RasterSource([first, half], fallback_nodata=fallback) as source:
        data, valid = read_all(source)
    assert valid[:, :8].all()
    assert not valid[:, 8:].any()
    np.testing.assert_array_equal(data[2, :, :7], ramp(1, 8, 8)[0, :, :7])


def test_a_warped_raster_keeps_its_per_band_nodata(tmp_path: Path) -> None:
    second = ramp(2, 8, 8)
    second[1, patch()] = SENTINEL
    first = write(tmp_path / "a.tif", ramp(1, 8, 8))
    # half a pixel east: warped (bilinear), so the sentinel must not be blended into data
    shifted = UTM_ORIGIN @ Affine.translation(0.5, 0)
    other = write(tmp_path / "b.tif", second, transform=shifted, nodata=float(SENTINEL))
    with RasterSource([first, other]) as source:
        data, valid = read_all(source)
    assert not valid[2:4, 5].any()  # both source pixels under it are nodata
    assert np.abs(data[:, valid]).max() < 1000  # no blend of -3.4e38 reaches valid pixels


# --- defect 9: grids are compared in pixels --------------------------------------------------

LONLAT = Affine(1e-6, 0, -78.9, 0, -1e-6, 35.8)  # a drone raster: 1e-6 deg (~0.1 m) pixels


def test_same_grid_measures_in_pixels() -> None:
    crs = CRS.from_epsg(4326)
    grid = Grid(crs, LONLAT, 100, 50)
    assert same_grid(grid, grid)
    assert not same_grid(grid, Grid(crs, LONLAT @ Affine.translation(5, 0), 100, 50))
    assert same_grid(grid, Grid(crs, LONLAT @ Affine.translation(1e-4, -1e-4), 100, 50))
    assert not same_grid(grid, Grid(crs, LONLAT @ Affine.scale(1.0001), 100, 50))  # 0.01 px
    assert not same_grid(grid, Grid(crs, LONLAT, 100, 51))
    assert not same_grid(grid, Grid(CRS.from_epsg(4269), LONLAT, 100, 50))
    utm = Grid(CRS.from_string(UTM), UTM_ORIGIN, 100, 50)
    assert not same_grid(utm, Grid(utm.crs, UTM_ORIGIN @ Affine.translation(0, 0.01), 100, 50))
    assert same_grid(utm, Grid(utm.crs, UTM_ORIGIN @ Affine.translation(0, 1e-5), 100, 50))


def test_a_lonlat_raster_shifted_by_five_pixels_is_warped(tmp_path: Path) -> None:
    first = write(tmp_path / "a.tif", ramp(1, 8, 16), transform=LONLAT, crs="EPSG:4326")
    shifted = LONLAT @ Affine.translation(5, 0)  # 5e-6 deg east: below Affine's 1e-5
    other = write(tmp_path / "b.tif", ramp(1, 8, 16), transform=shifted, crs="EPSG:4326")
    with RasterSource([first, other]) as source:
        data, valid = read_all(source)
    # column c of the scene is column c - 5 of the shifted raster; its first 5 columns are
    # outside it
    assert not valid[:, :5].any() and valid[:, 5:].all()
    np.testing.assert_allclose(data[1, :, 5:], ramp(1, 8, 16)[0, :, :11], rtol=1e-6)
