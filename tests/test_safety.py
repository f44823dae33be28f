"""Issue 11: geocam never loses or corrupts a file it did not create, and fails in one line.

Through the command line where a user meets it (earlier results after a failed --overwrite,
files named like geocam's scratch files, a full disk, an internal error), and through the
library for ``--resume`` (an edited region, a truncated journal strip).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_bad_inputs import Run, raster, snapshot
from torch import nn

from geocam import GeocamError, ModelSpec, Normalisation, build_model
from geocam.cli import cli
from geocam.journal import Journal, journal_folder
from geocam.output import Destination, check_outputs
from geocam.raster import explain_raster
from geocam.scene import Explanation, Runtime, Tiling


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, result.output


def one_line(output: str) -> None:
    assert output.startswith("geocam: error: ") and output.count("\n") == 1, output
    assert "Traceback" not in output


# --- earlier results and the user's files ---------------------------------------------------


def test_a_failed_overwrite_keeps_the_earlier_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run.make(tmp_path)
    every = ("--overlay", "--hotspots", "--class-map", "--probabilities", "--quicklook")
    every += ("--region", "all", "--method", "hirescam")
    code, output = invoke(run.explain(*every))
    assert code == 0, output
    before = snapshot(run.out.parent)
    assert len(before) == 14  # heatmap, probabilities, classes (+ .aux.xml), styles, .qmd, ...

    def fail(*_: object, **__: object) -> Path:
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", fail)  # the last product fails
    code, output = invoke(run.explain(*every, "--overwrite", cls="land"))
    assert code == 1
    one_line(output)
    assert "heat.png" in output and "writing failed (File too large)" in output
    assert snapshot(run.out.parent) == before  # byte for byte, nothing added


def test_files_named_like_scratch_files_are_left_alone(tmp_path: Path) -> None:
    """A user's ``heat.tif.partial`` (even the source) survives a run writing ``heat.tif``."""
    run = Run.make(tmp_path)
    user = run.out.parent / "heat.tif.partial"
    source = raster(user, np.random.default_rng(3).integers(1, 255, (3, 64, 64), np.uint8))
    kept = user.read_bytes()
    code, output = invoke(run.explain("--class-map", "-q", source=source))
    assert code == 0, output
    assert user.read_bytes() == kept
    names = sorted(p.name for p in run.out.parent.iterdir())
    assert names == [
        "heat.qmd", "heat.qml", "heat.tif", "heat.tif.partial", "heat_classes.qmd",
        "heat_classes.qml", "heat_classes.tif", "heat_classes.tif.aux.xml",
    ]  # fmt: skip


def test_a_result_inside_an_old_journal_survives_a_new_run(tmp_path: Path) -> None:
    """An earlier geocam journal with the user's file in it: only geocam's files go."""
    run = Run.make(tmp_path)
    journal = journal_folder(run.out)
    Journal(journal, {"old": 1}, resume=False)  # left by a killed run
    (journal / "b.tif").write_bytes(b"a finished result")
    code, output = invoke(run.explain("-q"))
    assert code == 0, output
    assert sorted(p.name for p in journal.iterdir()) == ["b.tif"]
    assert (journal / "b.tif").read_bytes() == b"a finished result"


def test_two_products_at_one_path_are_refused() -> None:
    with pytest.raises(GeocamError, match="the heatmap and the quicklook would both be written"):
        check_outputs({"heatmap": Path("a.tif"), "quicklook": Path("./a.tif")})


def test_a_held_destination_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "heat.tif"
    held = rf"another geocam run is writing it \(pid {os.getpid()}\)"
    with Destination({"heatmap": out}), pytest.raises(GeocamError, match=held):
        Destination({"heatmap": out}).__enter__()
    assert list(tmp_path.iterdir()) == []  # the lock file goes with the run
    with Destination({"heatmap": out}):  # free again
        pass


# --- one line for every failure -------------------------------------------------------------


