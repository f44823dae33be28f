"""Baselines of the removal metrics, against hand-computed values and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import torch

from geocam.errors import GeocamError
from geocam.evaluation.perturbation import (
    ROAD_WEIGHTS,
    baseline_fill,
    blur_fill,
    epoch_fill,
    epoch_groups,
    mean_fill,
    noisy_linear_imputation,
)
from geocam.evaluation.scene import Scene
from geocam.models import ModelSpec

from .faithfulness_networks import SPEC, linear_scene


def test_mean_fill_is_each_bands_mean_over_valid_pixels() -> None:
    scene = linear_scene()
    scene.pixels[:, ~scene.valid] = 1000  # nodata never counts
    fill = mean_fill(scene)
    for band in range(3):
        assert fill[band, 0, 0] == pytest.approx(scene.pixels[band][scene.valid].mean())
    # by hand on a 1 x 3 scene with a nodata pixel
    tiny = Scene(np.array([[[2.0, 4.0, 99.0]]], np.float32), np.array([[True, True, False]]),
                 scene.grid)  # fmt: skip
    np.testing.assert_array_equal(mean_fill(tiny), [[[3.0, 3.0, 3.0]]])


def test_blur_matches_a_gaussian_filter_inside_and_ignores_nodata() -> None:
    scene = linear_scene(nodata=False)
    sigma = 2.0
    blurred = blur_fill(scene, sigma)
    reference = scipy.ndimage.gaussian_filter(
        scene.pixels.astype(np.float64), (0, sigma, sigma), truncate=3.0
    )
    inner = (slice(None), slice(6, -6), slice(6, -6))  # beyond the kernel's reach of the edge
    np.testing.assert_allclose(blurred[inner], reference[inner], rtol=1e-5)
    # a constant scene stays constant up to its edges; nodata (at 1000) never leaks in
    flat = np.full_like(scene.pixels, 5.0)
    valid = scene.valid.copy()
    valid[10:20, 10:20] = False
    flat[:, ~valid] = 1000.0
    np.testing.assert_allclose(blur_fill(Scene(flat, valid, scene.grid), sigma)[:, valid], 5.0,
                               rtol=1e-5)  # fmt: skip
    with pytest.raises(GeocamError, match="sigma"):
        blur_fill(scene, 0)


def test_epoch_fill_puts_the_earlier_rasters_bands_in_place_of_the_later_ones() -> None:
    scene = linear_scene()
    pixels = np.concatenate([scene.pixels[:2], scene.pixels[:2] + 1])  # 2 rasters of 2 bands
    pair = Scene(pixels, scene.valid, scene.grid)
    filled = epoch_fill(pair, (2, 2))
    np.testing.assert_array_equal(filled[2:], pixels[:2])
    np.testing.assert_array_equal(filled[:2], pixels[:2])
    spec = ModelSpec("x", "y", 4, ("a", "b"), bands=((1, 2), (3, 4)))
    assert epoch_groups(spec) == (2, 2)
    np.testing.assert_array_equal(baseline_fill(pair, spec, "epoch"), filled)
    with pytest.raises(GeocamError, match="two or more rasters"):
        baseline_fill(scene, SPEC, "epoch")
    with pytest.raises(GeocamError, match="as many bands"):
        epoch_fill(Scene(pixels[:3], scene.valid, scene.grid), (1, 2))
    with pytest.raises(GeocamError, match="unknown baseline"):
        baseline_fill(scene, SPEC, "zeros")  # type: ignore[arg-type]


def test_road_imputation_of_one_pixel_is_its_neighbours_weighted_mean() -> None:
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3) ** 2
    valid = np.ones((3, 3), dtype=bool)
    removed = np.zeros((3, 3), dtype=bool)
    removed[1, 1] = True
    out = noisy_linear_imputation(image, valid, removed, noise=0, tolerance=1e-12)
    # edges 1, 9, 25, 49 weigh 1/6; corners 0, 4, 36, 64 weigh 1/12
    assert out[0, 1, 1] == pytest.approx((1 + 9 + 25 + 49) / 6 + (0 + 4 + 36 + 64) / 12)
    np.testing.assert_array_equal(out[0][~removed], image[0][~removed])
    # a corner has three neighbours: their weights are renormalised (1/6, 1/6, 1/12 of 5/12)
    corner = np.zeros((3, 3), dtype=bool)
    corner[0, 0] = True
    out = noisy_linear_imputation(image, valid, corner, noise=0, tolerance=1e-12)
    assert out[0, 0, 0] == pytest.approx((1 / 6 + 9 / 6 + 16 / 12) / (5 / 12), rel=1e-6)


def test_road_imputation_of_two_neighbours_solves_them_jointly() -> None:
    # 3 x 4, the two middle pixels removed: each has all 8 neighbours, one of them unknown
    image = np.array([[[1, 2, 3, 4], [5, 0, 0, 8], [9, 10, 11, 12]]], dtype=np.float32)
    valid = np.ones((3, 4), dtype=bool)
    removed = np.zeros((3, 4), dtype=bool)
    removed[1, 1:3] = True
    b1 = (2 + 5 + 10) / 6 + (1 + 3 + 9 + 11) / 12  # x1 - x2 / 6 = b1
    b2 = (3 + 8 + 11) / 6 + (2 + 4 + 10 + 12) / 12  # x2 - x1 / 6 = b2
    x1 = (b1 + b2 / 6) / (1 - 1 / 36)
    x2 = b2 + x1 / 6
    out = noisy_linear_imputation(image, valid, removed, noise=0, tolerance=1e-12)
    np.testing.assert_allclose(out[0, 1, 1:3], [x1, x2], rtol=1e-6)


def road_by_scipy(image: np.ndarray, valid: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's system built pixel by pixel and solved by scipy's direct solver."""
    height, width = valid.shape
    unknown = np.argwhere(removed)
    number = {tuple(p): i for i, p in enumerate(unknown)}
    matrix = scipy.sparse.lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), image.shape[0]))
    for i, (r, c) in enumerate(unknown):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc, w = r + dr, c + dc, ROAD_WEIGHTS[dr + 1, dc + 1]
                if (dr, dc) == (0, 0) or not (0 <= rr < height and 0 <= cc < width):
                    continue
                if not valid[rr, cc]:
                    continue
                matrix[i, i] += w
                if removed[rr, cc]:
                    matrix[i, number[(rr, cc)]] -= w
                else:
                    rhs[i] += w * image[:, rr, cc]
    solved = scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs)
    out = image.astype(np.float64).copy()
    out[:, removed] = np.asarray(solved).reshape(len(unknown), -1).T
    return out


def test_road_imputation_equals_a_direct_sparse_solve() -> None:
    scene = linear_scene(40, 48)
    rng = np.random.default_rng(2)
    removed = (rng.random(scene.valid.shape) < 0.6) & scene.valid
    removed[15:35, 20:45] = True  # a large hole as well, beside the nodata corner
    removed &= scene.valid
    expected = road_by_scipy(scene.pixels, scene.valid, removed)
    out = noisy_linear_imputation(scene.pixels, scene.valid, removed, noise=0, tolerance=1e-12)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_road_noise_is_seeded_scaled_and_only_on_removed_pixels() -> None:
    scene = linear_scene(nodata=False)
    removed = np.zeros_like(scene.valid)
    removed[5:25, 5:25] = True
    clean = noisy_linear_imputation(scene.pixels, scene.valid, removed, noise=0)
    noisy = [
        noisy_linear_imputation(
            scene.pixels,
            scene.valid,
            removed,
            noise=0.5,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    np.testing.assert_array_equal(noisy[0][:, ~removed], scene.pixels[:, ~removed])
    spread = (noisy[0] - clean)[:, removed].std(axis=1)
    expected = 0.5 * scene.pixels.reshape(3, -1).std(axis=1, ddof=1)
    np.testing.assert_allclose(spread, expected, rtol=0.1)  # 400 draws per band


def test_road_with_everything_removed_takes_the_means() -> None:
    scene = linear_scene()
    out = noisy_linear_imputation(scene.pixels, scene.valid, scene.valid.copy(), noise=0)
    np.testing.assert_allclose(out[:, scene.valid], mean_fill(scene)[:, scene.valid], rtol=1e-6)
    np.testing.assert_array_equal(out[:, ~scene.valid], scene.pixels[:, ~scene.valid])
