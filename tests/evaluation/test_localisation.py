"""Localisation figures against hand-computed values and independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geocam.errors import GeocamError
from geocam.evaluation.localisation import (
    localise,
    pixel_size_m,
    pointing_game,
    random_iou,
    rank_accuracy,
    relevance_mass,
    roc_auc,
    roc_curve,
    threshold_iou,
    top_hits,
    top_iou,
    within_distance,
)
from geocam.sources import Grid


def square_annotation(size: int = 12) -> np.ndarray:
    inside = np.zeros((size, size), dtype=bool)
    inside[3:7, 2:8] = True  # 24 of 144 pixels
    return inside


def test_heat_equal_to_the_annotation_localises_perfectly() -> None:
    inside = square_annotation()
    valid = np.ones_like(inside)
    found = localise(inside.astype(np.float32), inside, valid, (10.0, 10.0), signed=inside - 0.5)
    for name in ("relevance mass", "rank accuracy", "IoU top-q", "IoU Otsu", "pointing game"):
        assert found.figure(name).value == 1.0, name
    assert found.figure("ROC-AUC").value == 1.0
    assert found.figure("ROC-AUC signed").value == 1.0
    assert found.area_share == 24 / 144
    assert found.figure("relevance mass").lift == pytest.approx(144 / 24, rel=1e-12)


def test_uniform_heat_scores_the_chance_level() -> None:
    inside = square_annotation()
    valid = np.ones_like(inside)
    found = localise(np.full(inside.shape, 0.3), inside, valid, (10.0, 10.0), tolerance_m=12)
    share = 24 / 144
    assert found.figure("relevance mass").value == pytest.approx(share, rel=1e-12)
    assert found.figure("rank accuracy").value == pytest.approx(share, rel=1e-12)
    assert found.figure("ROC-AUC").value == 0.5
    # every pixel ties for the maximum: the hit rate is the share of pixels near the annotation
    game = found.figure("pointing game")
    assert game.value == pytest.approx(game.chance, rel=1e-12)
    # within 12 m: the 6 x 8 block around the 4 x 6 square less its corners (14.1 m away)
    assert game.chance == pytest.approx((6 * 8 - 4) / 144, rel=1e-12)
    # top-q with ties at random: E[I] = K * share, IoU = E[I] / (2K - E[I])
    expected_i = 24 * share
    assert found.figure("IoU top-q").value == pytest.approx(expected_i / (48 - expected_i))


def test_hand_computed_figures_on_a_small_map() -> None:
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    # positive heat 15 in all, 5 + 3 + 2 = 10 inside
    assert relevance_mass(scores, labels) == pytest.approx(10 / 15)
    # top 3 = {5, 4, 3}: 2 of them inside
    assert rank_accuracy(scores, labels) == pytest.approx(2 / 3)
    # top 3 vs 3 labelled, 2 shared: IoU 2 / 4
    assert top_iou(scores, labels, 3) == pytest.approx(0.5)
    # above 2.5: {5, 4, 3}, the same set
    assert threshold_iou(scores, labels, 2.5) == (pytest.approx(0.5), 3)
    # pairs (positive, negative) ordered right: 5 beats all 5, 3 and 2 beat 4 of 5 -> 13 / 15
    assert roc_auc(scores, labels) == pytest.approx(13 / 15)
    assert pointing_game(scores, labels) == 1.0
    assert pointing_game(-scores, labels) == 0.0


def test_ties_straddling_the_top_count_give_their_labelled_share() -> None:
    scores = np.array([3.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    labels = np.array([0, 1, 1, 0, 0, 1], dtype=bool)
    # top 3: the 3, then 2 of the four tied 1s whose labelled share is 1/2 -> 0 + 2 * 0.5
    assert top_hits(scores, labels, 3) == pytest.approx(1.0)


def test_roc_auc_matches_sklearn_and_the_curve_area() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 500).astype(np.float32)  # many ties
    labels = rng.random(500) < 0.2 + 0.1 * scores
    expected = metrics.roc_auc_score(labels, scores.astype(np.float64))
    assert roc_auc(scores, labels) == pytest.approx(expected, rel=1e-12)
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, rel=1e-12)


def test_random_iou_is_the_mean_over_every_subset() -> None:
    total, labelled = 8, 3
    annotated = set(range(labelled))
    for selected in (1, 3, 5, 8):
        subsets = itertools.combinations(range(total), selected)
        ious = [len(annotated & set(s)) / len(annotated | set(s)) for s in subsets]
        assert random_iou(total, labelled, selected) == pytest.approx(np.mean(ious), rel=1e-12)
    # against scipy's hypergeometric distribution over every possible intersection
    stats = pytest.importorskip("scipy.stats")
    total, labelled, selected = 30_000, 9_000, 12_000
    shared = np.arange(0, labelled + 1)
    pmf = stats.hypergeom(total, labelled, selected).pmf(shared)
    expected = np.sum(pmf * shared / (selected + labelled - shared))
    assert random_iou(total, labelled, selected) == pytest.approx(expected, rel=1e-10)
    # large scenes: close to the plug-in p / (2 - p) at n = K
    share = 0.3
    assert random_iou(100_000, 30_000, 30_000) == pytest.approx(share / (2 - share), rel=1e-3)


def test_within_distance_equals_brute_force_distances() -> None:
    rng = np.random.default_rng(5)
    inside = rng.random((15, 11)) < 0.05
    inside[7, 5] = True
    width, height = 20.0, 30.0
    rows, cols = np.indices(inside.shape)
    points = np.argwhere(inside)
    distances = np.min(
        np.hypot(
            (rows[..., None] - points[:, 0]) * height, (cols[..., None] - points[:, 1]) * width
        ),
        axis=-1,
    )
    for tolerance in (0.0, 20.0, 36.0, 60.0, 95.0):
        near = within_distance(inside, tolerance, (width, height))
        np.testing.assert_array_equal(near, distances <= tolerance + 1e-9)


def test_pixel_size_in_metres() -> None:
    feet = Grid(CRS.from_epsg(2264), Affine(100, 0, 0, 0, -100, 0), 10, 10)  # US survey feet
    assert pixel_size_m(feet) == pytest.approx((30.48006096, 30.48006096))
    # one degree of longitude on the WGS 84 equator: 111319.49 m; of latitude there 110574.4 m
    equator = Grid(CRS.from_epsg(4326), Affine(1e-3, 0, -0.5, 0, -1e-3, 0.5), 1000, 1000)
    width, height = pixel_size_m(equator)
    assert width == pytest.approx(111.31949, rel=1e-6)
    assert height == pytest.approx(110.5744, rel=1e-5)
    # at 60 degrees north a degree of longitude is about half as long
    north = Grid(CRS.from_epsg(4326), Affine(1e-3, 0, 0, 0, -1e-3, 60.5), 1000, 1000)
    assert pixel_size_m(north)[0] == pytest.approx(55.80, rel=1e-3)
    with pytest.raises(GeocamError, match="no CRS"):
        pixel_size_m(Grid(None, Affine.identity(), 2, 2))


def test_invalid_pixels_count_nowhere() -> None:
    inside = square_annotation()
    heat = inside.astype(np.float64)
    valid = np.ones_like(inside)
    valid[0, :] = False
    heat[0, :] = 1000.0  # hot nodata would dominate every figure if it counted
    heat[1, 0] = np.nan  # a non-finite map value is invalid too
    found = localise(heat, inside, valid, (1.0, 1.0))
    assert found.pixels == 144 - 12 - 1
    assert found.figure("relevance mass").value == 1.0
    assert found.figure("pointing game").value == 1.0


def test_degenerate_annotations_and_maps_are_refused() -> None:
    inside = square_annotation()
    valid = np.ones_like(inside)
    with pytest.raises(GeocamError, match="covers no valid pixel"):
        localise(np.ones(inside.shape), inside, ~inside, (1.0, 1.0))
    with pytest.raises(GeocamError, match="every valid pixel"):
        localise(np.ones(inside.shape), inside, inside, (1.0, 1.0))
    with pytest.raises(GeocamError, match="no positive heat"):
        localise(-np.ones(inside.shape), inside, valid, (1.0, 1.0))
