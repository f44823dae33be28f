"""geocam: Grad-CAM for segmentation networks on remote-sensing scenes.

The core engine explains a batch of tensors (:func:`explain`); regions, target layers and
model specs live in their own modules and are re-exported here.
"""

from importlib.metadata import PackageNotFoundError, version

from geocam.cam import (
    METHODS,
    CamOptions,
    CamResult,
    LayerGradients,
    Method,
    channel_weights,
    combine,
    explain,
    layer_gradients,
    upsample,
)
from geocam.errors import GeocamError
from geocam.layers import LayerInfo, default_layer, list_layers, resolve_layer
from geocam.models import (
    ModelSpec,
    Normalisation,
    build_model,
    load_checkpoint,
    model_factories,
)
from geocam.regions import Box, Region

try:
    __version__ = version("geocam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "METHODS",
    "Box",
    "CamOptions",
    "CamResult",
    "GeocamError",
    "LayerGradients",
    "LayerInfo",
    "Method",
    "ModelSpec",
    "Normalisation",
    "Region",
    "__version__",
    "build_model",
    "channel_weights",
    "combine",
    "default_layer",
    "explain",
    "layer_gradients",
    "list_layers",
    "load_checkpoint",
    "model_factories",
    "resolve_layer",
    "upsample",
]
