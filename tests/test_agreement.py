"""Agreement with independent implementations: Captum (in float64) and pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from conftest import make_smp
from torch import nn

from geocam import explain


def captum_region_gradcam(
    model: nn.Module, images: torch.Tensor, cls: int, mask: torch.Tensor, layer: str
) -> torch.Tensor:
    """Captum's LayerGradCam of the region-summed logit (a wrapper returning (B,) sums)."""

    def region_score(x: torch.Tensor) -> torch.Tensor:
        return (model(x)[:, cls] * mask).sum(dim=(-2, -1))

    cam = LayerGradCam(region_score, model.get_submodule(layer))
    return cam.attribute(images, relu_attributions=False).detach()


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("Unet", "encoder.layer4"),
        ("Unet", "encoder.layer3"),
        ("FPN", "encoder.layer4"),
    ],
)
def test_gradcam_matches_captum(arch: str, layer: str) -> None:
    # Both in float64, so that the comparison checks the algorithm, not float32 rounding. In
    # float32, two correct implementations differ by up to ~4e-3 relative on these networks:
    # a pre-activation within rounding of zero flips a ReLU gate in one and not the other,
    # and the gradient through that unit changes discontinuously.
    model = make_smp(arch, classes=4, seed=3).double()
    images = torch.rand(2, 4, 128, 128, generator=torch.Generator().manual_seed(4)).double()
    with torch.no_grad():
        winner = model(images).argmax(1)
    cls = int(winner.flatten().bincount().argmax())  # a class with a non-empty region
    mask = (winner == cls).double()
    result = explain(model, images, cls, layer, region="predicted")
    reference = captum_region_gradcam(model, images, cls, mask, layer)
    assert result.signed.dtype == torch.float64
    error = (result.signed - reference).abs().max() / reference.abs().max()
    # Two float64 implementations of one formula: measured 3.4e-15 to 4.4e-15. The bound is
    # tests/test_cam.py's SAME_MAP (1e-9): ~1e4 float64 epsilons (the ReLU-gate amplification
    # float32 shows) with 500x headroom, and 1e-7 of any real defect's difference.
    assert error <= 1e-9, f"relative difference {float(error):.2e}"


# pytorch-grad-cam computes in the model's precision but scales each map in float32
# (scale_cam_image: min-max, np.float32, cv2.resize, then min-max again of the mean).
ROUNDING_FLOAT32 = 16 * 2.0**-24  # 16 float32 roundings of values in [0, 1]: ~1e-6


def minmax_agreement_bound(positive: np.ndarray) -> float:
    """What may separate two correct min-max scalings of ``positive`` (B, H, W) in [0, 1].

    ``(x - low) / (high - low + 1e-7)`` as both implementations write it, ours in float64 on
    the raw map (its 1e-7 moves values by at most 1e-7 / (high - low)) and theirs twice, the
    second time on the float32 map in [0, 1] (1e-7 at most), plus their float32 rounding:
    about ten roundings (cast, bilinear resize, subtract, divide), bounded by 16.
    """
    spread = positive.max(axis=(1, 2)) - positive.min(axis=(1, 2))
    spread = spread[spread > 0]  # a constant map scales to zeros in both
    ours = float((1e-7 / spread).max()) if spread.size else 0.0
    return ours + 1e-7 + ROUNDING_FLOAT32


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "layercam"])
def test_methods_match_pytorch_grad_cam(method: str) -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    implementations = {
        "gradcam": GradCAM,
        "hirescam": HiResCAM,
        "gradcam++": GradCAMPlusPlus,
        "layercam": LayerCAM,
    }
    model = make_smp("Unet", classes=3, seed=5).double()  # float64: see test above
    images = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(6)).double()
    ours = explain(model, images, 1, "encoder.layer3", method=method, region="predicted")  # type: ignore[arg-type]
    with torch.no_grad():
        masks = (model(images).argmax(1) == 1).double().numpy()
    cam = implementations[method](model=model, target_layers=[model.encoder.layer3])
    theirs = cam(input_tensor=images, targets=[SemanticSegmentationTarget(1, m) for m in masks])
    positive = ours.upsample((64, 64)).positive[:, 0].numpy()
    low, high = positive.min(axis=(1, 2), keepdims=True), positive.max(axis=(1, 2), keepdims=True)
    scaled = (positive - low) / (high - low + 1e-7)
    # measured 1.2e-7 to 2.9e-7 against bounds of 1.1e-6 to 1.4e-6
    difference, bound = np.abs(scaled - theirs).max(), minmax_agreement_bound(positive)
    assert difference <= bound, f"{difference:.2e} > {bound:.2e}"


def test_pytorch_grad_cam_silently_zeroes_a_short_target_list() -> None:
    """The failure geocam refuses (see test_cam.test_targets_must_match_the_batch)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model = make_smp("Unet", classes=3, seed=5)
    images = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(6))
    cam = GradCAM(model=model, target_layers=[model.encoder.layer3])
    maps = cam(input_tensor=images, targets=[SemanticSegmentationTarget(1, np.ones((64, 64)))])
    assert maps[1].max() == 0  # the second image got no target: an all-zero map, no error
