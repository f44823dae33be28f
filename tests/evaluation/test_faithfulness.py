"""Deletion and insertion curves against hand-computed values and a known linear score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geocam.config import load_config
from geocam.errors import GeocamError
from geocam.evaluation.faithfulness import (
    deletion_insertion,
    morf_order,
    plot_curves,
    step_counts,
    trapezoid,
)
from geocam.evaluation.perturbation import mean_fill
from geocam.evaluation.scene import Scene, load_scene, scene_maps
from geocam.evaluation.scores import RegionScorer
from geocam.models import build_model
from geocam.scene import Explanation, Runtime, Tiling

from .faithfulness_networks import SPEC, contributions, linear_net, linear_scene

CPU = Runtime(device="cpu", progress=False)
ROOT = Path(__file__).parents[2]


def linear_scorer(scene: Scene) -> RegionScorer:
    explanation = Explanation(classes=("target",), region="all")
    return RegionScorer(linear_net(), SPEC, scene, explanation, tiling=Tiling(16, 8),
                        runtime=CPU)  # fmt: skip


def truthful_heat(scene: Scene) -> np.ndarray:
    """The map that ranks pixels exactly by what they add to the score over the mean."""
    signed = -contributions(scene, mean_fill(scene))
    return np.stack([np.maximum(signed, 0), signed])


def test_trapezoid_and_step_counts_by_hand() -> None:
    assert trapezoid(np.array([0, 0.5, 1]), np.array([2, 1, 0])) == pytest.approx(1.0)
    assert trapezoid(np.array([0, 0.25, 1]), np.array([4, 4, 0])) == pytest.approx(2.5)
    assert step_counts(7, 4).tolist() == [0, 2, 4, 5, 7]  # rint(1.75), rint(3.5), rint(5.25)
    with pytest.raises(GeocamError, match="steps"):
        step_counts(7, 0)


def test_order_is_by_positive_then_signed_then_raster_order() -> None:
    positive = np.array([[0.0, 2.0, 0.0], [2.0, 0.0, 1.0]])
    signed = np.array([[-1.0, 2.0, -3.0], [2.0, -0.5, 1.0]])
    valid = np.array([[True, True, True], [True, False, True]])
    # 2.0 at 1 and 3 (raster order), 1.0 at 5, then zeros by signed: -1 (0) before -3 (2)
    assert morf_order(positive, signed, valid).tolist() == [1, 3, 5, 0, 2]
    with pytest.raises(GeocamError, match="not finite"):
        morf_order(np.full((2, 3), np.nan), signed, valid)


def test_curves_equal_the_linear_scores_sums_of_contributions() -> None:
    scene = linear_scene()
    scorer = linear_scorer(scene)
    heat = truthful_heat(scene)
    report = deletion_insertion(scorer, heat, steps=10, seeds=5, seed=4)
    delta = contributions(scene, mean_fill(scene)).ravel()
    total = int(scene.valid.sum())
    counts = step_counts(total, 10)
    morf = morf_order(heat[0], heat[1], scene.valid)
    rng = np.random.default_rng(4)
    randoms = [rng.permutation(morf) for _ in range(5)]
    original = float(scorer.original[0])

    def deleted(order: np.ndarray) -> np.ndarray:
        return np.array([original + delta[order[:c]].sum() for c in counts])

    region = float(scene.valid.sum())
    np.testing.assert_allclose(report.deletion.sums, deleted(morf), rtol=1e-12)
    np.testing.assert_allclose(report.deletion.means, deleted(morf) / region, rtol=1e-12)
    np.testing.assert_allclose(report.deletion_lerf.sums, deleted(morf[::-1]), rtol=1e-12)
    np.testing.assert_allclose(report.deletion.fractions, counts / total)
    for curve, order in zip(report.random_deletion, randoms, strict=True):
        np.testing.assert_allclose(curve.sums, deleted(order), rtol=1e-12)
    # insertion: start from the mean everywhere, restore the most relevant first
    inserted = total - counts[::-1]
    restored = np.array([original + delta[morf[k:]].sum() for k in inserted])
    np.testing.assert_allclose(report.insertion.sums, restored, rtol=1e-12)
    np.testing.assert_allclose(report.insertion.fractions, inserted / total)
    assert report.insertion.fractions[0] == 0 and report.insertion.fractions[-1] == 1
    expected_auc = trapezoid(counts / total, deleted(morf) / region)
    assert report.deletion.auc == pytest.approx(expected_auc, rel=1e-12)
    assert report.lerf_minus_morf == pytest.approx(
        (trapezoid(counts / total, deleted(morf[::-1]) / region) - expected_auc) / 2, rel=1e-12
    )


def test_the_truthful_map_beats_random_order_and_its_inverse_loses() -> None:
    scene = linear_scene()
    scorer = linear_scorer(scene)
    heat = truthful_heat(scene)
    good = deletion_insertion(scorer, heat, steps=10, seeds=5)
    for curve in good.random_deletion:  # the sorted order is the lowest curve at every step
        assert (good.deletion.sums <= curve.sums + 1e-9).all()
    assert good.deletion.auc < good.random_deletion_auc[0] - 3 * good.random_deletion_auc[1]
    assert good.insertion.auc > good.random_insertion_auc[0] + 3 * good.random_insertion_auc[1]
    assert good.lerf_minus_morf > 0
    inverse = np.stack([np.maximum(-heat[1], 0), -heat[1]])
    bad = deletion_insertion(scorer, inverse, steps=10, seeds=5)
    assert bad.deletion.auc > bad.random_deletion_auc[0]
    assert bad.lerf_minus_morf < 0


def test_report_serialises_says_what_it_is_and_plots(tmp_path: Path) -> None:
    scene = linear_scene()
    report = deletion_insertion(linear_scorer(scene), truthful_heat(scene), steps=10, seeds=5)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["baseline"] == "mean" and data["score"] == "logits"
    assert "mean score per original region pixel" in data["score_statistic"]
    assert data["auc"]["random_seeds"] == 5
    assert data["auc"]["deletion_morf"] == pytest.approx(report.deletion.auc)
    assert len(data["curves"]["deletion_morf"]["sum"]) == 11
    lines = report.table()
    assert any("Song et al. 2023" in line for line in lines)
    assert any("(LeRF - MoRF) / 2" in line for line in lines)
    png = plot_curves(report, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_road_and_blur_baselines_run_and_start_from_the_original() -> None:
    scene = linear_scene(24, 32)
    scorer = linear_scorer(scene)
    for baseline in ("road", "blur"):
        report = deletion_insertion(scorer, truthful_heat(scene), baseline=baseline, steps=4,
                                    seeds=2, sigma=3.0)  # fmt: skip
        assert report.deletion.sums[0] == pytest.approx(scorer.original[0], rel=1e-12)
        assert report.insertion.sums[-1] == pytest.approx(scorer.original[0], rel=1e-12)
        assert np.isfinite(report.deletion_lerf.sums).all()
    assert report.baseline == "blur (sigma 3 px)"


def test_bad_requests_say_what_to_fix() -> None:
    scene = linear_scene()
    scorer = linear_scorer(scene)
    with pytest.raises(GeocamError, match="positive, signed"):
        deletion_insertion(scorer, truthful_heat(scene)[0])
    with pytest.raises(GeocamError, match="seeds"):
        deletion_insertion(scorer, truthful_heat(scene), seeds=1)
    with pytest.raises(GeocamError, match="not scored"):
        deletion_insertion(scorer, truthful_heat(scene), class_name="other")


@pytest.mark.slow
def test_raleigh_forest_grad_cam_deletes_faster_than_random(shared_data: Path) -> None:
    preset = load_config(ROOT / "configs" / "landcover_raleigh.yaml")
    model = build_model(preset.spec).eval()
    scene = load_scene(shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif",
                       preset.spec, fallback_nodata=preset.nodata)  # fmt: skip
    explanation = Explanation(classes=("forest",))
    tiling = Tiling(tile=256, overlap=64)
    heat, _ = scene_maps(model, preset.spec, scene, explanation, tiling=tiling, runtime=CPU)
    scorer = RegionScorer(model, preset.spec, scene, explanation, tiling=tiling, runtime=CPU)
    report = deletion_insertion(scorer, heat[0], steps=5, seeds=3)
    assert report.deletion.auc < report.random_deletion_auc[0]
    assert report.lerf_minus_morf > 0
