"""The example notebooks run end to end and show what they claim to show.

Each notebook is executed with nbclient in the ``python3`` kernel (ipykernel's own kernelspec,
launched with this interpreter) from an empty temporary working directory: any cell error
fails the test, and the outputs must hold the figures and the metric lines the text refers to.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHARED_DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.slow

NUMBER = r"(-?\d+(?:\.\d+)?)"


def execute(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Run a notebook in ``cwd``; return its printed text and how many PNG figures it made."""
    monkeypatch.setenv("GEOCAM_ROOT", str(ROOT))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text, figures = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream" and output.name == "stdout":
                text.append(output.text)
            data = output.get("data", {})
            figures += "image/png" in data
            text.append(data.get("text/plain", ""))
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "the notebook wrote files"
    assert not any(cwd.iterdir()), f"the notebook left files in its cwd: {list(cwd.iterdir())}"
    return "".join(text), figures


def metric(text: str, pattern: str) -> list[float]:
    """Every number captured by ``pattern`` (multi-line mode) in the printed text; at least one."""
    found = re.findall(pattern, text, re.M)  # strings, or tuples with several groups
    values = [float(v) for item in found for v in (item if isinstance(item, tuple) else [item])]
    assert values, f"no line matching {pattern!r} in the notebook's output"
    assert all(math.isfinite(v) for v in values)
    return values


def test_why_deforestation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, figures = execute("01_why_deforestation.ipynb", tmp_path, monkeypatch)
    assert figures >= 4  # heat overlay, signed map, hotspots, polygon comparison
    # the predicted-mask run against the polygon runs (Grad-CAM and HiResCAM)
    (r,) = metric(text, r"Pearson r between the two positive maps: " + NUMBER)
    assert -1 <= r <= 1
    inside = metric(text, r"heat share inside the polygon " + NUMBER)
    assert len(inside) == 3 and all(0 <= s <= 1 for s in inside)
    assert re.search(r"hotspots: \d+ polygon", text)
    near = metric(text, r"near water .*: " + r".* ".join([NUMBER] * 3) + r" of the positive")
    assert len(near) == 3 and all(0 <= s <= 1 for s in near)
    assert "positive >= max(signed, 0) everywhere: True" in text
    assert "temporary outputs removed: True" in text


def test_landcover_forest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED_DATA / "raleigh" / "nc_landclass_strata_uint8.tif").is_file():
        pytest.skip(f"the Raleigh ground truth is not in {SHARED_DATA}")
    text, figures = execute("02_landcover_forest.ipynb", tmp_path, monkeypatch)
    assert figures >= 3  # heat on the scene, three layers, scene vs tile weights
    pattern = r"ground-truth forest: heat share [\d.]+, area share [\d.]+, concentration "
    ratios = metric(text, pattern + NUMBER)
    assert all(r > 0 for r in ratios)
    for name in ("last encoder stage", "previous encoder stage", "decoder block"):
        assert re.search(rf"^{name}\s+\S+\s+\d+\s+{NUMBER}\s+{NUMBER}$", text, re.M), name
    # the correlations of scene weights, tile weights and the untiled map, tiles of 256
    rows = metric(text, r"^256/64\s+" + r"\s+".join([NUMBER] * 3) + "$")
    assert len(rows) == 3 and all(-1 <= r <= 1 for r in rows)
    assert "temporary outputs removed: True" in text
