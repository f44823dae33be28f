"""Counterfactual occlusion per hotspot: does the score need what the map points at.

Hotspots are those of :func:`geocam.products.write_hotspots` (the polygons of the hottest
part of the map at the CAM's own resolution), read back onto the scene's grid (a pixel
belongs to a polygon when its centre does). Each hotspot is occluded with a baseline and the
drop of the class's region score over the original region is recorded, next to the drops
from random patches of the same shape and area (the hotspot's own mask moved to random
places of the scene that it does not overlap, at least 90 % valid): a hotspot the score
depends on drops it more than random patches do. For the bi-temporal Pucallpa pair the
natural counterfactual is the ``epoch`` baseline: the 2020 pixels inside the hotspot
replaced by the 1985 ones ("nothing changed here").

The results go back into the hotspots GeoPackage as attributes
(:func:`write_occlusion_fields`), rewritten atomically.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from geocam.errors import GeocamError
from geocam.evaluation.perturbation import Baseline, occlusions
from geocam.evaluation.scene import Scene
from geocam.evaluation.scores import RegionScorer
from geocam.output import Destination
from geocam.products import atomic, write_hotspots

FIELDS: dict[str, str] = {
    "occl_base": "str",
    "drop": "float",
    "drop_mean": "float",
    "drop_pct": "float",
    "rand_drop": "float",
    "rand_sd": "float",
    "rand_n": "int",
    "rand_ge": "float",
}
"""Attributes added to each hotspot: baseline; drop of the region score (sum, per region
pixel, % of the unperturbed score); random patches' mean drop, its standard deviation, how
many, and the fraction of them that dropped the score at least as much."""


@dataclass(frozen=True)
class Hotspot:
    """One hotspot polygon on the scene's grid: its id, valid pixels and summed positive heat."""

    id: int
    mask: np.ndarray
    heat: float
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        """Valid scene pixels inside the polygon."""
        return int(self.mask.sum())


def read_hotspots(
    path: str | Path, scene: Scene, positive: np.ndarray | None = None
) -> list[Hotspot]:
    """The polygons of a hotspots file (layer ``hotspots``) as masks of the scene's valid pixels.

    ``positive`` ``(H, W)``, the class's positive map, gives each hotspot its summed heat
    (else the file's ``mean_heat`` times its pixels). Polygons without a valid pixel are left
    out.
    """
    import fiona  # type: ignore[import-untyped]

    grid = scene.grid
    hotspots = []
    with fiona.open(path, layer="hotspots") as features:
        crs = features.crs
        for number, feature in enumerate(features, start=1):
            geometry = dict(feature["geometry"])
            if crs and grid.crs is not None and crs != grid.crs:
                geometry = transform_geom(crs, grid.crs, geometry)
            burnt = rasterize([(geometry, 1)], out_shape=scene.valid.shape,
                              transform=grid.transform, dtype="uint8")  # fmt: skip
            mask = burnt.astype(bool) & scene.valid
            if not mask.any():
                continue
            properties = dict(feature["properties"])
            if positive is not None:
                heat = float(np.nansum(positive[mask]))
            else:
                heat = float(properties.get("mean_heat") or 0.0) * int(mask.sum())
            hotspots.append(Hotspot(int(properties.get("id", number)), mask, heat, properties))
    return hotspots


def map_hotspots(
    positive: np.ndarray,
    scene: Scene,
    stride: int,
    rule: str = "p95",
    class_name: str = "",
    *,
    out: Path | None = None,
    destination: Destination | None = None,
) -> list[Hotspot]:
    """The hotspots :func:`~geocam.products.write_hotspots` outlines in this positive map.

    The map (``(H, W)``, NaN at nodata; e.g. ``scene_maps(...)[0][k, 0]``) is written to a
    temporary heatmap GeoTIFF with its layer's ``stride``, outlined by ``write_hotspots``
    with ``rule`` (``pNN`` or ``otsu``) and read back: the same polygons as ``--hotspots``.
    With ``out`` the polygons are kept there (staged in ``destination`` when given), for
    :func:`write_occlusion_fields` to add the occlusion results to.
    """
    grid = scene.grid
    if positive.shape != scene.valid.shape:
        raise GeocamError(f"map {positive.shape}: give one class's positive map of the scene")
    with tempfile.TemporaryDirectory(prefix="geocam-hotspots-") as folder:
        heatmap = Path(folder) / "heat.tif"
        with rasterio.open(
            heatmap, "w", driver="GTiff", width=grid.width, height=grid.height, count=1,
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=np.nan,
        ) as dataset:  # fmt: skip
            dataset.write(np.where(scene.valid, positive, np.nan).astype(np.float32), 1)
            dataset.update_tags(GEOCAM_LAYER_STRIDE=str(int(stride)))
            dataset.update_tags(1, CLASS=class_name)
        gpkg = Path(folder) / "hotspots.gpkg" if out is None else Path(out)
        write_hotspots(heatmap, gpkg, 1, rule, overwrite=True, destination=destination)
        written = gpkg if destination is None else destination.current(gpkg)
        return read_hotspots(written, scene, positive)


