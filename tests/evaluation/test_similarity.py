"""Similarity measures against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geocam.errors import GeocamError
from geocam.evaluation.similarity import (
    average_ranks,
    compare,
    entropy_rise,
    gaussian_window,
    histogram_entropy,
    spearman,
    ssim,
    ssim_map,
)

stats = pytest.importorskip("scipy.stats")


# --- Spearman --------------------------------------------------------------------------------


def test_average_ranks_by_hand() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([10.0, 30.0, 20.0])), [1, 3, 2])
    # the two 5s share ranks 2 and 3: 2.5 each; the three 7s share 4, 5, 6: 5 each
    ranks = average_ranks(np.array([5.0, 1.0, 7.0, 5.0, 7.0, 7.0]))
    np.testing.assert_array_equal(ranks, [2.5, 1, 5, 2.5, 5, 5])


def test_spearman_by_hand() -> None:
    # ranks 1 2 3 4 vs 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[10.0, 30.0], [20.0, 40.0]])
    assert spearman(a, b) == pytest.approx(0.8, abs=1e-12)
    # ties: ranks (1.5, 1.5, 3) vs (1, 2, 3): Pearson of the ranks = 1.5 / sqrt(1.5 * 2)
    tied = spearman(np.array([[1.0, 1.0, 2.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert tied == pytest.approx(1.5 / math.sqrt(3.0), abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_matches_scipy_with_ties_and_nodata() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, size=(40, 30)).astype(np.float64)  # many ties
    b = a + rng.normal(0, 2, size=a.shape)
    b[::7, ::5] = np.nan  # nodata in one map
    valid = np.ones(a.shape, bool)
    valid[:4] = False
    keep = valid & np.isfinite(b)
    expected = stats.spearmanr(a[keep], b[keep]).statistic
    assert spearman(a, b, valid) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 0.95  # a case that is neither trivial nor degenerate


def test_spearman_of_a_constant_map_is_zero_and_empty_is_refused() -> None:
    a = np.arange(12.0).reshape(3, 4)
    assert spearman(a, np.zeros_like(a)) == 0.0
    with pytest.raises(GeocamError, match="fewer than 2 valid pixels"):
        spearman(a, a, np.zeros(a.shape, bool))
    with pytest.raises(GeocamError, match="different shapes"):
        spearman(a, a[:2])


# --- SSIM ------------------------------------------------------------------------------------


def _reference_ssim_at(
    x: np.ndarray, y: np.ndarray, valid: np.ndarray, i: int, j: int, L: float = 1.0
) -> float:
    """Wang et al. (2004) eq. 13-16 at one pixel, written out: 11 x 11 Gaussian window of
    sigma 1.5 over the window's valid pixels, weights renormalised to sum to 1."""
    num = den = 0.0
    sx = sy = sxx = syy = sxy = 0.0
    for di in range(-5, 6):
        for dj in range(-5, 6):
            r, c = i + di, j + dj
            if not (0 <= r < x.shape[0] and 0 <= c < x.shape[1]) or not valid[r, c]:
                continue
            w = math.exp(-(di * di + dj * dj) / (2 * 1.5**2))
            den += w
            sx += w * x[r, c]
            sy += w * y[r, c]
            sxx += w * x[r, c] ** 2
            syy += w * y[r, c] ** 2
            sxy += w * x[r, c] * y[r, c]
    mx, my = sx / den, sy / den
    vx, vy, cxy = sxx / den - mx * mx, syy / den - my * my, sxy / den - mx * my
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    return num / ((mx * mx + my * my + c1) * (vx + vy + c2))


def test_ssim_of_constant_maps_by_hand() -> None:
    # constant windows: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1); C1 = 1e-4
    a, b = np.full((20, 20), 1.0), np.full((20, 20), 0.5)
    expected = (2 * 0.5 + 1e-4) / (1.25 + 1e-4)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)
    x = np.random.default_rng(0).random((20, 20))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_gaussian_window_is_wangs() -> None:
    taps = gaussian_window()
    assert taps.size == 11 and taps.sum() == pytest.approx(1.0)
    assert taps[5] / taps[6] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_ssim_map_matches_a_literal_implementation_with_nodata() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((24, 21))
    y = 0.6 * x + 0.4 * rng.random(x.shape)
    valid = np.ones(x.shape, bool)
    valid[3:9, 12:16] = False  # a nodata hole
    x_nan = np.where(valid, x, np.nan)
    index = ssim_map(x_nan, y)
    assert np.isnan(index[~valid]).all()
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if valid[i, j]:
                assert index[i, j] == pytest.approx(
                    _reference_ssim_at(x, y, valid, i, j), abs=1e-12
                ), (i, j)
    # an interior pixel far from the hole uses the whole window: Wang's SSIM exactly
    assert ssim(x_nan, y) == pytest.approx(np.nanmean(index), abs=1e-15)
    assert 0.2 < ssim(x_nan, y) < 0.95


# --- entropy and eMPRT -----------------------------------------------------------------------


def test_histogram_entropy_by_hand() -> None:
    # half the pixels 0, half the maximum: two bins of p = 1/2, H = ln 2
    values = np.array([[0.0, 3.0], [0.0, -3.0]])  # |.| is taken
    assert histogram_entropy(values) == pytest.approx(math.log(2), abs=1e-12)
    # four equally filled bins of 100 over [0, 4]: ln 4; NaN is nodata
    quarters = np.array([[0.0, 1.0, 2.0, 4.0, np.nan]])
    assert histogram_entropy(quarters) == pytest.approx(math.log(4), abs=1e-12)
    assert histogram_entropy(np.zeros((3, 3))) == 0.0
    scaled = np.random.default_rng(2).random((30, 30))
    assert histogram_entropy(1e-6 * scaled) == pytest.approx(histogram_entropy(scaled))


def test_entropy_rise_is_relative() -> None:
    assert entropy_rise(2.0, 3.0) == pytest.approx(0.5)
    assert entropy_rise(2.0, 2.0) == 0.0
    assert math.isnan(entropy_rise(0.0, 1.0))


def test_compare_on_valid_pixels_and_scale_free() -> None:
    rng = np.random.default_rng(4)
    signed = rng.normal(size=(30, 30))
    signed[0] = np.nan
    same = compare(signed, 1e-5 * signed)
    assert same.spearman_signed == pytest.approx(1.0)
    assert same.spearman_abs == pytest.approx(1.0)
    assert same.ssim == pytest.approx(1.0)
    flipped = compare(signed, -signed)
    assert flipped.spearman_signed == pytest.approx(-1.0)
    assert flipped.spearman_abs == pytest.approx(1.0)
    zero = compare(signed, np.zeros_like(signed))
    assert zero.spearman_abs == 0.0 and zero.ssim < 0.1
