"""Localisation: does the heat fall on the annotated class, more than chance would put it there.

Every figure is computed on the valid pixels only (scene and annotation both have data, the map
is finite) and reported with its chance level and the lift (value / chance): for classes that
cover much of a scene, raw localisation scores are trivially high (Klotz et al. 2025).

- relevance mass: the share of the positive heat on annotated pixels; chance = the area share
  ``p = K / N`` (``K`` annotated of ``N`` valid pixels).
- rank accuracy (Arras et al. 2022): the share of the ``K`` hottest pixels that are annotated;
  chance ``p``.
- IoU of the hottest ``n`` pixels with the annotation, ``I / (n + K - I)``, at ``n = K`` (q =
  the area share) and at Otsu's threshold of the positive heat; chance = the expected IoU of
  ``n`` pixels drawn at random, ``E[I / (n + K - I)]`` with ``I ~ Hypergeometric(N, K, n)``,
  summed exactly (about ``p / (2 - p)`` at ``n = K``).
- pointing game: whether the hottest pixel lies within ``tolerance_m`` metres of an annotated
  pixel (centre to centre); chance = the share of valid pixels within that distance.
- ROC-AUC of the map's values against the annotation (Mann-Whitney, ties as halves); chance 0.5.

Ties (a flat map, the zeros of the positive map) are broken at random, in expectation: a tie
straddling the top ``K`` contributes its annotated share. A uniform map thus scores exactly its
chance level on every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from geocam.errors import GeocamError
from geocam.sources import Grid

if TYPE_CHECKING:
    from torch import nn

    from geocam.evaluation.annotation import Annotation
    from geocam.evaluation.scene import Scene
    from geocam.models import ModelSpec
    from geocam.scene import Explanation, Runtime, SceneReport, Tiling


@dataclass(frozen=True)
class Figure:
    """One localisation figure with its chance level; ``lift`` is value / chance."""

    name: str
    value: float
    chance: float
    note: str = ""

    @property
    def lift(self) -> float:
        """How many times the chance level the value is (NaN when chance is 0)."""
        return self.value / self.chance if self.chance > 0 else math.nan


@dataclass(frozen=True)
class Localisation:
    """The figures of one map against one annotation, and what they were computed on."""

    figures: tuple[Figure, ...]
    pixels: int
    annotated: int
    tolerance_m: float
    pixel_m: tuple[float, float]
    otsu_threshold: float
    roc: tuple[np.ndarray, np.ndarray] = field(repr=False)
    """False- and true-positive rates of the positive map, from the hottest value down."""

    @property
    def area_share(self) -> float:
        """The annotated share of the valid pixels."""
        return self.annotated / self.pixels

    def figure(self, name: str) -> Figure:
        """The figure called ``name``."""
        for figure in self.figures:
            if figure.name == name:
                return figure
        raise KeyError(name)


# --- the figures, on the valid pixels' scores and labels --------------------------------------


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not labels.any() or labels.all():
        raise ValueError("the labels need both annotated and other pixels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (select the valid pixels first)")
    return scores, labels


def relevance_mass(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of the positive part of ``scores`` that lies on ``labels``."""
    scores, labels = _check(scores, labels)
    positive = np.maximum(scores, 0.0)
    total = positive.sum()
    if total <= 0:
        raise ValueError("the map has no positive value")
    return float(positive[labels].sum() / total)


def top_hits(scores: np.ndarray, labels: np.ndarray, count: int) -> float:
    """Expected number of labelled pixels among the ``count`` highest scores (ties at random)."""
    scores, labels = _check(scores, labels)
    if not 0 <= count <= scores.size:
        raise ValueError(f"count {count} outside 0..{scores.size}")
    if count == 0:
        return 0.0
    cut = np.partition(scores, scores.size - count)[scores.size - count]  # the count-th highest
    above = scores > cut
    tied = scores == cut
    taken = count - int(above.sum())  # how many of the tied pixels make the top
    return float(labels[above].sum() + taken * labels[tied].mean())


def rank_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """The share of the ``K`` highest scores that are labelled, ``K`` = the labelled count."""
    scores, labels = _check(scores, labels)
    count = int(labels.sum())
    return top_hits(scores, labels, count) / count


def iou(intersection: float, selected: int, labelled: int) -> float:
    """IoU of a set of ``selected`` pixels with ``labelled`` ones sharing ``intersection``."""
    union = selected + labelled - intersection
    return float(intersection / union) if union > 0 else math.nan


def top_iou(scores: np.ndarray, labels: np.ndarray, count: int) -> float:
    """IoU of the ``count`` highest scores (ties at random, in expectation) with the labels."""
    return iou(top_hits(scores, labels, count), count, int(np.count_nonzero(labels)))


def threshold_iou(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, int]:
    """IoU of the pixels scoring above ``threshold`` with the labels, and how many there are."""
    scores, labels = _check(scores, labels)
    selected = scores > threshold
    count = int(selected.sum())
    return iou(float((selected & labels).sum()), count, int(labels.sum())), count


