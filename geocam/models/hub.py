"""smp hub folders: ``config.json`` and ``model.safetensors``, as smp's ``save_pretrained`` writes.

The network is rebuilt from the config with ``encoder_weights=None``: smp's own
``from_pretrained`` first downloads the encoder's ImageNet weights, which fails offline (smp
issue #957) and would be overwritten anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geocam.errors import GeocamError
from geocam.models.source import ModelSource
from geocam.models.state_dict import file_sha256, load_state, read_checkpoint

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_NOT_OPTIONS = {"_model_class", "encoder_name", "encoder_weights", "in_channels", "classes"}


def is_hub_folder(path: Path) -> bool:
    """True for a folder with ``config.json`` and one of the hub's weights files."""
    return (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHTS)


def open_hub_folder(path: Path) -> ModelSource:
    """The smp network a hub folder describes, with its weights loaded."""
    import segmentation_models_pytorch as smp

    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeocamError(f"model {path}: config.json is not valid JSON ({exc})") from None
    arch, encoder = config.get("_model_class"), config.get("encoder_name")
    if not isinstance(arch, str) or not isinstance(encoder, str):
        raise GeocamError(
            f"model {path}: config.json names no smp network (_model_class, encoder_name)"
        )
    options = {k: v for k, v in config.items() if k not in _NOT_OPTIONS and not k.startswith("_")}
    options = {k: v for k, v in options.items() if v is not None or k == "activation"}
    in_channels, classes = int(config.get("in_channels", 3)), int(config.get("classes", 1))
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
            **options,
        )
    except (KeyError, TypeError, RuntimeError) as exc:
        raise GeocamError(f"model {path}: smp cannot build {arch}/{encoder}: {exc}") from None
    weights = next(path / w for w in WEIGHTS if (path / w).is_file())
    notes = load_state(model, read_checkpoint(weights).state, str(weights))
    return ModelSource(
        model=model.eval(),
        kind="smp-hub",
        location=str(path),
        sha256=file_sha256(weights),
        arch=arch,
        encoder=encoder,
        classes=classes,
        in_channels=in_channels,
        options=options,
        notes=notes,
    )
