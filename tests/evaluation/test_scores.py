"""The region score of a whole scene through the scene engine's tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scene_networks import SPEC as LOCAL_SPEC
from scene_networks import LocalNet
from scene_networks import scene as local_pixels

from geocam.cam import explain
from geocam.errors import GeocamError
from geocam.evaluation.perturbation import mean_fill
from geocam.evaluation.scene import Scene
from geocam.evaluation.scores import Occlusion, RegionScorer
from geocam.scene import Explanation, Runtime, Tiling
from geocam.scene.tiles import normalise

from .faithfulness_networks import SPEC, W, contributions, linear_net, linear_scene, score

CPU = Runtime(device="cpu", progress=False)
TILES = Tiling(tile=16, overlap=8, batch_size=3)


def scorer(scene: Scene, region: str = "all", tiling: Tiling = TILES) -> RegionScorer:
    return RegionScorer(
        linear_net(), SPEC, scene, Explanation(classes=("target", "other"), region=region),
        tiling=tiling, runtime=CPU,
    )  # fmt: skip


def test_whole_scene_score_counts_every_valid_pixel_once() -> None:
    scene = linear_scene()
    s = scorer(scene)
    assert len(s.windows) > 4  # tiled, with overlaps
    assert s.region_pixels.tolist() == [scene.valid.sum()] * 2
    expected = [score(scene, scene.pixels, 1), score(scene, scene.pixels, 0)]
    np.testing.assert_allclose(s.original, expected, rtol=1e-12)
    np.testing.assert_allclose(s.score_pixels(scene.pixels), expected, rtol=1e-12)


def test_occlusion_changes_the_score_by_the_replaced_pixels_contributions() -> None:
    scene = linear_scene()
    s = scorer(scene)
    fill = mean_fill(scene)
    rng = np.random.default_rng(3)
    masks = [rng.random(scene.valid.shape) < f for f in (0.0, 0.1, 0.5, 1.0)]
    masks.append(np.zeros_like(scene.valid))
    masks[-1][20:30, 30:40] = True  # touches a few tiles only
    got = s.scores([Occlusion(m, fill, key="mean") for m in masks])
    delta = contributions(scene, fill)
    for mask, row in zip(masks, got, strict=True):
        assert row[0] == pytest.approx(s.original[0] + delta[mask].sum(), rel=1e-12)
        perturbed = np.where(mask & scene.valid, fill, scene.pixels)
        assert row[0] == pytest.approx(score(scene, perturbed), rel=1e-12)


def test_shared_tiles_are_computed_once_and_give_the_same_scores() -> None:
    scene = linear_scene()
    s = scorer(scene)
    fill = mean_fill(scene)
    mask = np.zeros_like(scene.valid)
    mask[10:14, 10:14] = True
    calls = []
    forward = s._forward

    def counting(tiles):  # type: ignore[no-untyped-def]
        calls.append(len(tiles))
        return forward(tiles)

    s._forward = counting  # type: ignore[method-assign]
    shared = s.scores([Occlusion(mask, fill, key="mean")] * 4)
    touched = sum(bool(mask[w.toslices()].any()) for w in s.windows)
    assert sum(calls) == touched  # untouched tiles reuse the original; repeats are cached
    own = s.scores([Occlusion(mask, fill)] * 2)
    assert sum(calls) == 3 * touched  # without a key nothing is shared across occlusions
    np.testing.assert_array_equal(shared[0], own[0])
    assert (shared == shared[0]).all()


def test_the_predicted_region_is_fixed_by_the_unperturbed_scene() -> None:
    scene = linear_scene(nodata=False)
    s = scorer(scene, region="predicted")
    logits = np.einsum("kc,chw->khw", W, scene.pixels.astype(np.float64))
    logits += np.array([0.0, 0.375])[:, None, None]
    predicted = logits.argmax(axis=0) == 1
    assert 0 < predicted.sum() < predicted.size
    np.testing.assert_array_equal(s.region[0], predicted)
    # replacing everything moves every prediction, not the region the score is summed over
    fill = np.zeros_like(scene.pixels)
    everywhere = np.ones_like(scene.valid)
    got = s.scores([Occlusion(everywhere, fill)])[0, 0]
    assert got == pytest.approx(0.375 * predicted.sum(), rel=1e-12)
    assert s.region_pixels[0] == predicted.sum()


def test_one_tile_equals_the_cam_engines_own_region_score() -> None:
    pixels = local_pixels(64, 64)
    grid_scene = linear_scene(64, 64, nodata=False)
    scene = Scene(pixels, np.ones((64, 64), dtype=bool), grid_scene.grid)
    model = LocalNet().double().eval()
    explanation = Explanation(classes=("b", "c"), region="predicted")
    s = RegionScorer(model, LOCAL_SPEC, scene, explanation, tiling=Tiling(64, 16), runtime=CPU)
    assert len(s.windows) == 1
    images = torch.from_numpy(normalise(pixels, scene.valid, LOCAL_SPEC))[None]
    cam = explain(model, images, [1, 2], "encoder.2", region="predicted")
    np.testing.assert_allclose(s.original, cam.scores[0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(s.region_pixels, cam.region_pixels[0].numpy())


def test_bad_occlusions_and_empty_regions_are_refused() -> None:
    scene = linear_scene()
    s = scorer(scene)
    with pytest.raises(GeocamError, match="bool mask"):
        s.scores([Occlusion(np.ones((3, 3), dtype=bool), scene.pixels)])
    with pytest.raises(GeocamError, match="fill"):
        s.scores([Occlusion(scene.valid, scene.pixels[:2])])
    nothing = Scene(scene.pixels, np.zeros_like(scene.valid), scene.grid)
    with pytest.raises(GeocamError, match="no valid pixel"):
        scorer(nothing)


def test_shortcuts_equal_scoring_explicit_pixels_with_context_and_nodata() -> None:
    from scene_networks import ContextNet

    pixels = local_pixels(96, 128)
    valid = np.ones((96, 128), dtype=bool)
    valid[:, :6] = False
    scene = Scene(pixels, valid, linear_scene(96, 128).grid)
    explanation = Explanation(classes=("a", "c"), region="predicted")
    s = RegionScorer(ContextNet().double().eval(), LOCAL_SPEC, scene, explanation,
                     tiling=Tiling(32, 16), runtime=CPU)  # fmt: skip
    assert len(s.windows) > 12
    fill = mean_fill(scene)
    masks = [np.zeros_like(valid) for _ in range(3)]
    masks[0][40:50, 60:70] = True  # a few tiles
    masks[1][:, :20] = True  # a strip with the nodata
    masks[2][::3, ::5] = True  # every tile
    shortcut = s.scores([Occlusion(m, fill, key="mean") for m in [*masks, *masks]])
    for mask, row in zip(masks, shortcut[:3], strict=True):
        explicit = s.score_pixels(np.where(mask & valid, fill, pixels))
        np.testing.assert_allclose(row, explicit, rtol=1e-12)
    np.testing.assert_allclose(shortcut[:3], shortcut[3:], rtol=1e-12)  # cached tiles


def test_a_box_region_sums_only_its_pixels() -> None:
    scene = linear_scene()
    # rows 10-19 and columns 10-19 of the 30 m grid whose corner is (500000, 4000000)
    box = "bbox:500300,3999400,500600,3999700"
    s = scorer(scene, region=box)
    inside = np.zeros_like(scene.valid)
    inside[10:20, 10:20] = True
    np.testing.assert_array_equal(s.region[0], inside)
    logits = np.einsum("c,chw->hw", W[1], scene.pixels.astype(np.float64)) + 0.375
    assert s.original[0] == pytest.approx(logits[inside].sum(), rel=1e-12)
