"""Region weights: predicted masks, thresholds, boxes, masks, nodata at other resolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.windows import Window

from geocam import Box, GeocamError
from geocam.regions import region_weights, valid_at

# two classes on a 2 x 3 output; softmax winners: [[0, 1, 1], [0, 0, 1]]
LOGITS = torch.tensor([[[[2.0, 0.0, -1.0], [1.0, 3.0, 0.0]], [[0.0, 0.5, 1.0], [0.0, 1.0, 2.0]]]])
CLASSES = torch.tensor([[0, 1]])


def test_predicted_is_the_argmax() -> None:
    weights = region_weights("predicted", LOGITS, CLASSES)
    assert weights[0, 0].tolist() == [[1, 0, 0], [1, 1, 0]]
    assert weights[0, 1].tolist() == [[0, 1, 1], [0, 0, 1]]


def test_predicted_with_threshold_uses_probabilities() -> None:
    # p1 = sigmoid(l1 - l0): [[.12, .62, .88], [.27, .12, .88]]
    weights = region_weights("predicted", LOGITS, CLASSES[:, 1:], threshold=0.7)
    assert weights[0, 0].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_sigmoid_for_single_channel_outputs() -> None:
    weights = region_weights("predicted", LOGITS[:, :1], torch.tensor([[0]]))
    assert weights[0, 0].tolist() == [[1, 0, 0], [1, 1, 0]]  # logit > 0 <=> p > 0.5


def test_box_all_and_masks() -> None:
    box = region_weights(Box(0, 1, 1, 3), LOGITS, CLASSES)
    assert box[0, 1].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert region_weights("all", LOGITS, CLASSES).sum() == 12
    mask = np.array([[0.5, 0, 0], [0, 0, 2]], dtype=np.float32)
    weights = region_weights(mask, LOGITS, CLASSES)
    assert weights.shape == (1, 2, 2, 3) and weights[0, 1, 1, 2] == 2
    per_class = region_weights(torch.ones(1, 2, 2, 3, dtype=torch.bool), LOGITS, CLASSES)
    assert per_class.dtype == torch.float32 and per_class.sum() == 12


def test_nodata_zeroes_any_region() -> None:
    valid = torch.tensor([[True, True, False], [True, False, True]])
    weights = region_weights("all", LOGITS, CLASSES, valid=valid)
    assert weights[0, 0].tolist() == [[1, 1, 0], [1, 0, 1]]


def test_valid_mask_at_a_finer_resolution_is_min_pooled() -> None:
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 3, 0] = False
    assert valid_at(valid, 1, (2, 2))[0].tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize(
    ("region", "message"),
    [
        (torch.ones(3, 3), r"region mask is \(3, 3\) pixels but the network output is \(2, 3\)"),
        (torch.ones(2, 2, 3), "2 images but the batch has 1"),
        (torch.ones(1, 3, 2, 3), r"expected \(H, W\)"),
        (Box(0, 0, 3, 3), "outside the 2 x 3 output"),
    ],
)
def test_region_mistakes(region: object, message: str) -> None:
    with pytest.raises(GeocamError, match=message):
        region_weights(region, LOGITS, CLASSES)  # type: ignore[arg-type]


def test_invalid_box() -> None:
    with pytest.raises(GeocamError, match="row_start < row_stop"):
        Box(2, 0, 1, 3)


def test_a_lonlat_mask_shifted_by_five_pixels_is_warped(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    from geocam.region_sources import MaskRegion
    from geocam.sources import Grid

    scene = Affine(1e-6, 0, -78.9, 0, -1e-6, 35.8)  # 1e-6 deg (~0.1 m) pixels
    mask = np.zeros((8, 16), dtype=np.uint8)
    mask[:, 2:4] = 1  # columns 2-3 of the mask: columns 7-8 of the scene
    shifted = scene @ Affine.translation(5, 0)  # 5e-6 deg east: below Affine's 1e-5
    path = tmp_path / "mask.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=16, height=8, count=1, dtype="uint8",
        crs="EPSG:4326", transform=shifted,
    ) as dst:  # fmt: skip
        dst.write(mask, 1)
    region = MaskRegion(path, Grid(CRS.from_epsg(4326), scene, 16, 8))
    expected = np.zeros((8, 16), dtype=np.float32)
    expected[:, 7:9] = 1
    np.testing.assert_array_equal(region.read(Window(0, 0, 16, 8)), expected)
