"""torchvision segmentation networks by name, their first convolution fitted to the bands.

``torchvision:deeplabv3_resnet50`` (or the bare name) builds the network without weights
(``weights=None, weights_backbone=None``: nothing is downloaded); the weights come from the
preset's ``checkpoint``. The class count and input channels come from the preset, else from
the checkpoint's shapes.
"""

from __future__ import annotations

from torch import nn

from geocam.errors import GeocamError
from geocam.models.source import ModelSource, first_conv_channels, last_conv_outputs
from geocam.models.spec import ModelSpec
from geocam.models.state_dict import file_sha256, load_state, read_checkpoint


def segmentation_names() -> list[str]:
    """The segmentation builders torchvision has (``fcn_resnet50``, ``lraspp_...``, ...)."""
    from torchvision.models import list_models, segmentation

    return list(list_models(module=segmentation))


def open_torchvision(name: str, spec: ModelSpec | None) -> ModelSource:
    """Build torchvision's ``name``; ``spec`` gives classes, in_channels and the checkpoint."""
    from torchvision.models import get_model

    names = segmentation_names()
    if name not in names:
        raise GeocamError(
            f"model torchvision:{name}: torchvision has no such segmentation network "
            f"(known: {', '.join(names)})"
        )
    state = read_checkpoint(spec.checkpoint).state if spec and spec.checkpoint else None
    classes = len(spec.classes) if spec else (last_conv_outputs(state) if state else None)
    in_channels = spec.in_channels if spec else (first_conv_channels(state) if state else None)
    aux = bool(state) and any(k.startswith("aux_classifier.") for k in state or {})
    model = get_model(
        name, weights=None, weights_backbone=None, num_classes=classes or 21, aux_loss=aux
    )
    if in_channels and in_channels != 3:
        adapt_first_conv(model, in_channels)
    notes = load_state(model, state, str(spec.checkpoint)) if state and spec else []
    return ModelSource(
        model=model.eval(),
        kind="torchvision",
        location=str(spec.checkpoint) if spec and spec.checkpoint else f"torchvision:{name}",
        sha256=file_sha256(spec.checkpoint) if spec and spec.checkpoint else None,
        arch=name,
        encoder="torchvision",
        classes=classes or 21,
        in_channels=in_channels or 3,
        notes=notes,
    )


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first ``Conv2d`` with one taking ``in_channels`` (same shape otherwise)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(
                parent,
                attribute,
                nn.Conv2d(
                    in_channels,
                    module.out_channels,
                    module.kernel_size,  # type: ignore[arg-type]
                    module.stride,  # type: ignore[arg-type]
                    module.padding,  # type: ignore[arg-type]
                    module.dilation,  # type: ignore[arg-type]
                    module.groups,
                    module.bias is not None,
                ),
            )
            return
    raise GeocamError("the network has no Conv2d to fit to the input channels")
