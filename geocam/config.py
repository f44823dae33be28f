"""Model presets in YAML: a network, what it reads, and how to explain it, validated on load.

Schema (``?`` marks optional fields)::

    name: landcover-raleigh              # ? defaults to the file name
    description: one line                # ?
    model: task.ckpt                     # ? a model source (relative to this file): ONNX, smp hub
                                         #   folder, Lightning/TorchGeo checkpoint, torchvision:NAME
    arch: Unet                           # smp architecture (or the plugin's own); ? with model
    encoder: resnet18                    # ? with model
    in_channels: 6
    classes: [developed, forest, ...]    # one name per output channel
    bands: [[1, 2, 3, 4, 5, 6]]          # ? 1-based bands per input raster (default: all)
    normalisation: {mean: [..], std: [..]}   # ? or {scale: [..], offset: [..]}
    nodata: 0                            # ? input nodata for files that declare none
    checkpoint: weights.safetensors      # ? relative to this file
    factory: smp                         # ? a registered model factory
    layer: encoder.layer4                # ? default target layer
    method: gradcam                      # ? default method
    tile: 512                            # ? tiling defaults
    overlap: 128                         # ?
    rgb: [3, 2, 1]                       # ? quicklook RGB: 1-based network input bands
    options: {decoder_channels: [..]}    # ? extra keyword arguments for the factory
    metrics: {...}                       # ? free-form, informational
    training: {...}                      # ? free-form, informational

Loading never executes code from the file (``yaml.safe_load``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from geocam.errors import GeocamError
from geocam.methods import METHODS, PIXEL_METHODS
from geocam.models import ModelSpec, Normalisation

if TYPE_CHECKING:
    from geocam.models import ModelSource

_KNOWN = {
    "model", "name", "description", "arch", "encoder", "in_channels", "classes", "bands",
    "normalisation", "nodata", "checkpoint", "factory", "layer", "method", "tile", "overlap",
    "rgb", "options", "metrics", "training",
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A loaded config: the model spec plus the defaults for explaining with it."""

    spec: ModelSpec
    name: str
    path: Path
    description: str = ""
    method: str = "gradcam"
    nodata: float | None = None
    tile: int = 512
    overlap: int = 128
    rgb: tuple[int, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    """A model source (:func:`geocam.models.open_model`), resolved relative to the preset."""


def load_config(path: str | Path) -> Preset:
    """Read and validate a YAML preset; every problem names the field and the file."""
    path = Path(path)
    if path.is_dir():
        raise GeocamError(f"config {path} is a folder; give the path of a YAML file")
    if not path.is_file():
        raise GeocamError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f" ({' '.join(str(problem).split())})" if problem else ""
        raise GeocamError(f"config {path}: invalid YAML{where}{detail}; fix the syntax") from None
    except UnicodeDecodeError:
        raise GeocamError(f"config {path}: not a text file") from None
    if not isinstance(data, dict):
        raise GeocamError(f"config {path}: expected a mapping of fields, got {type(data).__name__}")
    return _Reader(path, data).preset()


class _Reader:
    """Typed access to the fields of one config, with errors that name field and file."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            self.fail(unknown[0], f"unknown field (known: {', '.join(sorted(_KNOWN))})")

    def fail(self, name: str, problem: str) -> None:
        raise GeocamError(f"config {self.path}: field '{name}': {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in self.data or self.data[name] is None:
            if default is ...:
                self.fail(name, "missing; this field is required")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            self.fail(name, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def numbers(self, name: str, value: Any, count: int | None = None) -> tuple[float, ...]:
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            self.fail(name, f"expected a list of numbers, got {value!r}")
        if count is not None and len(value) != count:
            self.fail(name, f"expected {count} values (one per band), got {len(value)}")
        numbers = tuple(float(v) for v in value)
        if not all(math.isfinite(v) for v in numbers):
            self.fail(name, f"expected finite numbers, got {value!r}")
        return numbers

    def divisors(self, name: str, value: Any, count: int) -> tuple[float, ...]:
        """Finite, non-zero numbers: a zero std or scale erases its band (or divides by 0)."""
        numbers = self.numbers(name, value, count)
        if 0.0 in numbers:
            band = numbers.index(0.0) + 1
            self.fail(name, f"band {band} is 0, which erases the band; give a non-zero value")
        return numbers

    def nodata(self) -> float | None:
        """The input nodata for files that declare none: a finite number, or absent."""
        value: float | None = self.get("nodata", (int, float), None)
        if value is not None and not math.isfinite(value):
            self.fail("nodata", f"expected a finite number, got {value!r}")
        return value

    def preset(self) -> Preset:
        in_channels = self.get("in_channels", int)
        classes = self.get("classes", list)
        if not classes or not all(isinstance(c, str) and c for c in classes):
            self.fail("classes", "expected a list of class names")
        bands = self.get("bands", list, [])
        if not all(
            isinstance(b, list) and b and all(isinstance(i, int) and i >= 1 for i in b)
            for b in bands
        ):
            self.fail("bands", "expected a list of lists of 1-based band numbers, one per raster")
        checkpoint = self.get("checkpoint", str, None)
        if checkpoint is not None and not checkpoint.strip():
            self.fail("checkpoint", "is empty; name the weights file, or remove the field")
        method = self.get("method", str, "gradcam")
        if method not in METHODS + PIXEL_METHODS:
            choices = ", ".join(METHODS + PIXEL_METHODS)
            self.fail("method", f"unknown method {method!r}; choose one of {choices}")
        normalisation = self.normalisation(in_channels)
        model = self.model()
        if model is None:
            arch, encoder = self.get("arch", str), self.get("encoder", str)
        else:  # the source defines the network
            arch, encoder = self.get("arch", str, ""), self.get("encoder", str, "")
        layer, factory = self.get("layer", str, None), self.get("factory", str, "smp")
        options = self.get("options", dict, {})
        try:  # only the spec's own checks here: a field's error already names the file
            spec = ModelSpec(
                arch=arch,
                encoder=encoder,
                in_channels=in_channels,
                classes=tuple(classes),
                bands=tuple(tuple(b) for b in bands),
                normalisation=normalisation,
                layer=layer,
                method=method,
                checkpoint=(self.path.parent / Path(checkpoint).expanduser())
                if checkpoint
                else None,
                factory=factory,
                options=options,
            )
        except GeocamError as exc:
            raise GeocamError(f"config {self.path}: {exc}") from None
        if spec.checkpoint is not None and not spec.checkpoint.is_file():
            self.fail("checkpoint", f"{spec.checkpoint} does not exist")
        return Preset(
            spec=spec,
            name=self.get("name", str, self.path.stem),
            path=self.path,
            description=self.get("description", str, ""),
            method=method,
            nodata=self.nodata(),
            tile=self.get("tile", int, 512),
            overlap=self.get("overlap", int, 128),
            rgb=tuple(int(b) for b in self.numbers("rgb", self.get("rgb", list, []))),
            metrics=self.get("metrics", dict, {}),
            model=model,
        )

    def model(self) -> str | None:
        """The ``model`` source: ``torchvision:NAME`` as is, a path relative to this file."""
        model: str | None = self.get("model", str, None)
        if model is None or model.startswith("torchvision:"):
            return model
        path = self.path.parent / Path(model).expanduser()
        if not path.exists():
            self.fail("model", f"{path} does not exist")
        return str(path)

    def normalisation(self, bands: int) -> Normalisation | None:
        norm = self.get("normalisation", dict, None)
        if norm is None:
            return None
        keys = set(norm)
        if keys == {"mean", "std"}:
            mean = self.numbers("normalisation.mean", norm["mean"], bands)
            std = self.divisors("normalisation.std", norm["std"], bands)
            return Normalisation.mean_std(mean, std)
        if keys == {"scale", "offset"}:
            scale = self.divisors("normalisation.scale", norm["scale"], bands)
            offset = self.numbers("normalisation.offset", norm["offset"], bands)
            return Normalisation(scale, offset)
        self.fail("normalisation", "expected {mean, std} or {scale, offset}")
        return None


def open_preset(
    config: str | Path | None, model: str | Path | None = None
) -> tuple[Preset, ModelSource | None]:
    """The preset to explain with, and the model source it names or ``model`` overrides.

    With a source, the spec joins what the source knows (network, channels, class count) with
    what only the preset can say (class names, bands, normalisation); without a preset, the
    rest takes defaults and the user is told, in one line each, what a preset would add.
    """
    from geocam.models import open_model

    if config is None and model is None:
        raise GeocamError("give the model (-m SOURCE) or a preset (-c PRESET), or both")
    preset = load_config(config) if config is not None else None
    reference = model if model is not None else (preset.model if preset else None)
    if reference is None:
        assert preset is not None
        return preset, None
    base = preset.spec if preset is not None else None
    source = open_model(reference, base)
    spec = source.spec(base)
    if preset is None:
        return Preset(spec=spec, name=Path(str(reference)).stem, path=Path(str(reference))), source
    return replace(preset, spec=spec, model=str(reference)), source


def starter_preset(source: ModelSource, sidecar: str | Path | None, out: Path) -> str:
    """YAML of a starter preset for ``source``: what it knows filled in, the rest marked.

    ``sidecar`` (a JSON file: ukis-csmask's, or any with ``mean``/``std``, ``classes``,
    ``bands``) adds normalisation, class names and bands; ONNX files' Deepness metadata is used
    already. Lines the user must fill in end with ``# FILL IN``.
    """
    from geocam.layers import default_layer, fixed_tile, list_layers

    extra = read_sidecar(Path(sidecar)) if sidecar is not None else {}
    in_channels = source.in_channels or source.spec(None).in_channels
    names = extra.get("classes") or source.class_names
    count = source.classes or (len(names) if names else None)
    location = source.location
    if not location.startswith("torchvision:"):
        location = os.path.relpath(Path(location).resolve(), out.resolve().parent)
    layer = source.layer or default_layer(source.model, in_channels)
    lines = [
        f"# geocam preset written by `geocam init` for {Path(source.location).name}",
        f"# source: {source.kind}" + (f", sha256 {source.sha256}" if source.sha256 else ""),
        f"model: {location}",
    ]
    if source.arch and source.kind != "onnx":
        lines.append(f"# network: {source.arch} / {source.encoder}")
    lines.append(f"in_channels: {in_channels}")
    if names:
        lines.append(f"classes: [{', '.join(names)}]")
    else:
        placeholder = ", ".join(f"class_{i}" for i in range(count or 1))
        lines.append(f"classes: [{placeholder}]  # FILL IN: one name per output channel")
    if extra.get("band_names"):
        lines.append(f"# the network reads, in this order: {', '.join(extra['band_names'])}")
    bands = extra.get("bands")
    if bands:
        lines.append(f"bands: [[{', '.join(str(b) for b in bands)}]]")
    else:
        lines.append(
            f"# bands: [[{', '.join(str(i) for i in range(1, in_channels + 1))}]]  "
            "# FILL IN if the rasters hold other bands or another order"
        )
    norm = extra.get("normalisation") or source.normalisation
    if norm is not None:
        scale = ", ".join(f"{v:.9g}" for v in norm.scale)
        offset = ", ".join(f"{v:.9g}" for v in norm.offset)
        lines.append(f"normalisation: {{scale: [{scale}], offset: [{offset}]}}")
    else:
        lines.append(
            "normalisation: {mean: ["
            + ", ".join(["0"] * in_channels)
            + "], std: ["
            + ", ".join(["1"] * in_channels)
            + "]}  # FILL IN: the training normalisation"
        )
    lines.append(f"layer: {layer}")
    fixed = fixed_tile(source.model)
    if fixed is not None:
        strides = {i.name: int(i.stride) for i in list_layers(source.model, in_channels)}
        overlap = fixed_overlap(fixed, max(strides.values()), strides.get(layer, 1))
        lines += [f"tile: {fixed}  # the network takes only this size", f"overlap: {overlap}"]
    return "\n".join(lines) + "\n"


def fixed_overlap(tile: int, multiple: int, stride: int) -> int:
    """An overlap for a network that takes one tile size, on the network's cell grid.

    ``tile - overlap`` is a multiple of the network's input ``multiple`` (tiles share its
    cells); the overlap is at least a quarter of the tile and twice the layer's ``stride`` (no
    hard cut) where the tile leaves room for that.
    """
    want = max(tile // 4, 2 * stride)
    overlap = tile - (tile - want) // multiple * multiple
    return overlap if overlap < tile else max(tile - multiple, 0)


def read_sidecar(path: Path) -> dict[str, Any]:
    """Normalisation, class names and bands from a JSON sidecar (ukis-csmask style, lenient)."""
    if not path.is_file():
        raise GeocamError(f"--sidecar {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeocamError(f"--sidecar {path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GeocamError(f"--sidecar {path}: expected a JSON object")
    found: dict[str, Any] = {}
    found.update(_ukis_csmask(data))
    norm = data.get("normalisation") or data.get("normalization") or data.get("norm") or data
    if (
        isinstance(norm, dict)
        and isinstance(norm.get("mean"), list)
        and isinstance(norm.get("std"), list)
    ):
        found["normalisation"] = Normalisation.mean_std(norm["mean"], norm["std"])
    classes = data.get("classes") or data.get("class_names") or data.get("labels")
    if isinstance(classes, dict):
        classes = [classes[k] for k in sorted(classes, key=lambda k: int(k))]
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        found["classes"] = tuple(classes)
    bands = data.get("bands")
    if isinstance(bands, list) and all(isinstance(b, int) for b in bands):
        found["bands"] = bands
    if not found:
        raise GeocamError(
            f"--sidecar {path}: found no mean/std, classes or bands (keys: {', '.join(data)})"
        )
    return found


def _ukis_csmask(data: dict[str, Any]) -> dict[str, Any]:
    """Normalisation and band names from ukis-csmask's model JSON.

    There, ``data.dataset_statistics.img`` is ``[mean, std]`` per band and ``band_names`` the
    bands in the network's order.
    """
    inner = data.get("data")
    statistics = inner.get("dataset_statistics") if isinstance(inner, dict) else None
    if not isinstance(statistics, dict):
        return {}
    found: dict[str, Any] = {}
    img = statistics.get("img")
    if isinstance(img, list) and len(img) == 2 and all(isinstance(v, list) for v in img):
        found["normalisation"] = Normalisation.mean_std(img[0], img[1])
    names = statistics.get("band_names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        found["band_names"] = tuple(names)
    return found
