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
    assert error <= 1e-5, f"relative difference {float(error):.2e}"


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
    assert np.abs(scaled - theirs).max() < 1e-4


def test_pytorch_grad_cam_silently_zeroes_a_short_target_list() -> None:
    """The failure geocam refuses (see test_cam.test_targets_must_match_the_batch)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model = make_smp("Unet", classes=3, seed=5)
    images = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(6))
    cam = GradCAM(model=model, target_layers=[model.encoder.layer3])
    maps = cam(input_tensor=images, targets=[SemanticSegmentationTarget(1, np.ones((64, 64)))])
    assert maps[1].max() == 0  # the second image got no target: an all-zero map, no error
