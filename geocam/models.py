"""Networks from a small spec: the architecture, what goes in, what comes out, and the weights.

Built-in networks come from segmentation-models-pytorch; other factories register through the
``geocam.models`` entry-point group, so any package can make its networks explainable by
geocam without geocam knowing about them. Checkpoints are loaded without executing code.
"""

from __future__ import annotations

import difflib
import hashlib
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geocam.errors import GeocamError, first_line

ModelFactory = Callable[["ModelSpec"], nn.Module]
"""A function that builds an (untrained) network from a spec."""

ENTRY_POINT_GROUP = "geocam.models"


@dataclass(frozen=True)
class Normalisation:
    """Per-band affine normalisation ``x * scale + offset`` applied before the network.

    ``Normalisation.mean_std`` builds the common ``(x - mean) / std`` form.
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.scale) != len(self.offset):
            raise GeocamError(
                f"normalisation: scale has {len(self.scale)} values but offset has "
                f"{len(self.offset)}; give one of each per band"
            )
        if any(s == 0 for s in self.scale):
            raise GeocamError("normalisation: a scale of 0 erases its band; use a non-zero scale")

    @classmethod
    def mean_std(cls, mean: Sequence[float], std: Sequence[float]) -> Normalisation:
        """The ``(x - mean) / std`` normalisation."""
        if len(mean) != len(std):
            raise GeocamError(f"normalisation: mean has {len(mean)} values but std has {len(std)}")
        if any(s == 0 for s in std):
            raise GeocamError("normalisation: a std of 0 divides by zero; use a positive std")
        return cls(
            scale=tuple(1.0 / s for s in std),
            offset=tuple(-m / s for m, s in zip(mean, std, strict=True)),
        )

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a ``(B, C, H, W)`` or ``(C, H, W)`` tensor of ``C`` bands."""
        bands = images.shape[-3]
        if bands != len(self.scale):
            raise GeocamError(
                f"normalisation has {len(self.scale)} bands but the images have {bands}"
            )
        shape = (bands, 1, 1)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=images.device).view(shape)
        offset = torch.tensor(self.offset, dtype=torch.float32, device=images.device).view(shape)
        return images.to(torch.float32) * scale + offset


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network and feed it bands from rasters.

    ``bands`` holds, for each input raster, the 1-based band indexes fed to the network, in
    order (a bi-temporal model reads two rasters). Empty means "every band of one raster".
    ``options`` are passed to the factory as extra keyword arguments (e.g. smp's
    ``decoder_channels``).
    """

    arch: str
    encoder: str
    in_channels: int
    classes: tuple[str, ...]
    bands: tuple[tuple[int, ...], ...] = ()
    normalisation: Normalisation | None = None
    layer: str | None = None
    method: str = "gradcam"
    checkpoint: Path | None = None
    factory: str = "smp"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise GeocamError(f"in_channels must be at least 1, got {self.in_channels}")
        if not self.classes:
            raise GeocamError("classes: name at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise GeocamError(f"classes: names must be unique, got {list(self.classes)}")
        if self.bands:
            count = sum(len(b) for b in self.bands)
            if count != self.in_channels:
                raise GeocamError(
                    f"bands select {count} bands but in_channels is {self.in_channels}"
                )
            if any(i < 1 for b in self.bands for i in b):
                raise GeocamError("bands: band indexes are 1-based, as in GDAL and rasterio")
        if self.normalisation is not None and len(self.normalisation.scale) != self.in_channels:
            raise GeocamError(
                f"normalisation has {len(self.normalisation.scale)} bands but in_channels is "
                f"{self.in_channels}"
            )

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a class name, or an index given as an int or a numeric string."""
        if isinstance(name_or_index, int) or name_or_index.isdigit():
            index = int(name_or_index)
            if not 0 <= index < len(self.classes):
                raise GeocamError(
                    f"class index {index} is out of range: the model has "
                    f"{len(self.classes)} classes (0..{len(self.classes) - 1})"
                )
            return index
        if name_or_index not in self.classes:
            raise GeocamError(
                f"unknown class {name_or_index!r}; the model's classes are "
                f"{', '.join(self.classes)}"
            )
        return self.classes.index(name_or_index)


