"""One scene explained into every product the command line offers, as one library call.

``geocam explain`` and ``geocam batch`` (each scene, in the process or on a Dask worker) both
describe a run as a :class:`Job` and hand it to :func:`run_job`: the same checks, the same
files, committed together (:class:`geocam.output.Destination`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from geocam.config import Preset
    from geocam.products import GisOptions
    from geocam.scene import Explanation, Products, SceneReport

FINGERPRINT_TAG = "GEOCAM_JOB_FINGERPRINT"
"""The tag, in every output of a job run with a fingerprint, that identifies its inputs."""


@dataclass(frozen=True)
class Job:
    """What to explain and which files to write: the options of ``geocam explain``.

    ``tile`` and ``overlap`` of ``None`` take the preset's; ``progress`` is
    :attr:`geocam.scene.Runtime.progress`.
    """

    sources: tuple[str, ...]
    out: Path
    classes: tuple[str, ...]
    region: str = "predicted"
    where: str | None = None
    method: str | None = None
    layer: str | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    device: str = "auto"
    precision: str = "fp32"
    weights: str = "scene"
    resolution: str = "source"
    score: str = "logits"
    threshold: float | None = None
    nodata: float | None = None
    occlusion_patch: int | None = None
    occlusion_stride: int | None = None
    occlusion_baseline: str = "mean"
    occlusion_max_seconds: float = 300.0
    occlusion_force: bool = False
    probabilities: bool = False
    class_map: bool = False
    cog: bool = False
    qml: bool = True
    overlay: bool = False
    quicklook: bool = False
    hotspots: bool = False
    qgis_project: bool = False
    hotspot_format: str = "gpkg"
    hotspot_threshold: str = "p95"
    overwrite: bool = False
    resume: bool = False
    progress: bool | None = None
    extra_inputs: tuple[tuple[str, Path], ...] = field(default=())
    """Further files the run reads (the preset, the model file): never written over."""

    def settings(self) -> dict[str, Any]:
        """The options that shape the outputs' content (not where they go, nor how run)."""
        skip = {"out", "overwrite", "resume", "progress", "device", "batch_size", "extra_inputs",
                "occlusion_max_seconds", "occlusion_force"}  # fmt: skip
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class Plan:
    """A job resolved against its preset: the library's options and every output path."""

    explanation: Explanation
    products: Products
    gis: GisOptions
    outputs: dict[str, Path]
    source: str | Path
    rgb: tuple[int, ...]


def plan_job(job: Job, preset: Preset) -> Plan:
    """Check ``job`` against ``preset`` (one line per mistake) and name every output."""
    from geocam.attribution import OcclusionOptions
    from geocam.errors import GeocamError
    from geocam.products import GisOptions, composite_source, gis_paths, threshold_percentile
    from geocam.raster import product_paths
    from geocam.scene import Explanation, Products

    if job.where is not None and not job.region.startswith("vector:"):
        raise GeocamError(f"--where {job.where}: filters a vector region; add --region vector:PATH")
    unique = tuple(dict.fromkeys(job.classes))
    if len(unique) != len(job.classes):
        raise GeocamError("--class: a class is named twice; name each class once")
    if job.hotspots:
        threshold_percentile(job.hotspot_threshold)  # a bad rule fails now, not after the run
    source: str | Path = job.sources[0]
    rgb = tuple(preset.rgb or (1, 2, 3))
    composite = job.quicklook or job.qgis_project  # they show the scene under the heat
    if composite:  # checked before the run; without bands: every band
        every = (tuple(range(1, preset.spec.in_channels + 1)),)
        source, rgb = composite_source(list(job.sources), preset.spec.bands or every, rgb)
    class_map = job.class_map or (composite and job.region == "predicted")  # the outline
    gis = GisOptions(
        qml=job.qml, overlay=job.overlay, quicklook=job.quicklook, hotspots=job.hotspots,
        hotspot_threshold=job.hotspot_threshold, hotspot_format=job.hotspot_format,
        classes=tuple(preset.spec.classes[preset.spec.class_index(c)] for c in unique),
        probabilities=job.probabilities, class_map=class_map, cog=job.cog,
        qgis_project=job.qgis_project,
    )  # fmt: skip
    explanation = Explanation(
        classes=job.classes,
        method=job.method or preset.method,  # type: ignore[arg-type]
        layer=job.layer,
        region=job.region,
        where=job.where,
        weights=job.weights,  # type: ignore[arg-type]
        score=job.score,  # type: ignore[arg-type]
        threshold=job.threshold,
        occlusion=OcclusionOptions(
            job.occlusion_patch, job.occlusion_stride, job.occlusion_baseline,  # type: ignore[arg-type]
            job.occlusion_max_seconds, job.occlusion_force,
        ),
    )  # fmt: skip
    products = Products(
        resolution=job.resolution,  # type: ignore[arg-type]
        probabilities=job.probabilities,
        class_map=class_map,
        cog=job.cog,
        overwrite=job.overwrite,
    )
    outputs = product_paths(job.out, products) | gis_paths(job.out, gis)
    return Plan(explanation, products, gis, outputs, source, rgb)


