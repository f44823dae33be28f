"""Layer layouts: token (with and without a class token) and channels-last layers explain as
the equivalent NCHW layer does, measured on a non-square input (height and width differ)."""

from __future__ import annotations

import torch
from torch import nn

from geocam import explain, list_layers


class Grid(nn.Module):
    """Tokens (B, N, C) -> NCHW on an h x w grid; drops a class token when there is one."""

    def __init__(self, cls: bool) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        tokens = tokens[:, 1:] if self.cls else tokens
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class Permute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)


class TokenNet(nn.Module):
    """A ViT-style network: patch tokens, a class token, a channels-last stage, a 1x1 head.

    ``embed`` (tokens), ``mix`` (tokens + class token) and ``nhwc`` (channels-last) are each
    followed by a module whose output is the same activation as NCHW (``grid0``, ``grid``,
    ``back``): the maps at each pair must agree.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = Embed()
        self.grid0 = Grid(cls=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.grid = Grid(cls=True)
        self.nhwc = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.back = Permute()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        a = self.grid0(self.embed(x), h, w)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), a.flatten(2).mT], dim=1)
        b = self.grid(self.mix(tokens), h, w)
        c = self.back(self.nhwc(b.permute(0, 2, 3, 1)))
        return nn.functional.interpolate(self.head(c), size=x.shape[-2:], mode="bilinear")


def test_layouts_are_listed_with_their_channels() -> None:
    torch.manual_seed(0)
    layers = {i.name: i for i in list_layers(TokenNet(), 3)}
    assert (layers["embed"].layout, layers["embed"].channels, layers["embed"].stride) == (
        "tokens", 8, 8,
    )  # fmt: skip
    assert layers["mix"].layout == "tokens+cls" and layers["mix"].channels == 8
    assert layers["nhwc"].layout == "NHWC" and layers["nhwc"].channels == 8
    assert layers["back"].layout == "NCHW"


def test_maps_at_token_and_nhwc_layers_equal_those_at_the_nchw_equivalent() -> None:
    torch.manual_seed(0)
    model = TokenNet().double().eval()
    images = torch.rand(2, 3, 48, 80, dtype=torch.float64)  # h != w: a transposed grid fails
    for token_layer, nchw_layer in (("embed", "grid0"), ("mix", "grid"), ("nhwc", "back")):
        for method in ("gradcam", "hirescam"):
            got = explain(model, images, [0, 1], token_layer, method=method, region="all")
            want = explain(model, images, [0, 1], nchw_layer, method=method, region="all")
            assert got.signed.shape == want.signed.shape == (2, 2, 6, 10)
            scale = want.signed.abs().max()
            assert (got.signed - want.signed).abs().max() <= 5e-7 * scale, token_layer
