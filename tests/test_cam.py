"""The engine against values worked out by hand, and its behaviour on real smp networks."""

from __future__ import annotations

import pytest
import torch
from conftest import LINEAR_INPUT, TinyClassifier, make_smp
from torch import nn

import geocam
from geocam import Box, CamOptions, GeocamError, explain

TOP_ROW = torch.tensor([[1.0, 1.0], [0.0, 0.0]])


def close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-6, atol=1e-6)


# Maps that must be the same computation, run through different kernels (another batch size,
# another memory layout, a batched backward), are compared in float64. In float32 they are not
# comparable with any fixed bound: a pre-activation within rounding of zero flips a ReLU gate
# in one kernel and not the other, and the map moves discontinuously (8.6e-4 relative measured
# on an Intel Xeon, 1.3e-3 on an AMD EPYC, i.e. ~1e4 float32 epsilons). The same amplification
# in float64 is ~1e4 * 2.2e-16 = 2e-12; measured 0 to 1.8e-15. SAME_MAP = 1e-9 leaves 500x
# headroom over that and is 1e-7 of the O(1e-2..1) change of any real defect (a wrong class,
# images mixed in the batch, a transposed layout).
SAME_MAP = 1e-9


def assert_same_map(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` equals ``expected`` to SAME_MAP of its largest magnitude (float64 maps)."""
    assert actual.dtype == expected.dtype == torch.float64
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= SAME_MAP, f"relative difference {error:.2e}"


# --- hand-computed values ------------------------------------------------------------------
# LinearSegNet, class 0 over the top row: S = 3 + 4 = 7, dS/dA0 = M, dS/dA1 = 2 M.
# Class 1 over all pixels: dS/dA0 = -1, dS/dA1 = +1 everywhere.


def test_gradcam_by_hand(linear_net: nn.Module) -> None:
    result = explain(linear_net, LINEAR_INPUT, 0, "feat", region=TOP_ROW)
    # weights: mean(G0) = 0.5, mean(G1) = 1  ->  0.5 A0 + A1
    close(result.signed[0, 0], [[1.5, 2.0], [3.5, 6.0]])
    close(result.scores, [[7.0]])
    close(result.region_pixels, [[2.0]])


def test_gradcam_signed_and_positive(linear_net: nn.Module) -> None:
    result = explain(linear_net, LINEAR_INPUT, 1, "feat", region="all")
    close(result.signed[0, 0], [[0.0, -1.0], [-1.0, 0.0]])  # -A0 + A1: evidence against
    close(result.positive[0, 0], [[0.0, 0.0], [0.0, 0.0]])


def test_hirescam_by_hand(linear_net: nn.Module) -> None:
    result = explain(linear_net, LINEAR_INPUT, 0, "feat", method="hirescam", region=TOP_ROW)
    close(result.signed[0, 0], [[3.0, 4.0], [0.0, 0.0]])  # G0 A0 + G1 A1; sums to S = 7


def test_layercam_by_hand(linear_net: nn.Module) -> None:
    result = explain(linear_net, LINEAR_INPUT, 1, "feat", method="layercam", region="all")
    close(result.signed[0, 0], [[1.0, 1.0], [2.0, 4.0]])  # relu(-1) A0 + relu(1) A1 = A1


def test_gradcam_plus_plus_by_hand(linear_net: nn.Module) -> None:
    # class 1, all: channel 0 has only negative gradients -> weight 0; channel 1: alpha =
    # 1 / (2 + sum(A1) = 8) = 0.1, weight = 4 pixels * 0.1 = 0.4  ->  0.4 A1
    result = explain(linear_net, LINEAR_INPUT, 1, "feat", method="gradcam++", region="all")
    close(result.signed[0, 0], [[0.4, 0.4], [0.8, 1.6]])
    # class 0, top row: alpha0 = 1 / (2 + 10) on two pixels -> w0 = 1/6;
    # alpha1 = 4 / (8 + 8 * 8) = 1/18 with gradient 2 on two pixels -> w1 = 2/9
    result = explain(linear_net, LINEAR_INPUT, 0, "feat", method="gradcam++", region=TOP_ROW)
    close(result.signed[0, 0], [[7 / 18, 10 / 18], [17 / 18, 28 / 18]])


def test_coarse_layer_by_hand(pool_net: nn.Module) -> None:
    # A = 2x2 block means of arange(16) = [[2.5, 4.5], [10.5, 12.5]]; the 3x3 box covers 4, 2,
    # 2 and 1 pixels of the four blocks, so G = 2 * [[4, 2], [2, 1]].
    x = torch.arange(16.0).view(1, 1, 4, 4)
    result = explain(pool_net, x, 0, "pool", region=Box(0, 0, 3, 3))
    close(result.signed[0, 0], [[11.25, 20.25], [47.25, 56.25]])  # mean(G) = 4.5 -> 4.5 A
    close(result.scores, [[109.5]])  # 2 * (10 + 9 + 21 + 12.5) + 9 * 0.5
    hires = explain(pool_net, x, 0, "pool", method="hirescam", region=Box(0, 0, 3, 3))
    close(hires.signed[0, 0], [[20.0, 18.0], [42.0, 25.0]])


def test_nodata_never_counts(pool_net: nn.Module) -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = False  # the first block now has 3 region pixels: G = 2 * [[3, 2], [2, 1]]
    for region in (Box(0, 0, 3, 3), torch.ones(4, 4)):
        result = explain(pool_net, x, 0, "pool", region=region, valid=valid)
        assert result.region_pixels[0, 0] == (8 if isinstance(region, Box) else 15)
    result = explain(pool_net, x, 0, "pool", region=Box(0, 0, 3, 3), valid=valid)
    close(result.signed[0, 0], [[10.0, 18.0], [42.0, 50.0]])  # mean(G) = 4 -> 4 A


def test_nan_in_nodata_pixels_stays_out_of_the_score(linear_net: nn.Module) -> None:
    x = LINEAR_INPUT.clone()
    x[0, :, 1, 1] = float("nan")
    valid = torch.tensor([[[True, True], [True, False]]])
    result = explain(linear_net, x, 0, "feat", region=TOP_ROW, valid=valid)
    close(result.scores, [[7.0]])


def test_probability_score_by_hand(linear_net: nn.Module) -> None:
    result = explain(
        linear_net,
        LINEAR_INPUT,
        0,
        "feat",
        region=TOP_ROW,
        options=CamOptions(score="probabilities"),
    )
    logits = linear_net(LINEAR_INPUT)
    expected = torch.softmax(logits, 1)[0, 0, 0].sum()
    torch.testing.assert_close(result.scores[0, 0], expected)


def test_classifier_by_hand() -> None:
    # dS/dA_k = L[1, k] / 4  ->  (0.5 A0 + 2 A1) / 4
    result = explain(TinyClassifier().eval(), LINEAR_INPUT, 1, "feat", region="all")
    close(result.signed[0, 0], [[0.625, 0.75], [1.375, 2.5]])
    with pytest.raises(GeocamError, match="classification network"):
        explain(TinyClassifier().eval(), LINEAR_INPUT, 1, "feat", region=TOP_ROW)


def test_upsample_is_explicit_and_bilinear(linear_net: nn.Module) -> None:
    result = explain(linear_net, LINEAR_INPUT, 0, "feat", region=TOP_ROW)
    big = result.upsample((4, 4))
    assert big.signed.shape == (1, 1, 4, 4)
    # pixel centres: output column j samples source x = (j + 0.5) / 2 - 0.5, clamped at the
    # edge; output row 0 samples source row 0 = [1.5, 2.0]
    assert big.signed[0, 0, 0].tolist() == pytest.approx([1.5, 1.625, 1.875, 2.0])
    torch.testing.assert_close(big.positive, torch.relu(big.signed))


# --- real smp networks -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet64() -> nn.Module:
    """The ``unet`` fixture's network in float64 (explain then computes in float64)."""
    return make_smp().double()


def test_predicted_region_is_the_argmax(unet: nn.Module, images: torch.Tensor) -> None:
    result = explain(unet, images, [0, 1, 2], "encoder.layer4")
    with torch.no_grad():
        winner = unet(images).argmax(1)
    expected = torch.stack([(winner == k).sum((-2, -1)) for k in range(3)], 1).float()
    torch.testing.assert_close(result.region_pixels, expected)
    assert result.signed.shape == (2, 3, 2, 2)


@pytest.mark.parametrize("backward", ["batched", "sequential"])
def test_several_classes_equal_separate_calls(
    unet64: nn.Module, images: torch.Tensor, backward: str
) -> None:
    options = CamOptions(backward=backward)  # type: ignore[arg-type]
    together = explain(unet64, images, [2, 0, 1], "encoder.layer3", options=options)
    for k, cls in enumerate([2, 0, 1]):
        alone = explain(unet64, images, cls, "encoder.layer3")
        assert_same_map(together.signed[:, k], alone.signed[:, 0])
        assert_same_map(together.scores[:, k], alone.scores[:, 0])


def test_per_image_class_table_and_batch_independence(
    unet64: nn.Module, images: torch.Tensor
) -> None:
    table = [[0, 2], [1, 1]]
    batch = explain(unet64, images, table, "encoder.layer4")
    for b, row in enumerate(table):
        single = explain(unet64, images[b], row, "encoder.layer4")
        assert_same_map(batch.signed[b], single.signed[0])
    torch.testing.assert_close(batch.classes, torch.tensor(table))


def test_memory_format_changes_only_rounding(unet64: nn.Module, images: torch.Tensor) -> None:
    fast = explain(unet64, images, 1, "encoder.layer4")
    plain = explain(unet64, images, 1, "encoder.layer4", options=CamOptions(channels_last=False))
    assert_same_map(fast.signed, plain.signed)


def test_lean_path_records_nothing_before_the_layer(unet: nn.Module, images: torch.Tensor) -> None:
    seen: dict[str, bool] = {}

    def spy(name: str):  # type: ignore[no-untyped-def]
        def hook(_: nn.Module, __: object, out: torch.Tensor) -> None:
            seen[name] = out.requires_grad

        return hook

    handles = [
        unet.get_submodule(n).register_forward_hook(spy(n))
        for n in ("encoder.layer2", "encoder.layer3", "decoder")
    ]
    try:
        explain(unet, images, 1, "encoder.layer3")
    finally:
        for h in handles:
            h.remove()
    assert seen == {"encoder.layer2": False, "encoder.layer3": False, "decoder": True}
    assert all(p.grad is None for p in unet.parameters())


def test_numpy_images_are_accepted(unet: nn.Module, images: torch.Tensor) -> None:
    from_numpy = explain(
        unet, images.numpy(), 1, "encoder.layer4", region=images[:, 0].numpy() > 0.5
    )
    from_torch = explain(unet, images, 1, "encoder.layer4", region=images[:, 0] > 0.5)
    torch.testing.assert_close(from_numpy.signed, from_torch.signed)


def test_autocast_bfloat16_runs_and_stays_close(unet: nn.Module, images: torch.Tensor) -> None:
    exact = explain(unet, images, 1, "encoder.layer4", region="all")
    reduced = explain(
        unet, images, 1, "encoder.layer4", region="all", options=CamOptions(autocast=torch.bfloat16)
    )
    assert reduced.signed.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([exact.signed.flatten(), reduced.signed.flatten()]))[0, 1]
    assert corr > 0.95


def test_aux_head_tuple_output_uses_the_mask() -> None:
    torch.manual_seed(0)
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        "resnet18", encoder_weights=None, in_channels=4, classes=3, aux_params={"classes": 3}
    ).eval()
    result = explain(model, torch.rand(1, 4, 64, 64), 1, "encoder.layer4", region="all")
    assert result.region_pixels[0, 0] == 64 * 64


# --- errors ----------------------------------------------------------------------------------


def test_targets_must_match_the_batch(unet: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(GeocamError, match="3 images but the batch has 2"):
        explain(unet, images, [[0], [1], [2]], "encoder.layer4")
    with pytest.raises(GeocamError, match="3 images but the batch has 2"):
        explain(unet, images, 1, "encoder.layer4", region=torch.ones(3, 64, 64))
    with pytest.raises(GeocamError, match="network output is"):
        explain(unet, images, 1, "encoder.layer4", region=torch.ones(32, 32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 7}, "class index 7 does not exist"),
        ({"classes": []}, "at least one class"),
        ({"layer": "encoder.layer5"}, "closest: encoder.layer4"),
        ({"layer": "encoder.layer4.0.relu"}, "runs more than once"),
        ({"method": "scorecam"}, "unknown method"),
        ({"region": "everything"}, "unknown region"),
        ({"region": Box(0, 0, 80, 8)}, "outside the 64 x 64 output"),
    ],
)
def test_user_mistakes_are_clear(
    unet: nn.Module, images: torch.Tensor, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"classes": 1, "layer": "encoder.layer4"} | kwargs
    with pytest.raises(GeocamError, match=message):
        explain(unet, images, **args)  # type: ignore[arg-type]


def test_non_spatial_layer_is_refused() -> None:
    with pytest.raises(GeocamError, match="not a \\(B, C, H, W\\) feature map"):
        explain(TinyClassifier().eval(), LINEAR_INPUT, 0, "fc", region="all")


class SideBranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Conv2d(2, 2, 1)
        self.head = nn.Conv2d(2, 2, 1)
        self.unused = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.side(x)  # runs, but the output does not depend on it
        return self.head(x)


def test_layer_off_the_output_path_is_refused() -> None:
    with pytest.raises(GeocamError, match="does not depend on layer 'side'"):
        explain(SideBranchNet().eval(), LINEAR_INPUT, 0, "side", region="all")
    with pytest.raises(GeocamError, match="layer 'unused' did not run"):
        explain(SideBranchNet().eval(), LINEAR_INPUT, 0, "unused", region="all")


def test_top_level_exports() -> None:
    assert set(geocam.METHODS) == {"gradcam", "hirescam", "gradcam++", "layercam"}
    assert geocam.__version__
