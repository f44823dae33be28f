"""Model sources: each kind of model a user already has opens in one call and explains the same.

Fixtures are built here, small and offline: a tiny smp Unet saved as a Lightning-style
checkpoint (objects in its hyper-parameters, optimizer state), as an smp hub folder with
non-default ``decoder_channels``, as a state dict without ``num_batches_tracked``; the maps of
each equal, bitwise, those of the same network loaded the ordinary way.
"""

from __future__ import annotations

import argparse
import enum
import pathlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file
from torch import nn

from geocam import GeocamError, ModelSpec, explain
from geocam.models import ModelSource, load_checkpoint, open_model, read_checkpoint

DECODER = (16, 8, 8)
LAYER = "encoder.layer2"


def tiny_unet(seed: int = 0, decoder: tuple[int, ...] = DECODER) -> nn.Module:
    torch.manual_seed(seed)
    model = smp.Unet(
        "resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=decoder,
        in_channels=4,
        classes=2,
    )
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so loading shows
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def maps(model: nn.Module, layer: str = LAYER) -> torch.Tensor:
    torch.manual_seed(1)
    images = torch.rand(2, 4, 64, 64)
    return explain(model, images, [0, 1], layer, region="all").signed


class Colour(enum.Enum):
    RED = 1


class Payload:
    """Unpickling this creates ``marker``: proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def lightning_file(path: Path, model: nn.Module, marker: Path) -> Path:
    """A TorchGeo SemanticSegmentationTask-style checkpoint, objects and optimizer included."""
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 4, 64, 64)).sum().backward()
    optimizer.step()
    torch.save(
        {
            "epoch": 3,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {
                **{f"model.{k}": v for k, v in model.state_dict().items()},
                "criterion.weight": torch.ones(2),
            },
            "hyper_parameters": {
                "model": "unet",
                "backbone": "resnet18",
                "in_channels": 4,
                "num_classes": 2,
                "root": pathlib.Path("/data/train"),
                "colour": Colour.RED,
                "args": argparse.Namespace(lr=1e-3, patience=5),
                "payload": Payload(marker),
            },
            "optimizer_states": [optimizer.state_dict()],
        },
        path,
    )
    return path


def test_a_lightning_checkpoint_with_objects_loads_without_running_them(tmp_path: Path) -> None:
    reference = tiny_unet()
    marker = tmp_path / "PAYLOAD_RAN"
    path = lightning_file(tmp_path / "task.ckpt", reference, marker)
    spec = ModelSpec("Unet", "resnet18", 4, ("a", "b"), options={"encoder_depth": 3,
                                                                  "decoder_channels": DECODER})  # fmt: skip
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        source = open_model(path, spec)
    assert not marker.exists()
    assert source.kind == "lightning"
    assert (source.arch, source.encoder, source.classes, source.in_channels) == (
        "unet", "resnet18", 2, 4,
    )  # fmt: skip
    assert read_checkpoint(path).hyper_parameters["args"] == {"lr": 1e-3, "patience": 5}
    assert torch.equal(maps(source.model), maps(reference))
    assert not marker.exists()


def test_a_hub_folder_with_other_decoder_channels_opens_by_itself(tmp_path: Path) -> None:
    reference = tiny_unet(decoder=(32, 16, 8))
    reference.save_pretrained(str(tmp_path / "hub"))
    source = open_model(tmp_path / "hub")
    assert source.kind == "smp-hub"
    assert source.options["decoder_channels"] == [32, 16, 8]
    assert source.sha256 is not None and len(source.sha256) == 64
    assert torch.equal(maps(source.model), maps(reference))


def test_a_state_dict_without_num_batches_tracked_loads_as_torch_would(tmp_path: Path) -> None:
    reference = tiny_unet()
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    save_file(state, str(tmp_path / "converted.safetensors"))
    fresh = tiny_unet(seed=5)
    fresh.load_state_dict(state, strict=False)  # what torch's strict loader tolerates too
    spec = ModelSpec("Unet", "resnet18", 4, ("a", "b"), options={"encoder_depth": 3,
                                                                  "decoder_channels": DECODER})  # fmt: skip
    with pytest.warns(UserWarning, match="num_batches_tracked"):
        source = open_model(tmp_path / "converted.safetensors", spec)
    assert source.kind == "state-dict"
    assert torch.equal(maps(source.model), maps(reference))


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        self.unused = nn.Linear(8, 10)  # a classification head the forward never runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def test_parameters_of_modules_the_forward_never_runs_are_reported_and_tolerated(
    tmp_path: Path,
) -> None:
    reference = WithUnused()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("unused.")}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.warns(UserWarning, match=r"2 tensor\(s\) of modules the forward never runs"):
        load_checkpoint(WithUnused(), tmp_path / "w.safetensors")
    save_file({k: v for k, v in state.items() if k != "head.bias"}, str(tmp_path / "x.safetensors"))
    with pytest.raises(GeocamError, match=r"missing \(1\): head.bias"):
        load_checkpoint(WithUnused(), tmp_path / "x.safetensors")  # a used module: an error


def test_errors_name_the_prefix_the_folder_and_the_decoder_channels(tmp_path: Path) -> None:
    reference = tiny_unet()
    save_file({f"net.{k}": v for k, v in reference.state_dict().items()}, str(tmp_path / "p.st"))
    with pytest.raises(GeocamError, match="carry a 'net.' prefix"):
        load_checkpoint(tiny_unet(), tmp_path / "p.st")
    save_file(tiny_unet(decoder=(32, 16, 8)).state_dict(), str(tmp_path / "d.safetensors"))
    with pytest.raises(GeocamError, match=r"decoder_channels \(the file's: \[32, 16, 8\]\)"):
        load_checkpoint(tiny_unet(), tmp_path / "d.safetensors")
    reference.save_pretrained(str(tmp_path / "hub"))
    with pytest.raises(GeocamError, match="is a folder.*smp hub folder: pass it as the model"):
        load_checkpoint(tiny_unet(), tmp_path / "hub")


def test_a_state_dict_alone_asks_for_the_network(tmp_path: Path) -> None:
    save_file(tiny_unet().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(GeocamError, match="give a preset with arch and encoder"):
        open_model(tmp_path / "w.safetensors")
    with pytest.raises(GeocamError, match="does not exist"):
        open_model(tmp_path / "nothing.ckpt")


def test_provenance_tags_name_the_kind_and_the_file_digest(tmp_path: Path) -> None:
    tiny_unet().save_pretrained(str(tmp_path / "hub"))
    source: ModelSource = open_model(tmp_path / "hub")
    from geocam.models import file_sha256

    assert source.tags() == {
        "GEOCAM_MODEL_SOURCE": "smp-hub",
        "GEOCAM_MODEL_FILE": "hub",
        "GEOCAM_MODEL_SHA256": file_sha256(tmp_path / "hub" / "model.safetensors"),
    }
