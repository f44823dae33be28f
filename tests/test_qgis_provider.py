"""The QGIS Processing provider: geocam describes itself, QGIS runs it (qgis_process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geocam.cli import cli, explain
from tests.test_qgis import PUCALLPA, ROOT, qgis, qgis_missing

CONFIG = ROOT / "configs" / "deforestation_pucallpa.yaml"


def described() -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["describe", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["commands"]  # type: ignore[no-any-return]


def test_describe_is_click_in_both_directions() -> None:
    explain_ = described()["explain"]
    params = {p["name"]: p for p in explain_["params"]}
    clicked = {p.name: p for p in explain.params if p.name != "help"}
    assert set(params) == set(clicked)  # nothing missing, nothing invented
    for name, param in clicked.items():
        assert params[name]["flags"] == list(param.opts), name
        assert params[name]["required"] == param.required, name
    assert params["method"]["choices"] == [
        "gradcam", "hirescam", "gradcam++", "layercam",
        "saliency", "inputxgradient", "guided-backprop", "guided-gradcam", "occlusion",
    ]  # fmt: skip
    assert params["qml"]["secondary_flags"] == ["--no-qml"]
    assert "qgis install" in described()


def test_progress_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "explain", *map(str, PUCALLPA), "-c", str(CONFIG), "--class", "deforestation",
        "-o", str(tmp_path / "d.tif"), "--tile", "256", "--overlap", "64", "--progress", "json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines[-1] == {"pass": 2, "passes": 2, "done": 8, "total": 8}
    assert {"pass": 1, "passes": 2, "done": 8, "total": 8} in lines
    steps = [(line["pass"], line["done"]) for line in lines]
    assert steps == sorted(steps)


def test_qgis_install_refuses_a_missing_executable(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "qgis", "install", "--profile", str(tmp_path), "--executable", str(tmp_path / "nope"),
    ])  # fmt: skip
    assert result.exit_code == 1 and "geocam: error: --executable" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose default QGIS profile has the provider (via ``geocam qgis install``)."""
    if qgis_missing():
        pytest.skip(str(qgis_missing()))
    home = tmp_path_factory.mktemp("home")
    executable = shutil.which("geocam") or str(Path(sys.executable).with_name("geocam"))
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    result = CliRunner().invoke(
        cli, ["qgis", "install", "--profile", str(profile), "--executable", executable]
    )
    assert result.exit_code == 0, result.output
    ini = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert "geocam_provider=true" in ini and f"GEOCAM_EXECUTABLE={executable}" in ini
    return home


@pytest.mark.slow
def test_provider_shows_every_option(installed: Path) -> None:
    plugins = next(installed.rglob("plugins"))
    (provider,) = qgis({"op": "provider", "plugins": str(plugins)})
    options = described()["explain"]["params"]
    expected = {
        "SOURCES" if p["kind"] == "argument"
        else next(f for f in p["flags"] if f.startswith("--"))[2:].replace("-", "_").upper()
        for p in options if p["name"] != "progress_format"  # the provider sets --progress json
    }  # fmt: skip
    assert set(provider["explain"]) == expected  # both directions


def qgis_process(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if binary is None:
        pytest.skip("qgis_process is not installed (Debian's qgis package)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # QGIS's own
    env |= {"HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}
    # QGIS's embedded Python finds its home from the first python3 on PATH: the system's
    env["PATH"] = os.pathsep.join(["/usr/bin", env.get("PATH", "")])
    return subprocess.run(
        [binary, "run", "geocam:explain", "--", *args], capture_output=True, text=True,
        timeout=600, env=env, cwd=home,
    )  # fmt: skip


@pytest.mark.slow
def test_qgis_process_writes_what_the_cli_writes(installed: Path, tmp_path: Path) -> None:
    common = ["--tile", "256", "--overlap", "64", "--hotspots"]
    # the command line in a process of its own, as qgis_process runs it: the same threads and
    # kernels (an in-process run inherits whatever earlier tests set in this process)
    result = subprocess.run([
        sys.executable, "-m", "geocam", "explain", *map(str, PUCALLPA), "-c", str(CONFIG),
        "--class", "deforestation", "-o", str(tmp_path / "cli.tif"), "-q", *common,
    ], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    done = qgis_process(
        installed, *(f"SOURCES={p}" for p in PUCALLPA), f"CONFIG={CONFIG}",
        "CLASS=deforestation", f"OUT={tmp_path / 'qgis.tif'}", "TILE=256", "OVERLAP=64",
        "HOTSPOTS=true",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "geocam explain" in done.stdout and "--progress json" in done.stdout  # the command
    with rasterio.open(tmp_path / "cli.tif") as a, rasterio.open(tmp_path / "qgis.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform and a.count == b.count
        np.testing.assert_array_equal(a.read(), b.read())
    for suffix in (".qml", ".qmd", "_hotspots.gpkg", "_hotspots.qml"):
        assert (tmp_path / f"qgis{suffix}").exists()


@pytest.mark.slow
def test_qgis_process_reports_geocams_error(installed: Path, tmp_path: Path) -> None:
    done = qgis_process(
        installed, *(f"SOURCES={p}" for p in PUCALLPA), f"CONFIG={CONFIG}",
        "CLASS=forest", f"OUT={tmp_path / 'q.tif'}",
    )  # fmt: skip
    assert done.returncode != 0
    assert "geocam: error: unknown class 'forest'" in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []
