"""The pass maths of geocam.scene.passes, fed hand-made tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geocam.blend import block_sum
from geocam.cam import channel_weights, gradcam_pp_terms
from geocam.scene import passes


def test_core_shares_by_hand() -> None:
    # an 8 x 8 tile of 2 x 2 cells (4 px each way); the core is rows 0-5 and columns 0-2
    core = torch.zeros(1, 8, 8, dtype=torch.bool)
    core[0, :6, :3] = True
    shares = passes.core_shares(core, (2, 2))
    expected = [[12 / 16, 0], [6 / 16, 0]]  # 4 x 3 px of the first cell, 2 x 3 px below it
    np.testing.assert_array_equal(shares[0].numpy(), expected)
    with pytest.raises(ValueError, match="whole number"):
        passes.core_shares(core, (3, 2))


def test_gradcam_pp_terms_by_hand() -> None:
    # one channel, two cells: G = 1 and G = -2, sum(A) = 2 over the map
    gradients = torch.tensor([1.0, -2.0], dtype=torch.float64).view(1, 1, 1, 1, 2)
    terms = gradcam_pp_terms(gradients, torch.tensor([[2.0]], dtype=torch.float64))
    # alpha = G^2 / (2 G^2 + sum(A) G^3 + 1e-6): 1 / (2 + 2 + 1e-6) for G = 1; relu(-2) = 0
    np.testing.assert_allclose(terms.flatten().numpy(), [1 / (4 + 1e-6), 0.0], rtol=1e-15)


def split_scene(width: int = 6) -> tuple[slice, slice, torch.Tensor, torch.Tensor]:
    """Two tiles over a row of ``width`` cells, overlapping by cells 2-3, the core boundary
    in the middle of cell 3: the shares of every cell over both tiles sum to one."""
    first, second = slice(0, 4), slice(2, width)
    share_first = torch.tensor([[[1.0, 1.0, 1.0, 0.5]]], dtype=torch.float64)
    share_second = torch.tensor([[[0.0, 0.5, 1.0, 1.0]]], dtype=torch.float64)
    return first, second, share_first, share_second


def test_gradcam_pp_partials_add_up_to_the_untiled_weights() -> None:
    # with each cell's *total* gradient in both tiles (an overlap that covers the context),
    # the share-weighted partial sums are exactly the untiled Grad-CAM++ weights
    generator = torch.Generator().manual_seed(0)
    acts = torch.rand(1, 5, 1, 6, generator=generator, dtype=torch.float64)
    grads = torch.randn(1, 2, 5, 1, 6, generator=generator, dtype=torch.float64)
    first, second, share_first, share_second = split_scene()
    sums = passes.activation_sums(acts[..., first], share_first) + passes.activation_sums(
        acts[..., second], share_second
    )
    np.testing.assert_allclose(sums[0].numpy(), acts.sum(dim=(-2, -1))[0].numpy(), rtol=1e-14)
    total = passes.weight_sums("gradcam++", grads[..., first], share_first, sums[0])
    total += passes.weight_sums("gradcam++", grads[..., second], share_second, sums[0])
    expected = channel_weights("gradcam++", acts, grads)
    assert expected is not None
    np.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=1e-13)
    # summing alpha over each tile's *partial* gradients (the old decomposition) does not
    partial = grads.clone()
    partial[..., 3] *= 0.5
    wrong = channel_weights("gradcam++", acts, partial, sums)
    assert wrong is not None and not torch.allclose(wrong, expected, rtol=1e-3)


def test_gradcam_partials_are_core_gradients_summed_over_all_cells() -> None:
    # Grad-CAM is linear: each tile's gradient of its own core's score, summed over all of its
    # cells, adds up to the scene's gradient sum; divided by the scene's cells, the mean
    generator = torch.Generator().manual_seed(1)
    grads_a = torch.randn(1, 1, 3, 2, 4, generator=generator, dtype=torch.float64)
    grads_b = torch.randn(1, 1, 3, 2, 4, generator=generator, dtype=torch.float64)
    unused = torch.zeros(1, 2, 4, dtype=torch.float64)
    total = passes.weight_sums("gradcam", grads_a, unused) + passes.weight_sums(
        "gradcam", grads_b, unused
    )
    weights = passes.scene_weights("gradcam", total[0], cells=8.0)
    expected = (grads_a + grads_b).sum(dim=(-2, -1))[0] / 8
    np.testing.assert_allclose(weights.numpy(), expected.numpy(), rtol=1e-14)
    assert torch.equal(passes.scene_weights("gradcam++", total[0], cells=8.0), total[0])
    with pytest.raises(ValueError, match="activation sums"):
        passes.weight_sums("gradcam++", grads_a, unused)


def test_block_sum_by_hand() -> None:
    values = np.arange(15, dtype=np.float64).reshape(3, 5)
    # 2 x 2 blocks, the last row and column partial
    expected = [[0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9], [10 + 11, 12 + 13, 14]]
    np.testing.assert_array_equal(block_sum(values, 2), expected)
    assert block_sum(values[None], 2).shape == (1, 2, 3)


def test_predicted_region_record_reads_back_by_tile_and_is_removed() -> None:
    from rasterio.windows import Window

    from geocam.scene.predicted import PredictedRegion

    record = PredictedRegion(2, 5, 7)
    folder = record._folder.name
    values = np.zeros((2, 3, 4), np.uint8)
    values[1, 1:, 2:] = 1
    record.record(Window(3, 2, 4, 3), values)  # a core: rows 2-4, columns 3-6
    read = record.read(Window(2, 1, 5, 4), (6, 8))  # a tile over it, padded to 6 x 8
    expected = np.zeros((2, 6, 8), np.float32)
    expected[1, 2:4, 3:5] = 1  # scene rows 3-4, columns 5-6
    np.testing.assert_array_equal(read, expected)
    record.close()
    assert not Path(folder).exists()
