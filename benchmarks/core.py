"""The `core` group: the engine on 4 tiles against pytorch-grad-cam, Captum, a forward pass."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import Row, Settings, Target, log, measure, megapixels_per_second, register
from torch import nn

import geocam

LAYER = "encoder.layer4"
CLASS = 1
CLASSES = [0, 1, 2, 3, 4]


class RegionTarget:
    """pytorch-grad-cam's ``SemanticSegmentationTarget`` (the class's logits summed over a mask),
    with the mask on the output's device: theirs moves it to CUDA whenever CUDA exists."""

    def __init__(self, category: int, mask: torch.Tensor) -> None:
        self.category = category
        self.mask = mask

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The region score of one image's output ``(K, H, W)``."""
        return (model_output[self.category] * self.mask.to(model_output.device)).sum()


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of ``(B, H, W)`` maps, as pytorch-grad-cam does it."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low + 1e-7)


def agreement_float64(model: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Max abs. difference of the min-max scaled maps, geocam vs pytorch-grad-cam, and its bound.

    Both run a float64 copy of the network: in float32 the maps of two correct implementations
    differ by whatever the CPU's kernels make of ReLU gates within rounding of zero (8.8e-5 on
    one machine, 1.1e-4 on an AMD EPYC against a fixed 1e-4), which measures the CPU, not the
    implementations. In float64 what remains is derived in tests/test_agreement.py: the two
    min-max epsilons and pytorch-grad-cam's float32 scaling, about 1e-6.
    """
    from pytorch_grad_cam import GradCAM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_agreement import minmax_agreement_bound  # type: ignore[import-not-found]

    model64 = copy.deepcopy(model).double()
    images64 = images.double()
    size = (images.shape[-2], images.shape[-1])
    result = geocam.explain(model64, images64, [CLASS], LAYER, region="predicted")
    positive = result.upsample(size).positive[:, 0]
    with torch.no_grad():
        masks = (model64(images64).argmax(dim=1) == CLASS).double()
    grad_cam = GradCAM(model=model64, target_layers=[geocam.resolve_layer(model64, LAYER)])
    targets = [RegionTarget(CLASS, m) for m in masks]
    theirs = torch.from_numpy(np.asarray(grad_cam(input_tensor=images64, targets=targets)))
    positive = positive.cpu()
    difference = float((minmax(positive) - theirs).abs().max())
    bound: float = minmax_agreement_bound(positive.numpy())
    return difference, bound


@register("core")
def core(settings: Settings) -> list[Row]:
    """smp Unet resnet34 (random weights, seed 0) on --device, target `encoder.layer4`, region = predicted mask."""  # noqa: E501
    import segmentation_models_pytorch as smp
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM

    device = settings.torch_device
    torch.manual_seed(0)
    model: nn.Module = smp.Unet("resnet34", encoder_weights=None, in_channels=4, classes=5)
    model.eval().to(device)
    images = torch.rand(settings.tiles, generator=torch.Generator().manual_seed(0)).to(device)
    size = (images.shape[-2], images.shape[-1])

    # Predicted masks from a plain forward, once, outside timing (no_grad, not inference_mode:
    # Captum multiplies the mask into its graph).
    with torch.no_grad():
        logits: torch.Tensor = model(images)
        mask = (logits.argmax(dim=1) == CLASS).float()
        logits = model(images.contiguous(memory_format=torch.channels_last))
        mask_cl = (logits.argmax(dim=1) == CLASS).float()
        del logits

    # pytorch-grad-cam keeps forward hooks on its target layer for as long as it lives; it
    # gets its own copy of the network so that its hooks never run inside the competitors.
    reference = copy.deepcopy(model)
    grad_cam = GradCAM(model=reference, target_layers=[geocam.resolve_layer(reference, LAYER)])
    targets = [RegionTarget(CLASS, m) for m in mask]

    def region_score(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(x)
        return (out[:, CLASS] * mask).sum(dim=(-2, -1))

    captum = LayerGradCam(region_score, geocam.resolve_layer(model, LAYER))

    def geocam_one() -> geocam.CamResult:
        return geocam.explain(model, images, [CLASS], LAYER, region="predicted")

    def geocam_one_upsampled() -> geocam.CamResult:
        return geocam_one().upsample(size)

    def pytorch_grad_cam() -> np.ndarray:
        return np.asarray(grad_cam(input_tensor=images, targets=targets))

    def captum_gradcam() -> torch.Tensor:
        out: torch.Tensor = captum.attribute(images, relu_attributions=False)
        return out

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(images)
        return out

    channels_last = images.contiguous(memory_format=torch.channels_last)

    def forward_channels_last() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(channels_last)
        return out

    def five(options: geocam.CamOptions | None = None) -> Callable[[], geocam.CamResult]:
        def run() -> geocam.CamResult:
            return geocam.explain(model, images, CLASSES, LAYER, options=options)

        return run

    def five_calls() -> list[geocam.CamResult]:
        return [geocam.explain(model, images, [k], LAYER) for k in CLASSES]

    log("core 1/4: geocam vs pytorch-grad-cam vs Captum, one class")
    t1 = measure(
        {"geocam": geocam_one_upsampled, "pytorch-grad-cam": pytorch_grad_cam,
         "captum": captum_gradcam},
        settings.repeats, warm_up=not settings.smoke, device=device,
    )  # fmt: skip
    log("core 2/4: geocam vs the bare forward pass")
    t2 = measure(
        {"geocam": geocam_one, "forward": forward, "forward channels-last": forward_channels_last},
        settings.repeats,
        warm_up=not settings.smoke,
        device=device,
    )
    log("core 3/4: five classes in one call vs five calls")
    t3 = measure(
        {
            "one call": five(),
            "five calls": five_calls,
            "batched": five(geocam.CamOptions(backward="batched")),
            "sequential": five(geocam.CamOptions(backward="sequential")),
        },
        settings.repeats,
        warm_up=not settings.smoke,
        device=device,
    )
    log("core 4/4: agreement of the maps (float64)")
    difference, bound = agreement_float64(model, images)
    result = geocam_one()
    signed = result.signed[:, 0]
    captum_map = captum_gradcam().detach()[:, 0]
    relative = float((captum_map - signed).abs().max() / signed.abs().max())

    return [
        Row("Grad-CAM, class 1, upsampled to the input: geocam", t1["geocam"], "s"),
        Row("Grad-CAM, class 1: pytorch-grad-cam", t1["pytorch-grad-cam"], "s"),
        Row("Grad-CAM, class 1: Captum LayerGradCam (layer resolution)", t1["captum"], "s"),
        Row(
            "speed-up of geocam over pytorch-grad-cam",
            t1.ratio("pytorch-grad-cam", "geocam"),
            "x",
            Target(">=", 1.5),
        ),
        Row("speed-up of geocam over Captum", t1.ratio("captum", "geocam"), "x"),
        Row("forward pass, inference_mode, NCHW", t2["forward"], "s"),
        Row("forward pass, inference_mode, channels-last", t2["forward channels-last"], "s"),
        Row("geocam, class 1 (explain only)", t2["geocam"], "s"),
        Row(
            "geocam one class / NCHW forward",
            t2.ratio("geocam", "forward"),
            "x",
            Target("<=", 1.8),
        ),
        Row(
            "throughput, forward pass (prediction), NCHW",
            megapixels_per_second(settings.tiles, t2["forward"]),
            "MP/s",
        ),
        Row(
            "throughput, geocam one class (explanation), same tiles",
            megapixels_per_second(settings.tiles, t2["geocam"]),
            "MP/s",
        ),
        Row(
            "geocam one class / channels-last forward",
            t2.ratio("geocam", "forward channels-last"),
            "x",
        ),
        Row("geocam, 5 classes in one call (default options)", t3["one call"], "s"),
        Row("geocam, 5 one-class calls", t3["five calls"], "s"),
        Row(
            "5 classes in one call / 5 one-class calls",
            t3.ratio("one call", "five calls"),
            "x",
            Target("<=", 0.65),
        ),
        Row('geocam, 5 classes, backward="batched"', t3["batched"], "s"),
        Row('backward="batched" / 5 one-class calls', t3.ratio("batched", "five calls"), "x"),
        Row('geocam, 5 classes, backward="sequential"', t3["sequential"], "s"),
        Row(
            'backward="sequential" / 5 one-class calls',
            t3.ratio("sequential", "five calls"),
            "x",
        ),
        Row(
            "max abs. difference, min-max scaled maps, float64: geocam vs pytorch-grad-cam",
            difference,
            "diff",
            Target("<=", bound),
        ),
        Row("max rel. difference, signed maps, float32: Captum vs geocam", relative, "diff"),
        Row(
            "class-1 mask pixels that differ, NCHW vs channels-last forward",
            float((mask != mask_cl).sum()),
            "count",
        ),
    ]
