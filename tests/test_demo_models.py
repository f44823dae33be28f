"""The shipped demo models reach their held-out scores when run through geocam itself.

The class maps come from ``explain_raster`` over the whole scene; the scores are computed on the
held-out quarter named in each preset, against the ground truth (Raleigh) or the documented
spectral-proxy labels (Pucallpa, rebuilt by the training script's own rule).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio

from geocam.config import load_config
from geocam.raster import explain_raster
from geocam.scene import Explanation, Products, Runtime

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def training_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "configs" / "train_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def heldout_rows_and_columns(description: str, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The block named like ``top quarter (rows 0-109)`` or ``right quarter (columns 367-488)``."""
    match = re.search(r"\((rows|columns) (\d+)-(\d+)\)", description)
    assert match, description
    span = slice(int(match[2]), int(match[3]) + 1)
    return (span, slice(0, shape[1])) if match[1] == "rows" else (slice(0, shape[0]), span)


def iou(predicted: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> float:
    p, t = predicted[keep], truth[keep]
    return float((p & t).sum() / (p | t).sum())


def predicted_classes(sources: list[Path], config: Path, focus: str, folder: Path) -> np.ndarray:
    preset = load_config(config)
    report = explain_raster(
        sources, folder / "heat.tif", preset.spec, Explanation((focus,)),
        runtime=Runtime("cpu", progress=False), products=Products(class_map=True),
        nodata=preset.nodata,
    )  # fmt: skip
    with rasterio.open(report.outputs["classes"]) as classes:
        return np.asarray(classes.read(1))


def test_landcover_forest_iou_on_the_heldout_quarter(shared_data: Path, tmp_path: Path) -> None:
    config = ROOT / "configs" / "landcover_raleigh.yaml"
    metrics = load_config(config).metrics
    scene = shared_data / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"
    classes = predicted_classes([scene], config, "forest", tmp_path)
    with rasterio.open(shared_data / "raleigh" / "nc_landclass_strata_uint8.tif") as truth:
        strata = truth.read(1)
    block = heldout_rows_and_columns(str(metrics["heldout"]), strata.shape)
    keep = (strata[block] > 0) & (classes[block] != 255)
    forest = 5 - 1  # strata class 5 is the network's class index 4
    score = iou(classes[block] == forest, strata[block] == 5, keep)
    assert score >= 0.5
    assert abs(score - float(metrics["heldout_forest_iou"])) < 0.03  # as the preset reports


def test_deforestation_iou_on_the_heldout_quarter(shared_data: Path, tmp_path: Path) -> None:
    config = ROOT / "configs" / "deforestation_pucallpa.yaml"
    metrics = load_config(config).metrics
    folder = shared_data / "pucallpa"
    sources = [folder / "landsat_1985.tif", folder / "landsat_2020.tif"]
    classes = predicted_classes(sources, config, "deforestation", tmp_path)
    scene = training_script().load_deforestation(shared_data)
    block = heldout_rows_and_columns(str(metrics["heldout"]), scene.labels.shape)
    keep = scene.labels[block] >= 0
    score = iou(classes[block] == 1, scene.labels[block] == 1, keep)
    assert score >= 0.5
    assert abs(score - float(metrics["heldout_deforestation_iou"])) < 0.03
