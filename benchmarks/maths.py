"""The scene engine's maths (issue 10, items 1-5 and 10): one figure each, this checkout or another.

``python benchmarks/maths.py`` measures this checkout; ``PYTHONPATH=OLD python
benchmarks/maths.py`` measures another one (e.g. a ``git worktree`` of an earlier commit). The
networks are those of tests/scene_networks.py (LocalNet: no context past the target layer;
ContextNet: one cell of context), in float64, on its 96 x 128 synthetic scene; CPU only.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scene_networks import (  # type: ignore[import-not-found]
    ONE_CHANNEL,
    CoarseNet,
    ContextNet,
    LocalNet,
    OneChannelNet,
    OverflowNet,
    run,
    scene,
)

import geocam
from geocam.scene import Explanation, Products, Tiling

NATIVE = Products(resolution="native")


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def precise(model: torch.nn.Module) -> torch.nn.Module:
    """The network in float64, or in float32 for an engine that takes only float32 networks
    (before 8cf154f; differences of 1e-1 do not depend on it)."""
    try:
        geocam.list_layers(model.double(), 3)
    except geocam.GeocamError:
        return model.float()
    return model


def untiled(model: torch.nn.Module, cls: int, method: str, region: str) -> geocam.CamResult:
    dtype = next(model.parameters()).dtype
    images = torch.from_numpy(scene())[None].to(dtype)
    return geocam.explain(model, images, cls, "encoder.2", method=method, region=region)  # type: ignore[arg-type]


def outcome(call: Any) -> str:
    """What a call did: returned, raised a GeocamError (one line), or raised something else."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call()
    except geocam.GeocamError as error:
        return f"refused in one line: {str(error)[:90]}..."
    except Exception as error:
        return f"traceback: {type(error).__name__}: {str(error)[:70]}"
    said = "; ".join(str(w.message)[:90] for w in caught)
    return f"returned ({said or 'no warning'}) {result}"


class Empty:
    """A region with no pixel."""

    def read(self, window: Any) -> np.ndarray:
        return np.zeros((int(window.height), int(window.width)), np.float32)


def tiled_vs_untiled(pixels: np.ndarray) -> None:
    inner = (slice(2, -2), slice(2, -2))  # where bilinear upsampling clamps at a tile edge
    networks = {"LocalNet": precise(LocalNet().eval()), "ContextNet": precise(ContextNet().eval())}
    cases = [("LocalNet", "predicted", o) for o in (4, 8, 12)]
    cases += [("ContextNet", "all", 8), ("ContextNet", "all", 16), ("ContextNet", "predicted", 8)]
    for method in ("gradcam", "gradcam++"):
        for name, region, overlap in cases:
            model = networks[name]
            explanation = Explanation(("b",), method=method, region=region)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps, _ = run(model, pixels, explanation, Tiling(32, overlap))
            expected = untiled(model, 1, method, region).upsample(pixels.shape[1:]).signed[0, 0]
            figure = relative(maps["heatmap"][1][inner], expected.numpy()[inner])
            print(
                f"1  {method:9s} {name:10s} {region:9s} tile 32 overlap {overlap:2d}: "
                f"max |tiled - untiled| / max = {figure:.1e}"
            )


def native(pixels: np.ndarray) -> None:
    model = precise(LocalNet().eval())
    for method in ("gradcam", "hirescam"):
        explanation = Explanation(("a",), method=method, region="all")
        maps, _ = run(model, pixels, explanation, Tiling(128, 32), products=NATIVE)
        expected = untiled(model, 0, method, "all")
        signed = relative(maps["heatmap"][1], expected.signed[0, 0].numpy())
        positive = relative(maps["heatmap"][0], expected.positive[0, 0].numpy())
        print(f"2  native, one tile, {method}: signed {signed:.1e}, positive {positive:.1e}")


def one_channel(pixels: np.ndarray) -> None:
    model = OneChannelNet().eval()
    products = Products(class_map=True)
    maps, _ = run(
        model, pixels, Explanation(("water",)), Tiling(128, 32), ONE_CHANNEL, None, products
    )
    with torch.no_grad():
        water = torch.sigmoid(model(torch.from_numpy(pixels)[None]))[0, 0].numpy() > 0.5
    agree = (maps["classes"][0] == water).mean()
    print(
        f"3  one-channel class map == (p > 0.5) at {agree:.1%} of pixels "
        f"(p > 0.5: {water.mean():.1%})"
    )


def refusals(pixels: np.ndarray) -> None:
    def tiles(model: torch.nn.Module, explanation: Explanation, tiling: Tiling, **kw: Any) -> Any:
        return lambda: run(model, pixels, explanation, tiling, **kw)[1].tiles

    for method, products in (("hirescam", Products()), ("gradcam", Products(probabilities=True))):
        explanation = Explanation(("b",), method=method)  # type: ignore[arg-type]
        said = outcome(tiles(CoarseNet().eval(), explanation, Tiling(32, 8), products=products))
        print(f"4  output at half the input's resolution, {method}: {said}")
    hirescam = Explanation(("b",), method="hirescam")
    said = outcome(tiles(LocalNet().eval(), hirescam, Tiling(32, 4)))
    print(f"5  overlap of one stride (4): {said}")
    empty = Explanation(("b",), region=Empty())
    said = outcome(
        lambda: np.nanmax(run(LocalNet().eval(), pixels, empty, Tiling(32, 8))[0]["heatmap"])
    )
    print(f"10 an empty region (returns the heatmap's max): {said}")

    def nan_count() -> int:
        return int(
            np.isnan(run(OverflowNet().eval(), pixels, hirescam, Tiling(32, 8))[0]["heatmap"]).sum()
        )

    said = outcome(nan_count)
    print(f"10 maps that overflow (returns the NaN count): {said}")


def main() -> None:
    print(f"geocam from {geocam.__file__}")
    pixels = scene()
    tiled_vs_untiled(pixels)
    native(pixels)
    one_channel(pixels)
    refusals(pixels)


if __name__ == "__main__":
    main()
