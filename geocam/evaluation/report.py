"""The reports of ``geocam evaluate``: a JSON file, a printed table and PNG plots, all or none.

An ``evaluate`` command names its outputs with :func:`report_paths` (``-o`` a folder: the
command's name in it; else a prefix), opens them as one :class:`geocam.output.Destination`
before any work (an existing output without ``--overwrite`` stops it at once), and writes the
JSON and every plot through :func:`write_report`, which renames them into place together: a
failure leaves nothing at the destination. JSON holds no NaN: a figure that has no value is
``null``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from geocam.evaluation.annotation import Annotation
    from geocam.evaluation.hotspots import CounterfactualReport
    from geocam.evaluation.localisation import Figure, Localisation
    from geocam.evaluation.shapley import ShapleyReport
    from geocam.output import Destination
    from geocam.scene import SceneReport
    from geocam.sources import Grid

Plot = Callable[[Path], None]
"""Writes one PNG to the path it is given."""


def report_paths(out: str | Path, command: str, plots: Sequence[str] = ()) -> dict[str, Path]:
    """The files of a report: ``report`` (JSON) and one PNG per plot name.

    ``out`` an existing folder (or ending in ``/``): ``OUT/COMMAND.json``,
    ``OUT/COMMAND_PLOT.png``; else a prefix (``.json`` dropped): ``OUT.json``, ``OUT_PLOT.png``.
    """
    text, out = str(out), Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):
        base = out / command
    else:
        base = out.with_suffix("") if out.suffix.lower() == ".json" else out
    paths = {"report": base.with_name(base.name + ".json")}
    for plot in plots:
        paths[plot] = base.with_name(f"{base.name}_{plot}.png")
    return paths


def versions() -> dict[str, str]:
    """The versions a report's figures depend on."""
    import rasterio
    import torch

    from geocam import __version__

    return {
        "geocam": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: numpy scalars and arrays as numbers and lists, NaN null."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def figure_rows(figures: Sequence[Figure]) -> list[dict[str, Any]]:
    """Each figure as a JSON row: name, value, chance, lift, note."""
    return [
        {"name": f.name, "value": f.value, "chance": f.chance, "lift": f.lift, "note": f.note}
        for f in figures
    ]


def figures_table(figures: Sequence[Figure]) -> str:
    """The figures as a short text table: value, chance level and lift."""
    width = max([len("figure"), *(len(f.name) for f in figures)])
    lines = [f"{'figure':<{width}}  {'value':>8}  {'chance':>8}  {'lift':>6}"]
    for f in figures:
        lines.append(f"{f.name:<{width}}  {f.value:>8.4f}  {f.chance:>8.4f}  {f.lift:>6.2f}")
    return "\n".join(lines)


def write_report(
    destination: Destination,
    paths: Mapping[str, Path],
    report: Mapping[str, Any],
    plots: Mapping[str, Plot] | None = None,
) -> dict[str, Path]:
    """Write the JSON ``report`` and each plot under scratch names, then commit them together.

    ``paths`` are :func:`report_paths`' (the outputs of ``destination``); the report records
    them under ``outputs``.
    """
    from geocam.errors import WriteFailed
    from geocam.output import write_failed

    outputs = {name: str(path) for name, path in paths.items()}
    text = json.dumps(plain({**report, "outputs": outputs}), indent=1, allow_nan=False)
    scratch = destination.scratch(paths["report"])
    try:
        scratch.write_text(text + "\n", encoding="utf-8")
        for name, plot in (plots or {}).items():
            plot(destination.scratch(paths[name]))
    except WriteFailed:
        raise
    except OSError as error:
        raise write_failed(scratch, error) from error
    destination.commit()
    return dict(paths)


def scene_record(grid: Grid, engine: SceneReport | None) -> dict[str, Any]:
    """The scene and the engine's run (when given), as a report records them."""
    scene = {
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs.to_string() if grid.crs is not None else None,
        "transform": list(grid.transform)[:6],
    }
    if engine is None:
        return {"scene": scene}
    return {
        "scene": scene,
        "map": {
            "layer": engine.layer,
            "stride": engine.stride,
            "tiles": engine.tiles,
            "passes": engine.passes,
            "region_pixels": engine.region_pixels,
            "seconds": round(engine.seconds, 3),
        },
    }


def localisation_report(
    localisation: Localisation,
    annotation: Annotation,
    engine: SceneReport,
    grid: Grid,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report of ``geocam evaluate localisation``."""
    return {
        **command_report("localisation", settings, grid, engine),
        "annotation": {
            "name": annotation.name,
            "valid_pixels": localisation.pixels,
            "annotated_pixels": localisation.annotated,
            "area_share": localisation.area_share,
            "pixel_m": list(localisation.pixel_m),
            "tolerance_m": localisation.tolerance_m,
            "otsu_threshold": localisation.otsu_threshold,
        },
        "figures": figure_rows(localisation.figures),
    }


def command_report(
    command: str, settings: Mapping[str, Any], grid: Grid, engine: SceneReport | None
) -> dict[str, Any]:
    """The head every report shares: command, settings, versions, scene (and map run)."""
    return {
        "command": command,
        "settings": dict(settings),
        "versions": versions(),
        **scene_record(grid, engine),
    }


# --- plots ----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_through(write: Callable[[Path], object]) -> Plot:
    """A plot from a function that needs a path ending in ``.png`` (matplotlib's format).

    It writes into a temporary folder beside the scratch path; the PNG is then moved there.
    """

    def plot(path: Path) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".geocam-plot-") as folder:
            made = Path(folder) / "plot.png"
            write(made)
            os.replace(made, path)

    return plot


def _save(figure: Any, path: Path) -> None:
    plt = _pyplot()
    try:
        figure.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)


def map_plot(
    positive: np.ndarray,
    inside: np.ndarray,
    valid: np.ndarray,
    title: str,
    max_side: int = 1200,
) -> Plot:
    """A plot of the positive map (nodata white), the annotation outlined in cyan, its maximum."""

    def plot(path: Path) -> None:
        plt = _pyplot()
        step = max(1, math.ceil(max(positive.shape) / max_side))
        heat = np.where(valid, positive, np.nan)[::step, ::step]
        outline = (inside & valid)[::step, ::step].astype(np.float64)
        figure, axes = plt.subplots(figsize=(8, 8 * heat.shape[0] / heat.shape[1] + 0.8), dpi=110)
        shown = axes.imshow(np.ma.masked_invalid(heat), cmap="inferno", interpolation="nearest")
        if 0 < outline.sum() < outline.size:
            axes.contour(outline, levels=[0.5], colors="cyan", linewidths=0.7)
        if np.isfinite(heat).any():  # the pointing game's pixel
            row, col = np.unravel_index(np.nanargmax(heat), heat.shape)
            axes.plot(col, row, marker="+", color="lime", markersize=14, mew=2, label="maximum")
            axes.legend(loc="lower right", fontsize=8)
        figure.colorbar(shown, ax=axes, fraction=0.035, pad=0.02, label="positive map (raw)")
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
        _save(figure, path)

    return plot


def roc_plot(localisation: Localisation, title: str) -> Plot:
    """A plot of the positive map's ROC curve against the annotation, with chance's diagonal."""

    def plot(path: Path) -> None:
        plt = _pyplot()
        fpr, tpr = localisation.roc
        auc = localisation.figure("ROC-AUC").value
        figure, axes = plt.subplots(figsize=(5, 5), dpi=110)
        axes.plot(fpr, tpr, color="tab:red", label=f"positive map, AUC {auc:.3f}")
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance, AUC 0.5")
        axes.set_xlabel("false-positive rate (outside the annotation)")
        axes.set_ylabel("true-positive rate (annotated pixels)")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_aspect("equal")
        axes.legend(loc="lower right", fontsize=8)
        axes.set_title(title, fontsize=9)
        _save(figure, path)

    return plot


def hotspots_plot(
    counterfactual: CounterfactualReport, shapley: ShapleyReport | None = None, shown: int = 20
) -> Plot:
    """Bars of each hotspot's score drop beside its random patches' (mean +- sd).

    Hottest first; with ``shapley``, a second panel of the players' Shapley values.
    """

    def plot(path: Path) -> None:
        plt = _pyplot()
        panels = 2 if shapley is not None else 1
        figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), dpi=110, squeeze=False)
        hottest = sorted(counterfactual.hotspots, key=lambda h: -h.heat)[:shown]
        x = np.arange(len(hottest))
        left = axes[0, 0]
        left.bar(x - 0.2, [h.drop for h in hottest], 0.4, color="tab:red", label="hotspot")
        left.errorbar(x + 0.2, [h.random_mean for h in hottest],
                      yerr=[h.random_std for h in hottest], fmt="o", color="black", ms=3,
                      label="random patches, mean +- sd")  # fmt: skip
        left.axhline(0, color="grey", lw=0.6)
        left.set_xticks(x, [str(h.id) for h in hottest], fontsize=7)
        left.set_xlabel("hotspot id (hottest first)")
        left.set_ylabel(f"drop of the {counterfactual.class_name} score (sum)")
        left.set_title(f"occluded with the {counterfactual.baseline} baseline", fontsize=9)
        left.legend(fontsize=7)
        if shapley is not None:
            right = axes[0, 1]
            ids = [str(p.id) for p in shapley.players]
            right.bar(np.arange(len(ids)), shapley.values, color="tab:blue")
            right.axhline(0, color="grey", lw=0.6)
            right.set_xticks(np.arange(len(ids)), ids, fontsize=7)
            right.set_xlabel("hotspot id (hottest first)")
            right.set_ylabel("Shapley value (sum)")
            right.set_title(
                f"exact over {len(shapley.coalitions)} coalitions; efficiency error "
                f"{shapley.efficiency_error:.1e}", fontsize=9,
            )  # fmt: skip
        _save(figure, path)

    return plot