def random_iou(total: int, labelled: int, selected: int) -> float:
    """Expected IoU of ``selected`` of ``total`` pixels drawn at random with ``labelled`` ones.

    ``E[I / (n + K - I)]`` with ``I ~ Hypergeometric(total, K, n)``, summed in float64 over
    every ``I`` within 40 standard deviations of its mean (the rest is below float64's reach).
    """
    if not (0 <= labelled <= total and 0 <= selected <= total):
        raise ValueError("labelled and selected must lie in 0..total")
    low, high = max(0, selected + labelled - total), min(selected, labelled)
    mean = selected * labelled / total if total else 0.0
    spread = math.sqrt(mean * (1 - labelled / total) * (total - selected) / max(total - 1, 1))
    # beyond 40 standard deviations the terms are below 1e-300: not summed (large scenes)
    low = max(low, math.floor(mean - 40 * spread) - 1)
    high = min(high, math.ceil(mean + 40 * spread) + 1)
    shared = np.arange(low, high + 1, dtype=np.float64)
    log_p = np.array(
        [
            _log_choose(labelled, i)
            + _log_choose(total - labelled, selected - i)
            - _log_choose(total, selected)
            for i in range(low, high + 1)
        ],
        dtype=np.float64,
    )
    union = selected + labelled - shared
    ratio = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    return float(np.sum(np.exp(log_p) * ratio))


