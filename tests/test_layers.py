"""Target layers: lookup with suggestions, listing by dry run, the default layer."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearSegNet, make_smp
from torch import nn

from geocam import GeocamError, default_layer, list_layers, resolve_layer


def test_list_layers_measures_channels_and_stride(unet: nn.Module) -> None:
    layers = {info.name: info for info in list_layers(unet, in_channels=4)}
    expected = {
        "encoder.conv1": (64, 2),
        "encoder.layer1": (64, 4),
        "encoder.layer2": (128, 8),
        "encoder.layer3": (256, 16),
        "encoder.layer4": (512, 32),
        "decoder": (16, 1),
        "segmentation_head": (3, 1),
    }
    for name, (channels, stride) in expected.items():
        assert (layers[name].channels, layers[name].stride) == (channels, stride), name
    assert layers["encoder.layer1.0.relu"].calls == 2  # a shared ReLU runs twice per block
    order = [layers[n].order for n in ("encoder.conv1", "encoder.layer4", "segmentation_head")]
    assert order == sorted(order)


def test_list_layers_restores_the_model(unet: nn.Module) -> None:
    unet.train()
    try:
        list_layers(unet)
        assert unet.training
        assert all(p.requires_grad for p in unet.parameters())
        assert not any(m._forward_hooks for m in unet.modules())
    finally:
        unet.eval()


def test_list_layers_infers_input_channels() -> None:
    names = [info.name for info in list_layers(LinearSegNet())]
    assert names == ["feat", "head"]


@pytest.mark.parametrize(
    ("arch", "encoder", "expected"),
    [
        ("Unet", "resnet18", "encoder.layer4"),
        ("FPN", "resnet18", "encoder.layer4"),
        ("Unet", "mobilenet_v2", "encoder.features.18"),
        ("DeepLabV3Plus", "efficientnet-b0", "encoder._blocks.15"),  # not its 1x1 SE convs
    ],
)
def test_default_layer_is_the_encoders_last_stage(arch: str, encoder: str, expected: str) -> None:
    model = make_smp(arch, encoder)
    assert default_layer(model, in_channels=4) == expected


def test_earlier_stages_by_index(unet: nn.Module) -> None:
    assert default_layer(unet, 4, stage=-2) == "encoder.layer3"
    assert default_layer(unet, 4, stage=-5) == "encoder.relu"  # the stem's output
    with pytest.raises(GeocamError, match="stage -6: the encoder has 5 stages"):
        default_layer(unet, 4, stage=-6)


def test_unknown_layer_suggests_close_names(unet: nn.Module) -> None:
    with pytest.raises(
        GeocamError, match=r"unknown layer 'encoder\.layr4'; closest: encoder\.layer4"
    ):
        resolve_layer(unet, "encoder.layr4")
    assert resolve_layer(unet, "encoder.layer3") is unet.encoder.layer3


def test_network_rejecting_every_dummy_size_is_reported() -> None:
    class Fussy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != 1000:
                raise RuntimeError("needs 1000 pixels")
            return self.conv(x)

    with pytest.raises(GeocamError, match="rejected dummy inputs"):
        list_layers(Fussy())
