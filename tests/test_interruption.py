"""Real processes stopped mid-run: SIGKILL, SIGINT, a full disk; then ``--resume``.

Each run is a separate ``python -m geocam`` process on a tall synthetic scene, watched until
its journal holds a heatmap strip and then signalled: nothing may appear at the destination,
and ``--resume`` must finish it with files bitwise identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
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
    assert process.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 130)
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
    if stop == signal.SIGKILL:  # no chance to clean up: only clearly named partial files
        assert left == ["heat.tif.partial", "heat.tif.resume", "heat_classes.tif.partial"]
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
    assert str(tmp_path) in message and "free disk space" in message
    assert list(tmp_path.iterdir()) == []
