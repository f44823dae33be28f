"""benchmarks/run.py as a smoke test: it runs on the CPU with --device and prints every row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ROW = re.compile(r"^\| (\w+) \| (.+?) \| (.+?) \| (.+?) \| (info|pass|\*\*FAIL\*\*) \|$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[+-]\d+)?( s| MP/s|x| MiB)?$")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_core_runs_on_the_device_asked_for_and_prints_every_row() -> None:
    done = run("core", "--smoke", "--device", "cpu", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "- device: cpu" in lines
    rows = {m[2]: m[3] for line in lines if (m := ROW.match(line)) and m[1] == "core"}
    assert len(rows) == 22, rows
    assert all(NUMBER.match(value) for value in rows.values()), rows
    # explanation against plain prediction on the same tiles, and both as throughput
    assert rows["geocam one class / NCHW forward"].endswith("x")
    for name in ("forward pass (prediction), NCHW", "geocam one class (explanation), same tiles"):
        value = rows[f"throughput, {name}"]
        assert value.endswith(" MP/s") and float(value.split()[0]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: --device cuda would run")
def test_a_device_that_is_not_there_is_one_line_not_a_cpu_run() -> None:
    done = run("core", "--smoke", "--device", "cuda", "--repeats", "1")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == "benchmarks: error: --device cuda: CUDA is not available here\n"


def test_groups_that_measure_the_cpu_say_so_under_another_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common
    import run as runner  # noqa: F401  (registers every group)

    monkeypatch.setattr(common, "device_line", lambda device: str(device))
    lines = common.header(common.Settings(1, True, "cuda:0"), list(common.GROUPS))
    cpu_only = {name for name in common.GROUPS if f"`{name}`: **on the CPU, not cuda:0" in
                "\n".join(line for line in lines if line.startswith(f"- `{name}`"))}  # fmt: skip
    assert cpu_only == {"memory", "nodata", "agreement"}
    assert "- device: cuda:0" in lines
