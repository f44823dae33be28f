"""YAML presets: the shipped ones load, and every mistake names the field and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from geocam import GeocamError, build_model, default_layer
from geocam.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

VALID = """
arch: Unet
encoder: resnet18
in_channels: 2
classes: [land, water]
bands: [[3, 4]]
normalisation: {mean: [10, 20], std: [2, 4]}
nodata: 0
layer: encoder.layer3
tile: 256
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


def test_valid_config(tmp_path: Path) -> None:
    preset = load_config(write(tmp_path, VALID))
    assert preset.name == "model" and preset.tile == 256 and preset.nodata == 0
    spec = preset.spec
    assert spec.classes == ("land", "water") and spec.bands == ((3, 4),)
    assert spec.normalisation is not None and spec.normalisation.scale == (0.5, 0.25)


DEMOS = ["deforestation_pucallpa.yaml", "landcover_raleigh.yaml"]
GENERIC = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in DEMOS)


@pytest.mark.parametrize("name", DEMOS)
def test_demo_presets_load_with_their_weights(name: str) -> None:
    preset = load_config(CONFIGS / name)
    assert preset.spec.checkpoint is not None and preset.spec.checkpoint.is_file()
    assert preset.spec.checkpoint.stat().st_size <= 10_000_000  # at most 10 MB
    build_model(preset.spec)


@pytest.mark.parametrize("name", GENERIC)
def test_generic_presets_need_only_a_checkpoint(name: str, tmp_path: Path) -> None:
    text = (CONFIGS / name).read_text()
    with pytest.raises(GeocamError, match=r"field 'checkpoint': .*CHANGE_ME\.safetensors"):
        load_config(CONFIGS / name)
    # stand-in for a user's own weights, made from the same preset without a checkpoint
    bare = tmp_path / "bare.yaml"
    bare.write_text(text.replace("checkpoint: CHANGE_ME.safetensors\n", ""))
    weights = tmp_path / "mine.safetensors"
    save_file(build_model(load_config(bare).spec).state_dict(), str(weights))
    # the one line a user changes is the checkpoint path
    mine = tmp_path / name
    mine.write_text(text.replace("CHANGE_ME.safetensors", weights.name))
    spec = load_config(mine).spec
    model = build_model(spec)
    assert default_layer(model, spec.in_channels) == spec.layer


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (VALID.replace("arch: Unet\n", ""), "field 'arch': missing"),
        (VALID.replace("in_channels: 2", "in_channels: two"), "field 'in_channels': expected int"),
        (VALID.replace("[[3, 4]]", "[[0, 4]]"), "field 'bands'"),
        (VALID.replace("std: [2, 4]", "std: [2]"), "field 'normalisation.std': expected 2 values"),
        (VALID + "checkpoint: nope.pt\n", "field 'checkpoint': .*nope.pt does not exist"),
        (VALID + "colour: red\n", "field 'colour': unknown field"),
        (VALID + "method: magic\n", "field 'method': unknown method 'magic'"),
        (
            VALID.replace("in_channels: 2", "in_channels: 3").replace("normalisation", "#"),
            "bands select 2 bands but in_channels is 3",
        ),
        (
            VALID.replace("mean: [10, 20]", "mean: [10, .nan]"),
            "field 'normalisation.mean': .*finite",
        ),
        (VALID.replace("std: [2, 4]", "std: [2, .inf]"), "field 'normalisation.std': .*finite"),
        (VALID.replace("std: [2, 4]", "std: [0, 4]"), "field 'normalisation.std': .*0"),
        (
            VALID.replace("{mean: [10, 20], std: [2, 4]}", "{scale: [1, -.inf], offset: [0, 0]}"),
            "field 'normalisation.scale': .*finite",
        ),
        (
            VALID.replace("{mean: [10, 20], std: [2, 4]}", "{scale: [1, 0], offset: [0, 0]}"),
            "field 'normalisation.scale': .*0",
        ),
        (
            VALID.replace("{mean: [10, 20], std: [2, 4]}", "{scale: [1, 1], offset: [.nan, 0]}"),
            "field 'normalisation.offset': .*finite",
        ),
        (VALID.replace("nodata: 0", "nodata: .nan"), "field 'nodata': .*finite"),
        (VALID.replace("nodata: 0", "nodata: -.inf"), "field 'nodata': .*finite"),
        ("arch: [unclosed\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
)
def test_config_mistakes_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(GeocamError, match=rf"config {path}.*{message}") as error:
        load_config(path)
    assert "\n" not in str(error.value)
