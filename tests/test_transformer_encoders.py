"""Real timm transformer encoders through smp: pvt_v2 (token blocks, a channels-last
downsample) and Swin (channels-last stages, a fixed 224 x 224 input).

Layouts and channel counts are checked against the modules' own outputs; maps at token and
channels-last layers equal, in float64, those at a module whose output is the same tensor in
NCHW; a Swin network saved as an smp hub folder explains through ``-m`` once given its tile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from geocam import explain, list_layers
from geocam.cam import combine, layer_gradients
from geocam.layers import fixed_tile

PVT = "tu-pvt_v2_b0"
SWIN = "tu-swin_tiny_patch4_window7_224"
SMALL_SWIN = {  # Swin's code at a fraction of swin_tiny's size: one block per stage
    "embed_dim": 24,
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 1, 2, 2),
    "decoder_channels": (32, 16, 16, 8, 8),
}


def unet(encoder: str, seed: int = 0, **options: Any) -> nn.Module:
    torch.manual_seed(seed)
    model = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=2, **options)
    return model.eval()


class ToNCHW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class ToNHWC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def relaid(model: nn.Module, name: str) -> nn.Module:
    """``model`` with the channels-last module ``name`` followed by a round trip through NCHW.

    ``NAME.0`` is the original module (NHWC), ``NAME.1`` the same tensor as NCHW (what smp's
    encoder hands the decoder for a Swin stage), ``NAME.2`` NHWC again for the network.
    """
    parent, _, child = name.rpartition(".")
    holder = model.get_submodule(parent)
    setattr(holder, child, nn.Sequential(getattr(holder, child), ToNCHW(), ToNHWC()))
    return model


def outputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the modules ``names`` in one forward pass."""
    found: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: found.__setitem__(n, out)
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return found


def test_pvt_v2_token_and_channels_last_layers_are_listed_as_their_outputs_are() -> None:
    model = unet(PVT)
    layers = {info.name: info for info in list_layers(model, 3)}
    stage = "encoder.model.stages_1"
    names = [f"{stage}.downsample", f"{stage}.blocks.0", f"{stage}.norm", stage]
    real = outputs(model, names, torch.zeros(1, 3, 64, 96))  # 2 x 3 cells at stride 32
    want = {  # layout, and where the channels are in the module's real output
        f"{stage}.downsample": ("NHWC", 3),
        f"{stage}.blocks.0": ("tokens", 2),
        f"{stage}.norm": ("tokens", 2),
        stage: ("NCHW", 1),
    }
    for name, (layout, axis) in want.items():
        info = layers[name]
        assert (info.layout, info.channels, info.stride) == (layout, real[name].shape[axis], 8)
    assert real[stage].shape == (1, 64, 8, 12)  # stride 8, channels 64: so neither is 8 or 12
    assert real[f"{stage}.downsample"].shape == (1, 8, 12, 64)
    assert real[f"{stage}.blocks.0"].shape == (1, 96, 64)


def test_swin_stages_are_channels_last_with_their_real_channels_and_take_224_only() -> None:
    model = unet(SWIN)
    layers = {info.name: info for info in list_layers(model, 3)}
    assert fixed_tile(model) == 224  # timm's Swin asserts its input size: no other is taken
    names = [f"encoder.model.layers_{i}" for i in range(4)] + ["encoder.model.layers_1.downsample"]
    real = outputs(model, names, torch.zeros(1, 3, 224, 224))
    for i, name in enumerate(names[:4]):
        stride = 4 * 2**i
        assert real[name].shape == (1, 224 // stride, 224 // stride, 96 * 2**i)
        assert (layers[name].layout, layers[name].stride) == ("NHWC", stride)
        assert layers[name].channels == real[name].shape[-1]
    assert layers["encoder.model.layers_1"].channels == 192
    assert layers["encoder.model.layers_1.downsample"].layout == "NHWC"
    assert layers["encoder.model.layers_1.downsample"].channels == 192
    with pytest.raises(AssertionError):  # the premise: another size fails inside timm
        model(torch.zeros(1, 3, 256, 256))


def same_maps(model: nn.Module, images: torch.Tensor, pairs: list[tuple[str, str]]) -> None:
    """Maps at each layer of ``pairs`` equal those at its NCHW twin (float64, 5e-7 relative).

    One forward and backward per layer serves Grad-CAM (global weights) and HiResCAM (local).
    """
    for layer, twin in pairs:
        got = layer_gradients(model, images, [0, 1], layer, region="all")
        want = layer_gradients(model, images, [0, 1], twin, region="all")
        assert got.activations.shape == want.activations.shape
        assert torch.equal(got.activations, want.activations)  # the same tensor, re-laid
        for method in ("gradcam", "hirescam"):
            a = combine(method, got.activations, got.gradients)
            b = combine(method, want.activations, want.gradients)
            assert a.dtype == torch.float64 and a.shape == b.shape
            scale = float(b.abs().max())
            assert scale > 0
            assert float((a - b).abs().max()) <= 5e-7 * scale, (layer, method)
    assert torch.equal(
        explain(model, images, [0, 1], layer, region="all").signed,
        combine("gradcam", got.activations, got.gradients),
    )  # what explain returns


def test_pvt_v2_maps_at_token_and_channels_last_layers_equal_their_nchw_twins() -> None:
    stage = "encoder.model.stages_1"
    model = relaid(unet(PVT), f"{stage}.downsample").double()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 64, dtype=torch.float64)  # h != w: a transposed grid fails
    # the stage re-lays its normalised tokens as NCHW: the stage's output is norm's, re-laid
    norm, out = outputs(model, [f"{stage}.norm", stage], images).values()
    assert torch.equal(norm.transpose(1, 2).reshape(out.shape), out)
    same_maps(
        model,
        images,
        [(f"{stage}.norm", stage), (f"{stage}.downsample.0", f"{stage}.downsample.1")],
    )
    layers = {i.name: i.layout for i in list_layers(model, 3)}
    assert layers[f"{stage}.downsample.0"] == "NHWC" and layers[f"{stage}.downsample.1"] == "NCHW"


