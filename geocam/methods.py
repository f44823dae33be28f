"""The names of the explanation methods, in one place that does not import torch.

The command line offers them without loading torch (``--help`` stays fast); the CAM methods
are computed by :mod:`geocam.cam`, the pixel baselines by :mod:`geocam.attribution`.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

Method: TypeAlias = Literal["gradcam", "hirescam", "gradcam++", "layercam"]
METHODS: tuple[Method, ...] = get_args(Method)
PixelMethod: TypeAlias = Literal[
    "saliency", "inputxgradient", "guided-backprop", "guided-gradcam", "occlusion"
]
PIXEL_METHODS: tuple[PixelMethod, ...] = get_args(PixelMethod)
ALL_METHODS: tuple[str, ...] = METHODS + PIXEL_METHODS
"""Every method ``geocam explain``, ``batch`` and ``evaluate`` take."""
