"""The scene engine on synthetic scenes: exactness of the decomposition, blending, back-off."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from rasterio.windows import Window
from scene_networks import (
    ONE_CHANNEL,
    CoarseNet,
    ContextNet,
    DeadNet,
    LocalNet,
    OneChannelNet,
    OverflowNet,
    run,
    scene,
)
from torch import nn

import geocam.scene.engine
from geocam import ModelSpec, explain
from geocam.errors import GeocamWarning, ZeroMap
from geocam.scene import Explanation, Products, Tiling
from geocam.scene.specs import class_map_names, classes_from_probabilities


def layer_map(
    model: nn.Module, pixels: np.ndarray, cls: int, method: str, region: object = "predicted"
) -> tuple[np.ndarray, np.ndarray]:
    """The untiled signed and positive maps at the layer's resolution, in float64."""
    images = torch.from_numpy(pixels)[None].double()
    result = explain(model.double(), images, cls, "encoder.2", method=method, region=region)  # type: ignore[arg-type]
    return result.signed[0, 0].numpy(), result.positive[0, 0].numpy()


def assert_close_to(actual: np.ndarray, expected: np.ndarray, relative: float) -> None:
    """|actual - expected| within ``relative`` of the largest |expected| (a float64 map)."""
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * scale)


def untiled(model: nn.Module, pixels: np.ndarray, method: str, cls: int = 1) -> np.ndarray:
    """The untiled signed map upsampled to the scene, in float64 (the reference)."""
    images = torch.from_numpy(pixels)[None].double()
    result = explain(model.double(), images, cls, "encoder.2", method=method)  # type: ignore[arg-type]
    return result.upsample(pixels.shape[1:]).signed[0, 0].numpy()  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_tiled_scene_equals_untiled_for_a_local_network(method: str) -> None:
    # With no context beyond a cell, tiling changes nothing the network sees: scene-consistent
    # weights must reproduce the untiled Grad-CAM exactly, and blending must add no seams.
    # float64 networks: the float32 accumulators then bound the difference by ~1e-7.
    model = LocalNet().eval().double()
    pixels = scene()
    maps, report = run(model, pixels, Explanation(("b",), method=method), Tiling(32, 8))  # type: ignore[arg-type]
    assert report.tiles == 20 and report.passes == {"gradcam": 2, "gradcam++": 3}.get(method, 1)
    expected = untiled(model, pixels, method)
    with torch.no_grad():
        predicted = (model(torch.from_numpy(pixels)[None].double()).argmax(1) == 1).sum()
    assert 0 < report.region_pixels["b"] == predicted < pixels[0].size  # each pixel once
    assert np.abs(expected).max() > 0.1
    # the maps match in the interior; at the outer 2 pixels bilinear upsampling clamps at the
    # tile edge where the untiled map interpolates on
    inner = (slice(2, -2), slice(2, -2))
    assert_close_to(maps["heatmap"][1][inner], expected[inner], 1e-6)


def test_per_tile_weights_differ_from_the_scene() -> None:
    model = LocalNet().eval()
    pixels = scene()
    maps, _ = run(model, pixels, Explanation(("b",), weights="tile"), Tiling(32, 8))
    expected = untiled(model, pixels, "gradcam")
    assert np.abs(maps["heatmap"][1] - expected).max() > 0.05 * np.abs(expected).max()


def test_single_tile_scene_equals_the_engine_on_a_real_network() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("Unet", "resnet18", 3, ("a", "b", "c"))
    model = geocam.build_model(spec).double()
    pixels = scene(64, 96)
    for method in ("gradcam", "hirescam"):
        maps, report = run(model, pixels, Explanation(("c",), method=method), Tiling(128, 32), spec)  # type: ignore[arg-type]
        assert report.tiles == 1 and report.layer == "encoder.layer4"
        images = torch.from_numpy(pixels)[None].double()
        result = explain(model, images, 2, "encoder.layer4", method=method)  # type: ignore[arg-type]
        expected = result.upsample((64, 96))
        assert_close_to(maps["heatmap"][1], expected.signed[0, 0].numpy(), 1e-6)
        assert_close_to(maps["heatmap"][0], expected.positive[0, 0].numpy(), 1e-6)


def test_nodata_is_nan_everywhere_and_never_in_the_region() -> None:
    model = LocalNet().eval()
    pixels = scene()
    valid = np.ones(pixels.shape[1:], dtype=bool)
    valid[:, :40] = False  # a nodata block covering whole tiles (skipped) and parts of others
    pixels[:, ~valid] = 1e6  # nodata pixels must not leak into anything
    maps, report = run(
        model, pixels, Explanation(("b",), region="all"), Tiling(32, 8), valid=valid,
        products=Products(probabilities=True, class_map=True),
    )  # fmt: skip
    assert report.skipped > 0
    assert report.region_pixels["b"] == valid.sum()
    for name in ("heatmap", "probabilities"):
        assert np.isnan(maps[name][:, ~valid]).all() and np.isfinite(maps[name][:, valid]).all()
    assert (maps["classes"][0, ~valid] == 255).all() and (maps["classes"][0, valid] < 3).all()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_native_resolution_is_the_layers_own_map_on_one_tile(method: str) -> None:
    # one tile: the native heatmap is explain()'s map at the layer's resolution, cell for cell;
    # class "a" over the whole scene has evidence for and against, so the positive band shows
    # relu(map) (a blur of it would differ where the sign changes)
    model = LocalNet().eval().double()
    pixels = scene()
    native, report = run(
        model, pixels, Explanation(("a",), method=method, region="all"), Tiling(128, 32),  # type: ignore[arg-type]
        products=Products(resolution="native"),
    )  # fmt: skip
    assert report.tiles == 1 and native["heatmap"].shape == (2, 24, 32)
    signed, positive = layer_map(model, pixels, 0, method, "all")
    if method != "layercam":  # relu(G) * A with A >= 0 here: never negative
        assert (signed < 0).any() and (signed > 0).any()
    assert_close_to(native["heatmap"][0], positive, 1e-6)
    assert_close_to(native["heatmap"][1], signed, 1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
@pytest.mark.parametrize("overlap", [8, 12])
def test_native_tiled_equals_the_untiled_map_for_a_local_network(method: str, overlap: int) -> None:
    # cells are blended with the summed blend weights of their pixels: where every tile sees the
    # same cell, the blend of equal values is that value, at every cell of the scene
    model = LocalNet().eval().double()
    pixels = scene()
    native, _ = run(
        model, pixels, Explanation(("b",), method=method), Tiling(32, overlap),  # type: ignore[arg-type]
        products=Products(resolution="native"),
    )  # fmt: skip
    expected = explain(
        model, torch.from_numpy(pixels)[None].double(), 1, "encoder.2", method=method
    )  # type: ignore[arg-type]
    scale = float(expected.signed.abs().max())
    np.testing.assert_allclose(
        native["heatmap"][1], expected.signed[0, 0], atol=1e-6 * scale, rtol=0
    )


@pytest.mark.parametrize(
    ("network", "region", "overlap"),
    [
        # LocalNet: no context, exact at any overlap, core boundaries on or off the cell grid
        (LocalNet, "predicted", 4),
        (LocalNet, "predicted", 8),
        (LocalNet, "predicted", 12),
        # one cell of context past the layer: a fixed region is exact from 2 cells of overlap
        (ContextNet, "all", 8),
        (ContextNet, "all", 12),
        (ContextNet, "box", 8),
        # the predicted region too: Grad-CAM++ reads each pixel's membership as its core's
        # tile decided it (pass 0), Grad-CAM scores only core pixels
        (ContextNet, "predicted", 8),
        (ContextNet, "predicted", 12),
        (ContextNet, "predicted", 16),
    ],
)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_scene_weights_equal_the_untiled_weights(
    network: type[nn.Module], region: str, overlap: int, method: str
) -> None:
    model = network().eval().double()
    pixels = scene()
    mask = np.zeros(pixels.shape[1:], np.float32)
    mask[13:70, 21:90] = 1  # a box whose edges are off the cell grid and cross tile cores
    scene_region: object = BoxRegion(mask) if region == "box" else region
    native, report = run(
        model, pixels, Explanation(("b",), method=method, region=scene_region), Tiling(32, overlap),  # type: ignore[arg-type]
        products=Products(resolution="native"),
    )  # fmt: skip
    untiled_region = torch.from_numpy(mask)[None] if region == "box" else region
    assert report.tiles > 4
    assert_close_to(
        native["heatmap"][1], layer_map(model, pixels, 1, method, untiled_region)[0], 1e-5
    )


class BoxRegion:
    """A fixed region read per window, as mask and vector regions are."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def read(self, window: Window) -> np.ndarray:
        rows, cols = window.toslices()
        return self.mask[rows, cols]


def test_probabilities_are_blended_softmax() -> None:
    model = LocalNet().eval().double()
    pixels = scene()
    maps, _ = run(
        model, pixels, Explanation(("a", "c")), Tiling(32, 8),
        products=Products(probabilities=True, class_map=True),
    )  # fmt: skip
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels)[None].double())[0]
    probability = torch.softmax(logits, 0).numpy()
    np.testing.assert_allclose(maps["probabilities"], probability[[0, 2]], rtol=0, atol=1e-6)
    top = np.sort(probability, axis=0)
    clear = top[-1] - top[-2] > 1e-5  # float32 blending cannot swap these
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(maps["classes"][0][clear], probability.argmax(0)[clear])


def test_out_of_memory_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LocalNet().eval().double()  # batches of 1 and 2 agree to float64 rounding
    pixels = scene()
    real = geocam.scene.engine.layer_gradients
    seen: list[int] = []

    def fussy(model: nn.Module, images: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(images.shape[0])
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, images, *args, **kwargs)  # type: ignore[arg-type]

    expected, _ = run(model, pixels, Explanation(("b",)), Tiling(32, 8, batch_size=1))
    monkeypatch.setattr(geocam.scene.engine, "layer_gradients", fussy)
    maps, report = run(model, pixels, Explanation(("b",)), Tiling(32, 8, batch_size=8))
    # a batch never crosses a tile row (5 tiles here): 5 valid tiles, then halved 8 -> 4 -> 2
    assert report.batch_size == 2 and seen[:3] == [5, 4, 2]
    assert_close_to(maps["heatmap"], expected["heatmap"], 1e-6)


def test_band_count_mismatch_is_a_clear_error() -> None:
    with pytest.raises(
        geocam.GeocamError, match="the sources have 2 band\\(s\\) but the model takes 3"
    ):
        run(LocalNet().eval(), scene()[:2], Explanation(("b",)), Tiling(32, 8))


def test_all_nodata_scene_is_a_clear_error() -> None:
    pixels = scene()
    with pytest.raises(
        geocam.GeocamError, match=r"every pixel is nodata.*check the sources or --nodata"
    ):
        run(
            LocalNet().eval(),
            pixels,
            Explanation(("b",)),
            Tiling(32, 8),
            valid=np.zeros(pixels.shape[1:], bool),
        )


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_tall_scene_streams_in_strips(method: str) -> None:
    # taller than a strip plus a tile, so rows are flushed while later tiles (batches that span
    # tile rows) are still being added
    model = LocalNet().eval().double()
    pixels = scene(1200, 64, seed=1)
    maps, report = run(
        model, pixels, Explanation(("b",), method=method), Tiling(32, 8, batch_size=4),  # type: ignore[arg-type]
        products=Products(probabilities=True),
    )  # fmt: skip
    assert report.tiles == 50 * 3
    expected = untiled(model, pixels, method)
    inner = (slice(2, -2), slice(2, -2))
    assert_close_to(maps["heatmap"][1][inner], expected[inner], 1e-6)
    assert np.isfinite(maps["probabilities"]).all()


@pytest.mark.usefixtures("deterministic")
def test_cached_and_recomputed_pass_two_agree() -> None:
    # bitwise: one process, the same tiles in the same batches through the same kernels; only
    # where pass 2's activations come from differs (pass 1's cache, or a new forward pass)
    model = LocalNet().eval()
    pixels = scene(200, 96, seed=2)
    valid = np.ones(pixels.shape[1:], bool)
    valid[:40, :40] = False  # a skipped tile, which pass 2 must step over in both modes
    cached, first = run(model, pixels, Explanation(("b",)), Tiling(32, 8), valid=valid)
    fresh, second = run(model, pixels, Explanation(("b",)), Tiling(32, 8, cache_mb=0), valid=valid)
    assert first.cached_activations and not second.cached_activations and first.skipped > 0
    np.testing.assert_array_equal(cached["heatmap"], fresh["heatmap"])


def test_one_channel_class_map_follows_the_region_rule() -> None:
    model = OneChannelNet().eval()
    pixels = scene()
    maps, report = run(
        model, pixels, Explanation(("water",)), Tiling(128, 32), spec=ONE_CHANNEL,
        products=Products(probabilities=True, class_map=True),
    )  # fmt: skip
    with torch.no_grad():
        probability = torch.sigmoid(model(torch.from_numpy(pixels)[None]))[0, 0].numpy()
    water = probability > 0.5
    assert 0 < water.sum() < water.size  # both values occur
    np.testing.assert_array_equal(maps["classes"][0], water.astype(np.uint8))
    assert report.region_pixels["water"] == water.sum()  # the region is the same pixels
    # a threshold moves class map and region together
    maps, report = run(
        model, pixels, Explanation(("water",), threshold=0.9), Tiling(128, 32), spec=ONE_CHANNEL,
        products=Products(class_map=True),
    )  # fmt: skip
    np.testing.assert_array_equal(maps["classes"][0], probability > 0.9)
    assert report.region_pixels["water"] == (probability > 0.9).sum()


def test_classes_from_probabilities_by_hand() -> None:
    sums = np.array([[[0.2, 1.2, 0.0]]], np.float32)  # weighted sums of one probability
    weights = np.array([[1.0, 2.0, 0.0]], np.float32)  # means 0.2, 0.6, none
    np.testing.assert_array_equal(classes_from_probabilities(sums, weights)[0], [[0, 1, 255]])
    np.testing.assert_array_equal(classes_from_probabilities(sums, weights, 0.7)[0], [[0, 0, 255]])
    two = np.array([[[0.3, 0.9]], [[0.6, 0.1]]], np.float32)
    np.testing.assert_array_equal(classes_from_probabilities(two, np.ones((1, 2)))[0], [[1, 0]])
    assert class_map_names(("water",)) == ("not water", "water")
    assert class_map_names(("a", "b")) == ("a", "b")


@pytest.mark.parametrize(
    ("method", "products"),
    [("gradcam", Products()), ("hirescam", Products()), ("gradcam", Products(probabilities=True))],
)
def test_an_output_coarser_than_the_input_is_refused(method: str, products: Products) -> None:
    with pytest.raises(
        geocam.GeocamError, match=r"output \(16 x 16\) is not the size of its input"
    ):
        run(
            CoarseNet().eval(),
            scene(),
            Explanation(("b",), method=method),
            Tiling(32, 8),
            products=products,
        )  # type: ignore[arg-type]


def test_an_overlap_below_twice_the_stride_warns_with_one_that_works() -> None:
    model = LocalNet().eval()
    with pytest.warns(GeocamWarning, match=r"Tiling.overlap \(4\).*at least 8"):
        run(model, scene(), Explanation(("b",), method="hirescam"), Tiling(32, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # twice the stride, or one tile: no warning
        run(model, scene(), Explanation(("b",), method="hirescam"), Tiling(32, 8))
        run(model, scene(), Explanation(("b",), method="hirescam"), Tiling(128, 4))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_an_empty_region_is_refused(method: str) -> None:
    empty = BoxRegion(np.zeros((96, 128), np.float32))
    with pytest.raises(geocam.GeocamError, match=r"holds no valid pixel of b: nothing to explain"):
        run(
            LocalNet().eval(),
            scene(),
            Explanation(("b",), method=method, region=empty),
            Tiling(32, 8),
        )  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_non_finite_or_all_zero_maps_are_refused(method: str) -> None:
    with pytest.raises(geocam.GeocamError, match="are not finite"):
        run(OverflowNet().eval(), scene(), Explanation(("b",), method=method), Tiling(32, 8))  # type: ignore[arg-type]
    with pytest.raises(ZeroMap, match="are zero everywhere"):  # a GeocamError of its own
        run(DeadNet().eval(), scene(), Explanation(("b",), method=method), Tiling(32, 8))  # type: ignore[arg-type]
