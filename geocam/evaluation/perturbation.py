"""What a removed pixel is replaced with: the baselines of the removal metrics.

Every baseline is a ``(C, H, W)`` array of raw pixels (as a :class:`Scene` holds them, before
the network's normalisation) from which replaced pixels are taken:

- ``mean``: each band's mean over the scene's valid pixels;
- ``blur``: a Gaussian blur of the scene (normalised convolution: nodata never leaks in);
- ``epoch``: for a network fed several rasters of one place (a bi-temporal pair), the later
  raster's bands replaced by the earlier one's, so a replaced pixel "did not change";
- ``road``: noisy linear imputation (Rong et al. 2022, ROAD): each removed pixel is the
  weighted mean of its 8 neighbours (1/6 for edge neighbours, 1/12 for diagonal ones), solved
  jointly for every removed pixel, plus a little Gaussian noise. It depends on which pixels
  are removed, so it is computed per perturbation (:func:`noisy_linear_imputation`).

Removal metrics leak the removed pixels' *shape* to the network (Rong et al. 2022), which
ROAD's imputation reduces; they also favour blurry maps (Song et al. 2023).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, TypeAlias, get_args

import numpy as np
import torch
import torch.nn.functional as F

from geocam.errors import GeocamError
from geocam.evaluation.scene import Scene
from geocam.evaluation.scores import Occlusion
from geocam.models import ModelSpec

Baseline: TypeAlias = Literal["mean", "blur", "epoch", "road"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)

# ROAD's neighbour weights: edge neighbours 1/6, diagonal ones 1/12 (they sum to 1)
ROAD_WEIGHTS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def band_means(scene: Scene) -> np.ndarray:
    """Each band's mean over the scene's valid pixels, ``(C,)`` float64."""
    if not scene.valid.any():
        raise GeocamError("the scene has no valid pixel: nothing to take a mean of")
    return np.asarray(scene.pixels[:, scene.valid].mean(axis=1, dtype=np.float64))


def mean_fill(scene: Scene) -> np.ndarray:
    """The ``mean`` baseline: every pixel at its band's scene mean, ``(C, H, W)`` float32."""
    means = band_means(scene).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(means[:, None, None], scene.pixels.shape))


