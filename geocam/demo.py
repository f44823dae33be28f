"""Explain one real Landsat tile from the shared data: ``python -m geocam.demo [DATA_DIR]``.

A first look at the engine before the scene engine and the trained demo models exist: the
network has random weights (nothing is downloaded), so the maps show the mechanics, not a
trained model's reasoning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geocam.cam import explain
from geocam.layers import default_layer
from geocam.models import ModelSpec, Normalisation, build_model

RALEIGH = Path("raleigh/nc_lsat7_2000_b123457_uint8.tif")
CLASSES = ("developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment")


def main(data_dir: Path = Path("../shared/data")) -> None:
    """Explain every class of a random-weight Unet over its predicted mask on a 256 tile."""
    path = data_dir / RALEIGH
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass the shared data folder as the first argument")
    with rasterio.open(path) as src:
        window = Window(128, 96, 256, 256)
        pixels = src.read(window=window).astype(np.float32)
        valid = src.dataset_mask(window=window) > 0
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="Unet",
        encoder="resnet18",
        in_channels=pixels.shape[0],
        classes=CLASSES,
        normalisation=Normalisation(scale=(1 / 255,) * pixels.shape[0], offset=(0.0,) * 6),
    )
    model = build_model(spec)
    assert spec.normalisation is not None
    images = spec.normalisation.apply(torch.from_numpy(pixels))[None]
    layer = default_layer(model, spec.in_channels)
    result = explain(
        model, images, list(range(len(CLASSES))), layer, valid=torch.from_numpy(valid)[None]
    )
    print(
        f"{path}: window {window.width} x {window.height} at ({window.col_off}, {window.row_off})"
    )
    print(f"layer {layer}, map {tuple(result.signed.shape[-2:])}, random weights (seed 0)\n")
    print(f"{'class':<12} {'region px':>9} {'score':>12} {'cam max':>9} {'against':>9}")
    for k, name in enumerate(CLASSES):
        signed = result.signed[0, k]
        print(
            f"{name:<12} {int(result.region_pixels[0, k]):>9} {float(result.scores[0, k]):>12.2f} "
            f"{float(signed.max()):>9.4f} {float(signed.min()):>9.4f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data"))
