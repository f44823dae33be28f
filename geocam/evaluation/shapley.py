"""Exact Shapley values of the region score over the map's top-k hotspot regions.

The players are the ``k <= 10`` hotspots with the most heat (:func:`top_hotspots`); the value
of a coalition ``S`` is the class's region score (over the original region) of the scene
with every hotspot *not* in ``S`` occluded by the baseline, so ``v(all)`` is the unperturbed
score and ``v(none)`` the score with every player occluded. All ``2^k`` coalitions are scored
through the scene's tiling in shared batches (a tile that no occluded player touches keeps
its unperturbed score; tiles seen before are not computed again), and

    phi_i = sum over S without i of |S|! (k - |S| - 1)! / k! * (v(S + i) - v(S)),

exact, so efficiency (``sum phi = v(all) - v(none)``) holds to rounding; the report gives
its relative error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geocam.errors import GeocamError
from geocam.evaluation.hotspots import Hotspot, top_hotspots
from geocam.evaluation.perturbation import Baseline, occlusions
from geocam.evaluation.scores import RegionScorer

MAX_PLAYERS = 10


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values ``(k,)`` from the values of all ``2^k`` coalitions.

    ``values[m]`` is the value of the coalition whose members are the set bits of ``m``
    (bit ``i``: player ``i``); ``values[0]`` is the empty coalition's.
    """
    values = np.asarray(values, dtype=np.float64)
    size = len(values)
    k = size.bit_length() - 1
    if size < 2 or size != 1 << k:
        raise GeocamError(f"{size} coalition values: give 2^k of them for k players")
    members = np.arange(size)
    counts = np.array([bin(m).count("1") for m in members])
    weights = np.array(
        [math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k) for s in range(k)]
    )
    phi = np.zeros(k)
    for i in range(k):
        without = members[(members >> i) & 1 == 0]
        phi[i] = np.sum(weights[counts[without]] * (values[without | (1 << i)] - values[without]))
    return phi


@dataclass(frozen=True)
class ShapleyReport:
    """Shapley values of the top hotspots for one class and baseline."""

    class_name: str
    baseline: str
    score: str
    region_pixels: float
    players: list[Hotspot]
    values: np.ndarray
    """Shapley value of each player (sum over the original region)."""
    coalitions: np.ndarray
    """Value of every coalition, ``(2^k,)``, indexed by the bits of its members."""
    seconds: float

    @property
    def full(self) -> float:
        """``v(all)``: the unperturbed score."""
        return float(self.coalitions[-1])

    @property
    def empty(self) -> float:
        """``v(none)``: every player occluded."""
        return float(self.coalitions[0])

    @property
    def efficiency_error(self) -> float:
        """``|sum(phi) - (v(all) - v(none))|`` relative to ``|v(all) - v(none)|``."""
        gap = self.full - self.empty
        return abs(float(self.values.sum()) - gap) / max(abs(gap), np.finfo(float).tiny)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "class": self.class_name,
            "baseline": self.baseline,
            "score": self.score,
            "statistic": "Shapley values of the region score (sum over the original region; "
            "value_mean per region pixel); a player absent = its hotspot occluded",
            "region_pixels": self.region_pixels,
            "players": [
                {
                    "id": p.id,
                    "pixels": p.pixels,
                    "heat": p.heat,
                    "value": float(v),
                    "value_mean": float(v) / self.region_pixels,
                }
                for p, v in zip(self.players, self.values, strict=True)
            ],
            "v_all": self.full,
            "v_none": self.empty,
            "efficiency_error": self.efficiency_error,
            "coalitions": len(self.coalitions),
            "seconds": self.seconds,
        }

    def table(self) -> list[str]:
        """Lines of text: one per player, in heat order, then efficiency."""
        gap = self.full - self.empty
        lines = [
            f"Shapley values of the top {len(self.players)} {self.class_name} hotspots "
            f"({self.baseline} baseline, {self.score}; {len(self.coalitions)} coalitions, "
            f"{self.seconds:.1f} s)",
            f"  {'id':>4} {'pixels':>7} {'heat':>11} {'value':>11} {'share':>6}",
        ]
        for player, value in zip(self.players, self.values, strict=True):
            share = value / gap if gap else float("nan")
            lines.append(
                f"  {player.id:>4} {player.pixels:>7} {player.heat:>11.5g} {value:>11.5g} "
                f"{share:>6.2f}"
            )
        lines.append(
            f"  v(all) - v(none) = {gap:.6g}; sum of values {self.values.sum():.6g}; "
            f"efficiency error {self.efficiency_error:.1e} (relative)"
        )
        return lines