def blur_fill(scene: Scene, sigma: float = 10.0) -> np.ndarray:
    """The ``blur`` baseline: a Gaussian blur of ``sigma`` pixels over valid pixels only.

    Normalised convolution, ``blur(x * valid) / blur(valid)``: nodata and the scene's edge
    never pull the values; a pixel with no valid pixel within reach gets the band's mean.
    """
    if not sigma > 0:
        raise GeocamError(f"blur sigma ({sigma}) must be positive: give a width in pixels")
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    valid = torch.from_numpy(scene.valid).to(torch.float32)
    pixels = torch.from_numpy(scene.pixels).to(torch.float32) * valid
    stack = torch.cat([pixels, valid[None]])[:, None]  # (C + 1, 1, H, W)
    rows = F.conv2d(stack, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    both = F.conv2d(rows, kernel.view(1, 1, 1, -1), padding=(0, radius))[:, 0]
    weight = both[-1]
    means = torch.from_numpy(band_means(scene)).to(torch.float32)[:, None, None]
    reach = weight > 1e-6
    blurred = torch.where(reach, both[:-1] / weight.clamp_min(1e-6), means)
    return blurred.to(torch.float32).numpy()


def epoch_groups(spec: ModelSpec) -> tuple[int, ...]:
    """How many bands each stacked raster gives the network (``spec.bands``)."""
    return tuple(len(b) for b in spec.bands)


def epoch_fill(
    scene: Scene, groups: Sequence[int], source: int = 0, target: int = -1
) -> np.ndarray:
    """The ``epoch`` baseline: raster ``target``'s bands replaced by raster ``source``'s.

    ``groups`` gives each stacked raster's band count (:func:`epoch_groups`). For the
    bi-temporal pair (1985, 2020) the defaults put the 1985 pixels in place of the 2020 ones:
    the counterfactual "nothing changed here".
    """
    if len(groups) < 2 or sum(groups) != scene.pixels.shape[0]:
        raise GeocamError(
            f"the epoch baseline needs a network fed two or more rasters (bands per raster: "
            f"{list(groups) or [scene.pixels.shape[0]]}): use the mean or blur baseline"
        )
    count = len(groups)
    source, target = source % count, target % count
    if groups[source] != groups[target] or source == target:
        raise GeocamError(
            f"the epoch baseline replaces raster {target + 1}'s {groups[target]} bands with "
            f"raster {source + 1}'s {groups[source]}: choose two different rasters with as "
            "many bands"
        )
    starts = np.cumsum([0, *groups])
    filled = scene.pixels.copy()
    filled[starts[target] : starts[target + 1]] = scene.pixels[starts[source] : starts[source + 1]]
    return filled


def baseline_fill(
    scene: Scene, spec: ModelSpec, baseline: Baseline, *, sigma: float = 10.0
) -> np.ndarray:
    """The fill of a baseline that does not depend on the removed pixels (not ``road``)."""
    if baseline == "mean":
        return mean_fill(scene)
    if baseline == "blur":
        return blur_fill(scene, sigma)
    if baseline == "epoch":
        return epoch_fill(scene, epoch_groups(spec))
    if baseline == "road":
        raise GeocamError("the road baseline depends on the removed pixels: use its imputation")
    raise GeocamError(f"unknown baseline {baseline!r}: use one of {', '.join(BASELINES)}")


def occlusions(
    scene: Scene,
    spec: ModelSpec,
    masks: Iterable[np.ndarray],
    baseline: Baseline,
    *,
    sigma: float = 10.0,
    noise: float = 0.01,
    seed: int = 0,
) -> Iterator[Occlusion]:
    """Each mask's pixels removed with ``baseline``, as perturbed scenes to score.

    A fixed baseline's fill is made once, here (a bad baseline fails before any scoring), and
    shared by key; ``road`` imputes each mask anew, the ``n``-th with its own seeded noise.
    """
    fill = None if baseline == "road" else baseline_fill(scene, spec, baseline, sigma=sigma)

    def perturbed() -> Iterator[Occlusion]:
        for number, mask in enumerate(masks):
            if fill is not None:
                yield Occlusion(mask, fill, key=baseline)
            else:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + number)
                imputed = noisy_linear_imputation(
                    scene.pixels, scene.valid, mask, noise=noise, generator=generator
                )
                yield Occlusion(mask, imputed)

    return perturbed()


def noisy_linear_imputation(
    pixels: np.ndarray,
    valid: np.ndarray,
    removed: np.ndarray,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-4,
    max_iterations: int = 5000,
) -> np.ndarray:
    """ROAD's noisy linear imputation of the ``removed`` pixels, ``(C, H, W)`` float32.

    Every removed pixel ``i`` satisfies ``x_i = sum_j w_ij x_j / sum_j w_ij`` over its valid
    8-neighbours ``j`` (weights :data:`ROAD_WEIGHTS`; nodata and the scene's edge are not
    neighbours, as the image edge in ROAD's code), removed neighbours being unknowns too: a
    sparse symmetric positive definite system, solved by preconditioned conjugate gradients
    in torch (float64; the matrix applied as shifted sums, a cascade from coarser grids as the
    first guess), to ``tolerance`` of the
    right-hand side's norm. A group of removed pixels with no known neighbour at all takes
    the bands' means (a vanishing pull towards them makes the system definite). Then
    Gaussian noise of ``noise`` times each band's standard deviation is added to the removed
    pixels (ROAD: 0.01 on standardised images). Other pixels are returned unchanged.
    """
    removed = removed & valid
    out = np.array(pixels, dtype=np.float32, copy=True)
    if not removed.any():
        return out
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float64))
    values = x[:, valid]
    means = values.mean(dim=1)[:, None, None]
    spread = values.std(dim=1) if values.shape[1] > 1 else torch.zeros(len(values))
    ok = torch.from_numpy(valid).to(torch.float64)
    unknown = torch.from_numpy(removed).to(torch.float64)
    solution = _harmonic_fill(x, ok, unknown, means, tolerance, max_iterations)
    if noise:
        draw = torch.randn(solution.shape, generator=generator, dtype=torch.float64)
        solution = solution + noise * spread[:, None, None] * draw
    filled = solution.to(torch.float32).numpy()
    out[:, removed] = filled[:, removed]
    return out


