"""Counterfactual occlusion per hotspot, and its attributes in the hotspots GeoPackage."""

from __future__ import annotations

from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import torch

from geocam.errors import GeocamError
from geocam.evaluation.hotspots import (
    FIELDS,
    map_hotspots,
    occlude_hotspots,
    plot_drops,
    random_patches,
    read_hotspots,
    top_hotspots,
    write_occlusion_fields,
)
from geocam.evaluation.perturbation import mean_fill
from geocam.evaluation.scene import Scene
from geocam.evaluation.scores import RegionScorer
from geocam.models import ModelSpec
from geocam.products import write_hotspots
from geocam.scene import Explanation, Runtime, Tiling

from .faithfulness_networks import SPEC, contributions, linear_net, linear_scene

CPU = Runtime(device="cpu", progress=False)


def blocks() -> tuple[np.ndarray, np.ndarray]:
    """Two hot blocks on the cell grid of stride 4: heat 10 and 5, zero elsewhere."""
    first = np.zeros((40, 48), dtype=bool)
    first[8:16, 8:16] = True
    second = np.zeros((40, 48), dtype=bool)
    second[24:32, 28:40] = True
    return first, second


def hot_map() -> np.ndarray:
    first, second = blocks()
    return np.where(first, 10.0, np.where(second, 5.0, 0.0))


def scorer(scene: Scene) -> RegionScorer:
    explanation = Explanation(classes=("target",), region="all")
    return RegionScorer(linear_net(), SPEC, scene, explanation, tiling=Tiling(16, 8),
                        runtime=CPU)  # fmt: skip


def test_map_hotspots_are_the_polygons_write_hotspots_outlines() -> None:
    scene = linear_scene()
    hotspots = map_hotspots(hot_map(), scene, stride=4, rule="p10", class_name="target")
    first, second = blocks()
    assert len(hotspots) == 2
    by_heat = top_hotspots(hotspots, 2)
    np.testing.assert_array_equal(by_heat[0].mask, first)
    np.testing.assert_array_equal(by_heat[1].mask, second)
    assert by_heat[0].heat == 10.0 * 64 and by_heat[1].heat == 5.0 * 96
    assert by_heat[0].properties["class"] == "target"
    assert top_hotspots(hotspots, 1) == by_heat[:1]


def test_random_patches_are_the_shape_moved_off_it_onto_valid_pixels() -> None:
    scene = linear_scene()
    first, _ = blocks()
    patches = random_patches(first, scene.valid, 6, np.random.default_rng(1))
    assert len(patches) == 6
    for patch in patches:
        assert not (patch & first).any()
        rows, cols = np.nonzero(patch)
        assert patch.sum() >= 0.9 * first.sum()
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        assert not (patch & ~scene.valid).any()


def test_drops_are_the_occluded_pixels_contributions() -> None:
    scene = linear_scene()
    s = scorer(scene)
    hotspots = map_hotspots(hot_map(), scene, stride=4, rule="p10")
    report = occlude_hotspots(s, hotspots, patches=5, seed=3)
    delta = contributions(scene, mean_fill(scene))
    rng = np.random.default_rng(3)
    for hotspot, result in zip(hotspots, report.hotspots, strict=True):
        assert result.id == hotspot.id
        assert result.drop == pytest.approx(-delta[hotspot.mask].sum(), rel=1e-9, abs=1e-9)
        patches = random_patches(hotspot.mask, scene.valid, 5, rng)
        expected = [-delta[p].sum() for p in patches]
        np.testing.assert_allclose(result.random_drops, expected, rtol=1e-9, atol=1e-9)
        assert result.random_at_least == np.mean(np.array(expected) >= result.drop)
    fields = report.fields(report.hotspots[0])
    assert set(fields) == set(FIELDS)
    assert fields["drop_mean"] == pytest.approx(report.hotspots[0].drop / scene.valid.sum())
    assert any("rand>=" in line for line in report.table())


