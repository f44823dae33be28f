"""The command line: a few lines of option parsing over each public function.

``geocam explain``, ``geocam layers``, ``geocam info`` and ``geocam models``; the same group is
the ``rio geocam`` plugin. torch is imported inside the commands, so ``--help`` is instant.
A user mistake prints one line and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from geocam.methods import ALL_METHODS

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in geocam, not the user's mistake
NO_ARGS_IS_HELP: type[click.UsageError] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("NoArgsIsHelpError", (click.UsageError,), {})
)  # click >= 8.2 raises it for a group called without a command


class GeocamGroup(click.Group):
    """A group that turns :class:`GeocamError` into one line on stderr and a non-zero exit.

    Click's own usage errors (a missing option, a bad value) get one line too, with a pointer
    to the command's ``--help``, instead of the usage text.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the group; in standalone mode print usage errors on one line and exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NO_ARGS_IS_HELP as error:  # ``geocam`` alone: the help, as click shows it
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:
            message = error.format_message().rstrip(".")
            if error.ctx:  # after "Did you mean 'explain'?" a semicolon reads badly
                help_hint = f"{error.ctx.command_path} --help"
                message += f" (see {help_hint})" if message.endswith("?") else f"; see {help_hint}"
            click.echo(f"geocam: error: {message}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"geocam: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("geocam: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report user mistakes without a traceback unless ``--debug``."""
        from geocam.errors import GeocamError, quiet_gdal

        quiet_gdal(not ctx.params.get("debug"))  # GDAL's messages reach the user in one line
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except GeocamError as error:
            if ctx.params.get("debug"):
                raise
            click.echo(f"geocam: error: {as_flags(str(error))}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo(
                "geocam: interrupted; nothing was written at the destination (explain keeps its "
                "progress in OUT.resume: rerun with --resume to continue)",
                err=True,
            )
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # a last resort: one line, the traceback with --debug
            if ctx.params.get("debug"):
                raise
            from geocam.errors import first_line, gdal_reason

            click.echo(
                f"geocam: error: {type(error).__name__}: {gdal_reason(first_line(error))} "
                "(unexpected; rerun with --debug for the traceback and report it)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL_ERROR)


LIBRARY_NAMES = {
    "Tiling.tile": "--tile",
    "Tiling.overlap": "--overlap",
    "Tiling.batch_size": "--batch-size",
    "Explanation.classes": "--class",
    "Explanation.threshold": "--threshold",
    "Runtime.precision ": "--precision ",
    "Products.resolution": "--resolution",
    "OcclusionOptions.patch": "--occlusion-patch",
    "OcclusionOptions.stride": "--occlusion-stride",
    "OcclusionOptions.baseline": "--occlusion-baseline",
    "OcclusionOptions.max_seconds": "--occlusion-max-seconds",
    "OcclusionOptions.force": "--occlusion-force",
}
"""Parameters that library messages name, and the flags that set them on the command line."""


def as_flags(message: str) -> str:
    """A library message in command-line terms: ``Tiling.overlap`` becomes ``--overlap``."""
    for name, flag in LIBRARY_NAMES.items():
        message = message.replace(name, flag)
    return message


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Warnings on one line: geocam's own as ``geocam: warning: ...``."""
    from geocam.errors import GeocamWarning

    prefix = "geocam: warning" if issubclass(category, GeocamWarning) else category.__name__
    click.echo(f"{prefix}: {as_flags(str(message))}", err=True)


@click.group(
    name="geocam", cls=GeocamGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="geocam")
def cli(debug: bool) -> None:
    """Explain segmentation networks on GeoTIFF scenes with Grad-CAM."""


MODEL_HELP = (
    "The model: an ONNX file, an smp hub folder, a Lightning/TorchGeo checkpoint, "
    "torchvision:NAME or a state dict (with -c naming the network) [default: the preset's]."
)


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())  # /vsizip//... kept
@click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path),
    help="Model preset (YAML) [optional when -m defines the network].",
)
@click.option("--model", "-m", "model_source", help=MODEL_HELP)
@click.option(
    "--class",
    "classes",
    multiple=True,
    required=True,
    help="Class name or index to explain; repeat for several.",
)
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="Heatmap GeoTIFF to write."
)
@click.option(
    "--region",
    default="predicted",
    show_default=True,
    help="predicted | all | mask:PATH | vector:PATH[:LAYER] | bbox:MINX,MINY,MAXX,MAXY[,CRS]",
)
@click.option("--where", help="FIELD=VALUE filter for a vector region.")
@click.option(
    "--method",
    type=click.Choice(ALL_METHODS),
    help="CAM method, or a pixel baseline (saliency ... occlusion) [default: the config's].",
)
@click.option(
    "--layer", help="Target layer [default: the config's, else the encoder's last stage]."
)
@click.option("--tile", type=int, help="Tile side in pixels [default: the config's, else 512].")
@click.option(
    "--overlap", type=int, help="Tile overlap in pixels [default: the config's, else 128]."
)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N] | mps")
@click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True
)
@click.option(
    "--weights",
    type=click.Choice(["scene", "tile"]),
    default="scene",
    show_default=True,
    help="Channel weights of the whole scene, or of each tile.",
)
@click.option(
    "--resolution",
    type=click.Choice(["source", "native"]),
    default="source",
    show_default=True,
    help="The source's grid, or the feature map's.",
)
@click.option(
    "--score", type=click.Choice(["logits", "probabilities"]), default="logits", show_default=True
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Probability above which a pixel is in the predicted region (and, for a one-channel "
    "network, in its class map) [default: 0.5 for one channel, else the most probable class].",
)
@click.option(
    "--nodata",
    type=float,
    help="Input nodata value, overriding the files' own [default: the files' nodata, mask or "
    "alpha; for files that declare none, the config's].",
)
@click.option(
    "--occlusion-patch",
    type=click.IntRange(1),
    help="Occlusion: patch side in pixels [default: the layer's stride].",
)
@click.option(
    "--occlusion-stride",
    type=click.IntRange(1),
    help="Occlusion: step between patches in pixels [default: the patch].",
)
@click.option(
    "--occlusion-baseline",
    type=click.Choice(["mean", "blur"]),
    default="mean",
    show_default=True,
    help="Occlusion: what hides a patch (each band's mean, or the tile blurred).",
)
@click.option(
    "--occlusion-max-seconds",
    type=float,
    default=300.0,
    show_default=True,
    help="Occlusion: refuse a run estimated to take longer (estimated from one timed batch).",
)
@click.option("--occlusion-force", is_flag=True, help="Occlusion: run whatever the estimate.")
@click.option("--probabilities", is_flag=True, help="Also write the class probabilities.")
@click.option("--class-map", is_flag=True, help="Also write the predicted class map.")
@click.option("--cog", is_flag=True, help="Write Cloud-Optimized GeoTIFFs.")
@click.option(
    "--qml/--no-qml",
    default=True,
    show_default=True,
    help="QGIS style beside the heatmap (applied by QGIS on load).",
)
@click.option("--overlay", is_flag=True, help="Also write an RGBA overlay GeoTIFF.")
@click.option("--quicklook", is_flag=True, help="Also write a PNG quicklook.")
@click.option("--hotspots", is_flag=True, help="Also write hotspot polygons.")
@click.option(
    "--qgis-project",
    is_flag=True,
    help="Also write a QGIS project (OUT.qgz): source image, styled heatmaps, hotspots, class "
    "map and region outline.",
)
@click.option(
    "--hotspot-format", type=click.Choice(["gpkg", "geojson"]), default="gpkg", show_default=True
)
@click.option(
    "--hotspot-threshold",
    default="p95",
    show_default=True,
    help="pNN (percentile of the positive map) or otsu.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run that was killed or interrupted, from OUT.resume (same settings).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Split the scene's tile rows across a local Dask cluster of N worker processes.",
)
@click.option("--scheduler", help="Split the scene across an existing Dask cluster (its address).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.option("--verbose", "-v", is_flag=True, help="Progress bar even when not on a terminal.")
@click.option(
    "--progress",
    "progress_format",
    type=click.Choice(["bar", "json"]),
    default="bar",
    show_default=True,
    help="json: instead of the bar, one line per tile on stderr, e.g. "
    '{"pass": 1, "passes": 2, "done": 3, "total": 8} (tiles of that pass).',
)
def explain(sources: tuple[str, ...], config: Path | None, model_source: str | None,
            classes: tuple[str, ...], out: Path,
            region: str, where: str | None, method: str | None, layer: str | None,
            tile: int | None, overlap: int | None, batch_size: int, device: str,
            precision: str, weights: str, resolution: str, score: str,
            threshold: float | None, nodata: float | None,
            occlusion_patch: int | None, occlusion_stride: int | None,
            occlusion_baseline: str, occlusion_max_seconds: float, occlusion_force: bool,
            probabilities: bool, class_map: bool, cog: bool, qml: bool, overlay: bool,
            quicklook: bool, hotspots: bool, qgis_project: bool, hotspot_format: str,
            hotspot_threshold: str,
            overwrite: bool, resume: bool, workers: int | None, scheduler: str | None,
            quiet: bool, verbose: bool, progress_format: str) -> None:  # fmt: skip
    """Explain CLASS over REGION in the scene SOURCES (stacked) and write georeferenced heatmaps."""
    from geocam.config import open_preset
    from geocam.errors import GeocamError
    from geocam.job import Job, plan_job, run_job

    if out.is_dir():
        raise GeocamError(f"--out {out} is a folder; give a file name, e.g. {out / 'heatmap.tif'}")
    out = out if out.suffix else out.with_suffix(".tif")  # where the heatmap goes
    preset, model = open_preset(config, model_source)
    extra = [("config", config)] if config is not None else []
    extra += [("model", Path(m.location)) for m in [model] if m and Path(m.location).is_file()]
    job = Job(
        sources=tuple(sources), out=out, classes=classes, region=region, where=where,
        method=method, layer=layer, tile=tile, overlap=overlap, batch_size=batch_size,
        device=device, precision=precision, weights=weights, resolution=resolution,
        score=score, threshold=threshold, nodata=nodata, occlusion_patch=occlusion_patch,
        occlusion_stride=occlusion_stride, occlusion_baseline=occlusion_baseline,
        occlusion_max_seconds=occlusion_max_seconds, occlusion_force=occlusion_force,
        probabilities=probabilities,
        class_map=class_map, cog=cog, qml=qml, overlay=overlay, quicklook=quicklook,
        hotspots=hotspots, qgis_project=qgis_project, hotspot_format=hotspot_format,
        hotspot_threshold=hotspot_threshold, overwrite=overwrite, resume=resume,
        progress=False if quiet else (True if verbose else None), extra_inputs=tuple(extra),
    )  # fmt: skip
    hook = None
    if progress_format == "json":
        hook = json_progress(plan_job(job, preset).explanation.passes)
    weights_file = preset.spec.checkpoint is not None or model is not None
    with split_across(workers, scheduler, resume, config, model_source, weights_file) as split:
        report = run_job(
            job,
            preset,
            model=model.model if model is not None else None,
            provenance=model.tags() if model is not None else None,
            progress=hook,
            split=split,
        )
    if not quiet:
        for name, path in report.outputs.items():
            click.echo(f"{name}: {path}")
        pixels = ", ".join(f"{k} {v:.0f} px" for k, v in report.region_pixels.items())
        click.echo(
            f"layer {report.layer} (stride {report.stride}), {report.tiles} tiles "
            f"({report.skipped} nodata), {report.passes} pass(es), batch {report.batch_size}, "
            f"{report.seconds:.1f} s; region: {pixels}"
        )
        if report.resumed_from_row:
            click.echo(f"resumed: rows above {report.resumed_from_row} came from the earlier run")


@contextlib.contextmanager
def split_across(
    workers: int | None,
    scheduler: str | None,
    resume: bool,
    config: Path | None,
    model_source: str | None,
    weights_file: bool,
) -> Iterator[tuple[Any, Any] | None]:
    """The Dask client and model config of ``--workers``/``--scheduler`` (None: this process).

    Workers load the model from the preset once per process when its weights come from a file;
    a network built with random weights (no checkpoint) is sent to them instead.
    """
    from geocam.errors import GeocamError

    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise GeocamError("--workers starts a local cluster, --scheduler uses one: give one")
    from geocam.scene.distributed import check_split

    check_split(resume)
    try:
        from geocam.batch.dask import dask_executor
    except ImportError:
        raise GeocamError(
            "--workers and --scheduler need Dask: pip install 'geocam[dask]'"
        ) from None
    from geocam.batch.run import ModelConfig, local_threads

    threads = local_threads(workers) if workers else None
    path = str(config.absolute()) if config is not None else None
    with dask_executor(workers=workers, scheduler=scheduler) as executor:
        yield executor.client, ModelConfig(path, model_source, threads) if weights_file else None


def json_progress(passes: int) -> Callable[[int, int], None]:
    """A progress callback printing one JSON line per tile: pass, tiles done of that pass."""
    import json

    def report(done: int, total: int) -> None:
        per = max(total // max(passes, 1), 1)
        index = min(done // per + (done % per > 0), passes) if done else 1
        line = {"pass": index, "passes": passes, "done": done - (index - 1) * per, "total": per}
        click.echo(json.dumps(line), err=True)

    return report


@cli.command()
@click.option("--json", "as_json", is_flag=True, required=True, help="Describe as JSON.")
def describe(as_json: bool) -> None:
    """Describe geocam's commands and their parameters (for GUIs such as the QGIS provider)."""
    import json

    from geocam.describe import describe_cli

    click.echo(json.dumps(describe_cli(cli), indent=1))


@cli.group()
def qgis() -> None:
    """QGIS integration: the Processing provider that runs geocam from inside QGIS."""


@qgis.command("install")
@click.option(
    "--profile",
    type=click.Path(path_type=Path),
    help="QGIS profile folder [default: ~/.local/share/QGIS/QGIS3/profiles/default].",
)
@click.option(
    "--executable", help="The geocam executable QGIS runs [default: this one, found on PATH]."
)
def qgis_install(profile: Path | None, executable: str | None) -> None:
    """Install the geocam Processing provider into a QGIS profile and enable it."""
    from geocam.qgis_install import install

    plugin = install(profile, executable, cli)
    click.echo(f"installed: {plugin} (restart QGIS; Processing Toolbox > geocam)")


@cli.command()
@click.option("--config", "-c", type=click.Path(path_type=Path), help="Model preset (YAML).")
@click.option("--model", "-m", "model_source", help=MODEL_HELP)
@click.option("--all", "show_all", is_flag=True, help="Also list converted graphs' helpers.")
def layers(config: Path | None, model_source: str | None, show_all: bool) -> None:
    """List candidate target layers: name, type, layout, channels, stride."""
    from geocam.config import open_preset
    from geocam.layers import default_layer, fixed_tile, list_layers
    from geocam.models import build_model

    preset, source = open_preset(config, model_source)
    model = source.model if source is not None else build_model(preset.spec)
    default = preset.spec.layer or default_layer(model, preset.spec.in_channels)
    click.echo(f"{'layer':<48} {'type':<20} {'layout':<10} {'channels':>8} {'stride':>6}")
    for info in list_layers(model, preset.spec.in_channels):
        if info.calls == 1 and (show_all or not info.helper):
            mark = "  <- default" if info.name == default else ""
            stride = f"{info.stride:g}"
            click.echo(
                f"{info.name:<48} {info.kind:<20} {info.layout:<10} {info.channels:>8} "
                f"{stride:>6}{mark}"
            )
    fixed = fixed_tile(model)
    if fixed is not None:  # explain would fail at any other size: say so now
        click.echo(f"this network takes {fixed} x {fixed} tiles: use --tile {fixed}")


@cli.command()
@click.option("--model", "-m", "model_source", required=True, help=MODEL_HELP)
@click.option(
    "--sidecar",
    type=click.Path(path_type=Path),
    help="JSON with mean/std, classes, bands (e.g. ukis-csmask's).",
)
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="Preset to write."
)
@click.option("--verify", is_flag=True, help="ONNX: print the max difference to onnxruntime.")
@click.option("--overwrite", is_flag=True, help="Replace an existing preset.")
def init(model_source: str, sidecar: Path | None, out: Path, verify: bool, overwrite: bool) -> None:
    """Write a starter preset for a model: what it knows filled in, the rest marked FILL IN."""
    from geocam.config import starter_preset
    from geocam.errors import GeocamError
    from geocam.models import open_model

    if out.exists() and not overwrite:
        raise GeocamError(f"--out {out} exists; pass --overwrite to replace it")
    source = open_model(model_source)
    text = starter_preset(source, sidecar, out)
    if verify:
        from geocam.models.onnx import verify_onnx

        click.echo(verify_onnx(source))
    out.write_text(text, encoding="utf-8")
    click.echo(f"preset: {out} (edit the lines marked FILL IN)")


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
def info(output: Path) -> None:
    """Say what a geocam output holds: classes, method, layer, region, statistics."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from geocam.errors import GeocamError

    try:
        with rasterio.open(output) as dataset:
            tags = dataset.tags()
            bands = [(d, dataset.tags(i)) for i, d in enumerate(dataset.descriptions, start=1)]
            size = f"{dataset.width} x {dataset.height}, {dataset.count} band(s), {dataset.crs}"
    except RasterioIOError:
        raise GeocamError(f"{output}: not a readable raster") from None
    if "GEOCAM_METHOD" not in tags:
        raise GeocamError(f"{output}: not a geocam output (no GEOCAM_* tags)")
    click.echo(f"{output}: {size}")
    for key in sorted(k for k in tags if k.startswith("GEOCAM_")):
        click.echo(f"  {key.removeprefix('GEOCAM_').lower()}: {tags[key]}")
    for description, band_tags in bands:
        stats = {k: v for k, v in band_tags.items() if k.startswith(("STATISTICS_", "GEOCAM_P"))}
        summary = ", ".join(f"{k.split('_')[-1].lower()} {float(v):.4g}" for k, v in stats.items())
        click.echo(f"  band {description}: {summary}")


@cli.command()
def models() -> None:
    """List the registered model factories (smp and plugins in the geocam.models group)."""
    from geocam.models import model_factories

    for name, factory in sorted(model_factories().items()):
        click.echo(f"{name:<12} {factory.__module__}.{factory.__qualname__}")


def _add_batch() -> None:
    from geocam.batch.command import batch  # click only: --help stays instant

    cli.add_command(batch)


_add_batch()


def _add_evaluate() -> None:
    from geocam.evaluation.command import evaluate  # click only: --help stays instant

    cli.add_command(evaluate)


_add_evaluate()


def main() -> None:
    """Entry point of the ``geocam`` command; SIGTERM stops it like Ctrl-C (resumable)."""
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    cli(prog_name="geocam")


if __name__ == "__main__":
    main()