def test_a_disk_too_small_for_the_run_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run.make(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    before = snapshot(tmp_path)
    code, output = invoke(run.explain("--class-map"))
    assert code == 1
    one_line(output)
    # 64 x 64 pixels: heatmap 2 bands float32 (32 KiB) + class map (4 KiB), twice (journal)
    assert "the run needs up to 72 KiB" not in output  # units are MiB or GiB
    assert "needs up to 0.0703 MiB (outputs 0.0352 MiB, resume journal 0.0352 MiB)" in output
    assert "the run (1 tile(s), 2 pass(es)) needs" in output  # what the run is
    assert "has 0.000954 MiB free; free space or choose another --out" in output
    assert snapshot(tmp_path) == before


def test_an_unexpected_error_is_one_line_pointing_to_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("geocam.raster.explain_scene", bug)
    run = Run.make(tmp_path)
    result = CliRunner().invoke(cli, run.explain())
    assert result.exit_code == 70
    one_line(result.output)
    assert "ZeroDivisionError: division by zero" in result.output and "--debug" in result.output
    assert list(run.out.parent.iterdir()) == []
    debug = CliRunner().invoke(cli, ["--debug", *run.explain()])
    assert isinstance(debug.exception, ZeroDivisionError)


# --- resume ---------------------------------------------------------------------------------

QUIET = Runtime("cpu", progress=False)
SPEC = ModelSpec(
    "Unet", "resnet18", 3, ("a", "b"),
    normalisation=Normalisation((1 / 255,) * 3, (0.0,) * 3),
    options={"encoder_depth": 3, "decoder_channels": (16, 8, 8)},
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC)


@pytest.fixture
def tall(tmp_path: Path) -> tuple[Path, Path]:
    """A 1100 x 64 scene (three 512-row strips) and a mask over its whole extent."""
    rng = np.random.default_rng(0)
    scene = raster(tmp_path / "tall.tif", rng.integers(1, 255, (3, 1100, 64), np.uint8))
    mask = raster(tmp_path / "mask.tif", np.ones((1, 1100, 64), np.uint8))
    return scene, mask


def stopped_after_one_strip(
    scene: Path, out: Path, model: nn.Module, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Journal.store_strip

    def store_then_stop(self: Journal, name: str, row: int, data: np.ndarray) -> None:
        original(self, name, row, data)
        if name == "heatmap":
            raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "store_strip", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        explain(scene, out, model, region)
    monkeypatch.undo()
    assert any(journal_folder(out).glob("heatmap-*.npy"))


def explain(scene: Path, out: Path, model: nn.Module, region: str, resume: bool = False) -> object:
    return explain_raster(
        scene, out, SPEC, Explanation(("a",), region=region, weights="tile"),
        tiling=Tiling(64, 16, batch_size=4), runtime=QUIET, model=model, resume=resume,
    )  # fmt: skip


def test_a_region_edited_between_the_kill_and_the_resume_is_refused(
    tall: tuple[Path, Path], model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene, mask = tall
    out = tmp_path / "heat.tif"
    stopped_after_one_strip(scene, out, model, f"mask:{mask}", monkeypatch)
    stat = mask.stat()
    edited = np.ones((1, 1100, 64), np.uint8)
    edited[:, :, :32] = 0  # same size; the time put back: only the content tells
    raster(mask, edited)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(GeocamError, match=r"other inputs or settings \(regions\)"):
        explain(scene, out, model, f"mask:{mask}", resume=True)
    assert not out.exists()


def test_an_unreadable_journal_strip_is_computed_again(
    tall: tuple[Path, Path], model: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene, _ = tall
    (tmp_path / "whole").mkdir()
    explain(scene, tmp_path / "whole" / "heat.tif", model, "all")
    out = tmp_path / "heat.tif"
    stopped_after_one_strip(scene, out, model, "all", monkeypatch)
    for strip in journal_folder(out).glob("*.npy"):
        strip.write_bytes(strip.read_bytes()[:100])  # as after a power cut
    report = explain(scene, out, model, "all", resume=True)
    assert report.resumed_from_row == 0  # type: ignore[attr-defined]
    assert out.read_bytes() == (tmp_path / "whole" / "heat.tif").read_bytes()


def test_a_checkpoint_path_with_a_tilde_is_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file
    from test_bad_inputs import TINY, text

    from geocam.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(0)
    spec = load_config(text(tmp_path / "plain.yaml", TINY)).spec
    save_file(build_model(spec).state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "configs").mkdir()
    preset = load_config(
        text(tmp_path / "configs" / "c.yaml", TINY + "checkpoint: ~/w.safetensors\n")
    )
    assert preset.spec.checkpoint == tmp_path / "w.safetensors"