def smp_factory(spec: ModelSpec) -> nn.Module:
    """Build a segmentation-models-pytorch network with random weights (none downloaded)."""
    import segmentation_models_pytorch as smp

    try:
        model: nn.Module = smp.create_model(
            spec.arch,
            encoder_name=spec.encoder,
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=len(spec.classes),
            **dict(spec.options),
        )
    except KeyError as exc:
        raise GeocamError(_unknown_smp_name(spec, exc)) from None
    except TypeError as exc:
        raise GeocamError(f"smp rejected the model options {dict(spec.options)}: {exc}") from None
    except RuntimeError as exc:  # timm's "Unknown model (NAME)" for a tu- encoder
        if "Unknown model" not in str(exc):
            raise
        raise GeocamError(
            f"smp cannot build encoder={spec.encoder!r}: timm has no such model; fix encoder in "
            "the config (tu- plus a name from timm.list_models())"
        ) from None
    return model


def _unknown_smp_name(spec: ModelSpec, error: KeyError) -> str:
    """Which of arch and encoder smp does not know, with the closest names it does."""
    import segmentation_models_pytorch as smp

    mapping = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", {})
    archs = {key.lower(): getattr(cls, "__name__", key) for key, cls in mapping.items()}
    encoders = list(smp.encoders.get_encoder_names())
    prefix = f"smp cannot build arch={spec.arch!r} with encoder={spec.encoder!r}"
    if archs and spec.arch.lower() not in archs:
        field, wrong, known = "arch", spec.arch, list(archs.values())
    elif not spec.encoder.startswith("tu-") and spec.encoder not in encoders:
        field, wrong, known = "encoder", spec.encoder, encoders
    else:
        return f"{prefix}: {str(error.args[0] if error.args else error).splitlines()[0]}"
    close = difflib.get_close_matches(wrong, known, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"known: {_listing(known, 8)}"
    return f"{prefix}: no such {field} ({hint}); fix {field} in the config"


def model_factories() -> dict[str, ModelFactory]:
    """All registered factories: the built-in ``smp`` one and those of installed plugins."""
    factories: dict[str, ModelFactory] = {"smp": smp_factory}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in factories and entry.value == "geocam.models:smp_factory":
            continue
        try:
            factory = entry.load()
        except Exception as exc:  # a broken plugin must not break geocam itself
            warnings.warn(
                f"model plugin {entry.name!r} ({entry.value}) failed to load: {exc}",
                stacklevel=2,
            )
            continue
        if entry.name in factories:
            warnings.warn(
                f"model plugin {entry.name!r} ({entry.value}) is ignored: the name is taken",
                stacklevel=2,
            )
            continue
        factories[entry.name] = factory
    return factories


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network of ``spec`` and load its checkpoint, if any; returned in eval mode."""
    factories = model_factories()
    if spec.factory not in factories:
        raise GeocamError(
            f"unknown model factory {spec.factory!r}; registered: {', '.join(sorted(factories))}"
        )
    model = factories[spec.factory](spec)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors or ``torch.save`` file without executing any code."""
    path = Path(path)
    if not path.is_file():
        raise GeocamError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except SafetensorError as exc:
            raise GeocamError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickled object reference: garbage
            raise GeocamError(
                f"checkpoint {path} cannot be read as a torch file; save the weights with "
                "torch.save(model.state_dict()) or as safetensors"
            ) from None
        raise GeocamError(
            f"checkpoint {path} holds Python objects, not only tensors; refused (loading it could "
            "run code). Save model.state_dict() or use safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = first_line(exc)
        raise GeocamError(
            f"checkpoint {path} cannot be read as a torch file ({reason}); save the weights with "
            "torch.save(model.state_dict()) or as safetensors"
        ) from None
    if isinstance(data, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise GeocamError(f"checkpoint {path} does not hold a state dict of named tensors")
    if data and all(k.startswith("module.") for k in data):  # saved from DataParallel
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load weights into ``model``; any missing, unexpected or misshapen key is an error."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", misshapen),
        )
        if items
    ]
    if problems:
        raise GeocamError(
            f"checkpoint {path} does not fit the model: {'; '.join(problems)}. "
            "Check arch, encoder, in_channels and classes in the config"
        )
    model.load_state_dict(state, strict=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, recorded in outputs so a heatmap names the exact weights used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
