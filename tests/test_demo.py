"""The README's first command: the demo explains a real Landsat tile."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocam import demo


def test_demo_explains_a_real_tile(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo.main(shared_data)
    lines = capsys.readouterr().out.splitlines()
    assert "layer encoder.layer4, map (8, 8)" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:]}
    assert list(rows) == list(demo.CLASSES)
    assert sum(int(r[0]) for r in rows.values()) == 256 * 256  # the tile has no nodata


def test_demo_without_data_says_where(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not found; pass the shared data folder"):
        demo.main(tmp_path)
