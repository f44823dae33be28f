"""Does the map rank the pixels that drive the region score? Deletion and insertion curves.

Valid pixels are ranked by the class's positive map, most relevant first (MoRF); ties are
broken by the signed map (higher first), then by raster order, so the ranking is
deterministic. LeRF (least relevant first) is exactly the MoRF order reversed. Step ``j`` of
``steps`` replaces the first ``round(j / steps * N)`` pixels of an order with the baseline
(deletion); insertion starts from the baseline everywhere and restores pixels in order, so
insertion MoRF *is* deletion LeRF read backwards (the same perturbed scenes, scored once).
The score is the class's region score over the *original* region
(:class:`~geocam.evaluation.scores.RegionScorer`), recorded as the sum over the region and
as the mean per region pixel; the areas under the curves (trapezoid rule, x = fraction of
valid pixels replaced or restored, in [0, 1]) are of the mean.

The same perturbations in random orders (``seeds`` of them) give the reference: a faithful
map's deletion AUC lies below the random one and its insertion AUC above it;
``(LeRF - MoRF) / 2`` of the deletion AUCs (Rong et al. 2022) is positive. A random insertion
curve is a random deletion curve read backwards (the same scenes; a random order reversed is
a random order).

Removal metrics favour blurry maps (Song et al. 2023) and leak the removed pixels' shape
(Rong et al. 2022): never rank methods on them alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geocam.errors import GeocamError
from geocam.evaluation.perturbation import Baseline, occlusions
from geocam.evaluation.scores import RegionScorer


@dataclass(frozen=True)
class Curve:
    """One curve: x (fraction of valid pixels replaced or restored) and the region score."""

    fractions: np.ndarray
    sums: np.ndarray
    means: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the mean score by the trapezoid rule over x in [0, 1]."""
        return trapezoid(self.fractions, self.means)

    def to_dict(self) -> dict[str, Any]:
        """The curve, JSON-ready."""
        return {
            "fractions": self.fractions.tolist(),
            "sum": self.sums.tolist(),
            "mean": self.means.tolist(),
            "auc_mean": self.auc,
        }


