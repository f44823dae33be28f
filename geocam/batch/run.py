"""Explain many scenes, each idempotently, and write a summary of what happened to each.

A scene's outputs go to ``OUT_DIR/NAME/NAME.tif`` (and its products beside it, named as
``geocam explain`` names them). Every output records the scene's fingerprint
(:func:`geocam.job.job_fingerprint`: its sources, settings, checkpoint and model hashes, geocam's
version) in the tag ``GEOCAM_JOB_FINGERPRINT``; a scene whose outputs all exist with the same
fingerprint is skipped, and any other is (re)done, its files replaced together or not at all.
A scene killed part way resumes from its journal (``NAME.tif.resume``) on the next run.

:func:`explain_one` is the unit of work, the same in this process and on a Dask worker: it
never raises for a bad scene, it returns a failed :class:`SceneResult` with one line saying why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from geocam.batch.manifest import Scene, check_unique
from geocam.errors import GeocamError, first_line, gdal_reason
from geocam.job import FINGERPRINT_TAG, Job, job_fingerprint, plan_job, run_job

if TYPE_CHECKING:
    from torch import nn

    from geocam.config import Preset

Status = Literal["done", "skipped", "failed", "pending"]
SUMMARY_NAME = "geocam_batch.json"
TileProgress = Callable[[str, int, int], None]
"""Called with a scene's name, its tiles done and their total (every pass's tiles); on a Dask
cluster from the client's event thread, as the workers report."""


@dataclass(frozen=True)
class ModelConfig:
    """How a process gets the model: the preset and model source of ``geocam explain``.

    Small and picklable: it is what a Dask task carries instead of the network.
    ``threads`` sets torch's threads in the process that loads it (``None``: torch's default).
    """

    config: str | None
    model_source: str | None = None
    threads: int | None = None

    def key(self) -> str:
        """A hash of the preset's text and the model source: one loaded model per key."""
        digest = hashlib.sha256()
        digest.update(repr((self.config, self.model_source)).encode())
        if self.config is not None and Path(self.config).is_file():
            digest.update(Path(self.config).read_bytes())
        return digest.hexdigest()[:16]


@dataclass
class Loaded:
    """A preset with its network built: what every scene of a batch is explained with."""

    preset: Preset
    model: nn.Module
    provenance: dict[str, str]
    extra_inputs: tuple[tuple[str, Path], ...]


_LOADED: dict[str, Loaded] = {}
LOADS: dict[str, int] = {}
"""How many times each model (by :meth:`ModelConfig.key`) was built in this process."""


def open_model(config: ModelConfig) -> tuple[Preset, dict[str, str], tuple[tuple[str, Path], ...]]:
    """The preset, the model's provenance tags and the files they come from (no network)."""
    from geocam.config import open_preset

    preset, source = open_preset(config.config, config.model_source)
    extra = [("config", Path(config.config))] if config.config is not None else []
    if source is not None and Path(source.location).is_file():
        extra.append(("model", Path(source.location)))
    return preset, source.tags() if source is not None else {}, tuple(extra)


def load(config: ModelConfig) -> Loaded:
    """The network of ``config``, built once per process (then cached by its key)."""
    key = config.key()
    if key not in _LOADED:
        from geocam.config import open_preset
        from geocam.models import build_model

        preset, source = open_preset(config.config, config.model_source)
        model = source.model if source is not None else build_model(preset.spec)
        _, provenance, extra = open_model(config)
        _LOADED[key] = Loaded(preset, model, provenance, extra)
        LOADS[key] = LOADS.get(key, 0) + 1
    return _LOADED[key]


@dataclass
class SceneResult:
    """What became of one scene: the summary's record of it."""

    name: str
    sources: list[str]
    status: Status = "pending"
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    tiles: int | None = None
    nodata_tiles: int | None = None
    region_pixels: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    worker: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Task:
    """One scene to explain: its job (every option, its output path) and its fingerprint."""

    name: str
    job: Job
    fingerprint: str


def scene_job(template: Job, scene: Scene, out_dir: Path) -> Job:
    """The job of one scene: the batch's options, the scene's sources and own choices."""
    return replace(
        template,
        sources=scene.sources,
        out=out_dir / scene.name / f"{scene.name}.tif",
        classes=scene.classes or template.classes,
        region=scene.region or template.region,
        where=scene.where if scene.region or scene.where else template.where,
    )


def error_line(error: BaseException) -> str:
    """One line for the summary: geocam's own message, else the type and the first line."""
    if isinstance(error, GeocamError):
        return first_line(error)
    return f"{type(error).__name__}: {gdal_reason(first_line(error))}"


