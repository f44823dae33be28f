"""Explanation quality for remote-sensing segmentation: every method, both demo models (issue 13).

``python benchmarks/evaluation.py [--data ../shared/data] [--out evaluation-out]`` runs, on
the CPU (``--device`` to change), each method through the scene engine with the preset's own
layer, tile and overlap, on the whole real scene:

- **Raleigh land cover, class forest**, against the ground-truth forest of
  ``nc_landclass_strata`` (value 5): relevance mass and IoU of the top-q % (q = the forest's
  area share), each with its lift over chance, the pointing game (60 m tolerance), the deletion
  AUC (MoRF, mean baseline, 10 steps) against 5 random orders, model randomisation (Spearman
  of the absolute maps between the original model's map and the map of the model with every
  block re-initialised, eMPRT, and the check's pass/fail rule), and the time of one map;
- **Pucallpa deforestation, class deforestation** (no ground truth: the labels are a spectral
  rule): the deletion AUC against random order with the epoch baseline (1985 pixels in place of
  2020), the counterfactual check (the drop of the region score when the 2020 pixels of each
  of the 10 hottest p95 hotspots are replaced by 1985 ones, divided by the mean drop of random
  patches of the same shape: the hotspots' mean), randomisation and time.

The edge map of the input (model-independent) is the control row. Randomisation here is one
step to the end state of the cascade (every block re-initialised at once, one seed), so that
every method costs two maps; the cascading curves, block by block, are
``benchmarks/randomisation.py``'s. Seeds are fixed (orders,
random patches, re-initialisation), so the figures other than times reproduce on any CPU to
float32 rounding. Prints two markdown tables and the occlusion-to-Grad-CAM time ratio, and
writes ``evaluation.json`` under ``--out``.

Removal metrics (deletion AUC, counterfactual drops) favour blurry maps (Song et al. 2023):
read them beside the localisation and randomisation columns, never alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geocam.config import Preset, load_config
from geocam.evaluation.annotation import read_annotation
from geocam.evaluation.faithfulness import deletion_insertion
from geocam.evaluation.hotspots import map_hotspots, occlude_hotspots, top_hotspots
from geocam.evaluation.localisation import localise, pixel_size_m
from geocam.evaluation.perturbation import Baseline
from geocam.evaluation.randomisation import (
    Block,
    discover_blocks,
    edge_map,
    edge_map_function,
    randomisation_check,
    scene_map_function,
)
from geocam.evaluation.scene import Scene, load_scene, scene_maps
from geocam.evaluation.scores import RegionScorer
from geocam.models import build_model
from geocam.scene import Explanation, Runtime, Tiling

ROOT = Path(__file__).resolve().parents[1]
METHODS = (
    ("gradcam", "Grad-CAM"),
    ("hirescam", "HiResCAM"),
    ("gradcam++", "Grad-CAM++"),
    ("layercam", "LayerCAM"),
    ("saliency", "saliency"),
    ("inputxgradient", "input x gradient"),
    ("guided-gradcam", "Guided Grad-CAM"),
    ("occlusion", "occlusion"),
)
CONTROL = "edge map (control)"
FOREST = 5  # nc_landclass_strata: 5 = forest
TOLERANCE_M = 60.0
STEPS, SEEDS, PATCHES, HOTSPOTS = 10, 5, 8, 10


@dataclass
class Case:
    """A demo model on its scene."""

    name: str
    preset: Preset
    model: nn.Module
    scene: Scene
    klass: str
    tiling: Tiling
    baseline: Baseline


def open_case(name: str, data: Path) -> Case:
    baseline: Baseline
    if name == "raleigh":
        config, sources, klass, baseline = (
            "landcover_raleigh.yaml", ["raleigh/nc_lsat7_2000_b123457_uint8.tif"], "forest", "mean"
        )  # fmt: skip
    else:
        config, sources, klass, baseline = (
            "deforestation_pucallpa.yaml",
            ["pucallpa/landsat_1985.tif", "pucallpa/landsat_2020.tif"],
            "deforestation",
            "epoch",
        )
    preset = load_config(ROOT / "configs" / config)
    scene = load_scene([data / s for s in sources], preset.spec, fallback_nodata=preset.nodata)
    tiling = Tiling(tile=preset.tile, overlap=preset.overlap)
    model = build_model(preset.spec).eval()
    return Case(name, preset, model, scene, klass, tiling, baseline)


def method_map(case: Case, method: str, runtime: Runtime) -> tuple[np.ndarray, float, int]:
    """The method's ``(2, H, W)`` map (positive, signed), seconds, and the layer's stride."""
    if method == "control":
        start = time.perf_counter()
        edges = edge_map(case.scene.pixels, case.scene.valid)
        return np.stack([edges, edges]), time.perf_counter() - start, 1
    explanation = Explanation(classes=(case.klass,), method=method)  # type: ignore[arg-type]
    start = time.perf_counter()
    heat, report = scene_maps(
        case.model, case.preset.spec, case.scene, explanation, tiling=case.tiling, runtime=runtime
    )
    return heat[0], time.perf_counter() - start, report.stride


def evaluate(case: Case, method: str, runtime: Runtime, data: Path) -> dict[str, Any]:
    """Every column of one row."""
    heat, seconds, stride = method_map(case, method, runtime)
    row: dict[str, Any] = {"seconds": seconds}
    if case.name == "raleigh":
        annotation = read_annotation(
            f"mask:{data / 'raleigh' / 'nc_landclass_strata_uint8.tif'}", case.scene.grid,
            value=FOREST, scene_valid=case.scene.valid,
        )  # fmt: skip
        found = localise(
            heat[0], annotation.inside, case.scene.valid & annotation.valid,
            pixel_size_m(case.scene.grid), tolerance_m=TOLERANCE_M,
        )  # fmt: skip
        row["localisation"] = {f.name: (f.value, f.chance) for f in found.figures}
    explanation = Explanation(classes=(case.klass,))
    spec = case.preset.spec
    scorer = RegionScorer(
        case.model, spec, case.scene, explanation, tiling=case.tiling, runtime=runtime
    )
    faith = deletion_insertion(scorer, heat, baseline=case.baseline, steps=STEPS, seeds=SEEDS)
    row["deletion"] = {
        "morf": faith.deletion.auc,
        "random": faith.random_deletion_auc,
        "lerf_minus_morf": faith.lerf_minus_morf,
    }
    if case.name == "pucallpa":
        hotspots = top_hotspots(map_hotspots(heat[0], case.scene, stride, "p95"), HOTSPOTS)
        counter = occlude_hotspots(scorer, hotspots, baseline="epoch", patches=PATCHES)
        ratios = [h.drop / h.random_mean for h in counter.hotspots if h.random_mean > 0]
        row["counterfactual"] = {
            "hotspots": len(counter.hotspots),
            "drop_over_random": float(np.mean(ratios)) if ratios else math.nan,
            "drop_pct": float(
                np.sum([h.drop for h in counter.hotspots]) / abs(counter.original) * 100
            ),
        }
    if method == "control":
        maps = edge_map_function(case.scene)
    else:
        maps = scene_map_function(
            case.model, spec, case.scene,
            Explanation(classes=(case.klass,), method=method),  # type: ignore[arg-type]
            tiling=case.tiling, runtime=runtime,
        )  # fmt: skip
    every = [Block("every block", tuple(m for b in discover_blocks(case.model) for m in b.modules))]
    check = randomisation_check(
        case.model, maps, blocks=every, independent=False, seed=0, label=method
    )
    final = check.final.similarity
    row["randomisation"] = {
        "spearman_abs": final.spearman_abs,
        "spearman_signed": final.spearman_signed,
        "ssim": final.ssim,
        "emprt": check.emprt,
        "passed": check.passed,
        "zero_map": check.final.zero_map,
    }
    return row


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def lifted(value: float, chance: float) -> str:
    return f"{_f(value)} ({_f(value / chance, 2)}x)"


def tables(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The two markdown tables."""
    lines: list[str] = []
    names = dict(METHODS) | {"control": CONTROL}
    for case, rows in results.items():
        if case == "raleigh":
            lines += [
                "",
                "Raleigh land cover, class forest, against the strata ground truth "
                "(forest = value 5):",
                "",
                "| method | relevance mass (lift) | IoU top-q (lift) | pointing game "
                f"({TOLERANCE_M:g} m) | deletion AUC MoRF / random | (LeRF-MoRF)/2 | "
                "rand. Spearman | eMPRT | rand. check | map time (s) |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
        else:
            lines += [
                "",
                "Pucallpa deforestation 1985-2020, class deforestation (epoch baseline: 1985 "
                "pixels in place of 2020):",
                "",
                "| method | deletion AUC MoRF / random | (LeRF-MoRF)/2 | hotspot drop / random "
                "patch drop | hotspots' drop (% of score) | rand. Spearman | eMPRT | "
                "rand. check | map time (s) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
        for method, row in rows.items():
            d, r = row["deletion"], row["randomisation"]
            random_mean, random_std = d["random"]
            deletion = f"{_f(d['morf'])} / {_f(random_mean)} +- {_f(random_std)}"
            randomised = [
                _f(r["spearman_abs"]), _f(r["emprt"]),
                ("pass" if r["passed"] else "FAIL") + (" (zero map)" if r["zero_map"] else ""),
                _f(row["seconds"], 2),
            ]  # fmt: skip
            if case == "raleigh":
                loc = row["localisation"]
                cells = [
                    lifted(*loc["relevance mass"]), lifted(*loc["IoU top-q"]),
                    f"{_f(loc['pointing game'][0], 0)} (chance {_f(loc['pointing game'][1], 2)})",
                    deletion, _f(d["lerf_minus_morf"], 4), *randomised,
                ]  # fmt: skip
            else:
                c = row["counterfactual"]
                cells = [
                    deletion, _f(d["lerf_minus_morf"], 4),
                    f"{_f(c['drop_over_random'], 2)} ({c['hotspots']} hotspots)",
                    _f(c["drop_pct"], 1), *randomised,
                ]  # fmt: skip
            lines.append(f"| {names[method]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("evaluation-out"))
    parser.add_argument("--cases", nargs="*", default=["raleigh", "pucallpa"])
    parser.add_argument("--methods", nargs="*", default=[m for m, _ in METHODS] + ["control"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    runtime = Runtime(device=args.device, progress=False)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    started = time.perf_counter()
    for name in args.cases:
        case = open_case(name, args.data)
        results[name] = {}
        for method in args.methods:
            began = time.perf_counter()
            results[name][method] = evaluate(case, method, runtime, args.data)
            print(f"{name} {method}: {time.perf_counter() - began:.0f} s", flush=True)
    total = time.perf_counter() - started
    print(f"\ndevice {args.device}, {args.threads} thread(s), {total:.0f} s")
    print("\n".join(tables(results)))
    for name, rows in results.items():
        if "occlusion" in rows and "gradcam" in rows:
            ratio = rows["occlusion"]["seconds"] / rows["gradcam"]["seconds"]
            print(f"\n{name}: occlusion map / Grad-CAM map time: {ratio:.0f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"written: {args.out / 'evaluation.json'}")


if __name__ == "__main__":
    main()