@dataclass(frozen=True)
class FaithfulnessReport:
    """Deletion and insertion curves of one class's map, and the random reference."""

    class_name: str
    baseline: str
    score: str
    region_pixels: float
    valid_pixels: int
    original: float
    """The unperturbed scene's region score (sum)."""
    deletion: Curve
    deletion_lerf: Curve
    insertion: Curve
    insertion_lerf: Curve
    random_deletion: list[Curve]
    random_insertion: list[Curve]
    seconds: float
    scenes: int
    """Perturbed scenes scored (shared scenes once)."""
    notes: list[str] = field(default_factory=list)

    @property
    def random_deletion_auc(self) -> tuple[float, float]:
        """Mean and standard deviation (ddof 1) of the random orders' deletion AUCs."""
        return _mean_std([c.auc for c in self.random_deletion])

    @property
    def random_insertion_auc(self) -> tuple[float, float]:
        """Mean and standard deviation (ddof 1) of the random orders' insertion AUCs."""
        return _mean_std([c.auc for c in self.random_insertion])

    @property
    def lerf_minus_morf(self) -> float:
        """``(AUC(deletion LeRF) - AUC(deletion MoRF)) / 2``: positive for a faithful map."""
        return (self.deletion_lerf.auc - self.deletion.auc) / 2

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        del_mean, del_std = self.random_deletion_auc
        ins_mean, ins_std = self.random_insertion_auc
        return {
            "class": self.class_name,
            "baseline": self.baseline,
            "score": self.score,
            "score_statistic": "AUCs of the mean score per original region pixel "
            "(curves carry the sum too); x = fraction of valid pixels",
            "region_pixels": self.region_pixels,
            "valid_pixels": self.valid_pixels,
            "original_sum": self.original,
            "original_mean": self.original / self.region_pixels,
            "auc": {
                "deletion_morf": self.deletion.auc,
                "deletion_lerf": self.deletion_lerf.auc,
                "insertion_morf": self.insertion.auc,
                "insertion_lerf": self.insertion_lerf.auc,
                "deletion_random_mean": del_mean,
                "deletion_random_std": del_std,
                "insertion_random_mean": ins_mean,
                "insertion_random_std": ins_std,
                "lerf_minus_morf_half": self.lerf_minus_morf,
                "random_seeds": len(self.random_deletion),
            },
            "curves": {
                "deletion_morf": self.deletion.to_dict(),
                "deletion_lerf": self.deletion_lerf.to_dict(),
                "insertion_morf": self.insertion.to_dict(),
                "insertion_lerf": self.insertion_lerf.to_dict(),
                "deletion_random": [c.to_dict() for c in self.random_deletion],
                "insertion_random": [c.to_dict() for c in self.random_insertion],
            },
            "seconds": self.seconds,
            "scenes_scored": self.scenes,
            "notes": self.notes,
        }

    def table(self) -> list[str]:
        """Lines of text: the AUCs against random order, and what they are of."""
        del_mean, del_std = self.random_deletion_auc
        ins_mean, ins_std = self.random_insertion_auc
        seeds = len(self.random_deletion)
        return [
            f"faithfulness of {self.class_name} ({self.baseline} baseline, {self.score} score, "
            f"mean over {self.region_pixels:.0f} region px; original {self.original:.6g} sum, "
            f"{self.original / self.region_pixels:.6g} mean)",
            f"  deletion  AUC  MoRF {self.deletion.auc:.6g}   random {del_mean:.6g} "
            f"+- {del_std:.2g} ({seeds} seeds)   (lower than random: faithful)",
            f"  insertion AUC  MoRF {self.insertion.auc:.6g}   random {ins_mean:.6g} "
            f"+- {ins_std:.2g} ({seeds} seeds)   (higher than random: faithful)",
            f"  (LeRF - MoRF) / 2 of deletion AUCs: {self.lerf_minus_morf:.6g} "
            "(positive: faithful)",
            f"  {self.scenes} perturbed scenes in {self.seconds:.1f} s",
            "  removal metrics favour blurry maps (Song et al. 2023): never rank methods on "
            "them alone",
        ]


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """The trapezoid rule's area under ``y(x)``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def morf_order(positive: np.ndarray, signed: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Flat indexes of the valid pixels, most relevant first.

    By the positive map (higher first), ties by the signed map (higher first), then by raster
    order (earlier first).
    """
    index = np.flatnonzero(valid)
    pos = np.asarray(positive, dtype=np.float64).ravel()[index]
    sig = np.asarray(signed, dtype=np.float64).ravel()[index]
    if not (np.isfinite(pos).all() and np.isfinite(sig).all()):
        raise GeocamError("the map is not finite at some valid pixel: recompute it for this scene")
    return index[np.lexsort((index, -sig, -pos))]


def step_counts(valid_pixels: int, steps: int) -> np.ndarray:
    """Pixels replaced at each of ``steps + 1`` points: ``round(j / steps * N)``."""
    if steps < 1:
        raise GeocamError(f"steps ({steps}) must be at least 1 (10 or more for curves)")
    return np.rint(np.arange(steps + 1) / steps * valid_pixels).astype(np.int64)