def hotspot_shapley(
    scorer: RegionScorer,
    hotspots: Sequence[Hotspot],
    *,
    k: int = MAX_PLAYERS,
    class_name: str | None = None,
    baseline: Baseline = "mean",
    sigma: float = 10.0,
    noise: float = 0.01,
    seed: int = 0,
) -> ShapleyReport:
    """Exact Shapley values of the ``k`` hottest hotspots (fewer if there are fewer).

    ``road`` imputes every coalition's occluded players jointly (one imputation per
    coalition: slow for large ``k``).
    """
    start = time.perf_counter()
    if not 1 <= k <= MAX_PLAYERS:
        raise GeocamError(f"k ({k}): use 1 to {MAX_PLAYERS} players (2^k coalitions)")
    name = class_name or scorer.class_names[0]
    if name not in scorer.class_names:
        raise GeocamError(f"class {name!r} is not scored: the scorer has {scorer.class_names}")
    players = top_hotspots(hotspots, k)
    if not players:
        raise GeocamError("no hotspot to play: lower the hotspot threshold")
    masks = np.stack([p.mask for p in players])
    if (masks.sum(axis=0) > 1).any():
        raise GeocamError("hotspot players overlap: give disjoint hotspot polygons")
    scene = scorer.scene
    count = len(players)
    bits = 1 << np.arange(count)
    absent = ((coalition & bits) == 0 for coalition in range(1 << count))
    perturbed = occlusions(scene, scorer.spec, (masks[a].any(axis=0) for a in absent), baseline,
                           sigma=sigma, noise=noise, seed=seed)  # fmt: skip
    index = scorer.class_names.index(name)
    values = scorer.scores(perturbed)[:, index]
    return ShapleyReport(
        class_name=name,
        baseline=baseline if baseline != "blur" else f"blur (sigma {sigma:g} px)",
        score=scorer.options.score,
        region_pixels=float(scorer.region_pixels[index]),
        players=players,
        values=shapley_values(values),
        coalitions=values,
        seconds=time.perf_counter() - start,
    )


def plot_shapley(report: ShapleyReport, path: str | Path) -> Path:
    """The players' Shapley values beside their share of the heat, as a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from geocam.output import atomic_write

    heat = np.array([p.heat for p in report.players])
    gap = report.full - report.empty
    figure = Figure(figsize=(max(4.0, 0.6 * len(heat) + 2), 3.4), layout="constrained")
    axis = figure.subplots()
    x = np.arange(len(heat))
    share = report.values / gap if gap else np.full(len(heat), np.nan)
    axis.bar(x - 0.2, share, 0.4, color="C0", label="Shapley value / (v(all) - v(none))")
    axis.bar(x + 0.2, heat / heat.sum(), 0.4, color="C1", label="share of the players' heat")
    axis.axhline(0, color="0.2", lw=0.8)
    axis.set_xticks(x, [str(p.id) for p in report.players])
    axis.set_xlabel("hotspot id (hottest first)")
    axis.set_title(f"Shapley values of {report.class_name} hotspots ({report.baseline})")
    axis.legend(fontsize=7)
    out = Path(path)
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    return out
