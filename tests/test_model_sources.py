"""Model sources: each kind of model a user already has opens in one call and explains the same.

Fixtures are built here, small and offline: a tiny smp Unet saved as a Lightning-style
checkpoint (objects in its hyper-parameters, optimizer state), as an smp hub folder with
non-default ``decoder_channels``, as a state dict without ``num_batches_tracked``; the maps of
each equal, bitwise, those of the same network loaded the ordinary way.
"""

from __future__ import annotations

import argparse
import copy
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
OPTIONS = {"encoder_depth": 3, "decoder_channels": DECODER}


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
    trained = copy.deepcopy(model)  # the optimizer's state, not a change to the weights saved
    optimizer = torch.optim.Adam(trained.parameters())
    trained(torch.rand(1, 4, 64, 64)).sum().backward()
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
    spec = ModelSpec("Unet", "resnet18", 4, ("a", "b"), options=OPTIONS)
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
    spec = ModelSpec("Unet", "resnet18", 4, ("a", "b"), options=OPTIONS)
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
    with pytest.raises(GeocamError, match=r"carry a 'net\.' prefix"):
        load_checkpoint(tiny_unet(), tmp_path / "p.st")
    save_file(tiny_unet(decoder=(32, 16, 8)).state_dict(), str(tmp_path / "d.safetensors"))
    with pytest.raises(GeocamError, match=r"decoder_channels \(the file's: \[32, 16, 8\]\)"):
        load_checkpoint(tiny_unet(), tmp_path / "d.safetensors")
    reference.save_pretrained(str(tmp_path / "hub"))
    with pytest.raises(GeocamError, match=r"is a folder.*smp hub folder: pass it as the model"):
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


# --- through the command line: one command per kind, maps as the ordinary route's -------------

NET = """
arch: Unet
encoder: resnet18
in_channels: 4
classes: [a, b]
options: {encoder_depth: 3, decoder_channels: [16, 8, 8]}
"""
ARGS = ("--class", "1", "--tile", "64", "--overlap", "16", "--layer")


