"""geocam batch: manifests, idempotent reruns, bad scenes, and the same bytes on Dask workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import tiny_preset
from rasterio.transform import from_origin
from safetensors.torch import save_file

from geocam import build_model, load_config
from geocam.batch.manifest import read_manifest
from geocam.cli import cli

SIZES = [(80, 96), (72, 64), (64, 100)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small 3-band scenes in UTM 17N and a tiny preset with a saved checkpoint."""
    root = tmp_path_factory.mktemp("batch")
    config = root / "tiny.yaml"
    config.write_text(tiny_preset())
    torch.manual_seed(0)
    model = build_model(load_config(config).spec)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "tiny.safetensors")
    config.write_text(tiny_preset() + "checkpoint: tiny.safetensors\n")
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(SIZES):
        transform = from_origin(500000 + 5000 * i, 4000000, 30, 30)
        with rasterio.open(
            root / f"s{i}.tif", "w", driver="GTiff", width=width, height=height, count=3,
            dtype="uint8", crs="EPSG:32617", transform=transform,
        ) as dataset:  # fmt: skip
            dataset.write(rng.integers(0, 255, (3, height, width), dtype=np.uint8))
    (root / "bad.tif").write_text("not a raster")
    return root


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def batch(
    world: Path, out: Path, *args: str | Path
) -> tuple[int, str, dict[str, dict[str, object]]]:
    """Run ``geocam batch`` in this process; the summary's scenes by name."""
    code, output = invoke("batch", *args, "-c", world / "tiny.yaml", "--class", "water", "-o", out)
    summary = json.loads((out / "geocam_batch.json").read_text()) if out.is_dir() else {}
    return code, output, {s["name"]: s for s in summary.get("scenes", [])}


def leftovers(folder: Path) -> list[Path]:
    """Scratch, lock, journal and temporary files: none may stay after a batch."""
    return [
        p for p in folder.rglob("*")
        if p.name.endswith((".partial", ".lock", ".resume", ".tmp")) or ".partial." in p.name
    ]  # fmt: skip


def test_help_imports_neither_torch_nor_dask() -> None:
    code = "import sys, geocam.cli; sys.exit('torch' in sys.modules or 'dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert invoke("batch", "--help")[0] == 0


def test_manifests_csv_and_json_lines(tmp_path: Path) -> None:
    csv = tmp_path / "scenes.csv"
    csv.write_text(
        "sources,name,class,region\na.tif;b.tif,pair,water;land,mask:masks/m.tif\n/data/c.tif,,,\n"
    )
    first, second = read_manifest(csv)
    assert first.sources == (str(tmp_path / "a.tif"), str(tmp_path / "b.tif"))
    assert first.name == "pair" and first.classes == ("water", "land")
    assert first.region == f"mask:{tmp_path / 'masks' / 'm.tif'}"
    assert second.sources == ("/data/c.tif",) and second.name == "c" and second.region is None
    lines = tmp_path / "scenes.jsonl"
    lines.write_text(
        '# a comment\n\n{"sources": ["x.tif", "y.tif"], "name": "xy"}\n{"source": "z.tif", '
        '"class": "water", "region": "vector:v.gpkg:fields", "where": "crop=rice"}\n'
    )
    xy, z = read_manifest(lines)
    assert xy.sources == (str(tmp_path / "x.tif"), str(tmp_path / "y.tif")) and xy.name == "xy"
    assert z.classes == ("water",) and z.where == "crop=rice"
    assert z.region == f"vector:{tmp_path / 'v.gpkg'}:fields"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "sources,name\na.tif,a\n,b\n", "m.csv, row 3: no sources"),
        ("m.csv", "sources,colour\na.tif,red\n", "m.csv, row 1: unknown column(s) 'colour'"),
        ("m.csv", "sources,name\na.tif,../up\n", "m.csv, row 2: name '../up' is not a plain"),
        ("m.jsonl", '{"sources": "a.tif"}\n{"sources": \n', "m.jsonl, line 2: not JSON"),
        ("m.jsonl", '{"sources": 3}\n', "m.jsonl, line 1: 'sources' must be a path"),
        ("m.jsonl", '{"sources": "a/s.tif"}\n{"sources": "b/s.tif"}\n', "two scenes are named"),
    ],
)
def test_a_bad_manifest_is_one_line_and_leaves_nothing(
    world: Path, tmp_path: Path, name: str, text: str, message: str
) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    out = tmp_path / "out"
    code, output, _ = batch(world, out, "--manifest", manifest)
    assert code != 0
    assert output.startswith(f"geocam: error: {message}") and output.count("\n") == 1, output
    assert not out.exists()


