"""Guided Backpropagation and the gradient baselines: hand values, Captum, restoration, refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import GuidedBackprop, GuidedGradCam, InputXGradient, Saliency
from torch import nn

from geocam.attribution import attribute, guided_backprop, guided_relus, input_gradients
from geocam.attribution.guided import guided_gate
from geocam.errors import GeocamError
from geocam.regions import Box

from .networks import FunctionalNet, ReluNet, SmoothNet, TinyRelu


class RegionScore(nn.Module):
    """Captum's view of geocam's score: ``(B, K)`` class logits summed over a fixed mask."""

    def __init__(self, net: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) * self.mask).sum(dim=(-2, -1))


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(seed)).double()


BOX = Box(1, 2, 6, 9)


def box_mask() -> torch.Tensor:
    mask = torch.zeros(8, 12, dtype=torch.float64)
    mask[1:6, 2:9] = 1
    return mask


def test_guided_gate_by_hand() -> None:
    x = torch.tensor([-1.0, 0.0, 2.0, 5.0, 6.0, 7.0])
    grad = torch.tensor([3.0, 3.0, -2.0, 4.0, 4.0, 4.0])
    # ReLU: active where x > 0; guided: negative gradients dropped too
    assert guided_gate(x, grad).tolist() == [0.0, 0.0, 0.0, 4.0, 4.0, 4.0]
    # ReLU6: active where 0 < x < 6
    assert guided_gate(x, grad, 0.0, 6.0).tolist() == [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]


def test_guided_backprop_by_hand() -> None:
    # h = W1 x = (x0 + x1, x0 - 2 x1); logit0 = -a0 + 3 a1, logit1 = 2 a0 + a1, a = relu(h).
    # x = (1, -1): h = (0, 3): only unit 1 active. Plain d logit0/dx = 3 * (1, -2) = (3, -6),
    # guided the same (the gradient at unit 1 is +3). x = (2, 1): h = (3, 0): only unit 0
    # active, plain d logit0/dx = -1 * (1, 1), guided 0 (its gradient -1 is negative).
    net = TinyRelu().double().eval()
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0]]).double().view(1, 2, 1, 2)
    plain = input_gradients(net, x, 0, region="all").gradients[0, 0]
    guided = input_gradients(net, x, 0, region="all", guided=True).gradients[0, 0]
    assert plain[:, 0, 0].tolist() == [3.0, -6.0] and plain[:, 0, 1].tolist() == [-1.0, -1.0]
    assert guided[:, 0, 0].tolist() == [3.0, -6.0] and guided[:, 0, 1].tolist() == [0.0, 0.0]
    # summed over the bands
    maps = guided_backprop(net, x, 0, region="all")
    assert maps[0, 0].tolist() == [[-3.0, 0.0]]


def test_gradient_baselines_equal_captum_per_band() -> None:
    # float64, a fixed mask: geocam's maps are Captum's attributions reduced over the bands
    net = ReluNet(relu6=False).double().eval()
    x = images()
    wrapped = RegionScore(net, box_mask()).eval()
    for k in (0, 1):
        saliency = Saliency(wrapped).attribute(x, target=k, abs=True)
        ixg = InputXGradient(wrapped).attribute(x, target=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum says it sets hooks on ReLUs
            guided = GuidedBackprop(wrapped).attribute(x, target=k)
        ours = {
            m: attribute(net, x, [k], m, region=BOX).maps[:, 0]  # type: ignore[arg-type]
            for m in ("saliency", "inputxgradient", "guided-backprop")
        }
        torch.testing.assert_close(ours["saliency"], saliency.amax(dim=1), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours["inputxgradient"], ixg.sum(dim=1), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            ours["guided-backprop"], guided.sum(dim=1), rtol=1e-12, atol=1e-14
        )
        assert (guided != Saliency(wrapped).attribute(x, target=k, abs=False)).any()


def test_guided_gradcam_equals_captum_on_a_relu_network() -> None:
    net = ReluNet(relu6=False).double().eval()
    x = images(2)
    wrapped = RegionScore(net, box_mask()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = GuidedGradCam(wrapped, wrapped.net.pool).attribute(
            x, target=1, interpolate_mode="bilinear"
        )
    ours = attribute(net, x, [1], "guided-gradcam", layer="pool", region=BOX).maps[:, 0]
    assert expected.abs().max() > 0
    torch.testing.assert_close(ours, expected.sum(dim=1), rtol=1e-10, atol=1e-12)


def test_relu6_is_guided_with_its_upper_gate() -> None:
    # An independent computation: backward hooks that relu each activation's own input
    # gradient (torch's ReLU6 backward passes 0 < x < 6), Captum's rule carried to ReLU6
    net = ReluNet(relu6=True).double().eval()
    x = images(3)
    with torch.no_grad():
        pre = net.conv2(net.act1(net.conv1(x)))
    assert (pre > 6).any() and ((pre > 0) & (pre < 6)).any()  # both gates matter here
    ours = input_gradients(net, x, 0, region=BOX, guided=True).gradients[:, 0]
    handles = [
        m.register_full_backward_hook(lambda _, gi, __: (gi[0].clamp(min=0),))
        for m in (net.act1, net.act2)
    ]
    try:
        leaf = x.clone().requires_grad_(True)
        (RegionScore(net, box_mask())(leaf)[:, 0].sum()).backward()
    finally:
        for handle in handles:
            handle.remove()
    assert leaf.grad is not None and leaf.grad.abs().max() > 0
    torch.testing.assert_close(ours, leaf.grad, rtol=1e-12, atol=1e-14)


def _state(model: nn.Module) -> list[object]:
    return [
        (
            name,
            id(m),
            getattr(m, "inplace", None),
            dict(m._forward_hooks),
            dict(m._backward_hooks),
            "forward" in m.__dict__,
            m.training,
        )
        for name, m in model.named_modules()
    ] + [(n, p.requires_grad) for n, p in model.named_parameters()]


def test_the_callers_model_comes_back_exactly() -> None:
    net = ReluNet(inplace=True).double()
    net.train()
    net.conv1.weight.requires_grad_(False)
    calls: list[int] = []
    net.act1.register_forward_hook(lambda *_: calls.append(1))
    before = _state(net)
    x = images()
    guided_backprop(net, x, 0, region="all")
    assert _state(net) == before and calls == [1]  # the caller's hook ran, and is kept
    # after an exception inside the block, too
    with pytest.raises(RuntimeError, match="boom"), guided_relus(net) as swapped:
        assert swapped == 2 and "forward" in net.act1.__dict__
        raise RuntimeError("boom")
    assert _state(net) == before
    # and after one from the network (wrong band count)
    with pytest.raises(RuntimeError):
        guided_backprop(net, torch.zeros(1, 5, 8, 8).double(), 0, region="all")
    assert _state(net) == before
    # an instance forward the caller set is put back
    marker = net.act2.forward
    net.act2.forward = marker  # type: ignore[method-assign]
    with guided_relus(net):
        assert net.act2.forward is not marker
    assert net.act2.__dict__["forward"] is marker


def test_smooth_activations_are_refused_in_one_line() -> None:
    net = SmoothNet().eval()
    before = _state(net)
    with pytest.raises(GeocamError) as error:
        guided_backprop(net, torch.zeros(1, 3, 4, 4), 0, region="all")
    message = str(error.value)
    assert "\n" not in message and "GELU x1, SiLU x1" in message and "--method" in message
    assert _state(net) == before
    with pytest.raises(GeocamError, match="SiLU"):
        attribute(net, torch.zeros(1, 3, 4, 4), 0, "guided-gradcam", layer="body", region="all")
    # the plain gradient methods are defined for it
    assert attribute(net, torch.rand(1, 3, 4, 4), 0, "saliency", region="all").maps.shape == (
        1, 1, 4, 4,
    )  # fmt: skip


def test_functional_activations_are_refused_in_one_line() -> None:
    net = FunctionalNet().eval()
    with pytest.raises(GeocamError) as error:
        guided_backprop(net, torch.rand(1, 3, 4, 4), 0, region="all")
    assert "\n" not in str(error.value) and "relu x1" in str(error.value)