def test_swin_maps_at_a_channels_last_stage_equal_those_at_smps_nchw_feature() -> None:
    stage = "encoder.model.layers_2"
    model = relaid(unet(SWIN, **SMALL_SWIN), stage).double()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 224, 224, dtype=torch.float64)
    found: list[torch.Tensor] = []
    handle = model.encoder.register_forward_hook(lambda _m, _i, out: found.append(out))
    twin = outputs(model, [f"{stage}.1"], images)[f"{stage}.1"]
    handle.remove()
    assert torch.equal(twin, found[0][4])  # NAME.1 is the feature smp's encoder gives (stride 16)
    same_maps(model, images, [(f"{stage}.0", f"{stage}.1")])


def scene(path: Path, height: int, width: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).random((3, height, width), dtype=np.float32)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "float32",
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 10, 10),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def cli(*args: object) -> tuple[int, str]:
    from click.testing import CliRunner

    from geocam.cli import cli as group

    result = CliRunner().invoke(group, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def swin_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Swin Unet saved as a user would (smp's save_pretrained) and a 260 x 300 scene."""
    root = tmp_path_factory.mktemp("swin")
    unet(SWIN, **SMALL_SWIN).save_pretrained(str(root / "hub"))
    scene(root / "scene.tif", 260, 300)
    return root


def test_swin_through_m_says_which_tile_it_takes_and_explains_with_it(swin_hub: Path) -> None:
    import rasterio

    hub, source = swin_hub / "hub", swin_hub / "scene.tif"
    code, text = cli("layers", "-m", hub)
    assert code == 0, text
    assert "Traceback" not in text
    assert "this network takes 224 x 224 tiles: use --tile 224" in text
    assert "encoder.model.layers_1" in text and "NHWC" in text
    out = swin_hub / "heat.tif"
    code, text = cli("explain", source, "-m", hub, "--class", "0", "-o", out, "-q")
    lines = [line for line in text.splitlines() if "warning" not in line]
    assert code == 1 and "Traceback" not in text, text
    assert lines == [lines[-1]] and lines[-1].startswith("geocam: error: ")
    assert "this network takes 224 x 224 tiles" in text and "use --tile 224" in text
    assert not out.exists()
    code, text = cli(
        "explain", source, "-m", hub, "--class", "0", "-o", out, "--tile", "224",
        "--overlap", "64", "-q",
    )  # fmt: skip
    assert code == 0, text
    with rasterio.open(out) as heat, rasterio.open(source) as scene_file:
        assert heat.crs == scene_file.crs and heat.transform == scene_file.transform
        assert (heat.height, heat.width) == (260, 300)
        values = heat.read()
        tags = heat.tags()
    assert np.isfinite(values).all() and np.abs(values).max() > 0
    assert tags["GEOCAM_MODEL_SOURCE"] == "smp-hub" and tags["GEOCAM_TILE"] == "224"


def test_a_scene_smaller_than_the_fixed_tile_is_explained(swin_hub: Path) -> None:
    import rasterio

    source = scene(swin_hub / "small.tif", 100, 150)
    out = swin_hub / "small-heat.tif"
    code, text = cli(
        "explain", source, "-m", swin_hub / "hub", "--class", "0", "-o", out, "--tile", "224",
        "--overlap", "64", "-q",
    )  # fmt: skip
    assert code == 0, text
    with rasterio.open(out) as heat:
        assert (heat.height, heat.width) == (100, 150)
        assert np.isfinite(heat.read()).all()


def test_init_writes_the_fixed_tile_and_an_overlap_that_explain_takes(swin_hub: Path) -> None:
    import yaml

    preset = swin_hub / "swin.yaml"
    code, text = cli("init", "-m", swin_hub / "hub", "-o", preset)
    assert code == 0, text
    values = yaml.safe_load(preset.read_text())
    assert (values["tile"], values["overlap"]) == (224, 64)  # 224 - 64 on the 32 px grid
    out = swin_hub / "init-heat.tif"
    code, text = cli("explain", swin_hub / "scene.tif", "-c", preset, "--class", "0", "-o", out)
    assert code == 0, text
    assert "hard cut" not in text and "4 tiles" in text


def test_the_library_opens_the_same_preset_and_model_and_writes_the_same_map(
    swin_hub: Path,
) -> None:
    import rasterio

    import geocam

    source, preset_path = scene(swin_hub / "lib.tif", 100, 150), swin_hub / "lib.yaml"
    assert cli("init", "-m", swin_hub / "hub", "-o", preset_path)[0] == 0
    code, text = cli("explain", source, "-c", preset_path, "--class", "0", "-o", swin_hub / "a.tif")
    assert code == 0, text
    preset, model = geocam.open_preset(preset_path)  # its model: field, relative to the preset
    assert isinstance(model, geocam.ModelSource) and model.kind == "smp-hub"
    geocam.explain_raster(
        source, swin_hub / "b.tif", preset.spec, geocam.Explanation(classes=("class_0",)),
        tiling=geocam.Tiling(tile=preset.tile, overlap=preset.overlap, batch_size=4),
        model=model.model, provenance=model.tags(),
    )  # fmt: skip
    with rasterio.open(swin_hub / "a.tif") as a, rasterio.open(swin_hub / "b.tif") as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags()["GEOCAM_MODEL_SHA256"] == b.tags()["GEOCAM_MODEL_SHA256"]


@pytest.mark.slow  # about 10 s alone, 30 s on two busy cores: three scene runs of pvt_v2
def test_pvt_v2_token_layers_explain_whole_scenes_as_their_nchw_twins(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Through the scene engine (tiles, blending, scene-wide weights, two passes): a token
    layer through ``-m`` in one command, and in float64 the maps at ``stages_1.norm`` (tokens)
    and ``stages_1`` (the same tensor, NCHW) written to float32 GeoTIFFs: they differ by at
    most the float32 rounding of equal values, 2^-23 of the largest."""
    import rasterio

    import geocam

    root = tmp_path_factory.mktemp("pvt")
    unet(PVT).save_pretrained(str(root / "hub"))
    source = scene(root / "scene.tif", 100, 150)
    stage = "encoder.model.stages_1"
    tiles = ("--tile", "96", "--overlap", "32")
    code, text = cli(
        "explain", source, "-m", root / "hub", "--class", "1", "--layer", f"{stage}.blocks.1",
        *tiles, "-o", root / "tokens.tif",
    )  # fmt: skip
    assert code == 0 and "4 tiles" in text, text
    with rasterio.open(root / "tokens.tif") as heat:
        assert heat.tags()["GEOCAM_LAYER"] == f"{stage}.blocks.1"
        assert (heat.height, heat.width) == (100, 150) and np.isfinite(heat.read()).all()
    model = geocam.open_model(root / "hub")
    network, spec = model.model.double(), model.spec(geocam.ModelSpec("x", "y", 3, ("a", "b")))
    maps = {}
    for layer in (f"{stage}.norm", stage):
        out = root / f"{layer}.tif"
        geocam.explain_raster(
            source, out, spec, geocam.Explanation(classes=("a", "b"), layer=layer),
            tiling=geocam.Tiling(tile=96, overlap=32), model=network,
        )  # fmt: skip
        with rasterio.open(out) as heat:
            maps[layer] = heat.read().astype(np.float64)
    got, want = maps[f"{stage}.norm"], maps[stage]
    assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 2.0**-23 * np.abs(want).max()
