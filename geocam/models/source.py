"""Model sources: the network a user already has, opened by content, not by file extension.

:func:`open_model` takes an smp hub folder (``config.json`` + ``model.safetensors``), an ONNX
file, a Lightning/TorchGeo checkpoint, a torchvision segmentation model by name
(``torchvision:deeplabv3_resnet50``) or a plain state dict (safetensors or ``torch.save``,
with a spec naming the network) and returns a :class:`ModelSource`: the network, what the
source knows about it, and the SHA-256 of the file its weights came from (every output records
it). What a source cannot know (class names, bands, normalisation) comes from a preset.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geocam.errors import GeocamError, GeocamWarning
from geocam.models.spec import ModelSpec, Normalisation
from geocam.models.state_dict import (
    Checkpoint,
    decoder_channels,
    file_sha256,
    load_state,
    read_checkpoint,
)

KINDS = ("smp-hub", "onnx", "lightning", "torchvision", "state-dict")
"""Every kind of model source, as recorded in the outputs' ``GEOCAM_MODEL_SOURCE`` tag."""

TORCHGEO_ARCHS = {"deeplabv3+": "deeplabv3plus"}
"""TorchGeo's ``model`` names that smp spells differently."""


@dataclass
class ModelSource:
    """A network and what its source knows about it.

    ``kind`` is one of :data:`KINDS`; ``sha256`` is the digest of the file the weights came
    from (None for a network without weights). Fields the source cannot know are None.
    ``notes`` are one-line remarks for the user (an upcast, tolerated keys).
    """

    model: nn.Module
    kind: str
    location: str
    sha256: str | None = None
    arch: str | None = None
    encoder: str | None = None
    classes: int | None = None
    in_channels: int | None = None
    class_names: tuple[str, ...] | None = None
    normalisation: Normalisation | None = None
    layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        """Provenance tags for every output: the source's kind, file and SHA-256."""
        tags = {"GEOCAM_MODEL_SOURCE": self.kind, "GEOCAM_MODEL_FILE": Path(self.location).name}
        if self.sha256:
            tags["GEOCAM_MODEL_SHA256"] = self.sha256
        return tags

    def spec(self, base: ModelSpec | None = None) -> ModelSpec:
        """The spec to explain with: the source's facts, the rest from ``base`` (a preset's).

        Class names come from ``base`` (their count must match the network's outputs), else
        from the source, else are ``class_0``, ``class_1``, ... with a one-line warning.
        """
        in_channels = self.in_channels or (base.in_channels if base else None)
        if in_channels is None:
            from geocam.layers import infer_in_channels

            in_channels = infer_in_channels(self.model)
        if base is not None and self.in_channels and base.in_channels != self.in_channels:
            raise GeocamError(
                f"the preset says in_channels {base.in_channels} but the model {self.location} "
                f"takes {self.in_channels}; fix in_channels (and bands) in the preset"
            )
        count = self.classes
        if base is not None and count is not None and len(base.classes) != count:
            raise GeocamError(
                f"the preset names {len(base.classes)} classes but the model {self.location} "
                f"outputs {count}; name one class per output channel in the preset"
            )
        if base is not None:
            names = base.classes
        elif self.class_names:
            names = self.class_names
        else:
            count = count or self._output_channels(in_channels)
            names = tuple(f"class_{i}" for i in range(count))
            warnings.warn(
                f"the model does not name its {count} classes: calling them class_0.."
                f"class_{count - 1} (name them in a preset: geocam init -m SOURCE -o preset.yaml)",
                GeocamWarning,
                stacklevel=2,
            )
        normalisation = base.normalisation if base and base.normalisation else self.normalisation
        if base is None and normalisation is None:
            warnings.warn(
                "no normalisation is known for this model: the bands are fed as read (give one "
                "in a preset, `normalisation: {mean: [..], std: [..]}`)",
                GeocamWarning,
                stacklevel=2,
            )
        return ModelSpec(
            arch=self.arch or (base.arch if base else "") or self.kind,
            encoder=self.encoder or (base.encoder if base else "") or Path(self.location).name,
            in_channels=in_channels,
            classes=tuple(names),
            bands=base.bands if base else (),
            normalisation=normalisation,
            layer=(base.layer if base else None) or self.layer,
            method=base.method if base else "gradcam",
            factory=self.kind,
            options=self.options,
        )

    def _output_channels(self, in_channels: int) -> int:
        from geocam.cam import _main_output
        from geocam.layers import dry_run

        output = dry_run(self.model, in_channels, lambda dummy: _main_output(self.model(dummy)))
        return int(output.shape[1])


