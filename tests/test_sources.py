"""Where scene pixels come from: which pixels count as valid, stacking and grid comparison.

Every case writes a small raster in ``tmp_path`` with a real CRS and reads it back through
:class:`RasterSource` (or :class:`ArraySource`), checking values and the validity mask.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch import nn

from geocam import GeocamError, ModelSpec, Normalisation, build_model
from geocam.errors import GeocamWarning
from geocam.raster import explain_raster, explain_xarray
from geocam.scene import Explanation, Runtime, Tiling
from geocam.sources import ArraySource, Grid, RasterSource, fill_nodata, same_grid

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
    """Distinct positive values per band and pixel (< 256 for up to 3 bands of 8 x 8)."""
    b, r, c = np.indices((count, height, width))
    return (50 * b + (10 * r + c) % 50 + 1).astype(dtype)


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


def test_with_a_fill_a_band_without_data_is_fed_as_its_mean(tmp_path: Path) -> None:
    pixels = ramp(3)
    pixels[1, patch()] = SENTINEL
    path = write(tmp_path / "scene.tif", pixels, nodata=float(SENTINEL))
    with RasterSource([path], fill=(-1.0, -2.0, -3.0)) as source:
        data, valid = read_all(source)
    assert valid.all()  # the patch has data in two bands: it stays
    expected = pixels.copy()
    expected[1, patch()] = -2.0  # the fill, never the sentinel
    np.testing.assert_array_equal(data, expected)


def test_with_a_fill_a_pixel_needs_data_from_every_raster(tmp_path: Path) -> None:
    second = ramp(2)
    second[:, patch()] = 0  # every band of the second raster
    first = write(tmp_path / "a.tif", ramp(1))
    other = write(tmp_path / "b.tif", second, nodata=0)
    with RasterSource([first, other], fill=(7.0, 8.0, 9.0)) as source:
        data, valid = read_all(source)
    assert not valid[patch()].any() and valid[~patch()].all()
    np.testing.assert_array_equal(data[1:, ~patch()], second[:, ~patch()])


def test_fill_nodata_by_hand() -> None:
    pixels = np.array([[[1.0, np.nan, 3.0]], [[4.0, 5.0, -9.0]], [[7.0, 8.0, -9.0]]])
    band_valid = np.array([[[True, True, True]], [[True, True, False]], [[True, True, False]]])
    # strict: every band; groups (1, 2): each raster needs data in one of its bands
    assert fill_nodata(pixels, band_valid, (1, 2), None)[1].tolist() == [[True, False, False]]
    filled, valid = fill_nodata(pixels.astype(np.float32), band_valid, (1, 2), (0.5, 6, 6))
    assert valid.tolist() == [[True, False, False]]  # column 2: the second raster has none
    assert filled[:, 0, 0].tolist() == [1, 4, 7]
    filled, valid = fill_nodata(pixels.astype(np.float32), band_valid, (3,), (0.5, 6, 6))
    assert valid.tolist() == [[True, True, True]]  # one raster: a band with data is enough
    assert filled[:, 0, 1].tolist() == [0.5, 5, 8] and filled[:, 0, 2].tolist() == [3, 6, 6]


# --- defect 7: an explicit nodata > the file's own nodata or masks > the preset's ----------


def declared(folder: Path, kind: str, size: int = 8) -> Path:
    """A 3-band scene whose own ``kind`` (nodata, mask, alpha) marks ``patch()`` invalid.

    Its pixel (0, 0) is 0 in every band, and valid: a preset's ``nodata: 0`` must not mask it.
    """
    pixels = ramp(3, size, size, dtype="uint8")
    pixels[:, 0, 0] = 0
    where = patch(size, size)
    if kind == "nodata":
        data = pixels.astype("int16")
        data[:, where] = -9999
        return write(folder / "nodata.tif", data, nodata=-9999)
    if kind == "mask":
        return write(folder / "mask.tif", pixels, mask=~where)
    alpha = np.where(where, 0, 255).astype("uint8")[None]
    return write(folder / "alpha.tif", np.concatenate([pixels, alpha]), alpha=True)


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


# --- through the engine: the heatmaps a user gets --------------------------------------------


def tiny_spec(bands: int = 3) -> ModelSpec:
    """An smp Unet cut to depth 3 (stride 8) reading ``bands`` bands scaled by 1/100."""
    return ModelSpec(
        "Unet", "resnet18", bands, ("a", "b"),
        normalisation=Normalisation((0.01,) * bands, (0.0,) * bands),
        options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_spec())


def scene(height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth 3-band float scene with values in [0, 100]."""
    r, c = np.indices((height, width)) / 64.0
    bands = [50 + 50 * np.sin(4 * r + 3 * c), 50 + 50 * np.cos(5 * r - 2 * c), 100 * r * c]
    return np.stack(bands).astype(np.float32)


EXPLAIN_B = Explanation(("b",), region="all")  # seed 0: b has positive heat on these scenes


