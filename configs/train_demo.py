"""Train the small, seeded demo models that geocam explains, and write their presets.

Each recipe trains one segmentation network on real data from ``../shared/data``, scores it on
a spatial block held out of training, and writes ``configs/<name>.safetensors`` (the weights)
and ``configs/<name>.yaml`` (the model preset). Run, from the project root::

    python configs/train_demo.py landcover [--data ../shared/data] [--steps N] [--heldout auto]
    python configs/train_demo.py deforestation
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from geocam import ModelSpec, build_model, default_layer, list_layers

CONFIGS = Path(__file__).resolve().parent
IGNORE = -1
"""Label of pixels left out of the loss and the metrics (no label, or no image data)."""


Window = tuple[slice, slice]
"""A block of a scene: a row slice and a column slice."""

QUARTERS = ("left", "right", "top", "bottom")
"""The blocks that can be held out: a quarter of the scene along one edge."""


def split_quarter(height: int, width: int, quarter: str) -> tuple[Window, Window]:
    """The training block and the held-out ``quarter`` of a ``height`` x ``width`` scene.

    The two blocks are disjoint rectangles that together cover the scene, so no training crop
    can touch the held-out block.
    """
    all_rows, all_cols = slice(0, height), slice(0, width)
    col, row = math.ceil(width * 3 / 4), math.ceil(height * 3 / 4)
    if quarter == "right":
        return (all_rows, slice(0, col)), (all_rows, slice(col, width))
    if quarter == "left":
        col = width - col
        return (all_rows, slice(col, width)), (all_rows, slice(0, col))
    if quarter == "bottom":
        return (slice(0, row), all_cols), (slice(row, height), all_cols)
    if quarter == "top":
        row = height - row
        return (slice(row, height), all_cols), (slice(0, row), all_cols)
    raise SystemExit(f"--heldout must be one of {', '.join(QUARTERS)}, got {quarter!r}")


def representative_quarter(labels: np.ndarray, focus: int) -> str:
    """The quarter whose share of the ``focus`` class is closest to the whole scene's.

    Fixed before training, so the held-out block is neither the easiest nor the hardest one,
    and the same rule serves every recipe.
    """
    height, width = labels.shape
    labelled = labels >= 0
    overall = (labels[labelled] == focus).mean()

    def gap(quarter: str) -> float:
        block = split_quarter(height, width, quarter)[1]
        return float(abs((labels[block][labelled[block]] == focus).mean() - overall))

    return min(QUARTERS, key=gap)


def describe(window: Window, quarter: str) -> str:
    """Human-readable name of a held-out block, e.g. ``right quarter (columns 367-488)``."""
    rows, cols = window
    if quarter in ("left", "right"):
        return f"{quarter} quarter (columns {cols.start}-{cols.stop - 1})"
    return f"{quarter} quarter (rows {rows.start}-{rows.stop - 1})"


@dataclass(frozen=True)
class Scene:
    """A co-registered image and label map.

    ``image`` is ``(C, H, W)`` in the raster's units, ``labels`` ``(H, W)`` network class
    indexes (``IGNORE`` where unlabelled or nodata), ``valid`` where the image has data.
    """

    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Recipe:
    """How to build, train and describe one demo model."""

    name: str
    description: str
    load: Callable[[Path], Scene]
    credit: str
    """Data source and licence, written into the preset's header."""
    encoder: str
    classes: tuple[str, ...]
    bands: tuple[tuple[int, ...], ...]
    rgb: tuple[int, ...]
    focus: str
    """The class whose held-out IoU is the headline metric."""
    arch: str = "Unet"
    options: dict[str, Any] = field(default_factory=dict)
    nodata: float = 0
    steps: int = 600
    crop: int = 160
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    weight_power: float = 0.25
    """Class weights are ``frequency ** -weight_power`` (0: unweighted, 1: inverse)."""
    stage: int = -1
    """The preset's target layer: the encoder's last stage (-1) or an earlier one (-2, ...)."""

    @property
    def in_channels(self) -> int:
        """Number of bands fed to the network."""
        return sum(len(b) for b in self.bands)

    @property
    def stem(self) -> str:
        """File name stem of the outputs: the preset name with underscores."""
        return self.name.replace("-", "_")


def read_raster(path: Path) -> np.ndarray:
    """All bands of a raster as a ``(bands, H, W)`` array."""
    with rasterio.open(path) as dataset:
        return np.asarray(dataset.read())


