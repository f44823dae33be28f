"""The spec of a network: architecture, what goes in, what comes out, and the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geocam.errors import GeocamError


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
