"""The literature's attribution baselines, for the same region score as Grad-CAM.

Saliency, input x gradient, Guided Backpropagation, Guided Grad-CAM and occlusion: pixel maps
``(B, K, H, W)`` of each class's region score, which the scene engine tiles, blends and writes
like any CAM (``Explanation(method="saliency")``...).
"""

from geocam.attribution.gradients import (
    InputGradients,
    guided_backprop_map,
    guided_gradcam_map,
    input_gradients,
    input_x_gradient_map,
    saliency_map,
)
from geocam.attribution.guided import (
    check_guidable,
    guided_relus,
    smooth_activations,
    watch_activations,
)
from geocam.attribution.methods import attribute, guided_backprop
from geocam.attribution.occlusion import OcclusionOptions, occlusion_maps
from geocam.attribution.result import Attribution
from geocam.methods import PIXEL_METHODS, PixelMethod

__all__ = [
    "PIXEL_METHODS",
    "Attribution",
    "InputGradients",
    "OcclusionOptions",
    "PixelMethod",
    "attribute",
    "check_guidable",
    "guided_backprop",
    "guided_backprop_map",
    "guided_gradcam_map",
    "guided_relus",
    "input_gradients",
    "input_x_gradient_map",
    "occlusion_maps",
    "saliency_map",
    "smooth_activations",
    "watch_activations",
]
