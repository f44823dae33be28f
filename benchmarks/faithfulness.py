"""Faithfulness of Grad-CAM on both demo models (issue 13): removal curves, occlusion, Shapley.

``python benchmarks/faithfulness.py [--data ../shared/data] [--out faithfulness-out]``
measures, with each preset's own tiling, on the CPU:

- Raleigh, class forest: deletion and insertion AUCs against random order (5 seeds, 10
  steps), (LeRF - MoRF) / 2, with the mean and blur baselines;
- Pucallpa, class deforestation: the same with the mean and epoch (1985 pixels in place of
  2020) baselines; the counterfactual occlusion of each p95 hotspot (2020 pixels inside it
  replaced by 1985 ones) against 8 random patches of the same shape;
- Raleigh: exact Shapley values of the top-k (k <= 10) p95 forest hotspots, with the
  efficiency error.

Each result is printed as a table, written as JSON and the curves as PNGs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from geocam.config import load_config
from geocam.evaluation.faithfulness import deletion_insertion, plot_curves
from geocam.evaluation.hotspots import map_hotspots, occlude_hotspots
from geocam.evaluation.perturbation import Baseline
from geocam.evaluation.scene import load_scene, scene_maps
from geocam.evaluation.scores import RegionScorer
from geocam.evaluation.shapley import hotspot_shapley
from geocam.models import build_model
from geocam.scene import Explanation, Runtime, Tiling

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, tuple[str, list[str], str, tuple[Baseline, ...]]] = {
    "raleigh": (
        "landcover_raleigh.yaml",
        ["raleigh/nc_lsat7_2000_b123457_uint8.tif"],
        "forest",
        ("mean", "blur"),
    ),
    "pucallpa": (
        "deforestation_pucallpa.yaml",
        ["pucallpa/landsat_1985.tif", "pucallpa/landsat_2020.tif"],
        "deforestation",
        ("mean", "epoch"),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("faithfulness-out"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"threads": args.threads}
    runtime = Runtime(device="cpu", progress=False)
    for case in args.cases:
        config, sources, klass, baselines = CASES[case]
        preset = load_config(ROOT / "configs" / config)
        model = build_model(preset.spec).eval()
        scene = load_scene([args.data / s for s in sources], preset.spec,
                           fallback_nodata=preset.nodata)  # fmt: skip
        explanation = Explanation(classes=(klass,))
        tiling = Tiling(tile=preset.tile, overlap=preset.overlap)
        start = time.perf_counter()
        heat, report = scene_maps(model, preset.spec, scene, explanation, tiling=tiling,
                                  runtime=runtime)  # fmt: skip
        map_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scorer = RegionScorer(model, preset.spec, scene, explanation, tiling=tiling,
                              runtime=runtime)  # fmt: skip
        print(f"== {case}: {klass}, layer {report.layer}, {len(scorer.windows)} tile(s) of "
              f"{preset.tile} (overlap {preset.overlap}); map {map_seconds:.1f} s, scorer "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        results: dict[str, Any] = {"tiles": len(scorer.windows), "map_seconds": map_seconds}
        for baseline in baselines:
            faith = deletion_insertion(scorer, heat[0], baseline=baseline, steps=args.steps,
                                       seeds=args.seeds)  # fmt: skip
            print("\n".join(faith.table()))
            plot_curves(faith, args.out / f"{case}_{baseline}_curves.png")
            results[f"faithfulness_{baseline}"] = faith.to_dict()
        hotspots = map_hotspots(heat[0, 0], scene, report.stride, "p95", klass)
        if case == "pucallpa":
            counter = occlude_hotspots(scorer, hotspots, baseline="epoch", patches=args.patches)
            print("\n".join(counter.table()))
            results["counterfactual_epoch"] = counter.to_dict()
        else:
            shapley = hotspot_shapley(scorer, hotspots, k=10)
            print("\n".join(shapley.table()))
            results["shapley_mean"] = shapley.to_dict()
        summary[case] = results
    (args.out / "faithfulness.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"written: {args.out / 'faithfulness.json'}")


if __name__ == "__main__":
    main()