def test_fields_are_written_into_the_geopackage_atomically(tmp_path: Path) -> None:
    scene = linear_scene()
    heatmap = tmp_path / "heat.tif"
    with rasterio.open(
        heatmap, "w", driver="GTiff", width=48, height=40, count=1, dtype="float32",
        crs=scene.grid.crs, transform=scene.grid.transform, nodata=np.nan,
    ) as out:  # fmt: skip
        out.write(np.where(scene.valid, hot_map(), np.nan).astype(np.float32), 1)
        out.update_tags(GEOCAM_LAYER_STRIDE="4")
    gpkg = write_hotspots(heatmap, tmp_path / "heat_hotspots.gpkg", 1, "p10")
    with fiona.open(gpkg) as before:
        original = {f["properties"]["id"]: dict(f["properties"]) for f in before}
    hotspots = read_hotspots(gpkg, scene, hot_map())
    report = occlude_hotspots(scorer(scene), hotspots, patches=4)
    write_occlusion_fields(gpkg, report)
    with fiona.open(gpkg, layer="hotspots") as after:
        assert set(FIELDS) <= set(after.schema["properties"])
        rows = {f["properties"]["id"]: dict(f["properties"]) for f in after}
    assert rows.keys() == original.keys()
    for result in report.hotspots:
        row = rows[result.id]
        assert row["area_m2"] == original[result.id]["area_m2"]  # the file's own fields kept
        assert row["occl_base"] == "mean"
        assert row["drop"] == pytest.approx(result.drop)
        assert row["rand_drop"] == pytest.approx(result.random_mean)
        assert row["rand_n"] == 4
        assert row["rand_ge"] == pytest.approx(result.random_at_least)
    # rewriting again replaces the fields rather than adding a second set
    write_occlusion_fields(gpkg, report)
    with fiona.open(gpkg, layer="hotspots") as again:
        assert list(again.schema["properties"]).count("drop") == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_nothing_to_occlude_says_what_to_fix(tmp_path: Path) -> None:
    scene = linear_scene()
    with pytest.raises(GeocamError, match="no hotspot"):
        occlude_hotspots(scorer(scene), [])
    report = occlude_hotspots(scorer(scene), map_hotspots(hot_map(), scene, 4, "p10"), patches=2)
    with pytest.raises(GeocamError, match="no hotspots file"):
        write_occlusion_fields(tmp_path / "missing.gpkg", report)


class PairNet(torch.nn.Module):
    """Two epochs of two bands: ``logit_1 = (1, -1) . early + (2, 0.5) . late``."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = torch.nn.Conv2d(4, 4, 1, bias=False)
        self.head = torch.nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.head.weight.copy_(torch.tensor([[0.0] * 4, PAIR_W]).view(2, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


PAIR_W = [1.0, -1.0, 2.0, 0.5]


def test_epoch_counterfactual_puts_the_early_pixels_in_the_hotspot() -> None:
    base = linear_scene()
    early = base.pixels[:2]
    late = base.pixels[1:3]
    scene = Scene(np.concatenate([early, late]), base.valid, base.grid)
    spec = ModelSpec("pair", "none", 4, ("other", "change"), bands=((1, 2), (1, 2)),
                     layer="feat")  # fmt: skip
    explanation = Explanation(classes=("change",), region="all")
    s = RegionScorer(PairNet().double().eval(), spec, scene, explanation, tiling=Tiling(16, 8),
                     runtime=CPU)  # fmt: skip
    hotspots = map_hotspots(hot_map(), scene, stride=4, rule="p10")
    report = occlude_hotspots(s, hotspots, baseline="epoch", patches=3)
    # inside the hotspot the late bands become the early ones: the late weights see early - late
    change = np.einsum("c,chw->hw", np.array(PAIR_W[2:]), (early - late).astype(np.float64))
    for hotspot, result in zip(hotspots, report.hotspots, strict=True):
        assert result.drop == pytest.approx(-change[hotspot.mask].sum(), rel=1e-9)
    assert report.baseline == "epoch"


def test_drops_plot_as_a_png(tmp_path: Path) -> None:
    scene = linear_scene()
    report = occlude_hotspots(scorer(scene), map_hotspots(hot_map(), scene, 4, "p10"), patches=2)
    png = plot_drops(report, tmp_path / "drops.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["drops.png"]
