"""``geocam batch``: the command line over :func:`geocam.batch.run.run_batch`.

Only click is imported here, so that ``geocam --help`` stays instant (no torch, no dask).
"""

from __future__ import annotations

from pathlib import Path

import click

from geocam.methods import ALL_METHODS

MODEL_HELP = (
    "The model: an ONNX file, an smp hub folder, a Lightning/TorchGeo checkpoint, "
    "torchvision:NAME or a state dict (with -c naming the network) [default: the preset's]."
)


def parse_resources(text: str | None) -> dict[str, float]:
    """``GPU=1,MEM=2`` as a mapping; one line for a malformed one."""
    from geocam.errors import GeocamError

    found: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, equals, amount = item.partition("=")
        try:
            found[name.strip()] = float(amount)
        except ValueError:
            found = {}
        if not equals or not name.strip() or not found:
            raise GeocamError(f"--resources {text}: expected NAME=AMOUNT[,NAME=AMOUNT...]")
    return found


@click.command()
@click.argument("scenes", nargs=-1, type=str)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="CSV or JSON-lines file of scenes: sources (';'-separated in CSV), and optional name, "
    "class, region, where.",
)
@click.option(
    "--out-dir",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of the outputs: OUT_DIR/NAME/NAME.tif and its products, and the summary.",
)
@click.option("--config", "-c", type=click.Path(path_type=Path), help="Model preset (YAML).")
@click.option("--model", "-m", "model_source", help=MODEL_HELP)
@click.option(
    "--class", "classes", multiple=True, help="Class to explain (a manifest row may name its own)."
)
@click.option("--region", default="predicted", show_default=True, help="As in geocam explain.")
@click.option("--where", help="FIELD=VALUE filter for a vector region.")
@click.option("--method", type=click.Choice(ALL_METHODS))
@click.option("--layer", help="Target layer [default: the config's].")
@click.option("--tile", type=int, help="Tile side in pixels [default: the config's].")
@click.option("--overlap", type=int, help="Tile overlap in pixels [default: the config's].")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N] | mps")
@click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True
)
@click.option("--weights", type=click.Choice(["scene", "tile"]), default="scene", show_default=True)
@click.option(
    "--resolution", type=click.Choice(["source", "native"]), default="source", show_default=True
)
@click.option(
    "--score", type=click.Choice(["logits", "probabilities"]), default="logits", show_default=True
)
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--nodata", type=float, help="Input nodata value, overriding the files' own.")
@click.option("--probabilities", is_flag=True, help="Also write the class probabilities.")
@click.option("--class-map", is_flag=True, help="Also write the predicted class map.")
@click.option("--cog", is_flag=True, help="Write Cloud-Optimized GeoTIFFs.")
@click.option("--qml/--no-qml", default=True, show_default=True, help="QGIS style files.")
@click.option("--overlay", is_flag=True, help="Also write RGBA overlays.")
@click.option("--quicklook", is_flag=True, help="Also write PNG quicklooks.")
@click.option("--hotspots", is_flag=True, help="Also write hotspot polygons.")
@click.option("--qgis-project", is_flag=True, help="Also write a QGIS project per scene.")
@click.option(
    "--hotspot-format", type=click.Choice(["gpkg", "geojson"]), default="gpkg", show_default=True
)
@click.option("--hotspot-threshold", default="p95", show_default=True)
@click.option("--force", is_flag=True, help="Redo scenes whose outputs are up to date.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Run on a local Dask cluster of N worker processes (needs geocam[dask]).",
)
@click.option(
    "--scheduler",
    help="Run on an existing Dask cluster: its scheduler's address, or the JSON file of "
    "`dask scheduler --scheduler-file`.",
)
@click.option(
    "--resources",
    help="Dask resources each scene needs, e.g. GPU=1 [default: GPU=1 with --device cuda].",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Dask retries."
)
@click.option(
    "--summary",
    type=click.Path(path_type=Path),
    help="Where to write the JSON summary [default: OUT_DIR/geocam_batch.json].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary lines.")