def scene(path: Path) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.random((4, 80, 112), dtype=np.float32)
    profile = {
        "driver": "GTiff", "width": 112, "height": 80, "count": 4, "dtype": "float32",
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 10, 10),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def run(*args: str) -> str:
    from click.testing import CliRunner

    from geocam.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def heat(path: Path) -> tuple[Any, dict[str, str]]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read().astype("float64"), src.tags()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene, the reference run (preset + checkpoint) and every kind of model file."""
    root = tmp_path_factory.mktemp("sources")
    scene(root / "scene.tif")
    reference = tiny_unet()
    save_file(reference.state_dict(), str(root / "weights.safetensors"))
    (root / "net.yaml").write_text(NET)
    (root / "ref.yaml").write_text(NET + "checkpoint: weights.safetensors\n")
    run(
        "explain",
        root / "scene.tif",
        "-c",
        root / "ref.yaml",
        *ARGS,
        LAYER,
        "-o",
        root / "ref.tif",
        "-q",
    )
    lightning_file(root / "task.ckpt", tiny_unet(), root / "PAYLOAD_RAN")
    tiny_unet().save_pretrained(str(root / "hub"))
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    save_file(state, str(root / "converted.safetensors"))
    export_onnx(reference, root / "model.onnx", half=False)
    export_onnx(reference, root / "model16.onnx", half=True)
    return root


def export_onnx(model: nn.Module, path: Path, half: bool) -> None:
    """The legacy (TorchScript) exporter: the dynamo one needs onnxscript, not installed here."""

    class Half(nn.Module):  # float16 inside, Cast nodes at both ends (as converted models are)
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = copy.deepcopy(net).half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.half()).float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Half(model) if half else model,
            (torch.rand(1, 4, 64, 64),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}, "out": {0: "b", 2: "h", 3: "w"}},
            opset_version=17,
        )


@pytest.mark.parametrize(
    ("source", "config"),
    [("task.ckpt", None), ("hub", None), ("converted.safetensors", "net.yaml")],
)
def test_state_dict_routes_explain_through_m_bitwise_as_the_ordinary_route(
    folder: Path, source: str, config: str | None
) -> None:
    out = folder / f"{source}.tif"
    extra = ("-c", folder / config) if config else ()
    output = run(
        "explain",
        folder / "scene.tif",
        "-m",
        folder / source,
        *extra,
        *ARGS,
        LAYER,
        "-o",
        out,
        "-q",
    )
    got, tags = heat(out)
    want, _ = heat(folder / "ref.tif")
    assert np_equal(got, want)
    assert tags["GEOCAM_MODEL_SOURCE"] in ("lightning", "smp-hub", "state-dict")
    assert len(tags["GEOCAM_MODEL_SHA256"]) == 64
    assert not (folder / "PAYLOAD_RAN").exists()
    if config is None:
        assert "class_0..class_1" in output and "no normalisation" in output


def np_equal(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.array_equal(a, b, equal_nan=True))


ONNX_LAYER = "encoder/layer2/layer2/1/relu_1/Relu"  # smp's encoder.layer2 output, as exported


def test_onnx_explains_through_m_within_1e_4_of_the_same_weights_in_smp(folder: Path) -> None:
    import numpy as np

    out = folder / "onnx.tif"
    run(
        "explain",
        folder / "scene.tif",
        "-m",
        folder / "model.onnx",
        *ARGS,
        ONNX_LAYER,
        "-o",
        out,
        "-q",
    )
    got, tags = heat(out)
    want, _ = heat(folder / "ref.tif")
    scale = np.nanmax(np.abs(want))
    assert np.nanmax(np.abs(got - want)) <= 1e-4 * scale
    assert tags["GEOCAM_MODEL_SOURCE"] == "onnx"


def test_a_float16_onnx_graph_is_upcast_casts_included_and_its_maps_are_finite(
    folder: Path,
) -> None:
    import numpy as np
    import onnx

    from geocam.models.onnx import upcast

    proto = onnx.load(str(folder / "model16.onnx"))
    tensors, casts = upcast(proto)
    assert tensors > 0 and casts >= 1
    assert all(n.attribute[0].i != 10 for n in proto.graph.node if n.op_type == "Cast")
    out = folder / "onnx16.tif"
    output = run(
        "explain", folder / "scene.tif", "-m", folder / "model16.onnx",
        *ARGS, "net/" + ONNX_LAYER, "-o", out,
    )  # fmt: skip
    assert output.count("upcast to float32") == 1
    got, _ = heat(out)
    want, _ = heat(folder / "ref.tif")
    valid = ~np.isnan(want)
    assert np.isfinite(got[valid]).all()
    assert np.corrcoef(got[valid], want[valid])[0, 1] > 0.999  # float16 weights, rounded


def test_onnx_layers_hide_helpers_unless_all(folder: Path) -> None:
    listed = run("layers", "-m", folder / "model.onnx")
    every = run("layers", "-m", folder / "model.onnx", "--all")
    assert f"{ONNX_LAYER}" in listed and "<- default" in listed
    assert len(every.splitlines()) >= len(listed.splitlines())
    assert "NCHW" in listed


# --- torchvision by name, geocam init ------------------------------------------------------


def test_torchvision_by_name_fits_the_bands_and_defaults_to_its_backbone(tmp_path: Path) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    from geocam import default_layer
    from geocam.models.vision import adapt_first_conv

    torch.manual_seed(0)
    reference = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)
    adapt_first_conv(reference, 4)
    reference.eval()
    save_file(reference.state_dict(), str(tmp_path / "tv.safetensors"))
    spec = ModelSpec("", "", 4, ("a", "b"), checkpoint=tmp_path / "tv.safetensors")
    source = open_model("torchvision:lraspp_mobilenet_v3_large", spec)
    assert source.kind == "torchvision" and source.sha256 is not None
    layer = default_layer(source.model, 4)
    assert layer.startswith("backbone.") and not layer.startswith("classifier")
    assert torch.equal(maps(source.model, layer), maps(reference, layer))  # a dict output


def test_dict_outputs_keyed_logits_and_logits_attributes_are_read() -> None:
    from types import SimpleNamespace

    from geocam.cam import _main_output

    logits = torch.zeros(1, 2, 4, 4)
    assert _main_output({"logits": logits, "aux": torch.ones(1, 1)}) is logits
    assert _main_output({"hidden": torch.ones(1, 3), "seg": logits}) is logits
    assert _main_output(SimpleNamespace(logits=logits)) is logits


def test_init_writes_a_preset_that_explains_and_marks_what_to_fill_in(folder: Path) -> None:
    import json

    import onnx
    import yaml

    from geocam.config import load_config

    proto = onnx.load(str(folder / "model.onnx"))  # Deepness-style metadata
    for key, value in {
        "class_names": json.dumps({"0": "land", "1": "cloud"}),
        "standardization_mean": "[0.1, 0.2, 0.3, 0.4]",
        "standardization_std": "[0.5, 0.5, 0.5, 0.5]",
    }.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(folder / "deepness.onnx"))
    run("init", "-m", folder / "deepness.onnx", "-o", folder / "deepness.yaml")
    text = (folder / "deepness.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["classes"] == ["land", "cloud"] and data["model"] == "deepness.onnx"
    assert data["normalisation"]["offset"][0] == pytest.approx(-0.2)
    assert data["layer"] == ONNX_LAYER
    preset = load_config(folder / "deepness.yaml")
    assert preset.spec.normalisation is not None
    run("explain", folder / "scene.tif", "-c", folder / "deepness.yaml", "--class", "cloud",
        "--tile", "64", "--overlap", "16", "-o", folder / "deepness.tif", "-q")  # fmt: skip
    assert heat(folder / "deepness.tif")[1]["GEOCAM_MODEL_SOURCE"] == "onnx"

    (folder / "side.json").write_text(json.dumps({"mean": [0, 0, 0, 0], "std": [2, 2, 2, 2]}))
    run("init", "-m", folder / "hub", "--sidecar", folder / "side.json", "-o", folder / "hub.yaml")
    text = (folder / "hub.yaml").read_text()
    assert "classes: [class_0, class_1]  # FILL IN" in text
    assert yaml.safe_load(text)["normalisation"]["scale"] == [0.5] * 4
    run("explain", folder / "scene.tif", "-c", folder / "hub.yaml", "--class", "class_1",
        "--tile", "64", "--overlap", "16", "-o", folder / "hub-init.tif", "-q")  # fmt: skip


def test_init_verify_prints_the_onnx_difference_and_refuses_other_sources(folder: Path) -> None:
    """``init --verify`` (onnxruntime) checks a conversion once, when the preset is made.

    Both graphs agree to 1e-4 relative, as the issue asks of ONNX (2.9e-6 and 2.7e-6 measured;
    onnxruntime's CPU kernels run the float16 graph's convolutions in float32), and never
    exactly: other kernels, other rounding, so a difference that is always 0 fails.
    """
    import re

    pytest.importorskip("onnxruntime")
    figures = {}
    for name in ("model.onnx", "model16.onnx"):
        out = folder / f"verify-{name}.yaml"
        text = run("init", "-m", folder / name, "--verify", "-o", out)
        found = re.search(r"max \|difference\| (\S+) \((\S+) of the largest output\)", text)
        assert found is not None and out.is_file(), text
        figures[name] = float(found.group(1)), float(found.group(2))
    for name, (difference, relative) in figures.items():
        assert difference > 0 and 0 < relative <= 1e-4, name
    from click.testing import CliRunner

    from geocam.cli import cli

    result = CliRunner().invoke(cli, ["init", "-m", str(folder / "hub"), "--verify", "-o",
                                      str(folder / "verify-hub.yaml")])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("geocam: error: --verify compares")
    assert not (folder / "verify-hub.yaml").exists()


def test_a_ukis_csmask_sidecar_gives_the_normalisation_and_band_order(tmp_path: Path) -> None:
    # the layout of ukis-csmask's model JSON (model_6b_l2a.json): [mean, std] per band under
    # data.dataset_statistics.img, the band order under band_names
    import json

    import numpy as np

    from geocam.config import read_sidecar

    sidecar = tmp_path / "model_6b_l2a.json"
    statistics = {
        "img": [[0.27, 0.28, 0.29, 0.36, 0.22, 0.18], [0.34, 0.31, 0.31, 0.27, 0.17, 0.14]],
        "band_names": ["blue", "green", "red", "nir", "swir16", "swir22"],
        "cnt_classes": [174455417, 47615803, 17528396],
    }
    sidecar.write_text(json.dumps({
        "data": {"in_channels": 6, "classes": 3, "dataset_statistics": statistics},
        "model": {"decoder_name": "unet", "encoder_name": "efficientnet-b4"},
    }))  # fmt: skip
    found = read_sidecar(sidecar)
    norm = found["normalisation"]
    np.testing.assert_allclose(norm.scale, [1 / s for s in statistics["img"][1]], rtol=1e-12)
    np.testing.assert_allclose(
        norm.offset, [-m / s for m, s in zip(*statistics["img"], strict=True)], rtol=1e-12
    )
    assert found["band_names"] == ("blue", "green", "red", "nir", "swir16", "swir22")