def heat(paths: list[Path], out: Path, model: nn.Module, **kwargs: Any) -> np.ndarray:
    """The ``b positive`` band of the scene's Grad-CAM heatmap over the whole scene."""
    explain_raster(
        paths, out, tiny_spec(), EXPLAIN_B, model=model,
        tiling=Tiling(64, 16), runtime=Runtime("cpu", progress=False), **kwargs,
    )  # fmt: skip
    with rasterio.open(out) as dataset:
        band: np.ndarray = dataset.read(1).astype(np.float64)
    return band


def test_a_sentinel_in_one_band_never_reaches_the_network(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    where = np.zeros((64, 64), dtype=bool)
    where[30:32, 40:42] = True
    clean = write(tmp_path / "clean.tif", scene(), nodata=float(SENTINEL))
    pixels = scene()
    pixels[1, where] = SENTINEL  # one band of one 2 x 2 patch
    dirty = write(tmp_path / "dirty.tif", pixels, nodata=float(SENTINEL))
    reference = heat([clean], tmp_path / "clean_heat.tif", tiny_model)
    result = heat([dirty], tmp_path / "dirty_heat.tif", tiny_model)
    assert np.isfinite(result).all()  # the patch keeps its other two bands: it has heat
    # fed as data, the sentinel takes the maximum to ~1e36; fed as the band's mean, one band
    # of four of 4096 pixels moves it by a few percent, nowhere near a factor of 2
    assert np.nanmax(reference) > 0
    assert 0.5 < np.nanmax(result) / np.nanmax(reference) < 2


def test_a_sentinel_in_one_band_of_a_dataarray_never_reaches_the_network(
    tiny_model: nn.Module,
) -> None:
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr

    where = np.zeros((64, 64), dtype=bool)
    where[30:32, 40:42] = True
    dirty = scene()
    dirty[1, where] = SENTINEL
    maps = []
    for pixels in (scene(), dirty):
        data = xr.DataArray(pixels, dims=("band", "y", "x"))
        data = data.rio.write_crs(UTM).rio.write_transform(UTM_ORIGIN)
        data = data.rio.write_nodata(float(SENTINEL), encoded=False)
        result = explain_xarray(
            data, tiny_spec(), EXPLAIN_B, model=tiny_model, tiling=Tiling(64, 16),
            runtime=Runtime("cpu", progress=False),
        )  # fmt: skip
        maps.append(result.values[0].astype(np.float64))
    reference, positive = maps
    assert np.isfinite(positive).all()
    assert np.nanmax(reference) > 0
    assert 0.5 < np.nanmax(positive) / np.nanmax(reference) < 2


def test_the_east_of_a_half_width_stacked_raster_gets_no_heat(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    pixels = scene()
    first = write(tmp_path / "first.tif", pixels[:2])
    west = write(tmp_path / "west.tif", pixels[2:, :, :32])  # covers columns 0-31 only
    spec = replace(tiny_spec(), bands=((1, 2), (1,)))
    out = tmp_path / "heat.tif"
    explain_raster(
        [first, west], out, spec, EXPLAIN_B, model=tiny_model,
        tiling=Tiling(64, 16), runtime=Runtime("cpu", progress=False),
    )  # fmt: skip
    with rasterio.open(out) as dataset:
        result = dataset.read(1)
    assert np.isfinite(result[:, :32]).all()
    assert np.isnan(result[:, 32:]).all()


def test_a_gdal_virtual_path_is_read(tmp_path: Path) -> None:
    import zipfile

    pixels = ramp(3)
    write(tmp_path / "scene.tif", pixels)
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as archive:
        archive.write(tmp_path / "scene.tif", "inner/scene.tif")
    with RasterSource([f"/vsizip/{tmp_path / 'scene.zip'}/inner/scene.tif"]) as source:
        values, valid = read_all(source)
    np.testing.assert_array_equal(values, pixels)
    assert valid.all()
    with pytest.raises(GeocamError, match="not a readable raster"):  # GDAL's own reason
        RasterSource([f"/vsizip/{tmp_path / 'scene.zip'}/inner/missing.tif"])


def test_a_gcp_raster_is_told_to_warp_onto_a_grid(tmp_path: Path) -> None:
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(row=r, col=c, x=600_000.0 + 10 * c, y=4_500_000.0 - 10 * r)
        for r, c in ((0, 0), (0, 8), (8, 0), (8, 8))
    ]
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=3, dtype="float32",
        gcps=gcps, crs=UTM,
    ) as dst:  # fmt: skip
        dst.write(ramp(3))
    with pytest.raises(GeocamError, match=r"4 ground control points.*gdalwarp -t_srs EPSG:32618"):
        RasterSource([path])


def test_band_scale_and_offset_are_reported_not_applied(tmp_path: Path) -> None:
    path = write(tmp_path / "scaled.tif", ramp(3))
    with rasterio.open(path, "r+") as dst:
        dst.scales = (1.0, 1e-4, 1.0)
        dst.offsets = (0.0, -0.1, 0.0)
    with pytest.warns(GeocamWarning, match=r"band\(s\) \[2\].*scale 0.0001, offset -0.1"):
        source = RasterSource([path])
    with source:
        values, _ = read_all(source)
    np.testing.assert_array_equal(values, ramp(3))  # the stored values
