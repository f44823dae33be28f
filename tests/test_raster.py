"""Scenes from real GeoTIFFs to GeoTIFF (and xarray) products, checked by reopening them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from torch import nn

import geocam.scene.engine
from geocam import GeocamError, ModelSpec, Normalisation, build_model
from geocam.output import GeoTiffWriter
from geocam.raster import explain_raster, explain_xarray
from geocam.scene import Explanation, Products, Runtime, Tiling

RALEIGH = "raleigh/nc_lsat7_2000_b123457_uint8.tif"
ITAIPU = "itaipu/LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
QUIET = Runtime("cpu", progress=False)


def spec_for(bands: int, classes: int = 3) -> ModelSpec:
    return ModelSpec(
        "Unet",
        "resnet18",
        bands,
        tuple("abcdefg"[:classes]),
        normalisation=Normalisation((1 / 255,) * bands, (0.0,) * bands),
        options={"decoder_channels": (64, 32, 16, 16, 8)},
    )


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(spec_for(6))


def test_heatmap_is_aligned_with_the_source(
    shared_data: Path, tmp_path: Path, small_model: nn.Module
) -> None:
    out = tmp_path / "heat.tif"
    report = explain_raster(
        shared_data / RALEIGH, out, spec_for(6), Explanation(("a", "c")), model=small_model,
        tiling=Tiling(256, 64), runtime=QUIET,
        products=Products(probabilities=True, class_map=True),
    )  # fmt: skip
    assert set(report.outputs) == {"heatmap", "probabilities", "classes"}
    with rasterio.open(shared_data / RALEIGH) as src, rasterio.open(out) as heat:
        assert heat.crs == src.crs and heat.transform == src.transform
        assert (heat.width, heat.height, heat.count) == (src.width, src.height, 4)
        assert heat.dtypes[0] == "float32" and math.isnan(heat.nodata)
        assert heat.block_shapes[0] == (512, 512) and heat.compression.name == "zstd"
        assert heat.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        assert heat.descriptions == ("a positive", "a signed", "c positive", "c signed")
        tags = heat.tags()
        assert tags["GEOCAM_METHOD"] == "gradcam" and tags["GEOCAM_WEIGHTS"] == "scene"
        assert tags["GEOCAM_LAYER"] == "encoder.layer4" and tags["GEOCAM_TILE"] == "256"
        band = heat.tags(1)
        assert band["CLASS"] == "a" and band["KIND"] == "positive"
        values = heat.read()
        nodata = src.dataset_mask() == 0
        assert nodata.any() and np.isnan(values[:, nodata]).all()
        assert np.isfinite(values[:, ~nodata]).all()
        assert float(band["STATISTICS_MAXIMUM"]) == pytest.approx(np.nanmax(values[0]))
    with rasterio.open(report.outputs["classes"]) as classes:
        assert classes.dtypes[0] == "uint8" and classes.nodata == 255
        assert classes.colormap(1)[0][3] == 255
    assert Path(f"{report.outputs['classes']}.aux.xml").read_text().count("<Category>") == 3
    assert not list(tmp_path.glob("*.partial"))


def test_existing_output_needs_overwrite(
    shared_data: Path, tmp_path: Path, small_model: nn.Module
) -> None:
    out = tmp_path / "heat.tif"
    out.write_bytes(b"precious")
    with pytest.raises(GeocamError, match="exists; pass --overwrite"):
        explain_raster(
            shared_data / RALEIGH, out, spec_for(6), Explanation(("a",)), model=small_model
        )
    assert out.read_bytes() == b"precious"


def test_failure_mid_run_leaves_nothing(
    shared_data: Path, tmp_path: Path, small_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = geocam.scene.engine.layer_gradients

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(geocam.scene.engine, "layer_gradients", failing)
    with pytest.raises(RuntimeError, match="boom"):
        explain_raster(
            shared_data / RALEIGH, tmp_path / "heat.tif", spec_for(6), Explanation(("a",)),
            model=small_model, tiling=Tiling(256, 64, batch_size=1), runtime=QUIET,
            products=Products(probabilities=True),
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_failure_while_committing_removes_the_products_already_in_place(
    shared_data: Path, tmp_path: Path, small_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = GeoTiffWriter.commit

    def commit(self: GeoTiffWriter, tags: dict[str, str] | None = None) -> Path:
        if self.path.name == "heat_classes.tif":  # the heatmap is already in place by now
            raise OSError(28, "No space left on device")
        return real(self, tags)

    monkeypatch.setattr(GeoTiffWriter, "commit", commit)
    with pytest.raises(OSError):
        explain_raster(
            shared_data / RALEIGH, tmp_path / "heat.tif", spec_for(6), Explanation(("a",)),
            model=small_model, tiling=Tiling(256, 64), runtime=QUIET,
            products=Products(class_map=True),
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_cog_with_overviews_and_nodata_override(shared_data: Path, tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    torch.manual_seed(0)
    spec = ModelSpec(  # a shallow network (stride 8) keeps this 2041 x 1860 scene fast
        "Unet", "resnet18", 3, ("a", "b"),
        normalisation=Normalisation((1 / 10000,) * 3, (0.0,) * 3),
        options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)},
    )  # fmt: skip
    out = tmp_path / "itaipu.tif"
    report = explain_raster(
        shared_data / ITAIPU, out, spec, Explanation(("a",), method="hirescam"),
        nodata=0, tiling=Tiling(384, 64), runtime=QUIET,
        products=Products(cog=True, class_map=True, resolution="native"),
    )  # fmt: skip
    assert report.skipped == 2 and report.stride == 8  # the fill corners of the Landsat scene
    for path in report.outputs.values():
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
    with rasterio.open(shared_data / ITAIPU) as src, rasterio.open(out) as heat:
        assert heat.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        # native grid: the source transform scaled by the stride, covering the whole scene
        assert heat.transform == src.transform @ Affine.scale(8)
        assert (heat.width, heat.height) == (math.ceil(src.width / 8), math.ceil(src.height / 8))
        assert heat.bounds.left == src.bounds.left and heat.bounds.top == src.bounds.top
        fill = (src.read() == 0).all(axis=0)
        cells = fill[:1856, :2040].reshape(232, 8, 255, 8).all(axis=(1, 3))  # all-fill cells
        native = heat.read(1)[:232, :255]
        assert np.isnan(native[cells]).all() and np.isfinite(native[~cells]).all()
    with rasterio.open(report.outputs["classes"]) as classes:
        full = classes.read(1)
        assert (full[fill] == 255).all()
        assert classes.overviews(1) == [2, 4]
        overview = classes.read(1, out_shape=(classes.height // 4, classes.width // 4))
        assert set(np.unique(overview)) <= set(np.unique(full))  # nearest: no blended labels


def test_two_rasters_on_different_grids_are_stacked_on_the_first(
    shared_data: Path, tmp_path: Path
) -> None:
    first = shared_data / RALEIGH
    moved = tmp_path / "raleigh_4326.tif"
    with rasterio.open(first) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        profile = src.profile | {"crs": "EPSG:4326", "transform": transform, "width": width,
                                 "height": height}  # fmt: skip
        with rasterio.open(moved, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band),
                          resampling=Resampling.nearest)  # fmt: skip
    spec = ModelSpec(
        "Unet", "resnet18", 4, ("a", "b"), bands=((3, 4), (3, 4)),
        normalisation=Normalisation((1 / 255,) * 4, (0.0,) * 4),
    )  # fmt: skip
    torch.manual_seed(0)
    report = explain_raster(
        [first, moved], tmp_path / "pair.tif", spec, Explanation(("b",), method="layercam"),
        tiling=Tiling(256, 64), runtime=QUIET,
    )  # fmt: skip
    with rasterio.open(first) as src, rasterio.open(report.outputs["heatmap"]) as heat:
        assert heat.crs == src.crs and heat.transform == src.transform
        assert heat.shape == src.shape
        assert heat.tags()["GEOCAM_SOURCES"] == f"{first.name},{moved.name}"


def test_xarray_in_and_out_matches_the_files(
    shared_data: Path, tmp_path: Path, small_model: nn.Module
) -> None:
    import rioxarray

    explanation = Explanation(("b",), method="hirescam", region="all")  # b is predicted nowhere
    tiling = Tiling(256, 64)
    data = rioxarray.open_rasterio(shared_data / RALEIGH)
    result = explain_xarray(data, spec_for(6), explanation, model=small_model, tiling=tiling,
                            runtime=QUIET)  # fmt: skip
    assert result.rio.crs == data.rio.crs and result.rio.transform() == data.rio.transform()
    assert list(result.band.values) == ["b positive", "b signed"]
    report = explain_raster(shared_data / RALEIGH, tmp_path / "h.tif", spec_for(6), explanation,
                            model=small_model, tiling=tiling, runtime=QUIET)  # fmt: skip
    with rasterio.open(report.outputs["heatmap"]) as heat:
        np.testing.assert_array_equal(result.values, heat.read())
    assert np.allclose(result.x.values[:2], data.x.values[:2])


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["missing.tif"], "missing.tif: no such file"),
        (["zurich/response_img_1091-322_00.tif"], "no CRS|no geotransform"),
    ],
)
def test_unusable_sources(
    shared_data: Path, tmp_path: Path, small_model: nn.Module, sources: list[str], message: str
) -> None:
    paths = [shared_data / s if "/" in s else tmp_path / s for s in sources]
    with pytest.raises(GeocamError, match=message):
        explain_raster(
            paths, tmp_path / "h.tif", spec_for(6), Explanation(("a",)), model=small_model
        )
    assert not (tmp_path / "h.tif").exists()