def top_hotspots(hotspots: Sequence[Hotspot], k: int) -> list[Hotspot]:
    """The ``k`` hotspots with the most summed heat (ties: lower id first)."""
    return sorted(hotspots, key=lambda h: (-h.heat, h.id))[:k]


@dataclass(frozen=True)
class HotspotDrop:
    """One hotspot's occlusion: the score's drop, and the drops of random patches like it."""

    id: int
    pixels: int
    heat: float
    drop: float
    random_drops: np.ndarray

    @property
    def random_mean(self) -> float:
        """Mean drop of the random patches (NaN without one)."""
        return float(self.random_drops.mean()) if self.random_drops.size else float("nan")

    @property
    def random_std(self) -> float:
        """Standard deviation (ddof 1) of the random patches' drops."""
        size = self.random_drops.size
        return float(self.random_drops.std(ddof=1)) if size > 1 else float("nan")

    @property
    def random_at_least(self) -> float:
        """Fraction of random patches whose drop is at least the hotspot's."""
        if not self.random_drops.size:
            return float("nan")
        return float((self.random_drops >= self.drop).mean())


@dataclass(frozen=True)
class CounterfactualReport:
    """Every hotspot's drop against random patches, for one class and baseline."""

    class_name: str
    baseline: str
    score: str
    original: float
    region_pixels: float
    hotspots: list[HotspotDrop]
    patches: int
    seconds: float

    def fields(self, hotspot: HotspotDrop) -> dict[str, Any]:
        """The GeoPackage attributes of one hotspot (:data:`FIELDS`)."""
        return {
            "occl_base": self.baseline,
            "drop": hotspot.drop,
            "drop_mean": hotspot.drop / self.region_pixels,
            "drop_pct": 100 * hotspot.drop / abs(self.original) if self.original else None,
            "rand_drop": hotspot.random_mean,
            "rand_sd": hotspot.random_std,
            "rand_n": int(hotspot.random_drops.size),
            "rand_ge": hotspot.random_at_least,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN where no random patch fitted)."""
        return {
            "class": self.class_name,
            "baseline": self.baseline,
            "score": self.score,
            "statistic": "drop of the region score (sum over the original region; drop_mean "
            "per region pixel) when the hotspot is occluded, against random patches of the "
            "same shape",
            "original_sum": self.original,
            "region_pixels": self.region_pixels,
            "patches_per_hotspot": self.patches,
            "hotspots": [
                {
                    "id": h.id,
                    "pixels": h.pixels,
                    "heat": h.heat,
                    **self.fields(h),
                    "random_drops": h.random_drops.tolist(),
                }
                for h in self.hotspots
            ],
            "seconds": self.seconds,
        }

    def table(self) -> list[str]:
        """Lines of text: one per hotspot, hottest first."""
        lines = [
            f"counterfactual occlusion of {self.class_name} hotspots ({self.baseline} baseline, "
            f"{self.score}; original {self.original:.6g} over {self.region_pixels:.0f} px; "
            f"{self.patches} random patches each, {self.seconds:.1f} s)",
            f"  {'id':>4} {'pixels':>7} {'drop':>11} {'drop %':>7} {'random':>11} "
            f"{'sd':>9} {'rand>=':>6}",
        ]
        for h in sorted(self.hotspots, key=lambda h: -h.heat):
            f = self.fields(h)
            pct = f["drop_pct"] if f["drop_pct"] is not None else float("nan")
            lines.append(
                f"  {h.id:>4} {h.pixels:>7} {h.drop:>11.5g} {pct:>7.2f} "
                f"{h.random_mean:>11.5g} {h.random_std:>9.3g} {h.random_at_least:>6.2f}"
            )
        return lines


def random_patches(
    mask: np.ndarray, valid: np.ndarray, count: int, rng: np.random.Generator, tries: int = 50
) -> list[np.ndarray]:
    """``mask`` moved to up to ``count`` random places: no overlap with it, >= 90 % valid.

    Offsets are drawn uniformly among those that keep the shape inside the scene; at most
    ``tries`` draws per patch.
    """
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    patches: list[np.ndarray] = []
    for _ in range(count * tries):
        if len(patches) == count:
            break
        dy = int(rng.integers(-top, height - bottom))
        dx = int(rng.integers(-left, width - right))
        moved = np.zeros_like(mask)
        moved[rows + dy, cols + dx] = True
        if (moved & mask).any() or (moved & valid).sum() < 0.9 * len(rows):
            continue
        patches.append(moved & valid)
    return patches


def occlude_hotspots(
    scorer: RegionScorer,
    hotspots: Sequence[Hotspot],
    *,
    class_name: str | None = None,
    baseline: Baseline = "mean",
    patches: int = 8,
    seed: int = 0,
    sigma: float = 10.0,
    noise: float = 0.01,
) -> CounterfactualReport:
    """Each hotspot occluded with ``baseline``, and ``patches`` random patches like it.

    The drop is the unperturbed region score minus the occluded one (sum over the original
    region): positive when the hotspot supports the class.
    """
    start = time.perf_counter()
    scene = scorer.scene
    name = class_name or scorer.class_names[0]
    if name not in scorer.class_names:
        raise GeocamError(f"class {name!r} is not scored: the scorer has {scorer.class_names}")
    if not hotspots:
        raise GeocamError("no hotspot to occlude: lower the hotspot threshold")
    k = scorer.class_names.index(name)
    rng = np.random.default_rng(seed)
    masks: list[tuple[int, np.ndarray]] = []
    for index, hotspot in enumerate(hotspots):
        masks.append((index, hotspot.mask))
        masks.extend((index, m) for m in random_patches(hotspot.mask, scene.valid, patches, rng))
    perturbed = occlusions(scene, scorer.spec, (mask for _, mask in masks), baseline,
                           sigma=sigma, noise=noise, seed=seed)  # fmt: skip
    drops = scorer.original[k] - scorer.scores(perturbed)[:, k]
    results = []
    for index, hotspot in enumerate(hotspots):
        mine = [d for (owner, _), d in zip(masks, drops, strict=True) if owner == index]
        results.append(
            HotspotDrop(
                hotspot.id,
                hotspot.pixels,
                hotspot.heat,
                float(mine[0]),
                np.asarray(mine[1:], dtype=np.float64),
            )
        )
    return CounterfactualReport(
        class_name=name,
        baseline=baseline if baseline != "blur" else f"blur (sigma {sigma:g} px)",
        score=scorer.options.score,
        original=float(scorer.original[k]),
        region_pixels=float(scorer.region_pixels[k]),
        hotspots=results,
        patches=patches,
        seconds=time.perf_counter() - start,
    )


def write_occlusion_fields(
    path: str | Path, report: CounterfactualReport, *, destination: Destination | None = None
) -> Path:
    """Add the occlusion results to a hotspots GeoPackage as attributes, atomically.

    Features are matched by their ``id``; a feature without a result (no valid pixel) gets
    empty fields. The file is rewritten under a scratch name and renamed into place (staged
    in ``destination`` when given, as the other products of a run).
    """
    import fiona

    path = Path(path)
    source = path if destination is None else destination.current(path)
    if not source.is_file():
        raise GeocamError(f"{path}: no hotspots file to add the occlusion results to")
    by_id = {h.id: report.fields(h) for h in report.hotspots}
    with fiona.open(source, layer="hotspots") as features:
        crs_wkt, driver = features.crs_wkt, features.driver
        schema = dict(features.schema)
        records = [(dict(f["geometry"]), dict(f["properties"])) for f in features]
    clash = [name for name in FIELDS if name in schema["properties"]]
    properties = {k: v for k, v in schema["properties"].items() if k not in clash}
    schema["properties"] = {**properties, **FIELDS}
    empty = dict.fromkeys(FIELDS)
    by_id = {i: {k: _no_nan(v) for k, v in values.items()} for i, values in by_id.items()}
    rows = [
        {"geometry": geometry,
         "properties": {**{k: v for k, v in props.items() if k not in clash},
                        **by_id.get(int(props.get("id", 0)), empty)}}
        for geometry, props in records
    ]  # fmt: skip
    with atomic(path, True, destination) as partial:
        if partial.exists() and partial == source:  # staged earlier in this run: rewrite it
            partial.unlink()
        with fiona.open(partial, "w", driver=driver, crs_wkt=crs_wkt, schema=schema,
                        layer="hotspots") as sink:  # fmt: skip
            sink.writerecords(rows)
    return path


def _no_nan(value: Any) -> Any:
    """NaN (no random patch fitted) as an empty field: GeoPackage stores no NaN."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def plot_drops(report: CounterfactualReport, path: str | Path) -> Path:
    """Each hotspot's drop beside its random patches' (mean +- 1 sd), hottest first, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from geocam.output import atomic_write

    spots = sorted(report.hotspots, key=lambda h: -h.heat)
    figure = Figure(figsize=(max(4.0, 0.6 * len(spots) + 2), 3.4), layout="constrained")
    axis = figure.subplots()
    x = np.arange(len(spots))
    axis.bar(x - 0.2, [h.drop for h in spots], 0.4, color="C3", label="hotspot occluded")
    axis.bar(x + 0.2, [h.random_mean for h in spots], 0.4, color="0.6",
             yerr=[np.nan_to_num(h.random_std) for h in spots], capsize=3,
             label="random patches, same shape (mean +- 1 sd)")  # fmt: skip
    axis.axhline(0, color="0.2", lw=0.8)
    axis.set_xticks(x, [str(h.id) for h in spots])
    axis.set_xlabel("hotspot id (hottest first)")
    axis.set_ylabel(f"drop of the {report.class_name} score (sum)")
    axis.set_title(f"counterfactual occlusion ({report.baseline} baseline)")
    axis.legend(fontsize=7)
    out = Path(path)
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=110))
    return out