def open_model(source: str | Path, spec: ModelSpec | None = None) -> ModelSource:
    """Open a model source by its content; ``spec`` (a preset's) names what the source does not.

    A plain state dict needs ``spec`` for the network (``arch``, ``encoder``, ...); the other
    kinds define it themselves. Nothing is downloaded and no code from a file is run.
    """
    text = str(source)
    if text.startswith("torchvision:"):
        from geocam.models.vision import open_torchvision

        return open_torchvision(text.removeprefix("torchvision:"), spec)
    path = Path(source).expanduser()
    if path.is_dir():
        from geocam.models.hub import is_hub_folder, open_hub_folder

        if not is_hub_folder(path):
            raise GeocamError(
                f"model {path} is a folder but not an smp hub folder (config.json and "
                "model.safetensors, as smp's save_pretrained writes); give that folder or a file"
            )
        return open_hub_folder(path)
    if not path.is_file():
        from geocam.models.vision import segmentation_names

        if text in segmentation_names():
            from geocam.models.vision import open_torchvision

            return open_torchvision(text, spec)
        raise GeocamError(
            f"model {source} does not exist; give a weights file (.ckpt, .pt, .safetensors), an "
            "ONNX file, an smp hub folder or torchvision:NAME"
        )
    from geocam.models.onnx import looks_like_onnx

    if looks_like_onnx(path):
        from geocam.models.onnx import open_onnx

        return open_onnx(path)
    checkpoint = read_checkpoint(path)
    if checkpoint.kind == "lightning":
        return open_lightning(checkpoint, spec)
    return open_state_dict(checkpoint, spec)


def open_state_dict(checkpoint: Checkpoint, spec: ModelSpec | None) -> ModelSource:
    """A plain state dict: the network comes from ``spec``, the weights from the file."""
    from geocam.models.factories import model_factories

    if spec is None or not spec.arch or not spec.encoder:
        raise GeocamError(
            f"model {checkpoint.path} is a state dict, which does not say which network it is: "
            "give a preset with arch and encoder (-c PRESET)"
        )
    factories = model_factories()
    if spec.factory not in factories:
        raise GeocamError(
            f"unknown model factory {spec.factory!r}; registered: {', '.join(sorted(factories))}"
        )
    model = factories[spec.factory](replace(spec, checkpoint=None))
    notes = load_state(model, checkpoint.state, str(checkpoint.path))
    return ModelSource(
        model=model.eval(),
        kind="state-dict",
        location=str(checkpoint.path),
        sha256=file_sha256(checkpoint.path),
        arch=spec.arch,
        encoder=spec.encoder,
        in_channels=spec.in_channels,
        classes=len(spec.classes),
        options=dict(spec.options),
        notes=notes,
    )


def open_lightning(checkpoint: Checkpoint, spec: ModelSpec | None) -> ModelSource:
    """A Lightning/TorchGeo checkpoint: the network from its hyper-parameters (or ``spec``).

    TorchGeo's ``SemanticSegmentationTask`` records ``model`` (the smp architecture),
    ``backbone``, ``in_channels`` and ``num_classes``; generic modules may use ``arch``,
    ``encoder_name`` and ``classes``. Missing counts are read from the weights.
    """
    from geocam.models.factories import smp_factory

    hp = checkpoint.hyper_parameters
    arch = _first_str(hp, "model", "arch", "architecture") or (spec.arch if spec else None)
    encoder = _first_str(hp, "backbone", "encoder_name", "encoder") or (
        spec.encoder if spec else None
    )
    if not arch or not encoder:
        raise GeocamError(
            f"checkpoint {checkpoint.path}: its hyper_parameters name no network (model/arch "
            "and backbone/encoder); give a preset with arch and encoder (-c PRESET)"
        )
    arch = TORCHGEO_ARCHS.get(arch.lower(), arch)
    in_channels = _first_int(hp, "in_channels") or first_conv_channels(checkpoint.state)
    classes = _first_int(hp, "num_classes", "classes") or last_conv_outputs(checkpoint.state)
    options: dict[str, Any] = {}
    if spec is not None and spec.arch.lower() == arch.lower() and spec.encoder == encoder:
        options = dict(spec.options)
    widths = decoder_channels(checkpoint.state)
    if widths and "decoder_channels" not in options and arch.lower() in ("unet", "unetplusplus"):
        options = {**options, "decoder_channels": widths, "encoder_depth": len(widths)}
    if in_channels is None or classes is None:
        raise GeocamError(f"checkpoint {checkpoint.path}: cannot tell in_channels and classes")
    names = tuple(f"class_{i}" for i in range(classes))
    model = smp_factory(
        ModelSpec(arch, encoder, in_channels, names, factory="smp", options=options)
    )
    notes = load_state(model, checkpoint.state, str(checkpoint.path))
    if checkpoint.dropped:
        notes.append(f"{len(checkpoint.dropped)} key(s) outside the network left out")
    return ModelSource(
        model=model.eval(),
        kind="lightning",
        location=str(checkpoint.path),
        sha256=file_sha256(checkpoint.path),
        arch=arch,
        encoder=encoder,
        classes=classes,
        in_channels=in_channels,
        options=options,
        notes=notes,
    )


def first_conv_channels(state: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the first 4-D weight in the file's order (the first convolution)."""
    for key, value in state.items():
        if value.ndim == 4 and key.endswith("weight"):
            return int(value.shape[1])
    return None


def last_conv_outputs(state: dict[str, torch.Tensor]) -> int | None:
    """Output channels of the last 4-D weight outside an auxiliary head (the classifier)."""
    found = None
    for key, value in state.items():
        if value.ndim == 4 and key.endswith("weight") and not key.startswith("aux"):
            found = int(value.shape[0])
    return found


def _first_str(hp: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        if isinstance(hp.get(key), str) and hp[key]:
            return str(hp[key])
    return None


def _first_int(hp: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = hp.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
