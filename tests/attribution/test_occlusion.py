"""Occlusion: hand values, Captum's Occlusion on a tile (float64), the cost estimate and bound."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Occlusion

from geocam.attribution import OcclusionOptions, attribute, occlusion_maps
from geocam.attribution.occlusion import blurred, check_cost, forward_passes, positions
from geocam.errors import GeocamError
from geocam.regions import Box

from .networks import ReluNet
from .test_guided import BOX, RegionScore, box_mask, images


class Linear(torch.nn.Module):
    """logit0 = x0 + 2 x1, logit1 = -x1 (1x1 convolution, no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]).view(2, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def assert_captum_close(ours: torch.Tensor, captum: torch.Tensor) -> None:
    """Captum 0.9 computes a float64 network's occlusion in float64 but returns float32: ours
    (float64) rounded once to float32 is within one float32 ulp (2^-23 relative) of it."""
    assert ours.dtype == torch.float64 and captum.dtype in (torch.float32, torch.float64)
    scale = float(ours.abs().max())
    torch.testing.assert_close(ours.to(captum.dtype), captum, rtol=2**-23, atol=1e-12 * scale)


def test_positions_overhang_like_captum() -> None:
    assert positions(8, 4, 2) == [0, 2, 4]
    assert positions(8, 3, 2) == [0, 2, 4, 6]  # the last window (6..8) is cut at the edge
    assert positions(4, 4, 4) == [0]
    assert forward_passes(2, 8, 12, 4, 4) == 2 * (1 + 2 * 3)


def test_occlusion_by_hand() -> None:
    # logit0 = x0 + 2 x1 per pixel, region "all", baseline 0: hiding a patch drops the score
    # by the patch's sum of x0 + 2 x1. One row, 3 pixels, patch 1 x 2 is not square: use 2 rows.
    x = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    # x0 + 2 x1 per pixel: [[3, 2, 3], [0, 1, 4]]
    net = Linear().double().eval()
    result = occlusion_maps(
        net, x[None].double(), 0, region="all", occlusion=OcclusionOptions(2, 1)
    )
    # patches (2 x 2) at columns 0 and 1: drops 3+2+0+1 = 6 and 2+3+1+4 = 10; the middle
    # column is covered by both: (6 + 10) / 2
    expected = torch.tensor([[6.0, 8.0, 10.0], [6.0, 8.0, 10.0]], dtype=torch.float64)
    assert torch.equal(result.maps[0, 0], expected)
    assert result.scores[0, 0] == 13.0


@pytest.mark.parametrize(
    ("patch", "stride", "baseline"), [(4, 2, "mean"), (3, 2, "mean"), (4, 4, "blur")]
)
def test_occlusion_equals_captum_on_a_tile(patch: int, stride: int, baseline: str) -> None:
    net = ReluNet().double().eval()
    x = images(4)
    wrapped = RegionScore(net, box_mask()).eval()
    hidden = 0.0 if baseline == "mean" else blurred(x, patch / 2)
    for k in (0, 1):
        expected = Occlusion(wrapped).attribute(
            x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
            baselines=hidden, target=k,
        )  # fmt: skip
        ours = attribute(
            net, x, [k], "occlusion", region=BOX, batch_size=3,
            occlusion=OcclusionOptions(patch, stride, baseline),  # type: ignore[arg-type]
        ).maps[:, 0]  # fmt: skip
        assert expected.abs().max() > 0
        for band in range(3):  # Captum's window covers every band: the same map per band
            assert_captum_close(ours, expected[:, band])


def test_predicted_region_is_the_unoccluded_one() -> None:
    # the region is fixed by the unoccluded prediction: Captum with that mask agrees
    net = ReluNet().double().eval()
    x = images(5)
    with torch.no_grad():
        mask = (net(x).argmax(1) == 1).double()
    assert 0 < mask.sum() < mask.numel()
    wrapped = RegionScore(net, mask[:, None]).eval()
    expected = Occlusion(wrapped).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.0, target=1
    )
    ours = attribute(net, x, [1], "occlusion", occlusion=OcclusionOptions(4, 2)).maps[:, 0]
    assert_captum_close(ours, expected[:, 0])


def test_batching_does_not_change_the_maps() -> None:
    net = ReluNet().double().eval()
    x = images(6)
    opts = OcclusionOptions(4, 2)
    one = attribute(net, x, [0, 1], "occlusion", region=BOX, batch_size=1, occlusion=opts)
    many = attribute(net, x, [0, 1], "occlusion", region=BOX, batch_size=7, occlusion=opts)
    torch.testing.assert_close(one.maps, many.maps, rtol=1e-12, atol=1e-12)


def test_bad_patches_are_refused_in_one_line() -> None:
    net = ReluNet().double().eval()
    for occ, option in [
        (OcclusionOptions(16, 4), "OcclusionOptions.patch"),
        (OcclusionOptions(2, 4), "OcclusionOptions.stride"),
        (OcclusionOptions(2, 2, "noise"), "OcclusionOptions.baseline"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(GeocamError, match=option) as error:
            attribute(net, images(), [0], "occlusion", region=Box(0, 0, 2, 2), occlusion=occ)
        assert "\n" not in str(error.value)


def test_the_cost_bound() -> None:
    # 1000 passes at 0.5 s per batch of 4: 125 s
    occ = OcclusionOptions(max_seconds=100)
    with pytest.raises(GeocamError) as error:
        check_cost(1000, 0.5, 4, occ)
    message = str(error.value)
    assert "about 125 s" in message and "1000 forward passes" in message
    assert "OcclusionOptions.max_seconds (100)" in message and "\n" not in message
    assert check_cost(1000, 0.5, 4, OcclusionOptions(max_seconds=100, force=True)) == 125
    assert check_cost(1000, 0.5, 4, OcclusionOptions(max_seconds=125)) == 125


def test_blur_baseline_by_hand() -> None:
    # a constant image stays constant (the kernel sums to 1, edges replicated); an impulse
    # spreads symmetrically and keeps its sum away from the edges
    flat = torch.full((1, 2, 9, 9), 3.0, dtype=torch.float64)
    torch.testing.assert_close(blurred(flat, 1.0), flat, rtol=1e-15, atol=1e-15)
    impulse = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    impulse[0, 0, 7, 7] = 1.0
    out = blurred(impulse, 1.0)[0, 0]
    torch.testing.assert_close(out.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out, out.T, rtol=0, atol=0)
    torch.testing.assert_close(out, out.flip(0), rtol=0, atol=0)
    # the centre weight is the 1-D normalised Gaussian's centre squared
    g = torch.exp(-0.5 * torch.arange(-3, 4, dtype=torch.float64) ** 2)
    torch.testing.assert_close(out[7, 7], (g[3] / g.sum()) ** 2)


def test_the_bound_is_not_part_of_a_runs_identity() -> None:
    # a resumed run is identified by repr(explanation): the bound and force may change
    assert repr(OcclusionOptions(4, max_seconds=1, force=True)) == repr(OcclusionOptions(4))
    assert OcclusionOptions(4, 2) != OcclusionOptions(4, 4)
    assert repr(OcclusionOptions(4, 2, "blur")) != repr(OcclusionOptions(4, 2))
