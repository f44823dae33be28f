"""smp with timm transformer encoders (issue 12's last row): steps and agreement, measured.

``python benchmarks/layouts.py`` prints, for pvt_v2_b0 and swin_tiny (random weights, as
smp builds them offline): each token or channels-last layer's listed channels against its
module's real output, the float64 maps there against those at the same tensor laid out as
NCHW (max |difference| / max |map|, Grad-CAM and HiResCAM), and for Swin (224 x 224 only),
saved as an smp hub folder, what the command line says and does in one command. CPU only.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_transformer_encoders import (  # type: ignore[import-not-found]
    PVT,
    SWIN,
    cli,
    outputs,
    relaid,
    scene,
    unet,
)

from geocam import combine, layer_gradients, list_layers


def agreement(model: torch.nn.Module, images: torch.Tensor, layer: str, twin: str) -> str:
    got = layer_gradients(model, images, [0, 1], layer, region="all")
    want = layer_gradients(model, images, [0, 1], twin, region="all")
    figures = []
    for method in ("gradcam", "hirescam"):
        a = combine(method, got.activations, got.gradients)
        b = combine(method, want.activations, want.gradients)
        figures.append(f"{method} {float((a - b).abs().max() / b.abs().max()):.1e}")
    return ", ".join(figures)


def channels(model: torch.nn.Module, names: list[str], size: tuple[int, int]) -> None:
    listed = {i.name: i for i in list_layers(model, 3)}
    real = outputs(model, names, torch.zeros(1, 3, *size))
    for name in names:
        info = listed[name]
        print(
            f"  {name}: listed {info.layout} {info.channels} ch, real output "
            f"{tuple(real[name].shape)}"
        )


def main() -> None:
    warnings.simplefilter("ignore")
    print("pvt_v2_b0 (smp Unet tu-pvt_v2_b0), input 64 x 96")
    stage = "encoder.model.stages_1"
    channels(unet(PVT), [f"{stage}.downsample", f"{stage}.blocks.1", stage], (64, 96))
    model = relaid(unet(PVT), f"{stage}.downsample").double()
    images = torch.rand(
        2, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    figures = agreement(model, images, f"{stage}.norm", stage)
    print(f"  {stage}.norm (tokens) vs {stage} (NCHW): {figures}")
    print(
        f"  {stage}.downsample (NHWC) vs the same as NCHW: "
        f"{agreement(model, images, f'{stage}.downsample.0', f'{stage}.downsample.1')}"
    )
    print("swin_tiny (smp Unet tu-swin_tiny_patch4_window7_224), input 224 x 224")
    names = [f"encoder.model.layers_{i}" for i in range(4)]
    channels(unet(SWIN), names, (224, 224))
    stage = "encoder.model.layers_2"
    model = relaid(unet(SWIN), stage).double()
    images = images.new_empty(1, 3, 224, 224).uniform_(generator=torch.Generator().manual_seed(1))
    figures = agreement(model, images, f"{stage}.0", f"{stage}.1")
    print(f"  {stage} (NHWC) vs smp's NCHW feature: {figures}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        unet(SWIN).save_pretrained(str(root / "hub"))
        source = scene(root / "scene.tif", 260, 300)
        hub = root / "hub"
        for args in (
            ("layers", "-m", hub),
            ("explain", source, "-m", hub, "--class", "0", "-o", root / "a.tif"),
            ("init", "-m", hub, "-o", root / "swin.yaml"),
            ("explain", source, "-c", root / "swin.yaml", "--class", "0", "-o", root / "b.tif"),
            ("explain", source, "-m", hub, "--class", "0", "-o", root / "c.tif", "--tile", "224",
             "--overlap", "64"),
        ):  # fmt: skip
            start = time.perf_counter()
            code, text = cli(*args)
            seconds = time.perf_counter() - start
            lines = [line for line in text.splitlines() if "warning" not in line]
            shown = [
                line for line in lines if "tiles" in line or "error" in line or "preset" in line
            ]
            command = " ".join(str(a).replace(tmp + "/", "") for a in args)
            said = shown[-1].replace(tmp + "/", "") if shown else ""
            print(f"  geocam {command}: exit {code}, {seconds:.1f} s: {said}")


if __name__ == "__main__":
    main()
