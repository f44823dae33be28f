"""Shared fixtures: hand-weighted tiny networks, small smp networks, the shared real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from hypothesis import settings
from torch import nn

# Property tests draw new examples on every run by default (the point of them, locally). In CI
# (CI is set, e.g. CI=true) they are derandomised: the examples follow from each test's name,
# so a CI failure reproduces and a green run stays green. HYPOTHESIS_PROFILE picks one by hand.
settings.register_profile("ci", derandomize=True, print_blob=True)
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_preset(classes: str = "[land, water]", tile: int = 64, overlap: int = 16) -> str:
    """YAML of a small, fast preset: smp Unet resnet18 cut to depth 3, for 3-band uint8 scenes."""
    return f"""
arch: Unet
encoder: resnet18
in_channels: 3
classes: {classes}
normalisation: {{scale: [0.0039, 0.0039, 0.0039], offset: [0, 0, 0]}}
options: {{encoder_depth: 3, decoder_channels: [16, 8, 8]}}
tile: {tile}
overlap: {overlap}
"""


@pytest.fixture
def shared_data() -> Path:
    """The real rasters in ../shared/data; tests that need them skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class LinearSegNet(nn.Module):
    """Two 1x1 convolutions with hand-set weights: every gradient can be worked out by hand.

    feat: A0 = x0, A1 = x0 - x1.  head: logit0 = A0 + 2 A1, logit1 = -A0 + A1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]).view(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


class PoolSegNet(nn.Module):
    """A half-resolution feature layer: 2x2 average pool, nearest upsampling, 1x1 head.

    logit0 = 2 * up(A) + 0.5, logit1 = -up(A).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.pool(x)))


class TinyClassifier(nn.Module):
    """1x1 conv (the target), global average pool, linear: logits (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x).mean(dim=(-2, -1)))


# x0 = [[1, 2], [3, 4]], x1 = [[0, 1], [1, 0]]  ->  A0 = [[1, 2], [3, 4]], A1 = [[1, 1], [2, 4]]
LINEAR_INPUT = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


@pytest.fixture
def linear_net() -> LinearSegNet:
    return LinearSegNet().eval()


@pytest.fixture
def pool_net() -> PoolSegNet:
    return PoolSegNet().eval()


def make_smp(
    arch: str = "Unet", encoder: str = "resnet18", classes: int = 3, seed: int = 0
) -> nn.Module:
    """A small smp network with seeded random weights (nothing downloaded)."""
    torch.manual_seed(seed)
    return smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, in_channels=4, classes=classes
    ).eval()


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return make_smp()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Bitwise claims need the same bits from the same computation.

    They hold by construction: one process (one thread count), and a resumed run feeds the
    network the same tiles in the same batches as an uninterrupted one, so every kernel sees
    the same shapes and inputs (float32 kernels may round differently with the batch size;
    the batches never differ here). Deterministic algorithms make torch refuse, rather than
    silently use, any operation without a run-to-run reproducible implementation.
    """
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