def job_fingerprint(job: Job, preset: Preset, provenance: Mapping[str, str] | None) -> str:
    """A SHA-256 of what a job's outputs follow from.

    That is: the sources (path, size, time, sampled content), region files, settings, preset,
    model and checkpoint hashes, and geocam's version.
    """
    from geocam import __version__
    from geocam.journal import identities
    from geocam.models import file_sha256
    from geocam.raster import region_files

    spec = preset.spec
    record = {
        "sources": identities([Path(source) for source in job.sources]),
        "regions": identities(region_files(job.region)),
        "settings": job.settings(),
        "spec": repr(spec),
        "preset": {"tile": preset.tile, "overlap": preset.overlap, "nodata": preset.nodata},
        "checkpoint": file_sha256(spec.checkpoint) if spec.checkpoint is not None else None,
        "model": dict(provenance or {}),
        "version": __version__,
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_job(
    job: Job,
    preset: Preset,
    *,
    model: nn.Module | None = None,
    provenance: Mapping[str, str] | None = None,
    fingerprint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    sweep: bool = False,
    split: tuple[Any, Any] | None = None,
) -> SceneReport:
    """Explain ``job``'s scene and write every product, all committed together or none.

    ``model`` is the network to explain (built from the preset when ``None``); ``provenance``
    (a model source's tags) and ``fingerprint`` (:func:`job_fingerprint`, as the tag
    :data:`FINGERPRINT_TAG`) are recorded in every output; ``progress``, when given, is called
    with the tiles done and their total instead of ``job.progress``. The report's
    ``outputs`` name every file written. With ``sweep``, the scratch files that other runs of
    these outputs left (killed after their journal was gone: while the GIS products were made
    or the files renamed) are removed once this run holds the outputs' locks. ``split``, a
    Dask client and the :class:`~geocam.batch.run.ModelConfig` its workers load, splits the
    scene across the workers (:mod:`geocam.scene.distributed`).
    """
    from geocam.output import Destination
    from geocam.products import region_outline, write_gis_products
    from geocam.raster import explain_raster, run_inputs
    from geocam.scene import Runtime, Tiling, class_code

    plan = plan_job(job, preset)
    tags = dict(provenance or {})
    if fingerprint is not None:
        tags[FINGERPRINT_TAG] = fingerprint
    inputs = run_inputs(list(job.sources), preset.spec, plan.explanation) + list(job.extra_inputs)
    with Destination(plan.outputs, inputs=inputs, overwrite=job.overwrite) as destination:
        if sweep:  # the locks are ours: no live run writes these outputs' scratch files
            remove_stale_scratch(plan.outputs.values(), destination.run_id)
        report = explain_raster(
            list(job.sources),
            job.out,
            preset.spec,
            plan.explanation,
            tiling=Tiling(
                tile=preset.tile if job.tile is None else job.tile,
                overlap=preset.overlap if job.overlap is None else job.overlap,
                batch_size=job.batch_size,
            ),
            runtime=Runtime(
                device=job.device,
                precision=job.precision,  # type: ignore[arg-type]
                progress=job.progress if progress is None else progress,
            ),
            products=plan.products,
            nodata=job.nodata,
            fallback_nodata=preset.nodata,
            resume=job.resume,
            destination=destination,
            model=model,
            provenance=tags or None,
            client=None if split is None else split[0],
            model_config=None if split is None else split[1],
        )
        classes_map = report.outputs.get("classes")
        outline = region_outline(
            job.region,
            job.where,
            None if classes_map is None else destination.current(classes_map),
            class_code(preset.spec, preset.spec.class_index(job.classes[0])),
        )
        report.outputs |= write_gis_products(
            job.out, plan.source, plan.gis, rgb=plan.rgb, region=outline,
            overwrite=job.overwrite, destination=destination,
        )  # fmt: skip
        destination.commit()  # all or nothing: earlier results stay until every product is made
    return report


def remove_stale_scratch(outputs: Iterable[Path], run_id: str) -> list[Path]:
    """Delete the scratch files (``NAME.RUNID.partial``) of ``outputs`` not of run ``run_id``.

    Call it only while holding the outputs' locks (inside their :class:`Destination`).
    """
    import contextlib
    import re

    from geocam.journal import glob_escape
    from geocam.output import PARTIAL_SUFFIX

    removed = []
    for final in outputs:
        pattern = re.compile(re.escape(final.name) + r"\.([0-9a-f]{8})" + re.escape(PARTIAL_SUFFIX))
        for path in final.parent.glob(f"{glob_escape(final.name)}.*{PARTIAL_SUFFIX}*"):
            match = pattern.match(path.name)
            if match and match.group(1) != run_id and path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed
