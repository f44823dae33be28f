"""Model presets in YAML: a network, what it reads, and how to explain it, validated on load.

Schema (``?`` marks optional fields)::

    name: landcover-raleigh              # ? defaults to the file name
    description: one line                # ?
    arch: Unet                           # smp architecture (or the plugin's own)
    encoder: resnet18
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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geocam.cam import METHODS
from geocam.errors import GeocamError
from geocam.models import ModelSpec, Normalisation

_KNOWN = {
    "name", "description", "arch", "encoder", "in_channels", "classes", "bands",
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
        if method not in METHODS:
            self.fail("method", f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        normalisation = self.normalisation(in_channels)
        arch, encoder = self.get("arch", str), self.get("encoder", str)
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
        )

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