def is_done(outputs: Iterable[Path], fingerprint: str) -> bool:
    """Whether every output exists and the heatmap (the first) records ``fingerprint``."""
    import rasterio

    paths = list(outputs)
    if not paths or not all(p.is_file() for p in paths):
        return False
    try:
        with rasterio.open(paths[0]) as heatmap:
            return bool(heatmap.tags().get(FINGERPRINT_TAG) == fingerprint)
    except rasterio.errors.RasterioIOError:
        return False


def explain_one(
    task: Task,
    config: ModelConfig,
    where: str = "local",
    progress: TileProgress | None = None,
) -> SceneResult:
    """Explain one scene with the model of ``config`` (loaded once per process).

    Never raises for the scene's own faults: a failed result carries the one-line reason.
    A journal left by a killed run of the same scene is continued. ``progress`` hears of the
    scene's tiles as they are done.
    """
    from geocam.journal import journal_folder

    result = SceneResult(task.name, list(task.job.sources), fingerprint=task.fingerprint)
    result.worker = where
    start = time.perf_counter()
    folder_made = False
    try:
        loaded = load(config)
        if config.threads:  # in the thread that runs the task: OpenMP's count is per thread
            import torch

            torch.set_num_threads(config.threads)
        job = replace(task.job, extra_inputs=loaded.extra_inputs)
        folder_made = not job.out.parent.exists()
        job.out.parent.mkdir(parents=True, exist_ok=True)
        folder = journal_folder(job.out)
        tiles = None if progress is None else functools.partial(progress, task.name)
        run = {"model": loaded.model, "provenance": loaded.provenance, "progress": tiles}
        try:
            report = run_job(
                replace(job, resume=folder.is_dir()), loaded.preset,
                fingerprint=task.fingerprint, sweep=True, **run,  # type: ignore[arg-type]
            )  # fmt: skip
        except GeocamError as error:  # a journal of other settings: start the scene over
            if not (folder.is_dir() and str(error).startswith(str(folder))):
                raise
            report = run_job(
                replace(job, resume=False), loaded.preset,
                fingerprint=task.fingerprint, sweep=True, **run,  # type: ignore[arg-type]
            )  # fmt: skip
    except Exception as error:  # one bad scene never stops the others
        result.status, result.error = "failed", error_line(error)
        if folder_made:  # nothing left behind: the scene's folder goes if this run made it
            with contextlib.suppress(OSError):
                task.job.out.parent.rmdir()  # only when empty
    else:
        result.status = "done"
        result.outputs = {name: str(path) for name, path in report.outputs.items()}
        result.tiles, result.nodata_tiles = report.tiles, report.skipped
        result.region_pixels = {k: float(v) for k, v in report.region_pixels.items()}
    result.seconds = round(time.perf_counter() - start, 3)
    return result


class Executor(Protocol):
    """Runs tasks and yields their results as they finish (in any order)."""

    description: str

    def run(
        self, tasks: Sequence[Task], config: ModelConfig, progress: TileProgress | None = None
    ) -> Iterator[SceneResult]:
        """Explain every task; yield each one's result when it is ready, and report tiles."""
        ...


class InProcess:
    """Every scene in this process, one after another (the default: no cluster)."""

    description = "in-process"

    def run(
        self, tasks: Sequence[Task], config: ModelConfig, progress: TileProgress | None = None
    ) -> Iterator[SceneResult]:
        """Explain the tasks in order."""
        for task in tasks:
            yield explain_one(task, config, progress=progress)


class TileBar:
    """The second progress bar: tiles done and known over the scenes begun so far.

    Fed by :data:`TileProgress` reports (possibly from another thread, hence the lock); a
    scene's total is known once its first tile is reported, so the bar's total grows. A report
    that arrives after its scene's result (Dask events travel apart from results) leaves the bar
    as it is.
    """

    def __init__(self, disable: bool | None, listener: TileProgress | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=0, unit="tile", disable=disable, position=1, leave=False)
        self.listener = listener
        self.scenes: dict[str, tuple[int, int]] = {}
        self.over: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, name: str, done: int, total: int) -> None:
        """Record ``name``'s tiles and redraw; tell the listener (it hears every report)."""
        with self.lock:
            if name not in self.over:
                self.scenes[name] = (done, total)
                self.bar.total = sum(t for _, t in self.scenes.values())
                self.bar.n = sum(d for d, _ in self.scenes.values())
                self.bar.refresh()
        if self.listener is not None:
            self.listener(name, done, total)

    def finished(self, name: str) -> None:
        """``name`` is over: its tiles count as done (the last report may still be in flight)."""
        with self.lock:
            self.over.add(name)
            _, total = self.scenes.get(name, (0, 0))
            self.scenes[name] = (total, total)
            self.bar.n = sum(d for d, _ in self.scenes.values())
            self.bar.refresh()

    def close(self) -> None:
        """Take the bar off the terminal."""
        self.bar.close()


