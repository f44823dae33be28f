"""One scene split across Dask worker processes, and lazy xarray: bitwise the single-process run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import tiny_preset
from rasterio.transform import from_origin
from safetensors.torch import save_file
from scene_networks import SPEC, ContextNet, scene
from torch import nn

from geocam import GeocamError, build_model, load_config
from geocam.cli import cli
from geocam.raster import explain_raster, explain_xarray
from geocam.scene import Explanation, Products, Runtime, Tiling
from geocam.scene.distributed import split_rows

QUIET = Runtime("cpu", progress=False)
TILING = Tiling(32, 8, batch_size=3)  # 9 tile rows of 5 tiles: batches end inside and at rows


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """Two worker processes on this machine (the batch's local cluster)."""
    from geocam.batch.dask import dask_executor

    with dask_executor(workers=2) as executor:
        yield executor.client


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-band float scene with a nodata corner, and a region mask on its grid."""
    root = tmp_path_factory.mktemp("split")
    pixels = scene(256, 144, seed=4)
    pixels[:, :40, :50] = -1.0  # nodata: a skipped tile, partial tiles
    profile = {
        "driver": "GTiff", "height": 256, "width": 144, "crs": "EPSG:32618",
        "transform": from_origin(500000, 4000000, 10, 10),
    }  # fmt: skip
    with rasterio.open(
        root / "scene.tif", "w", count=3, dtype="float32", nodata=-1, **profile
    ) as f:
        f.write(pixels)
    mask = np.zeros((1, 256, 144), np.uint8)
    mask[:, 60:200, 30:120] = 1
    with rasterio.open(root / "mask.tif", "w", count=1, dtype="uint8", **profile) as f:
        f.write(mask)
    return {"scene": root / "scene.tif", "mask": root / "mask.tif"}


def read_all(paths: dict[str, Path]) -> dict[str, bytes]:
    out = {}
    for name, path in paths.items():
        with rasterio.open(path) as dataset:
            out[name] = dataset.read().tobytes()
    return out


CASES = [
    ("gradcam", "predicted", "source"),
    ("gradcam", "mask", "native"),
    ("gradcam++", "predicted", "source"),
    ("gradcam++", "mask", "source"),
    ("hirescam", "predicted", "source"),
    ("saliency", "mask", "source"),  # a pixel method (geocam.attribution), one pass too
]


@pytest.mark.parametrize(("method", "region", "resolution"), CASES)
def test_a_scene_split_across_workers_is_bitwise_the_single_process_run(
    method: str,
    region: str,
    resolution: str,
    client: object,
    files: dict[str, Path],
    tmp_path: Path,
    deterministic: None,
) -> None:
    model = ContextNet().eval()
    chosen = f"mask:{files['mask']}" if region == "mask" else region
    explanation = Explanation(("b",), method=method, region=chosen)  # type: ignore[arg-type]
    products = Products(probabilities=True, class_map=True, resolution=resolution)  # type: ignore[arg-type]
    kwargs = {"tiling": TILING, "runtime": QUIET, "products": products, "model": model}
    one = explain_raster(files["scene"], tmp_path / "one.tif", SPEC, explanation, **kwargs)  # type: ignore[arg-type]
    split = explain_raster(
        files["scene"],
        tmp_path / "split.tif",
        SPEC,
        explanation,
        client=client,
        row_bands=3,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    assert len(one.outputs) == 3 and one.passes == split.passes
    assert one.region_pixels == split.region_pixels and one.skipped == split.skipped == 1
    expected, got = read_all(one.outputs), read_all(split.outputs)
    for name in expected:
        assert got[name] == expected[name], name


def test_a_split_run_cannot_resume(client: object, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GeocamError, match="--resume: a scene split across workers"):
        explain_raster(
            files["scene"], tmp_path / "x.tif", SPEC, Explanation(("b",)), model=ContextNet(),
            runtime=QUIET, client=client, resume=True,  # type: ignore[arg-type]
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_split_rows_are_contiguous_and_near_equal() -> None:
    assert split_rows(9, 3) == [range(0, 3), range(3, 6), range(6, 9)]
    assert split_rows(5, 2) == [range(0, 2), range(2, 5)]
    assert split_rows(2, 4) == [range(0, 1), range(1, 2)]
    with pytest.raises(ValueError, match="cannot split"):
        split_rows(0, 2)


def dask_scene(files: dict[str, Path], chunks: int = 64) -> tuple[object, list[int]]:
    """The scene as a dask-backed DataArray whose blocks count their reads."""
    import dask.array as da
    import rioxarray

    eager = rioxarray.open_rasterio(files["scene"]).load()
    reads: list[int] = []

    def counted(block: np.ndarray) -> np.ndarray:
        reads.append(block.shape[1])
        return block

    meta = np.empty((0, 0, 0), eager.dtype)  # no call to infer it: every call is a read
    lazy = da.from_array(eager.values, chunks=(3, chunks, -1)).map_blocks(counted, meta=meta)
    return eager.copy(data=lazy), reads


@pytest.mark.parametrize(
    ("method", "resolution"),
    [("gradcam", "source"), ("gradcam++", "native"), ("hirescam", "source")],
)
def test_lazy_xarray_equals_eager_and_computes_nothing_before_compute(
    method: str, resolution: str, files: dict[str, Path], deterministic: None
) -> None:
    import rioxarray

    model = ContextNet().eval()
    explanation = Explanation(("b",), method=method)  # type: ignore[arg-type]
    data, reads = dask_scene(files)
    lazy = explain_xarray(
        data, SPEC, explanation, tiling=TILING, runtime=QUIET, model=model, resolution=resolution
    )  # type: ignore[arg-type]
    assert reads == [] and lazy.chunks is not None and len(lazy.chunks[1]) > 1
    eager = explain_xarray(
        rioxarray.open_rasterio(files["scene"]).load(), SPEC, explanation, tiling=TILING,
        runtime=QUIET, model=model, resolution=resolution,  # type: ignore[arg-type]
    )  # fmt: skip
    assert lazy.rio.crs == eager.rio.crs and lazy.rio.transform() == eager.rio.transform()
    assert list(lazy.band.values) == list(eager.band.values) and lazy.shape == eager.shape
    computed = lazy.compute(scheduler="threads")  # (a Client, if any, is the default)
    assert sum(reads) >= 256  # every row read at least once
    assert computed.values.tobytes() == eager.values.tobytes()


def test_lazy_xarray_computes_on_a_dask_cluster(
    client: object, files: dict[str, Path], deterministic: None
) -> None:
    import rioxarray

    model = ContextNet().eval()
    explanation = Explanation(("b",), method="gradcam++")
    data, _ = dask_scene(files)
    lazy = explain_xarray(data, SPEC, explanation, tiling=TILING, runtime=QUIET, model=model)
    eager = explain_xarray(
        rioxarray.open_rasterio(files["scene"]).load(), SPEC, explanation, tiling=TILING,
        runtime=QUIET, model=model,
    )  # fmt: skip
    computed = client.compute(lazy).result()  # type: ignore[attr-defined]
    assert computed.values.tobytes() == eager.values.tobytes()


def test_a_worker_sees_the_model_it_was_given(files: dict[str, Path]) -> None:
    """Guard: a different network gives different bytes (the comparisons above can fail)."""
    a, b = ContextNet().eval(), ContextNet().eval()
    with torch.no_grad():
        b.context.weight.mul_(1.01)
    assert isinstance(a, nn.Module)
    explanation = Explanation(("b",))
    data, _ = dask_scene(files)
    one = explain_xarray(data, SPEC, explanation, tiling=TILING, runtime=QUIET, model=a)
    two = explain_xarray(data, SPEC, explanation, tiling=TILING, runtime=QUIET, model=b)
    assert one.values.tobytes() != two.values.tobytes()


@pytest.mark.slow  # a cluster of its own and a small Unet: ~1 min on 2 cores
def test_the_cli_splits_a_scene_across_local_workers(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """``geocam explain --workers 2``: the same pixels as in one process; workers load the
    preset's checkpoint; --workers with --scheduler, or with --resume, is one line."""
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_preset(tile=64, overlap=16))
    torch.manual_seed(0)
    model = build_model(load_config(config).spec)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp_path / "tiny.safetensors")
    config.write_text(tiny_preset(tile=64, overlap=16) + "checkpoint: tiny.safetensors\n")
    common = [
        "explain", str(files["scene"]), "-c", str(config), "--class", "water", "-q",
        "--class-map",
    ]  # fmt: skip
    runner = CliRunner()
    one = runner.invoke(cli, [*common, "-o", str(tmp_path / "one.tif")])
    assert one.exit_code == 0, one.output
    two = runner.invoke(cli, [*common, "-o", str(tmp_path / "two.tif"), "--workers", "2"])
    assert two.exit_code == 0, two.output
    for a, b in [("one.tif", "two.tif"), ("one_classes.tif", "two_classes.tif")]:
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert x.read().tobytes() == y.read().tobytes()
    both = runner.invoke(cli, [*common, "-o", str(tmp_path / "x.tif"), "--workers", "2",
                               "--scheduler", "tcp://127.0.0.1:1"])  # fmt: skip
    assert both.exit_code != 0 and "give one" in both.output
    resumed = runner.invoke(cli, [*common, "-o", str(tmp_path / "x.tif"), "--workers", "2",
                                  "--resume"])  # fmt: skip
    assert resumed.exit_code != 0 and "--resume: a scene split across workers" in resumed.output
    assert not list(tmp_path.glob("x*"))


def test_partial_sums_are_reduced_row_after_row_in_tile_row_order() -> None:
    """The reduce adds each row's sum to the total in row order, whoever computed the rows:
    float64 sums where the order shows (1e16 + 1 - 1e16 is 0 in that order, 1 in another)."""
    from affine import Affine
    from rasterio.crs import CRS

    from geocam.scene.engine import RowResult, _Scene
    from geocam.sources import ArraySource, Grid

    grid = Grid(CRS.from_epsg(32618), Affine(10, 0, 0, 0, -10, 0), 144, 256)
    source = ArraySource(scene(256, 144), grid)
    plan = _Scene(ContextNet(), SPEC, source, Explanation(("b",)), TILING, QUIET, None)
    parts = [torch.tensor([1e16]), torch.tensor([1.0]), torch.tensor([-1e16])]
    rows = [RowResult(i, part=p.double()) for i, p in enumerate(parts)]
    assert plan.reduce(rows).tolist() == [0.0]  # (1e16 + 1) - 1e16
    rows = [RowResult(i, part=p.double()) for i, p in enumerate([parts[0], parts[2], parts[1]])]
    assert plan.reduce(rows).tolist() == [1.0]  # (1e16 - 1e16) + 1
