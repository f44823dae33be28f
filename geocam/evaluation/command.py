"""``geocam evaluate``: can the map be trusted? Commands over the evaluation library.

Every command explains one class of a scene exactly as ``geocam explain`` would (same options,
same scene engine), evaluates the map, prints a short table and writes a JSON report and PNG
plots (:mod:`geocam.evaluation.report`), all or nothing. The options every command shares are
defined once (:func:`scene_options`) and opened once (:func:`open_run`). Only click is imported
at the top, so that ``geocam --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from geocam.methods import ALL_METHODS

if TYPE_CHECKING:
    from torch import nn

    from geocam.config import Preset
    from geocam.evaluation.scene import Scene
    from geocam.scene import Explanation, Runtime, Tiling

F = TypeVar("F", bound=Callable[..., Any])

MODEL_HELP = (
    "The model: an ONNX file, an smp hub folder, a Lightning/TorchGeo checkpoint, "
    "torchvision:NAME or a state dict (with -c naming the network) [default: the preset's]."
)

_SCENE_OPTIONS = [
    click.argument("sources", nargs=-1, required=True, type=click.Path()),
    click.option(
        "--config", "-c", type=click.Path(path_type=Path),
        help="Model preset (YAML) [optional when -m defines the network].",
    ),
    click.option("--model", "-m", "model_source", help=MODEL_HELP),
    click.option("--class", "class_name", required=True, help="Class name or index to evaluate."),
    click.option(
        "--out", "-o", required=True, type=click.Path(),  # a str: a trailing / means a folder
        help="Folder (OUT/COMMAND.json and plots) or prefix (OUT.json, OUT_PLOT.png).",
    ),
    click.option(
        "--method", type=click.Choice(ALL_METHODS),
        help="CAM method or pixel baseline, as in geocam explain [default: the config's].",
    ),
    click.option("--layer", help="Target layer [default: the config's, else the encoder's last]."),
    click.option(
        "--region", default="predicted", show_default=True,
        help="The explained region, as in geocam explain: predicted | all | mask:PATH | "
        "vector:PATH[:LAYER] | bbox:MINX,MINY,MAXX,MAXY[,CRS]",
    ),
    click.option("--where", help="FIELD=VALUE filter for a vector --region."),
    click.option(
        "--weights", type=click.Choice(["scene", "tile"]), default="scene", show_default=True,
        help="Channel weights of the whole scene, or of each tile.",
    ),
    click.option(
        "--score", type=click.Choice(["logits", "probabilities"]), default="logits",
        show_default=True,
    ),
    click.option(
        "--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="Probability above which a pixel is in the predicted region, as in geocam explain.",
    ),
    click.option("--tile", type=int, help="Tile side in pixels [default: the config's]."),
    click.option("--overlap", type=int, help="Tile overlap in pixels [default: the config's]."),
    click.option("--batch-size", type=int, default=4, show_default=True),
    click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N] | mps"),
    click.option(
        "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
        show_default=True,
    ),
    click.option("--nodata", type=float, help="Input nodata value, overriding the files' own."),
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar, no table."),
]  # fmt: skip


def scene_options(command: F) -> F:
    """Add the options every ``evaluate`` command shares (those of ``geocam explain``)."""
    for option in reversed(_SCENE_OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True)
class SceneOptions:
    """The shared options of an ``evaluate`` command, as given."""

    sources: tuple[str, ...]
    config: Path | None
    model_source: str | None
    class_name: str
    out: str
    method: str | None
    layer: str | None
    region: str
    where: str | None
    weights: str
    score: str
    threshold: float | None
    tile: int | None
    overlap: int | None
    batch_size: int
    device: str
    precision: str
    nodata: float | None
    overwrite: bool
    quiet: bool

    def inputs(self, *extra: tuple[str, Path]) -> list[tuple[str, Path]]:
        """The files the command reads, which its outputs must never replace."""
        found = [("source", Path(s)) for s in self.sources]
        found += [("config", self.config)] if self.config is not None else []
        if self.model_source is not None and Path(self.model_source).is_file():
            found.append(("model", Path(self.model_source)))
        if self.region.startswith(("mask:", "vector:")):
            found.append(("region", Path(self.region.partition(":")[2].partition(":")[0])))
        return found + list(extra)

    def settings(self, run: SceneRun | None = None) -> dict[str, Any]:
        """The options as recorded in a report (not where it goes, nor how it runs).

        With ``run``, the defaults it resolved (the preset's method, tile and overlap).
        """
        skip = {"out", "overwrite", "quiet", "device", "batch_size"}
        found = {k: v for k, v in asdict(self).items() if k not in skip}
        if run is not None:
            found |= {
                "method": run.explanation.method,
                "tile": run.tiling.tile,
                "overlap": run.tiling.overlap,
                "preset": run.preset.name,
                "checkpoint": str(run.preset.spec.checkpoint or "") or None,
            }
        return found


@dataclass(frozen=True)
class SceneRun:
    """What an ``evaluate`` command explains: preset, network, scene and the engine's options."""

    preset: Preset
    model: nn.Module
    scene: Scene
    explanation: Explanation
    tiling: Tiling
    runtime: Runtime


def open_run(options: SceneOptions) -> SceneRun:
    """Open the preset, the network and the scene; check the class and region options first."""
    from geocam.config import open_preset
    from geocam.errors import GeocamError
    from geocam.evaluation.scene import load_scene
    from geocam.models import build_model
    from geocam.scene import Explanation, Runtime, Tiling

    if options.where is not None and not options.region.startswith("vector:"):
        raise GeocamError(
            f"--where {options.where}: filters a vector region; add --region vector:PATH"
        )
    preset, source = open_preset(options.config, options.model_source)
    preset.spec.class_index(options.class_name)  # an unknown class: one line, before any work
    scene = load_scene(options.sources, preset.spec, options.nodata, preset.nodata)
    model = source.model if source is not None else build_model(preset.spec)
    explanation = Explanation(
        classes=(options.class_name,),
        method=(options.method or preset.method),  # type: ignore[arg-type]
        layer=options.layer,
        region=options.region,
        where=options.where,
        weights=options.weights,  # type: ignore[arg-type]
        score=options.score,  # type: ignore[arg-type]
        threshold=options.threshold,
    )
    tiling = Tiling(
        tile=preset.tile if options.tile is None else options.tile,
        overlap=preset.overlap if options.overlap is None else options.overlap,
        batch_size=options.batch_size,
    )
    runtime = Runtime(
        device=options.device,
        precision=options.precision,  # type: ignore[arg-type]
        progress=False if options.quiet else None,
    )
    return SceneRun(preset, model.eval(), scene, explanation, tiling, runtime)


def show(options: SceneOptions, lines: Sequence[str], paths: Mapping[str, Path]) -> None:
    """A command's table and the files it wrote, unless ``--quiet``."""
    if not options.quiet:
        click.echo("\n".join([*lines, *(f"{name}: {path}" for name, path in paths.items())]))


@click.group()
def evaluate() -> None:
    """Can the map be trusted? Evaluate a class's map of a scene; write a JSON report and plots."""


@evaluate.command()
@scene_options
@click.option(
    "--annotation", required=True,
    help="Where the class truly is: mask:PATH (a raster, any CRS), vector:PATH[:LAYER] "
    "(polygons, any CRS; outside them is not the class) or bbox:MINX,MINY,MAXX,MAXY[,CRS].",
)  # fmt: skip
@click.option("--annotation-value", type=float, help="The class's value in a mask annotation.")
@click.option("--annotation-where", help="FIELD=VALUE: the class's polygons, e.g. name=tree.")
@click.option(
    "--tolerance-m", type=click.FloatRange(min=0), default=0.0, show_default=True,
    help="Pointing game: the map's maximum hits when within this many metres of the annotation.",
)  # fmt: skip
def localisation(
    annotation: str,
    annotation_value: float | None,
    annotation_where: str | None,
    tolerance_m: float,
    **common: Any,
) -> None:
    """Localise the class's map in an annotation, each figure with its chance level and lift."""
    from geocam.evaluation import report
    from geocam.evaluation.annotation import read_annotation
    from geocam.evaluation.localisation import scene_localisation
    from geocam.output import Destination

    options = SceneOptions(**common)
    paths = report.report_paths(options.out, "localisation", ("map", "roc"))
    kind, _, rest = annotation.partition(":")
    file = {"mask": rest, "vector": rest.partition(":")[0]}.get(kind)
    files = [("annotation", Path(file))] if file else []
    with Destination(paths, inputs=options.inputs(*files), overwrite=options.overwrite) as out:
        run = open_run(options)
        truth = read_annotation(
            annotation, run.scene.grid, value=annotation_value, where=annotation_where,
            scene_valid=run.scene.valid,
        )  # fmt: skip
        found, maps, engine = scene_localisation(
            run.model, run.preset.spec, run.scene, run.explanation, truth,
            tolerance_m=tolerance_m, tiling=run.tiling, runtime=run.runtime,
        )  # fmt: skip
        settings = options.settings(run) | {
            "annotation": annotation, "annotation_value": annotation_value,
            "annotation_where": annotation_where, "tolerance_m": tolerance_m,
        }  # fmt: skip
        title = f"{options.class_name}: {engine.layer} ({run.explanation.method}), {truth.name}"
        report.write_report(
            out, paths, report.localisation_report(found, truth, engine, run.scene.grid, settings),
            {"map": report.map_plot(maps[0], truth.inside, run.scene.valid & truth.valid, title),
             "roc": report.roc_plot(found, title)},
        )  # fmt: skip
    annotated = f"{found.annotated} of {found.pixels} valid pixels annotated ({truth.name})"
    show(options, [report.figures_table(found.figures), annotated], paths)


@evaluate.command()
@scene_options
@click.option(
    "--independent/--cascading-only", default=True, show_default=True,
    help="Also randomise each block alone (besides cascading from the output down).",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first block.")
def randomisation(independent: bool, seed: int, **common: Any) -> None:
    """Randomise the network block by block from the output: the map must change (Adebayo)."""
    from geocam.evaluation import report
    from geocam.evaluation.randomisation import (
        plot_randomisation,
        randomisation_check,
        scene_map_function,
    )  # fmt: skip
    from geocam.output import Destination

    options = SceneOptions(**common)
    paths = report.report_paths(options.out, "randomisation", ("curve",))
    with Destination(paths, inputs=options.inputs(), overwrite=options.overwrite) as out:
        run = open_run(options)
        maps = scene_map_function(
            run.model, run.preset.spec, run.scene, run.explanation,
            tiling=run.tiling, runtime=run.runtime,
        )  # fmt: skip
        found = randomisation_check(
            run.model, maps, independent=independent, seed=seed,
            label=f"{options.class_name} ({run.explanation.method})",
            progress=None if options.quiet else lambda step: click.echo(step, err=True),
        )  # fmt: skip
        settings = options.settings(run) | {"independent": independent, "seed": seed}
        record = report.command_report("randomisation", settings, run.scene.grid, None)
        curve = report.png_through(lambda path: plot_randomisation([found], path))
        report.write_report(out, paths, record | {"randomisation": found.to_dict()},
                            {"curve": curve})  # fmt: skip
    show(options, found.table(), paths)


@evaluate.command()
@scene_options
@click.option(
    "--baseline", type=click.Choice(["mean", "blur", "epoch", "road"]), default="mean",
    show_default=True, help="What a removed pixel becomes (epoch: the earlier raster's).",
)  # fmt: skip
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--seeds", type=click.IntRange(min=2), default=5, show_default=True,
    help="Random orders for the reference curves.",
)  # fmt: skip
@click.option("--sigma", type=float, default=10.0, show_default=True, help="Blur, in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def faithfulness(
    baseline: str, steps: int, seeds: int, sigma: float, seed: int, **common: Any
) -> None:
    """Deletion and insertion curves of the region score, against random orders."""
    from geocam.evaluation import report
    from geocam.evaluation.faithfulness import deletion_insertion, plot_curves
    from geocam.evaluation.scene import scene_maps
    from geocam.evaluation.scores import RegionScorer
    from geocam.output import Destination

    options = SceneOptions(**common)
    paths = report.report_paths(options.out, "faithfulness", ("curves",))
    with Destination(paths, inputs=options.inputs(), overwrite=options.overwrite) as out:
        run = open_run(options)
        spec = run.preset.spec
        heat, engine = scene_maps(
            run.model, spec, run.scene, run.explanation, tiling=run.tiling, runtime=run.runtime
        )
        scorer = RegionScorer(
            run.model, spec, run.scene, run.explanation, tiling=run.tiling, runtime=run.runtime
        )
        found = deletion_insertion(
            scorer, heat[0], baseline=baseline, steps=steps,  # type: ignore[arg-type]
            seeds=seeds, sigma=sigma, seed=seed,
        )  # fmt: skip
        settings = options.settings(run) | {
            "baseline": baseline, "steps": steps, "seeds": seeds, "sigma": sigma, "seed": seed,
        }  # fmt: skip
        record = report.command_report("faithfulness", settings, run.scene.grid, engine)
        curves = report.png_through(lambda path: plot_curves(found, path))
        report.write_report(out, paths, record | {"faithfulness": found.to_dict()},
                            {"curves": curves})  # fmt: skip
    show(options, found.table(), paths)


@evaluate.command()
@scene_options
@click.option(
    "--baseline", type=click.Choice(["mean", "blur", "epoch", "road"]), default="mean",
    show_default=True, help="What an occluded pixel becomes (epoch: the earlier raster's).",
)  # fmt: skip
@click.option(
    "--hotspot-threshold", default="p95", show_default=True,
    help="pNN (percentile of the positive map) or otsu, as geocam explain --hotspots.",
)  # fmt: skip
@click.option(
    "--patches", type=click.IntRange(min=1), default=8, show_default=True,
    help="Random patches of each hotspot's shape to compare its drop with.",
)  # fmt: skip
@click.option(
    "--shapley", "players", type=click.IntRange(0, 10), default=0, show_default=True,
    help="Also exact Shapley values of the K hottest hotspots (2^K scored scenes); 0: none.",
)  # fmt: skip
@click.option("--sigma", type=float, default=10.0, show_default=True, help="Blur, in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def hotspots(
    baseline: str, hotspot_threshold: str, patches: int, players: int, sigma: float, seed: int,
    **common: Any,
) -> None:  # fmt: skip
    """Occlude each hotspot and compare the region score's drop with random patches like it."""
    from geocam.evaluation import report
    from geocam.evaluation.hotspots import map_hotspots, occlude_hotspots, write_occlusion_fields
    from geocam.evaluation.scene import scene_maps
    from geocam.evaluation.scores import RegionScorer
    from geocam.evaluation.shapley import hotspot_shapley
    from geocam.output import Destination
    from geocam.products import threshold_percentile, write_hotspots_qml

    options = SceneOptions(**common)
    threshold_percentile(hotspot_threshold)  # a bad rule: one line before any work
    paths = report.report_paths(options.out, "hotspots", ("drops",))
    base = paths["report"].with_suffix("")
    paths["hotspots"] = base.with_name(f"{base.name}_hotspots.gpkg")
    paths["hotspots_qml"] = base.with_name(f"{base.name}_hotspots.qml")
    with Destination(paths, inputs=options.inputs(), overwrite=options.overwrite) as out:
        run = open_run(options)
        spec, scene = run.preset.spec, run.scene
        heat, engine = scene_maps(
            run.model, spec, scene, run.explanation, tiling=run.tiling, runtime=run.runtime
        )
        found = map_hotspots(
            heat[0, 0], scene, engine.stride, hotspot_threshold,
            spec.classes[spec.class_index(options.class_name)],
            out=paths["hotspots"], destination=out,
        )  # fmt: skip
        scorer = RegionScorer(
            run.model, spec, scene, run.explanation, tiling=run.tiling, runtime=run.runtime
        )
        kind: Any = baseline
        drops = occlude_hotspots(
            scorer, found, baseline=kind, patches=patches, seed=seed, sigma=sigma
        )
        write_occlusion_fields(paths["hotspots"], drops, destination=out)
        write_hotspots_qml(paths["hotspots_qml"], True, destination=out)
        values = hotspot_shapley(
            scorer, found, k=players, baseline=kind, sigma=sigma, seed=seed
        ) if players else None  # fmt: skip
        settings = options.settings(run) | {
            "baseline": baseline, "hotspot_threshold": hotspot_threshold, "patches": patches,
            "shapley": players, "sigma": sigma, "seed": seed,
        }  # fmt: skip
        record = report.command_report("hotspots", settings, scene.grid, engine) | {
            "counterfactual": drops.to_dict(),
            "shapley": values.to_dict() if values is not None else None,
        }
        report.write_report(out, paths, record, {"drops": report.hotspots_plot(drops, values)})
    show(options, drops.table() + (values.table() if values is not None else []), paths)
