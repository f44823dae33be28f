"""The maths of the scene passes, one batch of tiles at a time: pure tensor functions.

Scene-consistent weights are sums over the scene's feature cells, split into per-tile partial
sums that add up to the untiled value. Every tile covers its *core* (the cores partition the
scene) plus an overlap; a cell's share of a tile is the fraction of its pixels inside that
tile's core, so the shares of one cell over all tiles sum to one.

- Grad-CAM is linear in the gradient: a tile scores only its core's region pixels and sums the
  gradient over all its cells (exact when the overlap holds the context of the core's pixels).
- Grad-CAM++ is not: alpha needs each cell's *total* gradient. A tile scores its whole region
  and sums ``relu(G) * alpha(G)`` over its cells weighted by their core shares (exact when the
  overlap holds the context of the core's cells).
- Its activation sums (pass 0) are share-weighted sums of the activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geocam.cam import gradcam_pp_terms
from geocam.methods import Method


def core_shares(cores: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """The share of each feature cell inside its tile's core: ``(B, h, w)`` in [0, 1].

    ``cores`` are ``(B, H, W)`` bool masks on the padded tiles, whose sides are whole numbers
    of cells; each cell is the mean of its block of pixels.
    """
    height, width = cores.shape[-2:]
    if height % cells[0] or width % cells[1]:
        raise ValueError(f"tile {height} x {width} is not a whole number of {cells} cells")
    block = (height // cells[0], width // cells[1])
    return F.avg_pool2d(cores[:, None].to(torch.float64), block)[:, 0]


def activation_sums(activations: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Per-tile, share-weighted activation sums ``(B, C)`` (float64): pass 0 of Grad-CAM++."""
    return torch.einsum("bchw,bhw->bc", activations.to(torch.float64), shares)


def weight_sums(
    method: Method,
    gradients: torch.Tensor,
    shares: torch.Tensor,
    scene_activation_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-tile partial sums ``(B, K, C)`` (float64) of the scene's channel weights.

    ``gradcam``: ``gradients`` ``(B, K, C, h, w)`` are those of each tile's *core* region
    score, summed over every cell (the shares are not used). ``gradcam++``: the gradients of
    the tile's *whole* region score, whose terms are weighted by the cells' core ``shares``
    ``(B, h, w)``, with the scene's activation sums ``(C,)``.
    """
    grads = gradients.to(torch.float64)
    if method == "gradcam":
        return grads.sum(dim=(-2, -1))
    if method == "gradcam++":
        if scene_activation_sums is None:
            raise ValueError("gradcam++ needs the scene's activation sums")
        sums = scene_activation_sums.to(grads)[None].expand(grads.shape[0], -1)
        return torch.einsum("bkchw,bhw->bkc", gradcam_pp_terms(grads, sums), shares)
    raise ValueError(f"{method} has no scene weights")


def scene_weights(method: Method, total: torch.Tensor, cells: float) -> torch.Tensor:
    """The scene's channel weights ``(K, C)`` from the summed partials.

    Grad-CAM's weight is the gradient's mean over the scene's ``cells`` (a fraction where the
    scene's side is not a whole number of cells); Grad-CAM++'s is the sum itself.
    """
    return total / cells if method == "gradcam" else total
