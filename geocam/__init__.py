"""geocam: Grad-CAM for segmentation networks on remote-sensing scenes.

The core engine explains a batch of tensors (:func:`explain`); the scene engine explains whole
GeoTIFFs (:func:`explain_raster`) or xarray DataArrays (:func:`explain_xarray`). Names are
imported lazily, so ``import geocam`` (and the command line's ``--help``) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("geocam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "geocam.cam": [
        "METHODS", "CamOptions", "CamResult", "LayerGradients", "Method", "channel_weights",
        "combine", "explain", "layer_activations", "layer_gradients", "upsample",
    ],
    "geocam.config": ["Preset", "load_config", "open_preset"],
    "geocam.errors": ["GeocamError"],
    "geocam.layers": ["LayerInfo", "default_layer", "list_layers", "resolve_layer"],
    "geocam.models": [
        "ModelSource", "ModelSpec", "Normalisation", "build_model", "load_checkpoint",
        "model_factories", "open_model",
    ],
    "geocam.raster": ["explain_raster", "explain_xarray"],
    "geocam.regions": ["Box", "Region"],
    "geocam.scene": [
        "Explanation", "Products", "Runtime", "SceneReport", "Tiling", "explain_scene",
    ],
}  # fmt: skip
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "METHODS",
    "Box",
    "CamOptions",
    "CamResult",
    "Explanation",
    "GeocamError",
    "LayerGradients",
    "LayerInfo",
    "Method",
    "ModelSource",
    "ModelSpec",
    "Normalisation",
    "Preset",
    "Products",
    "Region",
    "Runtime",
    "SceneReport",
    "Tiling",
    "__version__",
    "build_model",
    "channel_weights",
    "combine",
    "default_layer",
    "explain",
    "explain_raster",
    "explain_scene",
    "explain_xarray",
    "layer_activations",
    "layer_gradients",
    "list_layers",
    "load_checkpoint",
    "load_config",
    "model_factories",
    "open_model",
    "open_preset",
    "resolve_layer",
    "upsample",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geocam' has no attribute {name!r}")


if TYPE_CHECKING:
    from geocam.cam import (
        METHODS,
        CamOptions,
        CamResult,
        LayerGradients,
        Method,
        channel_weights,
        combine,
        explain,
        layer_activations,
        layer_gradients,
        upsample,
    )
    from geocam.config import Preset, load_config, open_preset
    from geocam.errors import GeocamError
    from geocam.layers import LayerInfo, default_layer, list_layers, resolve_layer
    from geocam.models import (
        ModelSource,
        ModelSpec,
        Normalisation,
        build_model,
        load_checkpoint,
        model_factories,
        open_model,
    )
    from geocam.raster import explain_raster, explain_xarray
    from geocam.regions import Box, Region
    from geocam.scene import (
        Explanation,
        Products,
        Runtime,
        SceneReport,
        Tiling,
        explain_scene,
    )