@dataclass
class Summary:
    """The batch's report, written as JSON after every scene (atomically)."""

    path: Path
    executor: str
    scenes: list[SceneResult]
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many scenes are done, skipped, failed and pending."""
        counts = dict.fromkeys(("done", "skipped", "failed", "pending"), 0)
        for scene in self.scenes:
            counts[scene.status] += 1
        return counts

    @property
    def failed(self) -> list[SceneResult]:
        """The scenes that failed."""
        return [s for s in self.scenes if s.status == "failed"]

    def write(self) -> None:
        """Write the summary atomically (a reader never sees half of it)."""
        from geocam import __version__
        from geocam.output import atomic_write

        record: dict[str, Any] = {
            "geocam_version": __version__,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "executor": self.executor,
            "counts": self.counts(),
            "scenes": [asdict(scene) for scene in self.scenes],
        }
        text = json.dumps(record, indent=1).encode()
        atomic_write(self.path, lambda handle: handle.write(text))


def run_batch(
    scenes: Sequence[Scene],
    template: Job,
    config: ModelConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    executor: Executor | None = None,
    summary: str | Path | None = None,
    progress: bool | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    on_tiles: TileProgress | None = None,
) -> Summary:
    """Explain every scene into ``out_dir`` and write the summary (``OUT_DIR/geocam_batch.json``).

    ``template`` holds the options every scene shares (its ``sources`` and ``out`` are
    replaced per scene). Scenes whose outputs exist with the same fingerprint are skipped
    unless ``force``. A scene that fails is recorded with its reason and the others go on; the
    caller looks at :attr:`Summary.failed`. An interrupt writes the summary, the scenes not
    finished marked ``pending``, and propagates. ``progress`` shows two bars, scenes and the
    tiles within them (None: only on a terminal); ``on_result`` hears of every finished scene,
    ``on_tiles`` of every scene's tiles as they are done, wherever they run.
    """
    from tqdm.auto import tqdm

    check_unique(scenes)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise GeocamError(f"--out-dir {out_dir} is a file; give a folder")
    executor = executor or InProcess()
    preset, provenance, _ = open_model(config)
    template = replace(template, overwrite=True, progress=False, resume=False)
    results = [SceneResult(s.name, list(s.sources)) for s in scenes]
    where = Path(summary) if summary else out_dir / SUMMARY_NAME
    report = Summary(where, executor.description, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tasks: list[Task] = []
    for scene, result in zip(scenes, results, strict=True):
        job = scene_job(template, scene, out_dir)
        try:
            plan = plan_job(job, preset)
            result.fingerprint = job_fingerprint(job, preset, provenance)
        except Exception as error:  # a scene's own mistake (a class it lacks, a missing file)
            result.status, result.error = "failed", error_line(error)
            continue
        if not force and is_done(plan.outputs.values(), result.fingerprint):
            result.status = "skipped"
            result.outputs = {name: str(path) for name, path in plan.outputs.items()}
            continue
        tasks.append(Task(scene.name, job, result.fingerprint))
    index = {result.name: i for i, result in enumerate(results)}
    hide = None if progress is None else not progress  # None: only on a terminal
    bar = tqdm(total=len(scenes), unit="scene", disable=hide, position=0)
    bar.update(len(scenes) - len(tasks))
    tiles = TileBar(hide, on_tiles)
    listen = on_tiles is not None or not tiles.bar.disable  # nobody listening: no reports
    try:
        report.write()
        for finished in executor.run(tasks, config, tiles if listen else None):
            results[index[finished.name]] = finished
            report.seconds = time.perf_counter() - start
            report.write()
            tiles.finished(finished.name)
            bar.update(1)
            if on_result is not None:
                on_result(finished)
    finally:
        tiles.close()
        bar.close()
        report.seconds = time.perf_counter() - start
        report.write()
    return report


def local_threads(workers: int) -> int:
    """Threads of torch for each of ``workers`` local worker processes: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // workers)
