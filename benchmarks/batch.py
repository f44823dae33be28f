"""Many scenes (issue 15): in-process against a local Dask cluster of 1 and 2 workers.

Eight copies of the Raleigh Landsat scene (489 x 443, 6 bands) explained with the land-cover
demo model (class forest, tile 256, overlap 64), side by side in one run: in this process, then
on a fresh local cluster of 1 worker (torch threads: every core) and of 2 workers (half each).
Cluster start-up and the per-worker model load are inside the timed figure: they are what a
user pays. Every mode writes into its own folder and must report 8 scenes done.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import Row, Settings, Target, log, register

from geocam.batch.manifest import scenes_from_arguments
from geocam.batch.run import Executor, ModelConfig, local_threads, run_batch
from geocam.job import Job

ROOT = Path(__file__).resolve().parents[1]
RALEIGH = ROOT.parent / "shared" / "data" / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif"
CONFIG = ROOT / "configs" / "landcover_raleigh.yaml"


def timed_batch(folder: Path, workers: int | None, device: str = "cpu") -> tuple[float, float]:
    """Seconds to explain every scene of ``folder`` (``workers`` None: in this process), and
    the median of the scenes' own seconds (what each task took where it ran)."""
    scenes = scenes_from_arguments([str(folder / "scene_*.tif")])
    template = Job(sources=(), out=Path(), classes=("forest",), tile=256, overlap=64, device=device)
    out = folder / f"out_{workers or 0}"
    start = time.perf_counter()
    if workers is None:
        report = run_batch(scenes, template, ModelConfig(str(CONFIG)), out, progress=False)
    else:
        from geocam.batch.dask import dask_executor

        config = ModelConfig(str(CONFIG), threads=local_threads(workers))
        with dask_executor(workers=workers) as executor:
            runner: Executor = executor
            report = run_batch(scenes, template, config, out, executor=runner, progress=False)
    seconds = time.perf_counter() - start
    done = [s.status for s in report.scenes]
    if done != ["done"] * len(scenes):
        raise RuntimeError(f"{workers} worker(s): {done}")
    return seconds, statistics.median(s.seconds for s in report.scenes)


@register("batch")
def batch(settings: Settings) -> list[Row]:
    """8 copies of the Raleigh scene, land-cover demo model on --device (local workers share it), class forest, tile 256, overlap 64; in-process, then a local Dask cluster of 1 and of 2 workers (start-up included)."""  # noqa: E501
    count = 4 if settings.quick else 8
    folder = Path(tempfile.mkdtemp(prefix="geocam-batch-"))
    try:
        for i in range(count):
            shutil.copy(RALEIGH, folder / f"scene_{i}.tif")
        inline, inline_scene = timed_batch(folder, None, settings.device)
        log(f"  in-process: {inline:.1f} s")
        one, one_scene = timed_batch(folder, 1, settings.device)
        log(f"  1 worker: {one:.1f} s")
        two, _ = timed_batch(folder, 2, settings.device)
        log(f"  2 workers: {two:.1f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [
        Row(f"{count} scenes in-process", inline, "s"),
        Row(f"{count} scenes, local cluster of 1 worker (start-up included)", one, "s"),
        Row(f"{count} scenes, local cluster of 2 workers (start-up included)", two, "s"),
        Row("median scene, in-process", inline_scene, "s"),
        Row("median scene, on the 1 worker", one_scene, "s"),
        Row(
            "per-scene overhead, 1 worker / in-process",
            one_scene / inline_scene,
            "x",
            Target("<=", 1.10),
        ),
        Row("whole batch, 1 worker / in-process", one / inline, "x"),
        Row("speed-up, 2 workers against in-process", inline / two, "x"),
    ]
