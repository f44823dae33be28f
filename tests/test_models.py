"""Model specs, the factory registry and its plugins, checkpoint loading without code."""

from __future__ import annotations

import pathlib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import geocam.models
from geocam import GeocamError, ModelSpec, Normalisation, build_model, model_factories

SPEC = ModelSpec(arch="Unet", encoder="resnet18", in_channels=4, classes=("a", "b", "c"))


def tiny_factory(spec: ModelSpec) -> nn.Module:
    """A plugin factory, registered below through a fake entry point."""
    return nn.Conv2d(spec.in_channels, len(spec.classes), 1)


def test_normalisation_by_hand() -> None:
    norm = Normalisation.mean_std(mean=(10.0, 0.0), std=(2.0, 0.5))
    assert norm.scale == (0.5, 2.0) and norm.offset == (-5.0, 0.0)
    x = torch.tensor([[[14.0]], [[1.5]]])
    torch.testing.assert_close(norm.apply(x), torch.tensor([[[2.0]], [[3.0]]]))
    with pytest.raises(GeocamError, match="normalisation has 2 bands but the images have 3"):
        norm.apply(torch.zeros(3, 1, 1))
    with pytest.raises(GeocamError, match="std of 0"):
        Normalisation.mean_std((0.0,), (0.0,))


def test_spec_validation() -> None:
    with pytest.raises(GeocamError, match="bands select 3 bands but in_channels is 4"):
        ModelSpec("Unet", "resnet18", 4, ("a",), bands=((1, 2), (1,)))
    with pytest.raises(GeocamError, match="1-based"):
        ModelSpec("Unet", "resnet18", 2, ("a",), bands=((0, 1),))
    with pytest.raises(GeocamError, match="unique"):
        ModelSpec("Unet", "resnet18", 2, ("a", "a"))
    assert SPEC.class_index("b") == 1 and SPEC.class_index("2") == 2 and SPEC.class_index(0) == 0
    with pytest.raises(GeocamError, match="unknown class 'd'; the model's classes are a, b, c"):
        SPEC.class_index("d")
    with pytest.raises(GeocamError, match="class index 3 is out of range"):
        SPEC.class_index(3)


def test_build_smp_model() -> None:
    model = build_model(SPEC)
    assert not model.training
    assert model(torch.zeros(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(GeocamError, match="smp cannot build arch='Nope'"):
        build_model(ModelSpec("Nope", "resnet18", 4, ("a",)))
    with pytest.raises(GeocamError, match="unknown model factory 'zoo'; registered: smp"):
        build_model(ModelSpec("Unet", "resnet18", 4, ("a",), factory="zoo"))


def test_plugins_register_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [
        EntryPoint("smp", "geocam.models:smp_factory", "geocam.models"),
        EntryPoint("tiny", "test_models:tiny_factory", "geocam.models"),
        EntryPoint("broken", "no_such_module:factory", "geocam.models"),
    ]
    monkeypatch.setattr(geocam.models.factories, "entry_points", lambda group: fake)
    with pytest.warns(UserWarning, match="'broken'.*failed to load"):
        factories = model_factories()
    assert set(factories) == {"smp", "tiny"}
    with pytest.warns(UserWarning):
        model = build_model(ModelSpec("any", "any", 2, ("x", "y"), factory="tiny"))
    assert isinstance(model, nn.Conv2d) and model.out_channels == 2


def test_installed_entry_point_names_smp() -> None:
    assert "smp" in model_factories()


def test_safetensors_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model(SPEC)
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = build_model(ModelSpec(**{**SPEC.__dict__, "checkpoint": path}))
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_torch_checkpoint_with_wrapper_and_dataparallel_prefix(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = build_model(SPEC)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = build_model(ModelSpec(**{**SPEC.__dict__, "checkpoint": path}))
    torch.testing.assert_close(
        loaded.segmentation_head[0].weight, source.segmentation_head[0].weight
    )


def test_mismatched_checkpoint_lists_the_keys(tmp_path: Path) -> None:
    state = build_model(ModelSpec("Unet", "resnet18", 4, ("a", "b", "c", "d"))).state_dict()
    del state["encoder.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(GeocamError) as info:
        build_model(ModelSpec(**{**SPEC.__dict__, "checkpoint": path}))
    message = str(info.value)
    assert "missing (1): encoder.conv1.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert (
        "shape mismatch (2): segmentation_head.0.weight (4, 16, 3, 3) vs model (3, 16, 3, 3)"
        in message
    )
    assert "\n" not in message


class Payload:
    """Unpickling this would create a file: proof that code in a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (pathlib.Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_checkpoint_with_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": Payload(marker)}, path)
    with pytest.raises(GeocamError, match=r"holds Python objects.*refused"):
        build_model(ModelSpec(**{**SPEC.__dict__, "checkpoint": path}))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.pt", b"not a checkpoint at all", "cannot be read as a torch file"),
        (
            "garbage.safetensors",
            b"\x08\x00\x00\x00\x00\x00\x00\x00{broken",
            "not a valid safetensors",
        ),
    ],
)
def test_unreadable_checkpoints(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GeocamError, match=message):
        geocam.models.read_state_dict(path)
    with pytest.raises(GeocamError, match="does not exist"):
        geocam.models.read_state_dict(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(GeocamError, match="does not hold a state dict"):
        geocam.models.read_state_dict(tmp_path / "list.pt")
