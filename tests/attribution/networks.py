"""Small ReLU networks for the attribution tests (float64, seeded)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReluNet(nn.Module):
    """conv 3x3, ReLU, conv 3x3, ReLU6, 2x2 average pool (the Grad-CAM layer), upsample, 1x1
    head: ReLU and ReLU6 gates, a stride-2 layer, 3 input bands and 2 classes."""

    def __init__(self, seed: int = 0, inplace: bool = False, relu6: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = nn.ReLU6(inplace=inplace) if relu6 else nn.ReLU(inplace=inplace)
        self.pool = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(6, 2, 1)
        with torch.no_grad():  # weights large enough that some units saturate at 6
            self.conv1.weight.mul_(4)
            self.conv2.weight.mul_(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))))


class TinyRelu(nn.Module):
    """Hand-set: h = W1 x (1x1 conv), a = ReLU(h), logits = W2 a (1x1 conv); see the test."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(2, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -2.0]]).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.tensor([[-1.0, 3.0], [2.0, 1.0]]).view(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.feat(x)))


class SmoothNet(nn.Module):
    """A network with a SiLU and a GELU: no guided gradient exists."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SiLU(), nn.Conv2d(4, 4, 1), nn.GELU())
        self.act = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(x)))


class FunctionalNet(nn.Module):
    """ReLU called as a function in ``forward``: guided backprop cannot swap it."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.feat(x)))