def _log_choose(n: float, k: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score, from the highest down, from 0."""
    scores, labels = _check(scores, labels)
    values, inverse = np.unique(-scores, return_inverse=True)  # highest score first
    positives = np.bincount(inverse, weights=labels.astype(np.float64), minlength=values.size)
    counts = np.bincount(inverse, minlength=values.size).astype(np.float64)
    tpr = np.concatenate([[0.0], np.cumsum(positives) / labels.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(counts - positives) / (~labels).sum()])
    return fpr, tpr


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U with average ranks for ties, in float64."""
    scores, labels = _check(scores, labels)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # rank (from 0) of each value's first
    ranks = (first + (counts + 1) / 2.0)[inverse]  # 1-based average ranks
    positive = float(labels.sum())
    negative = float(labels.size - positive)
    u = ranks[labels].sum() - positive * (positive + 1) / 2
    return float(u / (positive * negative))


def pointing_game(scores: np.ndarray, near: np.ndarray) -> float:
    """1 if the highest score lies on a ``near`` pixel, 0 if not; for tied maxima, their share."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    near = np.asarray(near, dtype=bool).ravel()
    if scores.size == 0 or scores.shape != near.shape:
        raise ValueError("scores and near must be non-empty and of one shape")
    return float(near[scores == scores.max()].mean())


# --- distances on the grid ----------------------------------------------------------------------


def pixel_size_m(grid: Grid) -> tuple[float, float]:
    """A pixel's width and height in metres.

    Projected CRSs: the transform's steps times the CRS's metres per unit (US survey feet too).
    Geographic CRSs (EPSG:4326): the geodesic length of one pixel step, on the CRS's ellipsoid,
    at the scene's centre; its change across the scene (the cosine of the latitude) is ignored,
    e.g. 0.07 % over 0.3 degrees of latitude at 8 degrees south, 0.5 % at 45 degrees.
    """
    if grid.crs is None:
        raise GeocamError("the scene has no CRS: a distance in metres needs a georeferenced scene")
    t = grid.transform
    if grid.crs.is_geographic:
        from pyproj import CRS

        geod = CRS.from_user_input(grid.crs.to_wkt()).get_geod()
        assert geod is not None
        lon, lat = t * (grid.width / 2, grid.height / 2)
        width = geod.inv(lon, lat, lon + t.a, lat + t.d)[2]
        height = geod.inv(lon, lat, lon + t.b, lat + t.e)[2]
        return float(width), float(height)
    factor = grid.crs.linear_units_factor[1]
    return float(factor * math.hypot(t.a, t.d)), float(factor * math.hypot(t.b, t.e))


def within_distance(
    inside: np.ndarray, tolerance_m: float, pixel_m: tuple[float, float]
) -> np.ndarray:
    """Pixels whose centre lies within ``tolerance_m`` of an ``inside`` pixel's centre.

    Exact Euclidean distances on a grid of ``pixel_m`` (width, height) pixels: each row's
    nearest inside column, then the nearest over the rows within reach. Costs
    ``O(pixels x rows within reach)``.
    """
    inside = np.asarray(inside, dtype=bool)
    if tolerance_m < 0:
        raise ValueError("tolerance_m must not be negative")
    width_m, height_m = pixel_m
    rows, cols = inside.shape
    index = np.arange(cols, dtype=np.float64)
    left = np.maximum.accumulate(np.where(inside, index, -np.inf), axis=1)
    right = np.minimum.accumulate(np.where(inside, index, np.inf)[:, ::-1], axis=1)[:, ::-1]
    across = np.minimum(index - left, right - index) * width_m  # metres to the row's nearest
    reach = int(tolerance_m // height_m) if height_m > 0 else 0
    limit = tolerance_m**2 * (1 + 1e-9)  # a tolerance of exactly k pixels includes them
    near = np.zeros_like(inside)
    for shift in range(-min(reach, rows - 1), min(reach, rows - 1) + 1):
        target = slice(max(0, -shift), rows - max(0, shift))
        source = slice(max(0, shift), rows - max(0, -shift))
        near[target] |= across[source] ** 2 + (shift * height_m) ** 2 <= limit
    return near


# --- a map against an annotation ------------------------------------------------------------


def localise(
    positive: np.ndarray,
    inside: np.ndarray,
    valid: np.ndarray,
    pixel_m: tuple[float, float],
    *,
    tolerance_m: float = 0.0,
    signed: np.ndarray | None = None,
) -> Localisation:
    """Every localisation figure of a ``(H, W)`` positive map against an annotation.

    ``inside``: the annotated pixels; ``valid``: where scene and annotation have data (and the
    map is finite); ``pixel_m``: pixel width and height in metres (:func:`pixel_size_m`), for
    the pointing game's ``tolerance_m``. With ``signed``, the signed map's ROC-AUC too.
    """
    valid = np.asarray(valid, dtype=bool) & np.isfinite(positive)
    if signed is not None:
        valid &= np.isfinite(signed)
    inside = np.asarray(inside, dtype=bool) & valid
    scores, labels = np.asarray(positive, dtype=np.float64)[valid], inside[valid]
    count, total = int(labels.sum()), int(labels.size)
    if count == 0 or count == total:
        raise GeocamError(
            "the annotation covers no valid pixel of the scene" if count == 0 else
            "the annotation covers every valid pixel of the scene: nothing to tell it from"
        )  # fmt: skip
    if not (scores > 0).any():
        raise GeocamError("the map has no positive heat on the valid pixels: nothing to localise")
    from geocam.products import otsu

    share = count / total
    cut = otsu(scores[scores > 0])
    otsu_iou, otsu_count = threshold_iou(scores, labels, cut)
    near = within_distance(inside, tolerance_m, pixel_m)[valid]
    figures = [
        Figure("relevance mass", relevance_mass(scores, labels), share,
               "share of the positive heat inside; chance: the area share"),
        Figure("rank accuracy", rank_accuracy(scores, labels), share,
               "share of the top-K pixels inside (K = annotated); chance: the area share"),
        Figure("IoU top-q", top_iou(scores, labels, count), random_iou(total, count, count),
               f"q = area share = {share:.4f}; chance: E[IoU] of a random set of that size"),
        Figure("IoU Otsu", otsu_iou, random_iou(total, count, otsu_count),
               f"heat > {cut:.4g} (Otsu): {otsu_count} px; chance: E[IoU] of a random set"),
        Figure("pointing game", pointing_game(scores, near), float(near.mean()),
               f"maximum within {tolerance_m:g} m of the annotation; chance: share of pixels "
               "within it"),
        Figure("ROC-AUC", roc_auc(scores, labels), 0.5, "positive map; chance 0.5"),
    ]  # fmt: skip
    if signed is not None:
        signed_scores = np.asarray(signed, dtype=np.float64)[valid]
        figures.append(Figure("ROC-AUC signed", roc_auc(signed_scores, labels), 0.5, "signed map"))
    return Localisation(
        figures=tuple(figures), pixels=total, annotated=count, tolerance_m=tolerance_m,
        pixel_m=pixel_m, otsu_threshold=cut, roc=roc_curve(scores, labels),
    )  # fmt: skip


def scene_localisation(
    model: nn.Module,
    spec: ModelSpec,
    scene: Scene,
    explanation: Explanation,
    annotation: Annotation,
    *,
    tolerance_m: float = 0.0,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
) -> tuple[Localisation, np.ndarray, SceneReport]:
    """Explain the first class of ``explanation`` in ``scene`` and localise it in ``annotation``.

    The map is the scene engine's (:func:`geocam.evaluation.scene.scene_maps`): exactly what
    ``geocam explain`` writes. Returns the figures, the ``(2, H, W)`` positive and signed map,
    and the engine's report.
    """
    from dataclasses import replace

    from geocam.evaluation.scene import scene_maps

    explanation = replace(explanation, classes=explanation.classes[:1])
    heat, report = scene_maps(model, spec, scene, explanation, tiling=tiling, runtime=runtime)
    maps = heat[0]
    found = localise(
        maps[0], annotation.inside, scene.valid & annotation.valid, pixel_size_m(scene.grid),
        tolerance_m=tolerance_m, signed=maps[1],
    )  # fmt: skip
    return found, maps, report