def load_landcover(data: Path) -> Scene:
    """Raleigh Landsat-7 (6 bands) and its land-cover map (classes 1..7, nodata 0)."""
    folder = data / "raleigh"
    image = read_raster(folder / "nc_lsat7_2000_b123457_uint8.tif")
    strata = read_raster(folder / "nc_landclass_strata_uint8.tif")[0]
    if strata.shape != image.shape[1:]:
        raise SystemExit(f"label grid {strata.shape} differs from image grid {image.shape[1:]}")
    valid = (image != 0).any(axis=0)  # nodata 0: a pixel is nodata when every band is 0
    labels = strata.astype(np.int64) - 1  # classes 1..7 -> 0..6, nodata 0 -> -1
    labels[~valid] = IGNORE
    return Scene(image, labels, valid)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the cut that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centres)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def forest_and_land(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spectral forest rule for one Pucallpa image (bands SWIR1, NIR, Red, Green).

    Land is NIR >= 0.6 x the image's median NIR (water is dark in the NIR). Forest is land whose
    index (NIR - SWIR1) / (NIR + SWIR1) reaches the image's Otsu threshold over land: closed
    canopy is bright in the NIR and dark in the SWIR, cleared land and pasture are brighter in
    the SWIR. The thresholds are per image because the bands are display-scaled per image, not
    reflectance, so fixed thresholds do not carry from one year to the other.
    """
    swir, nir = image[0].astype(np.float64), image[1].astype(np.float64)
    land = nir >= 0.6 * np.median(nir)
    index = (nir - swir) / np.maximum(nir + swir, 1.0)
    forest = land & (index >= otsu_threshold(index[land]))
    return forest, land


def load_deforestation(data: Path) -> Scene:
    """Pucallpa 1985 + 2020 (8 bands) with spectral-proxy labels: forest in 1985, cleared in 2020.

    Label 1 (deforestation): forest in 1985 and land but not forest in 2020, by
    :func:`forest_and_land`. Label 0: everything else (stable forest, land cleared before 1985,
    water, river banks). The labels are a spectral proxy, not a survey.
    """
    folder = data / "pucallpa"
    before = read_raster(folder / "landsat_1985.tif")
    after = read_raster(folder / "landsat_2020.tif")
    if before.shape != after.shape:
        raise SystemExit(f"the 1985 grid {before.shape} differs from the 2020 grid {after.shape}")
    image = np.concatenate([before, after])
    valid = (before != 0).any(axis=0) & (after != 0).any(axis=0)
    forest_before, _ = forest_and_land(before)
    forest_after, land_after = forest_and_land(after)
    labels = (forest_before & land_after & ~forest_after).astype(np.int64)
    labels[~valid] = IGNORE
    return Scene(image, labels, valid)


RECIPES: dict[str, Recipe] = {
    "landcover": Recipe(
        name="landcover-raleigh",
        description=(
            "7-class land cover from Landsat-7 ETM+ (2000) over Raleigh, NC; demo model trained "
            "by configs/train_demo.py"
        ),
        load=load_landcover,
        credit="GRASS GIS nc_spm_08 sample (CC BY-SA 3.0, OSGeo)",
        encoder="tu-mobilenetv2_100",
        options={"decoder_channels": [64, 32, 32, 16, 16]},
        classes=(
            "developed",
            "agriculture",
            "herbaceous",
            "shrubland",
            "forest",
            "water",
            "sediment",
        ),
        bands=((1, 2, 3, 4, 5, 6),),
        rgb=(3, 2, 1),
        focus="forest",
    ),
    "deforestation": Recipe(
        name="deforestation-pucallpa",
        description=(
            "Forest in 1985 cleared by 2020, from a Landsat pair over Pucallpa, Peru (bands "
            "SWIR1, NIR, Red, Green of each year); spectral-proxy labels; demo model trained by "
            "configs/train_demo.py"
        ),
        load=load_deforestation,
        credit="opengeos/data landsat (MIT); Landsat imagery USGS, public domain",
        encoder="tu-mobilenetv2_100",
        options={"decoder_channels": [64, 32, 32, 16, 16]},
        classes=("other", "deforestation"),
        bands=((1, 2, 3, 4), (1, 2, 3, 4)),
        rgb=(5, 6, 7),
        focus="deforestation",
        weight_power=0.5,
        stage=-2,  # stride 16: a 697 x 377 scene has only 22 x 12 cells at stride 32
    ),
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def spec(recipe: Recipe) -> ModelSpec:
    """The recipe's network as a geocam model spec, without weights."""
    return ModelSpec(
        arch=recipe.arch,
        encoder=recipe.encoder,
        in_channels=recipe.in_channels,
        classes=recipe.classes,
        bands=recipe.bands,
        options=recipe.options,
    )


def band_stats(scene: Scene, train: Window) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid training pixels, rounded as written to the preset."""
    pixels = scene.image[(slice(None), *train)][:, scene.valid[train]].astype(np.float64)
    mean = [round(float(v), 4) for v in pixels.mean(axis=1)]
    std = [round(float(v), 4) for v in pixels.std(axis=1)]
    return mean, std


def normalise(scene: Scene, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per band as float32, with nodata pixels set to 0 (the mean)."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    pixels = (scene.image.astype(np.float32) - m) / s
    return np.where(scene.valid, pixels, np.float32(0)).astype(np.float32)


def class_weights(labels: np.ndarray, classes: int, power: float) -> torch.Tensor:
    """Weights ``frequency ** -power``, mean 1 over the classes present in training."""
    counts = np.bincount(labels[labels >= 0], minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    weights *= (counts > 0).sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def sample_batch(
    pixels: np.ndarray, labels: np.ndarray, crop: int, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random square crops with random flips and 90-degree rotations.

    ``pixels`` and ``labels`` hold only the training area, so no crop can touch the held-out
    block. Crops with fewer than a quarter of their pixels labelled are drawn again.
    """
    height, width = labels.shape
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    while len(xs) < batch:
        row = int(rng.integers(0, height - crop + 1))
        col = int(rng.integers(0, width - crop + 1))
        y = labels[row : row + crop, col : col + crop]
        if (y >= 0).mean() < 0.25:
            continue
        x = pixels[:, row : row + crop, col : col + crop]
        turns = int(rng.integers(0, 4))
        x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def predict(model: nn.Module, pixels: np.ndarray, multiple: int = 32) -> np.ndarray:
    """Class map of a whole ``(C, H, W)`` block, reflect-padded to a multiple of ``multiple``."""
    _, height, width = pixels.shape
    pad_h, pad_w = -height % multiple, -width % multiple
    padded = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    model.eval()
    logits = model(torch.from_numpy(padded)[None])[0, :, :height, :width]
    return np.asarray(logits.argmax(dim=0).numpy())


def score(
    predicted: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> tuple[float, dict[str, float | None]]:
    """Pixel accuracy and per-class IoU over labelled pixels (None for a class never seen)."""
    keep = labels >= 0
    truth, guess = labels[keep], predicted[keep]
    n = len(classes)
    confusion = np.bincount(truth * n + guess, minlength=n * n).reshape(n, n)
    accuracy = float(np.trace(confusion) / confusion.sum())
    iou: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        union = confusion[i, :].sum() + confusion[:, i].sum() - confusion[i, i]
        iou[name] = round(float(confusion[i, i] / union), 4) if union else None
    return round(accuracy, 4), iou


def previous_stage(model: nn.Module, layer: str, in_channels: int) -> str | None:
    """The last sibling of ``layer`` at the next-shallower stride, if any."""
    layers = list_layers(model, in_channels=in_channels)
    target = next(info for info in layers if info.name == layer)
    parent = layer.rsplit(".", 1)[0] + "."
    siblings = [
        info
        for info in layers
        if info.name.startswith(parent)
        and info.depth == target.depth
        and info.stride < target.stride
    ]
    return siblings[-1].name if siblings else None


def fit(recipe: Recipe, pixels: np.ndarray, labels: np.ndarray, steps: int, seed: int) -> nn.Module:
    """Train the recipe's network on normalised training ``pixels`` and ``labels``."""
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    weights = class_weights(labels, len(recipe.classes), recipe.weight_power)
    shown = zip(recipe.classes, weights.tolist(), strict=True)
    print("class weights", {name: round(w, 3) for name, w in shown})
    model = build_model(spec(recipe)).train()
    loss_fn = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.lr, total_steps=steps, pct_start=0.15
    )
    start = time.perf_counter()
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        x, y = sample_batch(pixels, labels, recipe.crop, recipe.batch, rng)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % 50 == 0 or step == steps:
            elapsed = time.perf_counter() - start
            print(f"step {step}/{steps}  loss {running / min(50, step):.4f}  {elapsed:.0f} s")
            running = 0.0
    return model.eval()


def train(
    recipe: Recipe, data: Path, steps: int, seed: int, threads: int, heldout: str, out: Path
) -> None:
    """Train ``recipe``, score it on the held-out block and write its weights and preset."""
    torch.set_num_threads(threads)
    scene = recipe.load(data)
    height, width = scene.labels.shape
    if heldout == "auto":
        heldout = representative_quarter(scene.labels, recipe.classes.index(recipe.focus))
    train_block, test_block = split_quarter(height, width, heldout)
    mean, std = band_stats(scene, train_block)
    pixels = normalise(scene, mean, std)
    everything = slice(None)
    train_pixels = np.ascontiguousarray(pixels[(everything, *train_block)])
    train_labels = np.ascontiguousarray(scene.labels[train_block])
    heldout_name = describe(test_block, heldout)
    print(f"training area {train_labels.shape}, held out {heldout_name}")
    start = time.perf_counter()
    model = fit(recipe, train_pixels, train_labels, steps, seed)
    seconds = round(time.perf_counter() - start, 1)

    test_pixels = np.ascontiguousarray(pixels[(everything, *test_block)])
    test_labels = scene.labels[test_block]
    accuracy, iou = score(predict(model, test_pixels), test_labels, recipe.classes)
    print(f"held-out pixel accuracy {accuracy}, {recipe.focus} IoU {iou[recipe.focus]}")
    print("per-class IoU", iou)

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{recipe.stem}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(checkpoint))
    size = checkpoint.stat().st_size
    print(f"wrote {checkpoint} ({size / 1e6:.2f} MB)")

    layer = default_layer(model, in_channels=recipe.in_channels, stage=recipe.stage)
    before = previous_stage(model, layer, recipe.in_channels)
    preset: dict[str, Any] = {
        "name": recipe.name,
        "description": recipe.description,
        "arch": recipe.arch,
        "encoder": recipe.encoder,
        "in_channels": recipe.in_channels,
        "classes": list(recipe.classes),
        "bands": [list(b) for b in recipe.bands],
        "normalisation": {"mean": mean, "std": std},
        "nodata": recipe.nodata,
        "checkpoint": checkpoint.name,
        "layer": layer,
        "method": "gradcam",
        "options": recipe.options,
        "rgb": list(recipe.rgb),
        "metrics": {
            "heldout": heldout_name,
            "heldout_pixel_accuracy": accuracy,
            f"heldout_{recipe.focus}_iou": iou[recipe.focus],
            "per_class_iou": iou,
        },
        "training": {
            "seed": seed,
            "steps": steps,
            "crop": recipe.crop,
            "batch": recipe.batch,
            "lr": recipe.lr,
            "seconds": seconds,
        },
    }
    command = (
        f"python configs/train_demo.py {recipe_key(recipe)} --data {data} --steps {steps} "
        f"--seed {seed} --heldout {heldout} --threads {threads}"
    )
    header = [
        f"# Written by: {command}",
        f"# Weights: float32 safetensors; data: {recipe.credit}.",
    ]
    if before is not None:
        header.append(f"# Previous encoder stage (a finer-stride target layer): {before}")
    text = yaml.safe_dump(preset, sort_keys=False, default_flow_style=None, width=100)
    path = out / f"{recipe.stem}.yaml"
    path.write_text("\n".join(header) + "\n" + text)
    print(f"wrote {path}; layer {layer} (previous stage {before}); trained in {seconds} s")


def recipe_key(recipe: Recipe) -> str:
    """The subcommand that selects ``recipe``."""
    return next(key for key, value in RECIPES.items() if value is recipe)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one subcommand per recipe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="recipe", required=True)
    for key, recipe in RECIPES.items():
        sub = commands.add_parser(key, help=recipe.description)
        sub.add_argument("--data", type=Path, default=Path("../shared/data"))
        sub.add_argument("--steps", type=int, default=recipe.steps)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared CPU: 1)")
        sub.add_argument(
            "--heldout",
            choices=("auto", *QUARTERS),
            default="auto",
            help="quarter held out of training (auto: the most representative one)",
        )
        sub.add_argument("--out", type=Path, default=CONFIGS, help="folder for weights and preset")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    train(recipe, args.data, args.steps, args.seed, args.threads, args.heldout, args.out)


if __name__ == "__main__":
    main()
