"""How similar two maps of one scene are: rank correlation, SSIM and histogram entropy.

Pure NumPy functions on ``(H, W)`` maps, computed in float64 on the *valid* pixels only: a
pixel counts when it is finite in both maps (NaN is nodata in geocam's maps) and, when a
``valid`` mask is given, true there. They serve the randomisation check
(:mod:`geocam.evaluation.randomisation`) and any other comparison of maps.

- :func:`spearman`: Spearman's rank correlation, ties given their average rank.
- :func:`ssim`: the structural similarity index of Wang et al. (2004), Gaussian window
  (sigma 1.5, 11 x 11), local statistics taken over the valid pixels of each window.
- :func:`histogram_entropy`: Shannon entropy of a map's histogram, the complexity behind
  eMPRT (Hedström et al. 2024, :func:`entropy_rise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geocam.errors import GeocamError

SSIM_SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window, in pixels (Wang et al. 2004)."""
SSIM_RADIUS = 5
"""Half-width of SSIM's window: 11 x 11 pixels (Wang et al. 2004)."""
ENTROPY_BINS = 100
"""Histogram bins of :func:`histogram_entropy` (Quantus' default for eMPRT)."""


def common_pixels(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The ``(H, W)`` pixels where both maps are finite (and ``valid``, when given)."""
    if a.shape != b.shape:
        raise GeocamError(f"the maps to compare have different shapes, {a.shape} and {b.shape}")
    if a.ndim != 2:
        raise GeocamError(f"compare (H, W) maps one at a time, not maps of shape {a.shape}")
    keep: np.ndarray = np.isfinite(a) & np.isfinite(b)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    return keep


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-d array in float64; tied values all get their average rank."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]  # one past each run of ties
    mean_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-d arrays in float64; 0.0 when either is constant.

    A constant map orders no pixel before another, so it shares no ranking with any map: its
    correlation is taken as 0 (no similarity), not NaN. That is the case of a randomised
    model whose map is zero everywhere.
    """
    x = np.asarray(x, dtype=np.float64) - np.mean(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, dtype=np.float64)
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denominator == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Spearman's rank correlation of two ``(H, W)`` maps over their common valid pixels.

    Ties get their average rank (as ``scipy.stats.spearmanr``); a constant map correlates 0
    with anything (see :func:`pearson`).
    """
    keep = common_pixels(a, b, valid)
    if keep.sum() < 2:
        raise GeocamError("the maps share fewer than 2 valid pixels: nothing to correlate")
    x, y = np.asarray(a, np.float64)[keep], np.asarray(b, np.float64)[keep]
    return pearson(average_ranks(x), average_ranks(y))


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """The 1-d Gaussian of ``2 radius + 1`` taps summing to 1 (SSIM's window is its square)."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps: np.ndarray = np.exp(-(offsets**2) / (2.0 * sigma**2))
    window: np.ndarray = taps / taps.sum()
    return window


def _filter(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of ``image`` with ``taps`` x ``taps``; zeros beyond the edges."""
    radius = taps.size // 2
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        total = np.zeros_like(out)
        for k, tap in enumerate(taps):
            total += tap * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        out = total
    return out


def ssim_map(
    a: np.ndarray,
    b: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    data_range: float = 1.0,
    sigma: float = SSIM_SIGMA,
    radius: int = SSIM_RADIUS,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """The local SSIM index of two ``(H, W)`` maps (Wang et al. 2004, eq. 13-16), float64.

    Window: the ``(2 radius + 1)^2`` Gaussian of ``sigma`` (11 x 11, 1.5 by default), weighted
    (population) statistics, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L = data_range``.
    Nodata is handled by normalised convolution: each window's means, variances and
    covariance are taken over its valid pixels, with the Gaussian weights renormalised to sum
    to one (pixels beyond the map's edge count as nodata); where a window is wholly valid
    this is exactly Wang's SSIM. NaN where a pixel is not valid.
    """
    keep = common_pixels(a, b, valid)
    mask = keep.astype(np.float64)
    x = np.where(keep, np.asarray(a, np.float64), 0.0)
    y = np.where(keep, np.asarray(b, np.float64), 0.0)
    taps = gaussian_window(sigma, radius)
    weight = _filter(mask, taps)
    safe = np.where(keep, weight, 1.0)  # a valid pixel's window holds at least itself

    def local(image: np.ndarray) -> np.ndarray:
        return _filter(image, taps) / safe

    mu_x, mu_y = local(x), local(y)
    var_x = np.maximum(local(x * x) - mu_x**2, 0.0)
    var_y = np.maximum(local(y * y) - mu_y**2, 0.0)
    cov = local(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return np.where(keep, index, np.nan)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    data_range: float = 1.0,
    sigma: float = SSIM_SIGMA,
    radius: int = SSIM_RADIUS,
) -> float:
    """Mean SSIM of two ``(H, W)`` maps over their common valid pixels (see :func:`ssim_map`)."""
    index = ssim_map(a, b, valid, data_range=data_range, sigma=sigma, radius=radius)
    if not np.isfinite(index).any():
        raise GeocamError("the maps share no valid pixel: nothing to compare")
    return float(np.nanmean(index))


def histogram_entropy(
    values: np.ndarray, valid: np.ndarray | None = None, bins: int = ENTROPY_BINS
) -> float:
    """Shannon entropy (nats) of the histogram of ``|values|`` on ``bins`` bins over ``[0, max]``.

    The complexity measure of eMPRT: a map concentrated on few values has low entropy, a
    noisy one high. The range is the map's own, so the entropy does not depend on the map's
    scale; a map that is zero everywhere has entropy 0. Only finite (and ``valid``) pixels.
    """
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    keep = np.isfinite(magnitude)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    data = magnitude[keep]
    if data.size == 0:
        raise GeocamError("the map has no valid pixel: no histogram to take")
    peak = float(data.max())
    if peak == 0.0:
        return 0.0
    counts, _ = np.histogram(data, bins=bins, range=(0.0, peak))
    p = counts[counts > 0] / data.size
    return float(-(p * np.log(p)).sum())


def entropy_rise(original: float, randomised: float) -> float:
    """The eMPRT score (Hedström et al. 2024): ``(H_rand - H_orig) / H_orig``.

    The relative rise of the map's histogram entropy after full randomisation. Positive when
    the fully randomised model's map is more complex (noisier) than the original's, as it
    should be for an explanation that depends on the model; 0 for a map the model does not
    change. NaN when the original map's entropy is 0 (a constant map): undefined, never a
    silent number.
    """
    if original == 0.0:
        return math.nan
    return (randomised - original) / original


@dataclass(frozen=True)
class Similarity:
    """How similar a map is to the original one, on their common valid pixels."""

    spearman_signed: float
    """Spearman's rank correlation of the signed maps."""
    spearman_abs: float
    """Spearman's rank correlation of the absolute maps."""
    ssim: float
    """SSIM of the absolute maps, each divided by its own maximum (data range 1)."""


def scaled_magnitude(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``|values|`` divided by its maximum over ``keep`` (a zero map stays zero), NaN elsewhere.

    Maps of a randomised model differ from the original's in scale by orders of magnitude;
    dividing each by its own maximum compares their structure, not their scale (SSIM's
    luminance term would otherwise dominate).
    """
    magnitude = np.where(keep, np.abs(np.asarray(values, dtype=np.float64)), np.nan)
    peak = float(np.nanmax(magnitude)) if keep.any() else 0.0
    return magnitude / peak if peak > 0 else magnitude


def compare(original: np.ndarray, other: np.ndarray, valid: np.ndarray | None = None) -> Similarity:
    """All the similarity measures of ``other`` to ``original`` (signed ``(H, W)`` maps)."""
    keep = common_pixels(original, other, valid)
    return Similarity(
        spearman_signed=spearman(original, other, keep),
        spearman_abs=spearman(np.abs(original), np.abs(other), keep),
        ssim=ssim(scaled_magnitude(original, keep), scaled_magnitude(other, keep), keep),
    )
