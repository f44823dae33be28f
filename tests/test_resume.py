"""Interrupted runs resume from their journal and give bitwise identical files; reruns agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from torch import nn

from geocam import GeocamError, ModelSpec, Normalisation, build_model
from geocam.journal import Journal, journal_folder
from geocam.raster import explain_raster
from geocam.scene import Explanation, Products, Runtime, SceneReport, Tiling

QUIET = Runtime("cpu", progress=False)
SPEC = ModelSpec(
    "Unet",
    "resnet18",
    3,
    ("a", "b", "c"),
    normalisation=Normalisation((1 / 255,) * 3, (0.0,) * 3),
    options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)},  # shallow: a fast test
)


pytestmark = pytest.mark.usefixtures("deterministic")  # see conftest.deterministic


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tall 1100 x 96 scene (three 512-row strips) with a nodata block, in UTM."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:1100, 0:96]
    base = 120 + 60 * np.sin(rows / 37.0) * np.cos(cols / 23.0)
    data = np.stack([base + 20 * rng.standard_normal(base.shape) for _ in range(3)])
    data = np.clip(data, 1, 255).astype(np.uint8)
    data[:, 300:420, :] = 0  # a nodata band across the scene: whole tiles are skipped
    path = tmp_path_factory.mktemp("scene") / "tall.tif"
    profile = {
        "driver": "GTiff", "width": 96, "height": 1100, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32618", "transform": Affine(30, 0, 500000, 0, -30, 4100000), "nodata": 0,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


CASES = {
    # name: (explanation, products, tiling, product and strip number to stop after, row that
    # the resumed run starts computing on)
    "scene weights, stopped in pass 2": (
        Explanation(("a", "c")), Products(probabilities=True, class_map=True),
        Tiling(128, 32, batch_size=3), ("heatmap", 1), 512,
    ),
    "scene weights without cache, stopped in pass 2": (
        Explanation(("b",), method="gradcam++"), Products(probabilities=True),
        Tiling(128, 32, batch_size=3, cache_mb=0), ("heatmap", 2), 1024,
    ),
    "scene weights, stopped in pass 1": (
        Explanation(("a",)), Products(class_map=True),
        Tiling(128, 32, batch_size=2), ("classes", 1), 0,  # pass 1 runs again
    ),
    "tile weights, one pass": (
        Explanation(("a", "b"), weights="tile"), Products(probabilities=True, class_map=True),
        Tiling(128, 32, batch_size=3), ("classes", 1), 512,  # the last product of a strip
    ),
    "hirescam at the feature map's resolution": (
        Explanation(("c",), method="hirescam"), Products(resolution="native", class_map=True),
        Tiling(128, 32, batch_size=3), ("classes", 1), 0,  # one strip of cells: 4096 rows
    ),
}  # fmt: skip


def files(out: Path) -> dict[str, bytes]:
    """Every file a run left in ``out``'s folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.parent.iterdir()) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_is_bitwise_identical(
    case: str, scene: Path, model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explanation, products, tiling, (product, stop_after), resume_row = CASES[case]

    def run(out: Path, resume: bool = False) -> SceneReport:
        return explain_raster(
            scene, out, SPEC, explanation, tiling=tiling, runtime=QUIET, products=products,
            model=model, resume=resume,
        )  # fmt: skip

    (tmp_path / "whole").mkdir()
    run(tmp_path / "whole" / "heat.tif")
    expected = files(tmp_path / "whole" / "heat.tif")

    stored = {"count": 0}
    original = Journal.store_strip

    def store_then_stop(self: Journal, name: str, row: int, data: np.ndarray) -> None:
        original(self, name, row, data)
        if name == product:
            stored["count"] += 1
            if stored["count"] == stop_after:
                raise KeyboardInterrupt  # as Ctrl-C right after the strip was stored

    out = tmp_path / "stopped" / "heat.tif"
    out.parent.mkdir()
    monkeypatch.setattr(Journal, "store_strip", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.iterdir()) == ["heat.tif.resume"]  # nothing else
    assert any(journal_folder(out).glob(f"{product}-*.npy"))

    assert run(out, resume=True).resumed_from_row == resume_row
    assert not journal_folder(out).exists()
    assert files(out) == expected  # every product, byte for byte


def test_resume_refuses_a_journal_of_other_settings(
    scene: Path, model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "heat.tif"

    def stop(self: Journal, name: str, row: int, data: np.ndarray) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "store_strip", stop)
    with pytest.raises(KeyboardInterrupt):
        explain_raster(scene, out, SPEC, Explanation(("a",)), tiling=Tiling(128, 32),
                       runtime=QUIET, model=model)  # fmt: skip
    monkeypatch.undo()
    with pytest.raises(GeocamError, match=r"other inputs or settings \(tiling\).*without --resume"):
        explain_raster(scene, out, SPEC, Explanation(("a",)), tiling=Tiling(128, 64),
                       runtime=QUIET, model=model, resume=True)  # fmt: skip
    assert journal_folder(out).exists() and not out.exists()  # left for a matching --resume


def test_reruns_are_bitwise_identical(scene: Path, model: nn.Module, tmp_path: Path) -> None:
    outputs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "heat.tif"
        explain_raster(
            scene, out, SPEC, Explanation(("a", "b")), tiling=Tiling(128, 32), runtime=QUIET,
            products=Products(probabilities=True, class_map=True), model=model,
        )  # fmt: skip
        outputs.append(files(out))
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {  # every product and sidecar, all compared above
        "heat.tif", "heat_probability.tif", "heat_classes.tif", "heat_classes.tif.aux.xml",
        "heat_classes.qml",
    }  # fmt: skip