def _harmonic_fill(
    x: torch.Tensor,
    ok: torch.Tensor,
    unknown: torch.Tensor,
    means: torch.Tensor,
    tolerance: float,
    max_iterations: int,
) -> torch.Tensor:
    """The removed pixels' solution of ROAD's system (zero elsewhere), by cascadic PCG.

    The first guess is the solution on a grid twice as coarse (a cell is removed when any of
    its pixels is, known values averaged), upsampled: conjugate gradients then mostly remove
    fine detail, so large holes need few iterations at full resolution.
    """
    known = ok - unknown
    pull = 1e-9  # towards the means: only decides groups without any known neighbour
    diagonal = _neighbour_sum(ok[None])[0] + pull
    rhs = (_neighbour_sum(x * known) + pull * means) * unknown

    def apply(v: torch.Tensor) -> torch.Tensor:
        return (diagonal * v - _neighbour_sum(v * unknown)) * unknown

    height, width = unknown.shape
    if min(height, width) > 16 and float(unknown.sum()) > 256:
        coarse_ok = F.max_pool2d(ok[None, None], 2, ceil_mode=True)[0, 0]
        coarse_unknown = F.max_pool2d(unknown[None, None], 2, ceil_mode=True)[0, 0]
        count = F.avg_pool2d(known[None, None], 2, ceil_mode=True)[0, 0]
        sums = F.avg_pool2d((x * known)[None], 2, ceil_mode=True)[0]
        coarse_x = torch.where(count > 0, sums / count.clamp_min(1e-300), means)
        coarse = _harmonic_fill(
            coarse_x, coarse_ok, coarse_unknown, means, tolerance, max_iterations
        )
        full = torch.where(coarse_unknown > 0, coarse, coarse_x)
        up = F.interpolate(full[None], size=(height, width), mode="bilinear", align_corners=False)
        solution = up[0] * unknown
    else:
        solution = _pull_push(x * known, known, means) * unknown
    residual = rhs - apply(solution)
    z = residual / diagonal
    direction = z.clone()
    rz = (residual * z).sum(dim=(1, 2))
    target = tolerance * rhs.flatten(1).norm(dim=1).clamp_min(1e-300)
    for _ in range(max_iterations):
        if bool((residual.flatten(1).norm(dim=1) <= target).all()):
            return solution
        product = apply(direction)
        step = rz / (direction * product).sum(dim=(1, 2)).clamp_min(1e-300)
        solution = solution + step[:, None, None] * direction
        residual = residual - step[:, None, None] * product
        z = residual / diagonal
        rz_next = (residual * z).sum(dim=(1, 2))
        direction = z + (rz_next / rz.clamp_min(1e-300))[:, None, None] * direction
        rz = rz_next
    raise GeocamError(
        f"ROAD imputation did not converge in {max_iterations} iterations: raise "
        "max_iterations or the tolerance"
    )


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j v(p + j)`` over the 8 neighbours (:data:`ROAD_WEIGHTS`), zero outside."""
    height, width = v.shape[-2:]
    p = F.pad(v, (1, 1, 1, 1))
    edges = p[:, :height, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :width] + p[:, 1:-1, 2:]
    corners = p[:, :height, :width] + p[:, :height, 2:] + p[:, 2:, :width] + p[:, 2:, 2:]
    return edges / 6 + corners / 12


def _pull_push(sums: torch.Tensor, weight: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """A smooth fill of the pixels without weight from coarser averages (pull-push).

    ``sums`` ``(C, H, W)`` are the known values times ``weight`` ``(H, W)``; the known
    pixels keep their value, the others take the bilinearly upsampled coarser level's.
    """
    height, width = weight.shape
    have = weight > 0
    values = sums / weight.clamp_min(1e-300)
    if bool(have.all()):
        return values
    if not bool(have.any()) or min(height, width) <= 2:
        return torch.where(have, values, means.expand_as(values))
    coarse_sums = F.avg_pool2d(sums[None], 2, ceil_mode=True)[0]
    coarse_weight = F.avg_pool2d(weight[None, None], 2, ceil_mode=True)[0, 0]
    coarse = _pull_push(coarse_sums, coarse_weight, means)
    up = F.interpolate(coarse[None], size=(height, width), mode="bilinear", align_corners=False)
    return torch.where(have, values, up[0])