def deletion_insertion(
    scorer: RegionScorer,
    heat: np.ndarray,
    *,
    class_name: str | None = None,
    baseline: Baseline = "mean",
    steps: int = 10,
    seeds: int = 5,
    sigma: float = 10.0,
    noise: float = 0.01,
    seed: int = 0,
) -> FaithfulnessReport:
    """Deletion and insertion curves of one class's map ``heat`` ``(2, H, W)`` (positive, signed).

    ``class_name`` picks the scorer's class (default its first); ``baseline`` is ``mean``,
    ``blur`` (``sigma`` pixels), ``epoch`` (the later raster's bands from the earlier one) or
    ``road`` (noisy linear imputation with ``noise``, per perturbed scene); ``seeds`` random
    orders (at least 5 for a spread worth quoting) from ``seed`` on.
    """
    start = time.perf_counter()
    scene = scorer.scene
    if heat.shape != (2, *scene.valid.shape):
        raise GeocamError(
            f"heat {heat.shape}: give one class's (positive, signed) map of the scene, "
            f"(2, {scene.valid.shape[0]}, {scene.valid.shape[1]})"
        )
    if seeds < 2:
        raise GeocamError(f"seeds ({seeds}): use at least 2 random orders (5 or more)")
    name = class_name or scorer.class_names[0]
    if name not in scorer.class_names:
        raise GeocamError(f"class {name!r} is not scored: the scorer has {scorer.class_names}")
    k = scorer.class_names.index(name)
    morf = morf_order(heat[0], heat[1], scene.valid)
    total = len(morf)
    counts = step_counts(total, steps)
    rng = np.random.default_rng(seed)
    orders: dict[str, np.ndarray] = {"morf": morf, "lerf": morf[::-1]}
    for s in range(seeds):
        orders[f"random{s}"] = rng.permutation(morf)
    wanted = [(name_, int(c)) for name_ in orders for c in counts]
    keys = list(dict.fromkeys(wanted))  # shared scenes once, in order

    def masks() -> Iterator[np.ndarray]:
        for order_name, count in keys:
            flat = np.zeros(scene.valid.size, dtype=bool)
            flat[orders[order_name][:count]] = True
            yield flat.reshape(scene.valid.shape)

    perturbed = occlusions(scene, scorer.spec, masks(), baseline, sigma=sigma, noise=noise,
                           seed=seed)  # fmt: skip
    scores = scorer.scores(perturbed)[:, k]
    by_key = dict(zip(keys, scores, strict=True))
    region = float(scorer.region_pixels[k])

    def curve(order_name: str, *, insertion: bool) -> Curve:
        sums = np.array([by_key[(order_name, int(c))] for c in counts])
        x = counts / total
        if insertion:  # restoring the first n of an order = replacing the rest of it
            sums, x = sums[::-1], 1 - x[::-1]
        return Curve(x, sums, sums / region)

    reverse = {"morf": "lerf", "lerf": "morf"}
    return FaithfulnessReport(
        class_name=name,
        baseline=baseline if baseline != "blur" else f"blur (sigma {sigma:g} px)",
        score=scorer.options.score,
        region_pixels=region,
        valid_pixels=total,
        original=float(scorer.original[k]),
        deletion=curve("morf", insertion=False),
        deletion_lerf=curve("lerf", insertion=False),
        insertion=curve(reverse["morf"], insertion=True),
        insertion_lerf=curve(reverse["lerf"], insertion=True),
        random_deletion=[curve(f"random{s}", insertion=False) for s in range(seeds)],
        random_insertion=[curve(f"random{s}", insertion=True) for s in range(seeds)],
        seconds=time.perf_counter() - start,
        scenes=len(keys),
        notes=[
            "insertion MoRF is deletion LeRF read backwards (same scenes)",
            "random insertion curves are the random deletion curves read backwards",
            "removal metrics favour blurry maps (Song et al. 2023): never rank methods on "
            "them alone",
        ],
    )


def plot_curves(report: FaithfulnessReport, path: str | Path) -> Path:
    """Deletion and insertion curves with the random band, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from geocam.output import atomic_write

    figure = Figure(figsize=(9, 3.6), layout="constrained")
    panels = figure.subplots(1, 2)
    pairs = [
        ("deletion", report.deletion, report.deletion_lerf, report.random_deletion),
        ("insertion", report.insertion, report.insertion_lerf, report.random_insertion),
    ]
    for axis, (what, morf, lerf, randoms) in zip(panels, pairs, strict=True):
        stack = np.stack([c.means for c in randoms])
        x = randoms[0].fractions
        mean, std = stack.mean(axis=0), stack.std(axis=0, ddof=1)
        axis.fill_between(x, mean - std, mean + std, color="0.8", label="random +- 1 sd")
        axis.plot(x, mean, color="0.4", lw=1, label=f"random (AUC {trapezoid(x, mean):.3g})")
        axis.plot(morf.fractions, morf.means, "o-", color="C3", ms=3,
                  label=f"MoRF (AUC {morf.auc:.3g})")  # fmt: skip
        axis.plot(lerf.fractions, lerf.means, "s-", color="C0", ms=3,
                  label=f"LeRF (AUC {lerf.auc:.3g})")  # fmt: skip
        done = "removed" if what == "deletion" else "restored"
        axis.set_xlabel(f"fraction of valid pixels {done}")
        axis.set_ylabel(f"{report.class_name} {report.score}, mean over region")
        axis.set_title(f"{what} ({report.baseline} baseline)")
        axis.legend(fontsize=7)
    out = Path(path)
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
