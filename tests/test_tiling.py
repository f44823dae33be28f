"""Tile layouts, blend weights and cores: hand-checked examples and properties."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import xy
from rasterio.windows import Window

from geocam import GeocamError
from geocam.tiling import TileLayout, native_transform


def up(j: float, length: int) -> float:
    """The raised-cosine ramp up over an overlap of ``length`` pixels, at its pixel ``j``."""
    return 0.5 - 0.5 * math.cos(math.pi * (j + 0.5) / length)


def column_weights(width: int, tile: int, overlap: int) -> list[np.ndarray]:
    """The 1-D weights of every tile along an axis (a one-row scene, multiple 1)."""
    layout = TileLayout.plan(1, width, tile, overlap, multiple=1)
    return [layout.blend_weights(window)[0] for window in layout.windows()]


# --- hand-checked examples -----------------------------------------------------------------


def test_offsets_by_hand() -> None:
    layout = TileLayout.plan(1000, 1000, 512, 128)
    assert layout.stride == 384
    # 768 + 512 > 1000: the last tile goes to the edge, 1000 - 512 = 488 rounded up to the
    # network's 32-pixel cell grid, and sticks out by 24 pixels (reflect-padded)
    assert layout.offsets(1000) == [0, 384, 512]
    layout = TileLayout.plan(489, 443, 256, 64)
    assert layout.offsets(489) == [0, 192, 256]
    assert layout.offsets(443) == [0, 192]
    assert layout.offsets(256) == [0]
    assert layout.offsets(257) == [0, 32]
    assert TileLayout.plan(10, 10, 6, 3, multiple=1).offsets(10) == [0, 3, 4]


def test_windows_by_hand() -> None:
    layout = TileLayout.plan(489, 443, 256, 64)
    assert layout.windows() == [  # Window(col_off, row_off, width, height)
        Window(0, 0, 256, 256),
        Window(192, 0, 251, 256),
        Window(0, 192, 256, 256),
        Window(192, 192, 251, 256),
        Window(0, 256, 256, 233),
        Window(192, 256, 251, 233),
    ]
    assert layout.row_groups() == [layout.windows()[i : i + 2] for i in (0, 2, 4)]
    assert [layout.rows_final_after(g) for g in range(3)] == [192, 256, 489]
    assert all(layout.padded_shape(window) == (256, 256) for window in layout.windows())


def test_cores_by_hand() -> None:
    layout = TileLayout.plan(489, 443, 256, 64)
    # rows: ends 256, 448, 489 -> bounds 0, (192 + 256) // 2, (256 + 448) // 2, 489
    # cols: ends 256, 443 -> bounds 0, (192 + 256) // 2, 443
    assert [layout.core(window) for window in layout.windows()] == [
        Window(0, 0, 224, 224),
        Window(224, 0, 219, 224),
        Window(0, 224, 224, 128),
        Window(224, 224, 219, 128),
        Window(0, 352, 224, 137),
        Window(224, 352, 219, 137),
    ]


def test_scene_smaller_than_tile() -> None:
    layout = TileLayout.plan(300, 200, 512)
    assert layout.windows() == [Window(0, 0, 200, 300)]
    (window,) = layout.windows()
    assert layout.padded_shape(window) == (320, 224)
    assert layout.core(window) == window
    assert layout.rows_final_after(0) == 300
    np.testing.assert_array_equal(layout.blend_weights(window), np.ones((300, 200), np.float32))


def test_tile_rounded_up_to_multiple() -> None:
    assert TileLayout.plan(1000, 1000, tile=500).tile == 512
    assert TileLayout.plan(1000, 1000, tile=512).tile == 512
    assert TileLayout.plan(1000, 1000, tile=500, overlap=0, multiple=1).tile == 500
    assert TileLayout.plan(1000, 1000, tile=20, overlap=0, multiple=16).tile == 32
    # the overlap is checked against the rounded tile
    assert TileLayout.plan(1000, 1000, tile=500, overlap=480).overlap == 480


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tile": 512, "overlap": 600},
            "Tiling.overlap (600) must be smaller than the tile (512): "
            "lower Tiling.overlap or raise Tiling.tile",
        ),
        (
            {"tile": 500, "overlap": 512},
            "Tiling.overlap (512) must be smaller than the tile (512): "
            "lower Tiling.overlap or raise Tiling.tile",
        ),
        (
            {"tile": 512, "overlap": 100},
            "tile - overlap (512 - 100) must be a multiple of the network's 32 px so tiles share"
            " its cell grid: use Tiling.overlap 96 or 128",
        ),
        ({"tile": 0}, "Tiling.tile (0) must be at least 1: raise Tiling.tile"),
        ({"tile": -64}, "Tiling.tile (-64) must be at least 1: raise Tiling.tile"),
        ({"overlap": -1}, "Tiling.overlap (-1) must be at least 0: raise Tiling.overlap"),
        (
            {"multiple": 0, "overlap": 0},
            "the network's input multiple (0) must be at least 1: check the model",
        ),
        ({"height": 0}, "scene size (0 x 100) must be at least 1 x 1 pixel"),
        ({"width": -3}, "scene size (100 x -3) must be at least 1 x 1 pixel"),
    ],
)
def test_plan_errors(kwargs: dict[str, int], message: str) -> None:
    arguments = {"height": 100, "width": 100, **kwargs}
    with pytest.raises(GeocamError, match=re.escape(message)) as caught:
        TileLayout.plan(**arguments)
    assert "\n" not in str(caught.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(GeocamError, match=r"tile \(500\) must be a multiple of 32"):
        TileLayout(100, 100, 500, 0, 32)
    with pytest.raises(GeocamError, match="must be smaller than the tile"):
        TileLayout(100, 100, 64, 64, 32)


def test_foreign_window_and_row_group_rejected() -> None:
    layout = TileLayout.plan(1000, 1000, 512, 128)
    with pytest.raises(ValueError, match="not a window"):
        layout.blend_weights(Window(1, 0, 512, 512))
    with pytest.raises(ValueError, match="not a window"):
        layout.core(Window(0, 0, 256, 512))
    with pytest.raises(IndexError):
        layout.rows_final_after(3)
    with pytest.raises(IndexError):
        layout.rows_final_after(-1)


def test_blend_weights_two_tiles_by_hand() -> None:
    # length 10, tile 6, overlap 2: offsets [0, 4], the tiles share pixels 4 and 5 (L = 2)
    first, second = column_weights(10, 6, 2)
    a, b = up(0, 2), up(1, 2)  # 0.146..., 0.853...
    assert a == pytest.approx(0.5 - 0.5 * math.cos(math.pi / 4))
    np.testing.assert_allclose(first, [1, 1, 1, 1, b, a], rtol=1e-6)
    np.testing.assert_allclose(second, [a, b, 1, 1, 1, 1], rtol=1e-6)
    total = np.zeros(10)
    total[0:6] += first
    total[4:10] += second
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_blend_weights_three_tiles_by_hand() -> None:
    # length 10, tile 6, overlap 3: offsets [0, 3, 4] (last snapped), ends [6, 9, 10].
    # tile 0 ramps down over [3, 6) (L = 3); tile 1 ramps up over [3, 6) (L = 3) and down over
    # [4, 9) (L = 5); tile 2 ramps up over [4, 9) (L = 5). Pixels 4 and 5 lie in all three.
    first, second, third = column_weights(10, 6, 3)
    # pixel 3: tiles 0 and 1 only, raw weights already sum to one
    assert first[3] == pytest.approx(up(2, 3), rel=1e-6)
    assert second[0] == pytest.approx(up(0, 3), rel=1e-6)
    # pixel 4: raw 0.5 | 0.5 * (down over L = 5 at its pixel 0) | (up over L = 5 at pixel 0)
    raw = [up(1, 3), up(1, 3) * up(4, 5), up(0, 5)]
    assert sum(raw) == pytest.approx(1.01224, abs=1e-5)  # hence the normalisation
    expected = [r / sum(raw) for r in raw]
    assert [first[4], second[1], third[0]] == pytest.approx(expected, rel=1e-6)
    # unshared pixels weigh 1, and the right end faces the border: no taper there
    assert list(first[:3]) == [1, 1, 1]
    assert list(third[-1:]) == [1]
    total = np.zeros(10)
    for offset, weights in zip([0, 3, 4], [first, second, third], strict=True):
        total[offset : offset + 6] += weights
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_blend_weights_are_fresh_float32_arrays() -> None:
    layout = TileLayout.plan(1000, 700, 512, 128)
    window = layout.windows()[-1]
    weights = layout.blend_weights(window)
    assert weights.dtype == np.float32
    assert weights.shape == (488, 508)  # the last tile, clipped to the scene
    weights[:] = 7  # must not corrupt the cached 1-D weights
    assert layout.blend_weights(window).max() == 1


def test_native_transform_by_hand() -> None:
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)
    native = native_transform(transform, 32)
    assert native == Affine(320.0, 0.0, 500_000.0, 0.0, -320.0, 4_600_000.0)
    assert native_transform(transform, 1) == transform
    sheared = Affine(2.0, 0.5, 10.0, -0.25, -3.0, 20.0)
    assert native_transform(sheared, 4) == Affine(8.0, 2.0, 10.0, -1.0, -12.0, 20.0)


# --- properties ----------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn, max_size: int, max_tiles_per_axis: int) -> TileLayout:
    """Any scene up to ``max_size``, tile in [32, 1024], multiple in {1, 8, 16, 32}, overlap in
    [0, tile - 1], except that the stride is kept large enough for about ``max_tiles_per_axis``
    tiles per axis (so a 3000-pixel scene does not get millions of 32-pixel tiles)."""
    height = draw(st.integers(1, max_size))
    width = draw(st.integers(1, max_size))
    multiple = draw(st.sampled_from([1, 8, 16, 32]))
    tile = draw(st.integers(32, 1024))
    rounded = -(-tile // multiple) * multiple
    min_stride = max(1, -(-(max(height, width) - rounded) // (max_tiles_per_axis - 2)))
    # the stride (tile - overlap) is a whole number of the network's cells
    strides = range(-(-min_stride // multiple) * multiple, rounded + 1, multiple)
    stride = draw(st.sampled_from(strides)) if strides else rounded
    return TileLayout.plan(height, width, tile, rounded - stride, multiple)


@settings(max_examples=200, deadline=None)
@given(layouts(max_size=3000, max_tiles_per_axis=64))
def test_windows_cover_the_scene(layout: TileLayout) -> None:
    rows, cols = layout.offsets(layout.height), layout.offsets(layout.width)
    for offsets, length in ((rows, layout.height), (cols, layout.width)):
        assert offsets[0] == 0
        assert all(a < b for a, b in pairwise(offsets))  # strictly increasing
        assert all(b - a <= layout.stride for a, b in pairwise(offsets))
        assert all(o % layout.multiple == 0 for o in offsets)  # on the cell grid
        assert length <= offsets[-1] + layout.tile  # the last tile reaches the edge ...
        if len(offsets) > 1:  # ... and sticks out by less than one cell
            assert offsets[-1] + layout.tile - layout.multiple < length
        count = np.zeros(length, np.int32)
        for offset in offsets:
            count[offset : offset + layout.tile] += 1
        assert count.min() >= 1
    # windows are the row-major grid of those offsets, clipped to the scene, so each 2-D pixel
    # is covered too
    windows = layout.windows()
    assert windows == [
        Window(c, r, min(layout.tile, layout.width - c), min(layout.tile, layout.height - r))
        for r in rows
        for c in cols
    ]
    for window in windows:
        assert window.row_off >= 0 and window.row_off + window.height <= layout.height
        assert window.col_off >= 0 and window.col_off + window.width <= layout.width
        height, width = layout.padded_shape(window)
        assert height % layout.multiple == 0 and height - layout.multiple < window.height
        assert width % layout.multiple == 0 and width - layout.multiple < window.width
    finals = [layout.rows_final_after(g) for g in range(len(layout.row_groups()))]
    assert all(a <= b for a, b in pairwise(finals))
    assert finals[-1] == layout.height


@settings(max_examples=200, deadline=None)
@given(layouts(max_size=600, max_tiles_per_axis=8))
def test_weights_sum_to_one_and_cores_partition(layout: TileLayout) -> None:
    shape = (layout.height, layout.width)
    coverage = np.zeros(shape, np.int32)
    cores = np.zeros(shape, np.int32)
    total = np.zeros(shape)
    for window in layout.windows():
        inside = window.toslices()
        coverage[inside] += 1
        weights = layout.blend_weights(window)
        assert weights.shape == (window.height, window.width)
        assert weights.dtype == np.float32
        assert weights.min() >= 0 and weights.max() <= 1
        total[inside] += weights
        core = layout.core(window)
        assert core.row_off >= window.row_off and core.col_off >= window.col_off
        assert core.row_off + core.height <= window.row_off + window.height
        assert core.col_off + core.width <= window.col_off + window.width
        cores[core.toslices()] += 1
    assert coverage.min() >= 1
    np.testing.assert_allclose(total, 1, atol=1e-5)
    np.testing.assert_array_equal(cores, 1)
    for window in layout.windows():  # where a tile is alone it has full weight
        alone = coverage[window.toslices()] == 1
        assert np.all(layout.blend_weights(window)[alone] == 1)
    # the streaming writer's flushed rows are complete and no later tile-row touches them
    groups = layout.row_groups()
    for g, group in enumerate(groups):
        final = layout.rows_final_after(g)
        assert all(w.row_off == group[0].row_off for w in group)
        assert all(w.row_off >= final for later in groups[g + 1 :] for w in later)
        assert all(w.row_off + w.height >= final for w in group)


finite = st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False)
pixel = st.floats(1e-6, 1e4).flatmap(lambda size: st.sampled_from([size, -size]))


@st.composite
def transforms(draw: st.DrawFn) -> Affine:
    """North-up transforms, or any transform with rotation or shear."""
    if draw(st.booleans()):
        return Affine(draw(pixel), 0.0, draw(finite), 0.0, draw(pixel), draw(finite))
    matrix = [draw(st.floats(-1e4, 1e4)) for _ in range(4)]
    return Affine(matrix[0], matrix[1], draw(finite), matrix[2], matrix[3], draw(finite))


@settings(max_examples=200, deadline=None)
@given(
    transforms(),
    st.sampled_from([1, 2, 4, 8, 16, 32]),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
)
def test_native_cell_centres_match_source_blocks(
    transform: Affine, stride: int, row: int, col: int
) -> None:
    native = native_transform(transform, stride)
    block_centre = (stride - 1) / 2  # the source block's central pixel, as a fractional index
    expected = xy(transform, row * stride + block_centre, col * stride + block_centre)
    actual = xy(native, row, col)  # offset="center" is the default
    scale = abs(transform.c) + abs(transform.f) + 4e5 * max(map(abs, transform[:6]))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * scale + 1e-300)
    corner = xy(transform, 0, 0, offset="ul")
    assert xy(native, 0, 0, offset="ul") == pytest.approx(corner)
