"""The caller's model comes back exactly as it was given, also after an exception."""

from __future__ import annotations

import pytest
import torch
from conftest import make_smp
from torch import nn

from geocam import GeocamError, explain
from geocam._guard import explanation_mode


def snapshot(model: nn.Module) -> tuple[list[bool], list[bool], int]:
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        hooks,
    )


@pytest.fixture
def mixed_model() -> nn.Module:
    """Training mode overall, a BatchNorm kept in eval, a frozen encoder stem, one user hook."""
    model = make_smp().train()
    model.encoder.bn1.eval()
    for p in model.encoder.conv1.parameters():
        p.requires_grad_(False)
    model.decoder.register_forward_hook(lambda *_: None)
    return model


def test_state_restored_after_success(mixed_model: nn.Module) -> None:
    before = snapshot(mixed_model)
    explain(mixed_model, torch.rand(1, 4, 64, 64), 1, "encoder.layer4")
    assert snapshot(mixed_model) == before
    assert all(p.grad is None for p in mixed_model.parameters())


@pytest.mark.parametrize(
    ("images", "classes", "error"),
    [
        (torch.rand(1, 4, 64, 64), 9, GeocamError),  # raised after the forward, hooks live
        (torch.rand(1, 3, 64, 64), 1, RuntimeError),  # raised inside the network's forward
    ],
)
def test_state_restored_after_an_exception(
    mixed_model: nn.Module, images: torch.Tensor, classes: int, error: type[Exception]
) -> None:
    before = snapshot(mixed_model)
    with pytest.raises(error):
        explain(mixed_model, images, classes, "encoder.layer4")
    assert snapshot(mixed_model) == before


def test_explanation_mode_is_eval_and_frozen(mixed_model: nn.Module) -> None:
    with explanation_mode(mixed_model):
        assert not any(m.training for m in mixed_model.modules())
        assert not any(p.requires_grad for p in mixed_model.parameters())


def test_train_mode_model_is_explained_in_eval_mode() -> None:
    model = make_smp()
    images = torch.rand(2, 4, 64, 64)
    expected = explain(model.eval(), images, 1, "encoder.layer4")
    got = explain(model.train(), images, 1, "encoder.layer4")  # BatchNorm must not use batch stats
    torch.testing.assert_close(got.signed, expected.signed)
    assert model.training
