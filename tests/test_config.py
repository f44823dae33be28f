"""YAML presets: the shipped ones load, and every mistake names the field and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocam import GeocamError
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


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_presets_load(config: Path) -> None:
    preset = load_config(config)
    assert preset.spec.checkpoint is None or preset.spec.checkpoint.is_file()


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
        ("arch: [unclosed\n", "invalid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
)
def test_config_mistakes_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(GeocamError, match=rf"config {path}.*{message}"):
        load_config(path)
