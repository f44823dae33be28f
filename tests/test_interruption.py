"""Real processes stopped mid-run: SIGKILL, SIGINT, a full disk; then ``--resume``.

Each run is a separate ``python -m geocam`` process on a tall synthetic scene, watched until
its journal holds a heatmap strip and then signalled: nothing may appear at the destination,
and ``--resume`` must finish it with files bitwise identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from safetensors.torch import save_file

from geocam import ModelSpec, build_model

pytestmark = pytest.mark.slow
SPEC = ModelSpec(
    "Unet", "resnet18", 3, ("a", "b"), options={"encoder_depth": 3, "decoder_channels": [16, 8, 8]}
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3072 x 128 scene (six 512-row strips) and a config with seeded weights."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:3072, 0:128]
    base = 120 + 60 * np.sin(rows / 41.0) * np.cos(cols / 19.0)
    data = np.clip([base + 15 * rng.standard_normal(base.shape) for _ in range(3)], 1, 255)
    scene = folder / "scene.tif"
    profile = {
        "driver": "GTiff", "width": 128, "height": 3072, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": Affine(10, 0, 400000, 0, -10, 5200000), "nodata": 0,
    }  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data.astype(np.uint8))
    torch.manual_seed(0)
    save_file(build_model(SPEC).state_dict(), str(folder / "model.safetensors"))
    config = folder / "model.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tall-test",
                "arch": "Unet",
                "encoder": "resnet18",
                "in_channels": 3,
                "classes": ["a", "b"],
                "normalisation": {"scale": [0.004] * 3, "offset": [0] * 3},
                "checkpoint": "model.safetensors",
                "options": dict(SPEC.options),
            }
        )
    )
    return scene, config


def command(inputs: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    """The run every test starts, stopped or not.

    Bitwise equality across these processes holds by construction: each process has the same
    environment on the same machine (so the same torch thread count and kernels), and a
    resumed run feeds the network the same tiles in the same batches (one tile each here) as
    an uninterrupted one, so every kernel sees the same shapes and inputs.
    """
    scene, config = inputs
    return [
        sys.executable, "-m", "geocam", "explain", str(scene), "-c", str(config), "--class", "a",
        "--class-map", "--tile", "128", "--overlap", "32", "--batch-size", "1", "-o", str(out),
        "--no-qml", *extra,
    ]  # fmt: skip


def run_until_a_strip_is_stored(cmd: list[str], out: Path, stop: signal.Signals) -> str:
    """Start ``cmd``, send ``stop`` once its journal holds a heatmap strip; return stderr."""
    journal = out.with_name(out.name + ".resume")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(journal.glob("heatmap-*.npy")):
        assert process.poll() is None, f"finished before it could be stopped: {process.stderr}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 130), stderr
    return stderr


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "heat.tif"
    subprocess.run(command(inputs, out, "-q"), check=True)
    return outputs(out.parent)


@pytest.mark.parametrize(
    "stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name
)
def test_stopped_run_leaves_nothing_at_the_destination_and_resumes_bitwise(
    stop: signal.Signals, inputs: tuple[Path, Path], uninterrupted: dict, tmp_path: Path
) -> None:
    out = tmp_path / "heat.tif"
    stderr = run_until_a_strip_is_stored(command(inputs, out), out, stop)
    left = sorted(p.name for p in tmp_path.iterdir())
    if stop == signal.SIGKILL:  # no chance to clean up: only clearly named scratch files
        scratch = [re.sub(r"\.[0-9a-f]{8}\.partial$", ".RUN.partial", name) for name in left]
        assert scratch == [
            "heat.tif.RUN.partial", "heat.tif.lock", "heat.tif.resume",
            "heat_classes.tif.RUN.partial", "heat_classes.tif.lock",
        ]  # fmt: skip
    else:  # a clean stop with one line; the journal stays for --resume
        assert left == ["heat.tif.resume"]
        lines = stderr.strip().splitlines()
        assert lines[-1].startswith("geocam: interrupted;") and "--resume" in lines[-1]
        assert "Traceback" not in stderr

    resumed = subprocess.run(command(inputs, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: rows above" in resumed.stdout
    assert outputs(tmp_path) == uninterrupted


def limit_file_size(size: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes beyond ``size`` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_disk_filling_up_during_the_write(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "heat.tif"
    result = subprocess.run(
        command(inputs, out, "-q"),
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size(200_000),  # the limit must be the child's only
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert message.startswith("geocam: error: ") and "writing failed" in message
    assert str(tmp_path) in message and "free disk space" in message and "--resume" in message
    assert [p.name for p in tmp_path.iterdir()] == ["heat.tif.resume"]  # the work done is kept


FULL_AT_COMMIT = """
import errno, sys
from geocam.output import GeoTiffWriter, write_failed
write, strips = GeoTiffWriter.write, []
def full(self, row, data):  # the disk fills while the third strip of the heatmap is written
    if self.path.name == "heat.tif":
        strips.append(row)
        if len(strips) == 3:
            raise write_failed(self.partial, OSError(errno.ENOSPC, "No space left on device"))
    write(self, row, data)
GeoTiffWriter.write = full
from geocam.cli import main
sys.argv[0] = "geocam"
main()
"""


def test_a_full_disk_keeps_the_journal_to_resume_once_there_is_room(
    inputs: tuple[Path, Path], uninterrupted: dict, tmp_path: Path
) -> None:
    out = tmp_path / "heat.tif"
    args = command(inputs, out, "-q")[3:]  # after "python -m geocam"
    full = subprocess.run(
        [sys.executable, "-c", FULL_AT_COMMIT, *args], capture_output=True, text=True
    )
    assert full.returncode == 1, full.stderr
    assert full.stderr.count("\n") == 1 and "No space left on device" in full.stderr
    assert "rerun with --resume" in full.stderr
    assert any(journal_of(out).glob("heatmap-*.npy")), full.stderr
    resumed = subprocess.run(command(inputs, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: rows above" in resumed.stdout
    assert outputs(tmp_path) == uninterrupted


def journal_of(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(
    inputs: tuple[Path, Path], uninterrupted: dict, tmp_path: Path
) -> None:
    """Two real processes: the second is refused in one line, the first finishes intact."""
    out = tmp_path / "heat.tif"
    first = subprocess.Popen(
        command(inputs, out, "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not any(journal_of(out).glob("heatmap-*.npy")):  # it holds the lock by now
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # a long run: it holds the lock while the others try
    for extra in ([], ["--overwrite"], ["--resume"]):
        second = subprocess.run(command(inputs, out, "-q", *extra), capture_output=True, text=True)
        assert second.returncode == 1, second.stderr
        assert second.stderr == (
            f"geocam: error: {out}: another geocam run is writing it (pid {first.pid}); "
            "wait for it or choose another --out\n"
        )
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert outputs(tmp_path) == uninterrupted  # nothing of the refused runs mixed in