@click.option("--verbose", "-v", is_flag=True, help="Progress bar even when not on a terminal.")
def batch(scenes: tuple[str, ...], manifest: Path | None, out_dir: Path, config: Path | None,
          model_source: str | None, classes: tuple[str, ...], region: str, where: str | None,
          method: str | None, layer: str | None, tile: int | None, overlap: int | None,
          batch_size: int, device: str, precision: str, weights: str, resolution: str,
          score: str, threshold: float | None, nodata: float | None, probabilities: bool,
          class_map: bool, cog: bool, qml: bool, overlay: bool, quicklook: bool,
          hotspots: bool, qgis_project: bool, hotspot_format: str, hotspot_threshold: str,
          force: bool,
          workers: int | None, scheduler: str | None, resources: str | None, retries: int,
          summary: Path | None, quiet: bool, verbose: bool) -> None:  # fmt: skip
    """Explain many SCENES (paths or globs, or --manifest) into OUT_DIR; skip the up-to-date.

    Each scene's outputs go to OUT_DIR/NAME/NAME.tif (NAME: the file's stem or the manifest's
    name); a scene whose outputs record the same inputs and settings is skipped. One bad scene
    never stops the others: the summary names it and why, and the exit code is 1.
    """
    import contextlib

    from geocam.batch.manifest import read_manifest, scenes_from_arguments
    from geocam.batch.run import Executor, InProcess, ModelConfig, local_threads, run_batch
    from geocam.errors import GeocamError
    from geocam.job import Job

    if workers is not None and scheduler is not None:
        raise GeocamError("--workers starts a local cluster, --scheduler uses one: give one")
    found = scenes_from_arguments(scenes)
    if manifest is not None:
        found += read_manifest(manifest)
    if not found:
        raise GeocamError("no scenes: give paths, a glob or --manifest")
    if not classes and any(not scene.classes for scene in found):
        raise GeocamError("--class is required unless every manifest row names its class")
    needs = parse_resources(resources)
    if not needs and device.startswith("cuda") and (workers or scheduler):
        needs = {"GPU": 1.0}
    threads = local_threads(workers) if workers else None
    model = ModelConfig(
        str(config.absolute()) if config is not None else None, model_source, threads
    )
    template = Job(
        sources=(), out=Path(), classes=classes, region=region, where=where, method=method,
        layer=layer, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
        precision=precision, weights=weights, resolution=resolution, score=score,
        threshold=threshold, nodata=nodata, probabilities=probabilities, class_map=class_map,
        cog=cog, qml=qml, overlay=overlay, quicklook=quicklook, hotspots=hotspots,
        qgis_project=qgis_project,
        hotspot_format=hotspot_format, hotspot_threshold=hotspot_threshold,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        executor: Executor = InProcess()
        if workers or scheduler:
            try:
                from geocam.batch.dask import dask_executor
            except ImportError:
                raise GeocamError(
                    "--workers and --scheduler need Dask: pip install 'geocam[dask]'"
                ) from None
            cluster = dask_executor(
                workers=workers, scheduler=scheduler, resources=needs, retries=retries
            )
            executor = stack.enter_context(cluster)
        report = run_batch(
            found, template, model, out_dir, force=force, executor=executor,
            summary=summary, progress=False if quiet else (True if verbose else None),
        )  # fmt: skip
    counts = report.counts()
    if not quiet:
        for scene in report.failed:
            click.echo(f"failed: {scene.name}: {scene.error}", err=True)
        click.echo(
            f"{counts['done']} done, {counts['skipped']} skipped (up to date), "
            f"{counts['failed']} failed, {report.seconds:.1f} s; summary: {report.path}"
        )
    if counts["failed"]:
        click.get_current_context().exit(1)
