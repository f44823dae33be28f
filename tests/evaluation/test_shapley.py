"""Exact Shapley values over hotspot regions: by hand, by permutations, on a linear score."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from geocam.config import load_config
from geocam.errors import GeocamError
from geocam.evaluation.hotspots import Hotspot, map_hotspots
from geocam.evaluation.perturbation import mean_fill
from geocam.evaluation.scene import Scene, load_scene, scene_maps
from geocam.evaluation.scores import RegionScorer
from geocam.evaluation.shapley import hotspot_shapley, plot_shapley, shapley_values
from geocam.models import build_model
from geocam.scene import Explanation, Runtime, Tiling

from .faithfulness_networks import SPEC, contributions, linear_net, linear_scene

CPU = Runtime(device="cpu", progress=False)
ROOT = Path(__file__).parents[2]


def by_permutations(values: np.ndarray) -> np.ndarray:
    """Shapley values as the mean marginal contribution over every order of the players."""
    k = len(values).bit_length() - 1
    phi = np.zeros(k)
    for order in itertools.permutations(range(k)):
        members = 0
        for player in order:
            phi[player] += values[members | 1 << player] - values[members]
            members |= 1 << player
    return phi / math.factorial(k)


def test_two_players_by_hand() -> None:
    # v(none) 0, v({0}) 1, v({1}) 2, v({0, 1}) 4
    phi = shapley_values(np.array([0.0, 1.0, 2.0, 4.0]))
    np.testing.assert_allclose(phi, [0.5 * 1 + 0.5 * (4 - 2), 0.5 * 2 + 0.5 * (4 - 1)])
    with pytest.raises(GeocamError, match="2\\^k"):
        shapley_values(np.zeros(6))


def test_values_equal_the_permutation_definition_efficiency_and_symmetry() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=16)
    phi = shapley_values(values)
    np.testing.assert_allclose(phi, by_permutations(values), rtol=1e-12, atol=1e-12)
    assert phi.sum() == pytest.approx(values[-1] - values[0], rel=1e-12)
    # players 1 and 2 symmetric: swapping them never changes a coalition's value
    symmetric = np.array([values[m] + values[(m & ~6) | ((m >> 1 & 1) << 2) | ((m >> 2 & 1) << 1)]
                          for m in range(16)])  # fmt: skip
    phi = shapley_values(symmetric)
    assert phi[1] == pytest.approx(phi[2], rel=1e-12)


def players(scene: Scene) -> list[Hotspot]:
    masks = [np.zeros(scene.valid.shape, dtype=bool) for _ in range(4)]
    masks[0][8:16, 8:16] = True
    masks[1][8:16, 24:40] = True
    masks[2][24:32, 8:16] = True
    masks[3][24:32, 28:36] = True
    return [Hotspot(i + 1, m, heat=float(10 - i)) for i, m in enumerate(masks)]


def test_an_additive_score_gives_each_region_its_own_contribution() -> None:
    scene = linear_scene()
    # region 3 is a copy of region 1's pixels: a symmetric pair of players
    scene.pixels[:, 24:32, 8:16] = scene.pixels[:, 8:16, 8:16]
    explanation = Explanation(classes=("target",), region="all")
    scorer = RegionScorer(linear_net(), SPEC, scene, explanation, tiling=Tiling(16, 8),
                          runtime=CPU)  # fmt: skip
    hotspots = players(scene)
    report = hotspot_shapley(scorer, hotspots, k=4)
    delta = contributions(scene, mean_fill(scene))
    expected = [-delta[h.mask].sum() for h in hotspots]
    np.testing.assert_allclose(report.values, expected, rtol=1e-9, atol=1e-9)
    assert report.values[0] == pytest.approx(report.values[2], rel=1e-12)
    assert report.full == pytest.approx(scorer.original[0], rel=1e-12)
    assert report.efficiency_error < 1e-4
    assert len(report.coalitions) == 16
    assert [p["id"] for p in report.to_dict()["players"]] == [1, 2, 3, 4]
    assert "efficiency error" in report.table()[-1]
    top = hotspot_shapley(scorer, hotspots, k=2)  # the two hottest
    assert [p.id for p in top.players] == [1, 2]


def test_bad_players_are_refused() -> None:
    scene = linear_scene()
    explanation = Explanation(classes=("target",), region="all")
    scorer = RegionScorer(linear_net(), SPEC, scene, explanation, tiling=Tiling(16, 8),
                          runtime=CPU)  # fmt: skip
    hotspots = players(scene)
    with pytest.raises(GeocamError, match="1 to 10"):
        hotspot_shapley(scorer, hotspots, k=11)
    overlapping = [*hotspots, Hotspot(9, hotspots[0].mask, 99.0)]
    with pytest.raises(GeocamError, match="overlap"):
        hotspot_shapley(scorer, overlapping)


@pytest.mark.slow
def test_raleigh_forest_hotspots_efficiency(shared_data: Path) -> None:
    preset = load_config(ROOT / "configs" / "landcover_raleigh.yaml")
    model = build_model(preset.spec).eval()
    scene = load_scene(shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif",
                       preset.spec, fallback_nodata=preset.nodata)  # fmt: skip
    explanation = Explanation(classes=("forest",))
    tiling = Tiling(tile=256, overlap=64)
    heat, report = scene_maps(model, preset.spec, scene, explanation, tiling=tiling, runtime=CPU)
    scorer = RegionScorer(model, preset.spec, scene, explanation, tiling=tiling, runtime=CPU)
    hotspots = map_hotspots(heat[0, 0], scene, report.stride, "p95")
    shapley = hotspot_shapley(scorer, hotspots, k=4)
    assert shapley.efficiency_error < 1e-4
    assert shapley.full == pytest.approx(scorer.original[0], rel=1e-12)


def test_values_plot_as_a_png(tmp_path: Path) -> None:
    scene = linear_scene()
    explanation = Explanation(classes=("target",), region="all")
    scorer = RegionScorer(linear_net(), SPEC, scene, explanation, tiling=Tiling(16, 8),
                          runtime=CPU)  # fmt: skip
    report = hotspot_shapley(scorer, players(scene), k=3)
    png = plot_shapley(report, tmp_path / "shapley.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