def test_a_bad_scene_is_named_and_the_others_finish(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output, scenes = batch(world, out, world / "s0.tif", world / "bad.tif", world / "s1.tif")
    assert code == 1
    assert "failed: bad: " in output and "2 done, 0 skipped (up to date), 1 failed" in output
    assert [s["status"] for s in scenes.values()] == ["done", "failed", "done"]
    assert "not a readable raster" in str(scenes["bad"]["error"])
    assert "\n" not in str(scenes["bad"]["error"])
    for name in ("s0", "s1"):
        assert scenes[name]["error"] is None and scenes[name]["tiles"] == {"s0": 4, "s1": 2}[name]
        assert scenes[name]["region_pixels"]["water"] > 0  # type: ignore[index]
        with (
            rasterio.open(out / name / f"{name}.tif") as heat,
            rasterio.open(world / f"{name}.tif") as src,
        ):
            assert heat.crs == src.crs and heat.transform == src.transform
    assert not (out / "bad").exists() and leftovers(out) == []


def test_a_rerun_skips_what_is_up_to_date(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    scenes_args = (world / "s0.tif", world / "s1.tif")
    assert batch(world, out, *scenes_args)[0] == 0
    heat = [out / f"s{i}" / f"s{i}.tif" for i in (0, 1)]
    before = [p.stat().st_ino for p in heat]
    code, output, scenes = batch(world, out, *scenes_args)
    assert code == 0 and "0 done, 2 skipped" in output
    assert {s["status"] for s in scenes.values()} == {"skipped"}
    assert [p.stat().st_ino for p in heat] == before  # untouched
    code, output, scenes = batch(world, out, *scenes_args, "--force")
    assert code == 0 and "2 done, 0 skipped" in output
    assert all(p.stat().st_ino != b for p, b in zip(heat, before, strict=True))  # rewritten
    before = [p.stat().st_ino for p in heat]
    with rasterio.open(heat[0]) as dataset:
        fingerprint = dataset.tags()["GEOCAM_JOB_FINGERPRINT"]
    assert fingerprint == scenes["s0"]["fingerprint"]
    code, output, scenes = batch(world, out, *scenes_args, "--overlap", "32")  # a new setting
    assert code == 0 and "2 done, 0 skipped" in output
    assert scenes["s0"]["fingerprint"] != fingerprint
    code, output, scenes = batch(world, out, *scenes_args, "--overlap", "32")
    assert "0 done, 2 skipped" in output
    (out / "s1" / "s1.qml").unlink()  # an output missing: that scene is redone
    code, output, scenes = batch(world, out, *scenes_args, "--overlap", "32")
    assert scenes["s0"]["status"] == "skipped" and scenes["s1"]["status"] == "done"
    assert (out / "s1" / "s1.qml").is_file() and leftovers(out) == []


def test_a_killed_batch_finishes_only_the_remaining_scenes(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sources = [str(world / f"s{i}.tif") for i in range(3)]
    command = [sys.executable, "-m", "geocam", "batch", *sources, "-c", str(world / "tiny.yaml"),
               "--class", "water", "-o", str(out), "-q"]  # fmt: skip
    process = subprocess.Popen(command)
    summary = out / "geocam_batch.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # killed in the middle of a scene, after a first one
        done = summary.is_file() and json.loads(summary.read_text())["counts"]["done"] >= 1
        if done and leftovers(out):  # the next scene's journal and scratch files
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {s["name"] for s in json.loads(summary.read_text())["scenes"]
                   if s["status"] == "done"}  # fmt: skip
    assert 1 <= len(done_before) < 3
    assert leftovers(out)
    code, _, scenes = batch(world, out, *sources)
    assert code == 0
    status = {name: scene["status"] for name, scene in scenes.items()}
    assert {name for name, s in status.items() if s == "skipped"} == done_before
    assert {name for name, s in status.items() if s == "done"} == {"s0", "s1", "s2"} - done_before
    assert leftovers(out) == []


def tile_reports(reports: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    """Each scene's ``(done, total)`` reports, in the order they came."""
    found: dict[str, list[tuple[int, int]]] = {}
    for name, done, total in reports:
        found.setdefault(name, []).append((done, total))
    return found


def test_tiles_within_scenes_are_reported_and_shown(world: Path, tmp_path: Path) -> None:
    from geocam.batch.manifest import scenes_from_arguments
    from geocam.batch.run import ModelConfig, run_batch
    from geocam.job import Job

    reports: list[tuple[str, int, int]] = []
    report = run_batch(
        scenes_from_arguments([str(world / "s*.tif")]), Job(sources=(), out=Path(),
        classes=("water",)), ModelConfig(str(world / "tiny.yaml")), tmp_path / "out",
        progress=False, on_tiles=lambda *r: reports.append(r),
    )  # fmt: skip
    found = tile_reports(reports)
    assert list(found) == ["s0", "s1", "s2"]  # in order, in this process
    for scene in report.scenes:  # every tile of both passes (scene weights), counted up
        assert scene.tiles and found[scene.name][-1] == (2 * scene.tiles, 2 * scene.tiles)
        assert [d for d, _ in found[scene.name]] == list(range(1, 2 * scene.tiles + 1))
    code, output, _ = batch(world, tmp_path / "shown", world / "s0.tif", "-v")
    assert code == 0 and "8/8 [" in output and "1/1 [" in output  # tiles, then scenes


def test_the_tile_bar_ignores_a_report_that_comes_after_its_scene() -> None:
    from geocam.batch.run import TileBar

    heard: list[tuple[str, int, int]] = []
    bar = TileBar(True, lambda *r: heard.append(r))
    bar("a", 1, 4)
    bar("b", 2, 6)
    assert (bar.bar.n, bar.bar.total) == (3, 10)
    bar.finished("a")  # its result: all its tiles are done, whatever was last reported
    bar("a", 3, 4)  # an event still in flight
    assert (bar.bar.n, bar.bar.total) == (6, 10)
    assert heard == [("a", 1, 4), ("b", 2, 6), ("a", 3, 4)]  # run_batch(on_tiles) hears all
    bar.close()


@pytest.fixture(scope="module")
def in_process(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference outputs of the three scenes, in this process."""
    out = tmp_path_factory.mktemp("reference")
    assert batch(world, out, world / "s*.tif")[0] == 0
    return out


def same_outputs(a: Path, b: Path) -> None:
    for i in range(len(SIZES)):
        for name in (f"s{i}.tif", f"s{i}.qml"):
            assert (a / f"s{i}" / name).read_bytes() == (b / f"s{i}" / name).read_bytes(), name


@pytest.mark.slow
def test_local_workers_write_the_same_bytes_and_load_the_model_once(
    world: Path, in_process: Path, tmp_path: Path
) -> None:
    from geocam.batch.dask import ModelPlugin, dask_executor, worker_loads
    from geocam.batch.manifest import scenes_from_arguments
    from geocam.batch.run import ModelConfig, run_batch
    from geocam.job import Job

    config = ModelConfig(str(world / "tiny.yaml"), threads=1)
    template = Job(sources=(), out=Path(), classes=("water",))
    scenes = scenes_from_arguments([str(world / "s*.tif")])
    out = tmp_path / "out"
    environ = dict(os.environ)
    reports: list[tuple[str, int, int]] = []
    with dask_executor(workers=2) as executor:
        assert dict(os.environ) == environ  # Dask's worker variables stay with the workers
        report = run_batch(
            scenes, template, config, out, executor=executor, on_tiles=lambda *r: reports.append(r)
        )
        last = {s.name: (2 * s.tiles, 2 * s.tiles) for s in report.scenes if s.tiles}
        deadline = time.monotonic() + 10  # a scene's last events may come after its result
        while time.monotonic() < deadline:
            if {name: r[-1] for name, r in tile_reports(reports).items()} == last:
                break
            time.sleep(0.05)
        executor.client.register_plugin(ModelPlugin(config))  # again: idempotent
        loads = executor.client.run(worker_loads)
        trims = executor.client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    assert set(trims.values()) == {None}  # Dask's 64 KiB trim made every scene 2.2x slower
    assert report.executor == "local dask cluster, 2 worker(s)"
    assert [s.status for s in report.scenes] == ["done"] * 3
    workers = [s.worker for s in report.scenes]
    assert all(str(w).startswith("tcp://127.0.0.1:") for w in workers)
    assert len(loads) == 2 and all(v == {config.key(): 1} for v in loads.values())
    assert len(set(workers)) < len(workers)  # a worker ran two scenes with its one model
    same_outputs(in_process, out)
    # the tiles of each scene, reported from the worker that ran it: first, ..., last
    assert len(last) == 3 and set(tile_reports(reports)) == set(last)
    for name, found in tile_reports(reports).items():
        assert found[0] == (1, last[name][1]) and found[-1] == last[name], (name, found)
        assert [d for d, _ in found] == sorted({d for d, _ in found})


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no real rasters at {DATA}")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, started apart:
    ``gpu0`` advertises ``--resources GPU=1``, ``cpu0`` nothing. The scheduler's address and
    file, and the workers' names by address."""
    file = tmp_path_factory.mktemp("cluster") / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    dask = [sys.executable, "-m", "dask"]
    processes = [subprocess.Popen(
        [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(file)], **quiet,  # type: ignore[call-overload]
    )]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        for name, resources in (("gpu0", ["--resources", "GPU=1"]), ("cpu0", [])):
            processes.append(subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                 "--no-dashboard", "--name", name, *resources], **quiet,  # type: ignore[call-overload]
            ))  # fmt: skip
        from distributed import Client

        with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(2, timeout=60)
            names = {a: str(w["name"]) for a, w in client.scheduler_info()["workers"].items()}
        yield address, file, names
    finally:
        stop(processes)


def real_batch(out: Path, *args: str | Path) -> tuple[int, str, dict[str, dict[str, object]]]:
    """Run ``geocam batch`` in this process on real scenes; the summary's scenes by name."""
    code, output = invoke("batch", *args, "-o", out)
    summary = json.loads((out / "geocam_batch.json").read_text()) if out.is_dir() else {}
    return code, output, {s["name"]: s for s in summary.get("scenes", [])}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch computes with ``count`` threads inside (a ``dask worker --nthreads 1`` runs one:
    Dask sets OMP_NUM_THREADS=1 in it), as it did before afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def features(path: Path) -> list[tuple[object, object]]:
    """A vector file's features (geometry and properties): what it holds, not when written."""
    import fiona

    with fiona.open(path) as layer:
        return [(dict(f.geometry), dict(f.properties)) for f in layer]


def same_folders(a: Path, b: Path) -> None:
    """Every file of ``a`` (but the summary) is in ``b`` with the same bytes, and no other
    (a GeoPackage with the same features: SQLite records when it was written)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files = [f for f in files if f.name != "geocam_batch.json"]
    assert files == sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "geocam_batch.json"
    )
    for name in files:
        if name.suffix == ".gpkg":
            assert features(a / name) == features(b / name), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
@needs_data
def test_real_scenes_on_a_scheduler_and_workers_started_apart(
    cluster: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    from distributed import Client

    from geocam.batch.dask import worker_loads, worker_tasks

    address, file, names = cluster
    pucallpa = DATA / "pucallpa"
    broken = tmp_path / "broken_1985.tif"  # a real raster cut short: its pixels cannot be read
    data = (pucallpa / "landsat_1985.tif").read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    manifest = tmp_path / "pairs.csv"
    rows = [f"{pucallpa}/landsat_{year}.tif;{pucallpa}/landsat_2020.tif,p{year}"
            for year in (1985, 2000, 2010)]  # fmt: skip
    rows.insert(2, f"{broken};{pucallpa}/landsat_2020.tif,broken")
    manifest.write_text("sources,name\n" + "\n".join(rows) + "\n")
    deforestation = ("--manifest", manifest, "-c", CONFIGS / "deforestation_pucallpa.yaml",
                     "--class", "deforestation", "--hotspots")  # fmt: skip
    raleigh = (DATA / "raleigh" / "nc_lsat7_2000_b123457_uint8.tif", "-c",
               CONFIGS / "landcover_raleigh.yaml", "--class", "forest", "--class-map")  # fmt: skip
    runs = {}
    for name, args, scheduler in (("deforestation", deforestation, address),
                                  ("landcover", raleigh, file)):  # fmt: skip
        gpu = ("--scheduler", scheduler, "--resources", "GPU=1")  # its address, or its file
        here, there = tmp_path / f"{name}_in_process", tmp_path / f"{name}_cluster"
        with torch_threads(1):  # as each worker computes (float32 kernels split work by threads)
            code, output, scenes = real_batch(here, *args)
        code_there, output_there, scenes_there = real_batch(there, *args, *gpu)
        assert code_there == code, output_there
        assert {n: s["status"] for n, s in scenes_there.items()} == {
            n: s["status"] for n, s in scenes.items()
        }
        same_folders(here, there)  # the same files, byte for byte
        done = [s for s in scenes_there.values() if s["status"] == "done"]
        assert done and all(names[str(s["worker"])] == "gpu0" for s in done)
        runs[name] = code_there, output_there, scenes_there
    # the bad scene among good ones: named with its one line, the others done, exit code 1
    code, output, scenes = runs["deforestation"]
    assert code == 1 and "failed: broken: " in output, output
    assert [s["status"] for s in scenes.values()] == ["done", "done", "failed", "done"]
    assert "\n" not in str(scenes["broken"]["error"]), scenes["broken"]["error"]
    assert not (tmp_path / "deforestation_cluster" / "broken").exists()
    assert runs["landcover"][0] == 0
    for year in (1985, 2000, 2010):  # on the scenes' grid, the positive map >= 0 and not empty
        with (
            rasterio.open(tmp_path / "deforestation_cluster" / f"p{year}" / f"p{year}.tif") as heat,
            rasterio.open(pucallpa / f"landsat_{year}.tif") as source,
        ):
            assert (heat.crs, heat.transform, heat.shape) == (source.crs, source.transform,
                                                              source.shape)  # fmt: skip
            assert heat.count == 2 and np.isnan(heat.nodata)
            positive = heat.read(1)
            assert np.nanmin(positive) >= 0 and np.nanmax(positive) > 0
    with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call]
        executed = {names[a]: keys for a, keys in client.run(worker_tasks).items()}
        loads = {names[a]: count for a, count in client.run(worker_loads).items()}
    # every explain task ran on the worker with the resource, by the workers' own records
    assert len(executed["gpu0"]) == 4 + 1 and executed["cpu0"] == [], executed
    # each model built once in each worker, however many scenes and batches it served
    assert loads["gpu0"] == loads["cpu0"] and sorted(loads["gpu0"].values()) == [1, 1]
    code, output, _ = real_batch(tmp_path / "tpu", *raleigh, "--scheduler", address,
                                 "--resources", "TPU=1")  # fmt: skip
    assert code != 0
    assert output.startswith("geocam: error: no Dask worker advertises the resources TPU=1")
    assert not (tmp_path / "tpu").exists()


def test_a_scheduler_file_that_is_not_one_is_one_line(world: Path, tmp_path: Path) -> None:
    (tmp_path / "dask.json").write_text('{"type": "Scheduler"}')
    code, output, _ = batch(world, tmp_path / "o", world / "s0.tif",
                            "--scheduler", tmp_path / "dask.json")  # fmt: skip
    assert code == 1, output
    assert output == f"geocam: error: --scheduler {tmp_path / 'dask.json'}: not a Dask scheduler " \
        "file (JSON with an 'address'); give the scheduler's address or the file of `dask " \
        "scheduler --scheduler-file`\n"  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_workers_and_scheduler_are_exclusive(world: Path, tmp_path: Path) -> None:
    code, output, _ = batch(world, tmp_path / "o", world / "s0.tif", "--workers", "2",
                            "--scheduler", "tcp://127.0.0.1:1")  # fmt: skip
    assert code != 0 and output.startswith("geocam: error: --workers starts a local cluster")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_worker_killed_mid_scene_loses_nothing(world: Path, tmp_path: Path) -> None:
    import shutil

    from geocam.batch.dask import dask_executor
    from geocam.batch.manifest import scenes_from_arguments
    from geocam.batch.run import ModelConfig, SceneResult, run_batch
    from geocam.job import Job

    # the world with a larger second scene: a worker is still on it when the other reports
    # (with three small scenes both workers could be done already, and nothing to kill)
    slow = tmp_path / "world"
    shutil.copytree(world, slow)
    with rasterio.open(slow / "s1.tif") as src:
        profile = src.profile | {"width": 320, "height": 384}
    with rasterio.open(slow / "s1.tif", "w", **profile) as dst:
        dst.write(np.random.default_rng(1).integers(0, 255, (3, 384, 320), dtype=np.uint8))
    reference = tmp_path / "reference"
    assert batch(slow, reference, slow / "s*.tif")[0] == 0
    config = ModelConfig(str(slow / "tiny.yaml"), threads=1)
    template = Job(sources=(), out=Path(), classes=("water",))
    scenes = scenes_from_arguments([str(slow / "s*.tif")])
    out = tmp_path / "out"
    killed: list[list[Path]] = []
    with dask_executor(workers=2, retries=2) as executor:
        pids: dict[str, int] = executor.client.run(os.getpid)

        def kill_the_other(result: SceneResult) -> None:
            if killed:
                return
            others = [address for address in pids if address != result.worker]
            busy = [p for p in leftovers(out) if p.parent.name != result.name]
            killed.append(busy)  # the other worker's scene in progress: its scratch files
            os.kill(pids[others[0]], signal.SIGKILL)

        report = run_batch(
            scenes, template, config, out, executor=executor, on_result=kill_the_other
        )
    assert killed and killed[0], "the other worker was not in the middle of a scene"
    assert [s.status for s in report.scenes] == ["done"] * 3, report.scenes
    assert leftovers(out) == []
    same_outputs(reference, out)


def test_local_workers_keep_glibcs_trim_threshold() -> None:
    import dask

    from geocam.batch.dask import WORKER_ENVIRON, worker_environ

    with dask.config.set({WORKER_ENVIRON: {"MALLOC_TRIM_THRESHOLD_": 65536, "OMP_NUM_THREADS": 1}}):
        assert worker_environ() == {"OMP_NUM_THREADS": 1}
