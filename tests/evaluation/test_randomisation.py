"""Model-parameter randomisation: blocks, re-initialisation, the check and its controls."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from affine import Affine
from scene_networks import GRID_CRS, SPEC, DeadNet, LocalNet, run
from scene_networks import scene as synthetic_scene
from torch import nn

from geocam.errors import GeocamError, ZeroMap
from geocam.evaluation.randomisation import (
    Block,
    FixedRegion,
    PassRule,
    RandomisationReport,
    StepResult,
    block_seed,
    discover_blocks,
    edge_map,
    edge_map_function,
    plot_randomisation,
    predicted_region,
    randomisation_check,
    randomise_block,
    randomised_copy,
    scene_map_function,
)
from geocam.evaluation.scene import Scene, scene_maps
from geocam.evaluation.similarity import Similarity
from geocam.scene import Explanation, Runtime, Tiling
from geocam.sources import Grid

CPU = Runtime("cpu", progress=False)
TILING = Tiling(tile=64, overlap=16)


def names(model: nn.Module) -> list[str]:
    return [b.name for b in discover_blocks(model)]


def make_scene(pixels: np.ndarray, valid: np.ndarray | None = None) -> Scene:
    grid = Grid(GRID_CRS, Affine(10, 0, 500000, 0, -10, 4000000), pixels.shape[2], pixels.shape[1])
    valid = np.ones(pixels.shape[1:], bool) if valid is None else valid
    return Scene(pixels, valid, grid)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- block discovery -----------------------------------------------------------------------------


def test_blocks_of_smp_unet_resnet_in_data_flow_order_from_the_output() -> None:
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8))
    # depth 3 runs conv1/bn1, layer1 and layer2 only (layer3/4 are built but never run)
    assert names(model) == [
        "segmentation_head",
        "decoder.blocks.2", "decoder.blocks.1", "decoder.blocks.0",
        "encoder.layer2", "encoder.layer1", "encoder.conv1+bn1",
    ]  # fmt: skip
    stem = discover_blocks(model)[-1]
    assert stem.modules == ("encoder.conv1", "encoder.bn1")


def test_blocks_of_smp_unet_with_a_timm_encoder() -> None:
    model = smp.Unet(
        "tu-mobilenetv2_100", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8)
    )
    assert names(model) == [
        "segmentation_head",
        "decoder.blocks.2", "decoder.blocks.1", "decoder.blocks.0",
        *(f"encoder.model.blocks.{i}" for i in range(6, -1, -1)),
        "encoder.model.conv_stem+bn1",
    ]  # fmt: skip


def test_blocks_of_smp_fpn_resnet_and_timm() -> None:
    decoder = ["decoder.seg_blocks", "decoder.p2", "decoder.p3", "decoder.p4", "decoder.p5"]
    kwargs = {"encoder_depth": 3, "decoder_segmentation_channels": 32, "encoder_weights": None}
    fpn = smp.FPN("resnet18", **kwargs)
    assert names(fpn) == [
        "segmentation_head",
        *decoder,
        "encoder.layer2",
        "encoder.layer1",
        "encoder.conv1+bn1",
    ]
    timm_fpn = smp.FPN("tu-resnet18", **kwargs)
    assert names(timm_fpn) == [
        "segmentation_head", *decoder,
        "encoder.model.layer2", "encoder.model.layer1", "encoder.model.conv1+bn1",
    ]  # fmt: skip


def test_blocks_of_smp_deeplabv3plus() -> None:
    model = smp.DeepLabV3Plus(
        "resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=16
    )
    assert names(model) == [
        "segmentation_head", "decoder.block2", "decoder.block1", "decoder.aspp",
        "encoder.layer3", "encoder.layer2", "encoder.layer1", "encoder.conv1+bn1",
    ]  # fmt: skip


def test_blocks_of_a_non_smp_network_are_its_children_in_reverse() -> None:
    assert names(LocalNet()) == ["head", "encoder"]
    with pytest.raises(GeocamError, match="no parameters"):
        discover_blocks(nn.Sequential(nn.ReLU()))


# --- re-initialisation ---------------------------------------------------------------------------


def small_unet() -> nn.Module:
    torch.manual_seed(0)
    return smp.Unet(
        "resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8)
    ).eval()


def test_randomise_block_changes_exactly_its_parameters_with_random_batchnorm() -> None:
    model = small_unet()
    for module in model.modules():  # statistics as learned ones, not a fresh layer's
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
            module.running_var.fill_(2.0)
    before = snapshot(model)
    block = Block("encoder.layer1", ("encoder.layer1",))
    randomise_block(model, block, seed=7)
    after = snapshot(model)
    for key in before:
        inside = key.startswith("encoder.layer1.")
        if key.endswith("num_batches_tracked"):
            continue
        if inside and key.endswith(("running_mean", "running_var")):
            fresh = 0.0 if key.endswith("running_mean") else 1.0  # a fresh layer's statistics
            assert torch.all(after[key] == fresh), key
        elif inside:
            assert not torch.equal(before[key], after[key]), f"{key} was not re-initialised"
        else:
            assert torch.equal(before[key], after[key]), f"{key} is outside the block"
    bn = model.encoder.layer1[0].bn1
    # random affine parameters, not reset_parameters' identity (weight 1, bias 0)
    assert not torch.all(bn.weight == 1) and not torch.all(bn.bias == 0)
    assert float(bn.weight.detach().min()) >= 0 and float(bn.weight.detach().max()) <= 1
    assert float(bn.weight.detach().std()) > 0.1 and float(bn.bias.detach().std()) > 0.01
    # convolutions from their default initialiser: kaiming_uniform(a=sqrt(5)), |w| <= 1/sqrt(fan_in)
    conv = model.encoder.layer1[0].conv1.weight.detach()
    bound = 1 / np.sqrt(conv[0].numel())
    assert float(conv.abs().max()) <= bound
    assert float(conv.abs().max()) > 0.9 * bound


def test_seeds_are_distinct_per_block_and_reproducible() -> None:
    seeds = [block_seed(0, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert block_seed(1, 0) != block_seed(0, 0)
    model = small_unet()
    block = Block("decoder.blocks.1", ("decoder.blocks.1",))
    a = randomised_copy(model, [block], [seeds[3]])
    b = randomised_copy(model, [block], [seeds[3]])
    c = randomised_copy(model, [block], [seeds[4]])
    assert_same_state(snapshot(a), snapshot(b))
    w = "decoder.blocks.1.conv1.0.weight"
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_two_blocks_of_one_shape_get_different_values() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    blocks = discover_blocks(model)
    copy_ = randomised_copy(model, blocks, [block_seed(0, i) for i in range(len(blocks))])
    assert not torch.equal(copy_[0].weight, copy_[1].weight)


# --- the check on a fake map (fast) --------------------------------------------------------------


def state_map(record: list[dict[str, torch.Tensor]]) -> Callable[[nn.Module], np.ndarray]:
    """A map function that records each model's parameters and maps their first conv's sum."""
    x = torch.from_numpy(synthetic_scene(32, 32))[None]

    def maps(model: nn.Module) -> np.ndarray:
        record.append(snapshot(model))
        with torch.no_grad():
            return model(x)[0, 0].double().numpy()

    return maps


def test_cascading_and_independent_steps_randomise_the_right_blocks() -> None:
    model = LocalNet()
    before = snapshot(model)
    record: list[dict[str, torch.Tensor]] = []
    report = randomisation_check(model, state_map(record), seed=5)
    blocks = discover_blocks(model)
    seeds = [block_seed(5, i) for i in range(len(blocks))]
    assert len(record) == 1 + 2 * len(blocks)
    assert_same_state(record[0], before)  # the original, unchanged
    for k in range(1, len(blocks) + 1):  # cascading: blocks 1..k
        assert_same_state(record[k], snapshot(randomised_copy(model, blocks[:k], seeds[:k])))
    for k, block in enumerate(blocks):  # independent: block k alone
        expected = snapshot(randomised_copy(model, [block], [seeds[k]]))
        assert_same_state(record[1 + len(blocks) + k], expected)
    assert [s.seed for s in report.cascading] == seeds
    assert_same_state(snapshot(model), before)  # the caller's model is untouched, bitwise


def forward_map(x: torch.Tensor) -> Callable[[nn.Module], np.ndarray]:
    def maps(model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            return model(x)[0, 0].double().numpy()

    return maps


def test_blocks_are_randomised_in_the_order_the_forward_pass_runs_them() -> None:
    class Backwards(nn.Module):  # registers its last layer first
        def __init__(self) -> None:
            super().__init__()
            self.last = nn.Conv2d(4, 2, 1)
            self.first = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.last(torch.relu(self.first(x)))

    torch.manual_seed(0)
    model = Backwards()
    maps = forward_map(torch.rand(1, 3, 8, 8))
    assert names(model) == ["first", "last"]  # registration order, reversed
    assert randomisation_check(model, maps, independent=False).blocks == ("last", "first")
    given = discover_blocks(model)  # blocks given by the caller keep their order
    assert randomisation_check(model, maps, blocks=given).blocks == ("first", "last")


@pytest.mark.parametrize(
    "make",
    [
        lambda: smp.Unet("resnet18", encoder_weights=None, encoder_depth=3,
                         decoder_channels=(16, 8, 8)),
        lambda: smp.FPN("resnet18", encoder_weights=None, encoder_depth=3,
                        decoder_segmentation_channels=32),
        lambda: smp.DeepLabV3Plus("resnet18", encoder_weights=None, encoder_depth=4,
                                  decoder_channels=16),
    ],
)  # fmt: skip
def test_smp_structure_and_forward_order_agree(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = make().eval()
    report = randomisation_check(model, forward_map(torch.rand(1, 3, 64, 64)), independent=False)
    assert list(report.blocks) == names(model) and not report.skipped


def test_blocks_the_map_never_runs_are_skipped() -> None:
    class Spare(LocalNet):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Conv2d(3, 3, 1)  # registered, never called

    report = randomisation_check(Spare(), state_map([]), independent=False)
    assert report.skipped == ("spare",)
    assert report.blocks == ("head", "encoder")


def test_zero_maps_are_a_step_result_not_a_crash() -> None:
    ones = np.ones((8, 8))
    ones[0, 0] = 3.0
    model = LocalNet()
    original = snapshot(model)

    def maps(network: nn.Module) -> np.ndarray:  # the original maps something, any copy nothing
        same = all(torch.equal(v, original[k]) for k, v in network.state_dict().items())
        return ones if same else np.zeros((8, 8))

    report = randomisation_check(model, maps)
    assert all(s.zero_map for s in (*report.cascading, *report.independent))
    assert report.final.similarity.spearman_abs == 0.0 and report.final.entropy == 0.0
    assert report.passed

    with pytest.raises(GeocamError, match="the model has no module 'nowhere'"):
        randomisation_check(model, maps, blocks=[Block("x", ("nowhere",))])
    with pytest.raises(GeocamError, match="original model's map is empty or zero"):
        randomisation_check(model, lambda m: np.zeros((8, 8)))
    with pytest.raises(GeocamError, match=r"one \(H, W\) map"):
        randomisation_check(model, lambda m: np.ones((1, 8, 8)))


def fake_report(values: list[float], label: str = "x") -> RandomisationReport:
    steps = tuple(
        StepResult("cascading", i, f"b{i}", i, Similarity(v, v, v), 1.0, False, 0.1)
        for i, v in enumerate(values, 1)
    )
    return RandomisationReport(label, tuple(s.block for s in steps), (), steps, (), 2.0, 0.5)


def test_means_exclude_the_original_and_the_rule_reads_the_last_step() -> None:
    report = fake_report([0.2, 0.4])
    assert report.mean().spearman_abs == pytest.approx(0.3)  # (1 + 0.2 + 0.4) / 3 with it
    assert report.passed and report.emprt == pytest.approx(-0.5)  # (1 - 2) / 2
    assert np.isnan(report.mean("independent").ssim)  # none were run
    with pytest.raises(GeocamError, match="cascading or independent"):
        report.mean("cascade")
    assert not fake_report([0.2, 0.51]).passed
    assert fake_report([0.9, 0.5]).passed  # only the fully randomised model counts
    rule = PassRule()
    assert rule.failures(Similarity(-0.7, 0.1, 0.2)) == ["|Spearman signed| 0.700"]
    assert rule.failures(Similarity(0.1, 0.6, 0.2)) == ["|Spearman abs| 0.600"]
    assert rule.failures(Similarity(0.1, 0.1, float("nan"))) == ["SSIM nan"]  # never a pass


def test_report_json_table_and_figure(tmp_path: Path) -> None:
    report = fake_report([0.2, float("nan")])
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["cascading"][1]["similarity"]["ssim"] is None
    lines = report.table()
    assert lines[0].startswith("randomisation x: FAIL") and any("eMPRT" in x for x in lines)
    png = plot_randomisation([fake_report([0.2, 0.1]), report], tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the scene engine's maps ---------------------------------------------------------------------


def test_the_edge_map_control_fails_the_check() -> None:
    pixels = synthetic_scene(64, 64)
    valid = np.ones((64, 64), bool)
    valid[:, :5] = False
    scene = make_scene(pixels, valid)
    edges = edge_map(pixels, valid)
    assert np.isnan(edges[~valid]).all() and np.nanmax(edges) > 0
    report = randomisation_check(small_unet(), edge_map_function(scene), label="edges")
    assert not report.passed
    assert report.failures == ["|Spearman abs| 1.000", "|Spearman signed| 1.000", "SSIM 1.000"]
    assert report.emprt == 0.0


def test_edge_map_by_hand() -> None:
    # a vertical step of 1 between columns 1 and 2: Sobel x gives 4 on both sides of it
    pixels = np.zeros((1, 4, 4), np.float32)
    pixels[0, :, 2:] = 1.0
    edges = edge_map(pixels, np.ones((4, 4), bool))
    std = pixels[0].std()
    np.testing.assert_allclose(edges[:, 1:3], 4.0 / std, rtol=1e-6)
    np.testing.assert_array_equal(edges[:, [0, 3]], 0.0)


def test_predicted_region_is_the_original_models_and_is_kept_fixed() -> None:
    pixels = synthetic_scene(96, 128)
    scene = make_scene(pixels)
    model = LocalNet()
    explanation = Explanation(classes=("c",))
    region = predicted_region(model, SPEC, scene, explanation, tiling=TILING, runtime=CPU)
    with torch.no_grad():  # LocalNet is local: the whole scene at once is what tiles see
        expected = model(torch.from_numpy(pixels)[None])[0].argmax(0).numpy() == 2
    np.testing.assert_array_equal(region, expected.astype(np.float32))
    assert 0.01 < region.mean() < 0.5

    maps = scene_map_function(model, SPEC, scene, explanation, tiling=TILING, runtime=CPU)
    other = randomised_copy(model, [Block("head", ("head",))], [block_seed(0, 0)])
    fixed = Explanation(classes=("c",), region=FixedRegion(region))
    held, _ = scene_maps(other, SPEC, scene, fixed, tiling=TILING, runtime=CPU)
    moved, _ = scene_maps(other, SPEC, scene, explanation, tiling=TILING, runtime=CPU)
    got = maps(other)
    np.testing.assert_array_equal(got, held[0, 1])
    assert not np.allclose(got, moved[0, 1])  # with "predicted" the region would move


def test_a_zero_map_from_the_scene_engine_becomes_zeros() -> None:
    pixels = synthetic_scene(64, 64)
    valid = np.ones((64, 64), bool)
    valid[:8] = False
    scene = make_scene(pixels, valid)
    with pytest.raises(ZeroMap, match="zero everywhere"):  # what the engine says
        run(DeadNet(), pixels, Explanation(classes=("b",)), TILING, valid=valid)
    explanation = Explanation(classes=("b",), region="all")
    maps = scene_map_function(DeadNet(), SPEC, scene, explanation, tiling=TILING, runtime=CPU)
    values = maps(DeadNet())
    assert np.all(values[valid] == 0) and np.isnan(values[~valid]).all()
    # the predicted region of the original is still found when its Grad-CAM is zero
    region = predicted_region(DeadNet(), SPEC, scene, Explanation(classes=("b",)), runtime=CPU)
    assert region.shape == (64, 64) and region[~valid].sum() == 0


def test_one_class_at_a_time() -> None:
    scene = make_scene(synthetic_scene(64, 64))
    with pytest.raises(GeocamError, match="one class at a time"):
        scene_map_function(LocalNet(), SPEC, scene, Explanation(classes=("a", "b")))


# --- the demo models (slow) ----------------------------------------------------------------------

ROOT = Path(__file__).parents[2]
DEMOS = {
    "raleigh": ("landcover_raleigh.yaml", ("raleigh/nc_lsat7_2000_b123457_uint8.tif",), "forest"),
    "pucallpa": (
        "deforestation_pucallpa.yaml",
        ("pucallpa/landsat_1985.tif", "pucallpa/landsat_2020.tif"),
        "deforestation",
    ),
}


@functools.cache
def demo_reports(name: str, data: Path, method: str) -> tuple[RandomisationReport, ...]:
    """The cascading check of ``method`` on a demo model, and the edge-map control's."""
    from geocam.config import load_config
    from geocam.evaluation.scene import load_scene
    from geocam.models import build_model

    config, sources, cls = DEMOS[name]
    preset = load_config(ROOT / "configs" / config)
    model = build_model(preset.spec)
    before = snapshot(model)
    scene = load_scene([data / s for s in sources], preset.spec, fallback_nodata=preset.nodata)
    tiling = Tiling(tile=preset.tile, overlap=preset.overlap)
    explanation = Explanation(classes=(cls,), method=method)  # type: ignore[arg-type]
    maps = scene_map_function(model, preset.spec, scene, explanation, tiling=tiling, runtime=CPU)
    report = randomisation_check(model, maps, independent=False, label=f"{method} {name}")
    assert list(report.blocks) == names(model)  # the scene engine runs them in that order
    control = randomisation_check(model, edge_map_function(scene), independent=False)
    assert_same_state(snapshot(model), before)  # the caller's model is untouched, bitwise
    return report, control


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEMOS))
def test_gradcam_of_the_demo_models_passes_and_the_edge_map_fails(
    shared_data: Path, name: str
) -> None:
    report, control = demo_reports(name, shared_data, "gradcam")
    assert report.passed, report.table()
    assert len(report.blocks) == 14 and not report.skipped
    assert not control.passed


@pytest.mark.slow
def test_guided_backprop_stays_more_similar_than_gradcam(shared_data: Path) -> None:
    """Adebayo et al. (2018) on a ReLU6 network: Guided Backprop barely notices the
    randomisation of the layers near the output, Grad-CAM does."""
    gradcam, _ = demo_reports("raleigh", shared_data, "gradcam")
    guided, _ = demo_reports("raleigh", shared_data, "guided-backprop")
    for measure in ("spearman_abs", "spearman_signed"):
        assert getattr(guided.mean(), measure) > getattr(gradcam.mean(), measure), measure
    # the head alone randomised: Guided Backprop's map keeps its ranking, Grad-CAM's loses it
    assert guided.cascading[0].similarity.spearman_abs > 0.9
    assert gradcam.cascading[0].similarity.spearman_abs < 0.5
