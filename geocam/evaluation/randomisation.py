"""Model-parameter randomisation (Adebayo et al. 2018), made for segmentation networks.

An explanation that explains the *model* must change when the model's learned parameters are
destroyed. The check re-initialises the network **block by block** in data-flow order from
the output (the segmentation head, the decoder's blocks from last to first, the encoder's
stages from deepest to first, the stem last: :func:`discover_blocks` finds them in the
model's structure, the original map's forward pass orders them as it runs them), cascading
(each step keeps the blocks randomised before it) and independently (one block at a time),
and compares each randomised model's map with the original one
(:mod:`geocam.evaluation.similarity`): Spearman's rank correlation of the signed and of the
absolute maps, SSIM, and the eMPRT score (relative rise of the map's histogram entropy once
every block is randomised, Hedström et al. 2024). All are reported; the averages over steps
never include the original-vs-original entry.

Re-initialisation (:func:`randomise_block`) is real: every module with parameters in the
block gets its default initialiser (``reset_parameters``: convolutions and linear layers) from
a seed of its own block; normalisation layers (BatchNorm, GroupNorm, LayerNorm...) get
*random* affine parameters, weight ``U(0, 1)`` (PyTorch's BatchNorm initialiser before 1.0)
and bias ``N(0, 0.1^2)``, and running statistics reset to those of a fresh layer (mean 0,
variance 1: they were learned from data too); never the identity that ``reset_parameters``
gives. Parameters of other modules (no ``reset_parameters``) are drawn from ``N(0, s^2)``,
``s`` the parameter's own standard deviation (1 when it is constant). Values are drawn on the
CPU, so a seed gives the same network on any device. The caller's model is never modified:
every step works on a copy.

Maps come from a *map function*, ``model -> (H, W)`` signed map with NaN at nodata
(:data:`MapFunction`): :func:`scene_map_function` runs geocam's scene engine
(:func:`geocam.evaluation.scene.scene_maps`) with one Explanation, tiling and region for every
model; :func:`edge_map_function` is the negative control, an edge map of the input that no
model changes. With the ``predicted`` region the region would move with the randomised
model, so the *original* model's predicted region is kept fixed for every step (as a region
source): only the model changes.

**Pass/fail rule** (:class:`PassRule`): the map of the fully randomised model (last cascading
step) must have lost the original's structure: ``|Spearman|`` of the absolute maps, SSIM, and
``|Spearman|`` of the signed maps all at most 0.5 (less than half the rank agreement or the
structural similarity is left). The threshold is fixed a priori, not tuned on a model; eMPRT
is reported beside it. A map the model does not change (the edge-map control) keeps 1.0 and
fails.

A randomised model whose map is zero everywhere (the scene engine refuses such a map) is a
legitimate step: its map is taken as zeros at the valid pixels (``zero_map`` in the step),
which correlates 0 with the original (a constant map ranks nothing), has entropy 0, and the
SSIM Wang's formula gives a flat map (``C1 C2 / ((mu^2 + C1)(sigma^2 + C2))`` per window:
near 0 wherever the original is not near zero as well).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from geocam.errors import GeocamError, ZeroMap
from geocam.evaluation.scene import Scene, scene_maps
from geocam.evaluation.similarity import (
    Similarity,
    compare,
    entropy_rise,
    histogram_entropy,
)
from geocam.models import ModelSpec
from geocam.output import ArraySink
from geocam.scene import Explanation, Runtime, Tiling, class_code, explain_scene
from geocam.scene.options import Products
from geocam.scene.specs import ProductSpec

MapFunction = Callable[[nn.Module], np.ndarray]
"""A model's ``(H, W)`` signed map of one scene, NaN where nodata."""

_STAGE_LISTS = ("blocks", "_blocks", "stages", "layers", "features")
"""Names of an encoder's child lists whose elements are stages in data-flow order."""


# --- blocks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A unit randomised at once: its name and the modules (qualified names) it holds."""

    name: str
    modules: tuple[str, ...]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_layer(module: nn.Module) -> bool:
    """A single layer: parameters of its own, no child holding parameters (conv, norm...)."""
    return _has_parameters(module) and not any(_has_parameters(c) for c in module.children())


def discover_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` in data-flow order from the output (randomisation order).

    smp layouts (``encoder``, ``decoder``, ``segmentation_head``): the head; the decoder's
    children with parameters from last to first (a child list named ``blocks``, the chain of
    smp's Unet, Linknet and MAnet, one block per element; FPN: ``seg_blocks``, ``p2`` ..
    ``p5``; DeepLabV3+: ``block2``, ``block1``, ``aspp``); the encoder's stages from deepest
    to first (smp's ResNets ``layer4`` .. ``layer1``, only those its depth runs; timm
    encoders ``encoder.model``'s ``blocks``/``stages`` elements or stage children), then the
    stem (the single layers before the first stage, one block). Other networks: their
    top-level children with parameters in reverse order of registration. An smp
    ``classification_head`` is not on the segmentation path and is left alone.

    This is the order of registration; :func:`randomisation_check` then orders the blocks as
    the original map's forward pass runs them, which corrects networks that register their
    modules in another order than they use them (smp's MiT registers every patch embedding
    before the first stage).
    """
    children = dict(model.named_children())
    if {"encoder", "decoder", "segmentation_head"} <= children.keys():
        blocks = [Block("segmentation_head", ("segmentation_head",))]
        blocks += _decoder_blocks(children["decoder"], "decoder")
        encoder = children["encoder"]
        inner = getattr(encoder, "model", None)
        if isinstance(inner, nn.Module) and _has_parameters(inner):
            blocks += _stage_blocks(inner, "encoder.model", _depth_limit(encoder))
        else:
            blocks += _stage_blocks(encoder, "encoder", _depth_limit(encoder))
    else:
        blocks = [Block(n, (n,)) for n, c in reversed(children.items()) if _has_parameters(c)]
    if not blocks:
        raise GeocamError("the model has no parameters to randomise")
    return blocks


def _decoder_blocks(decoder: nn.Module, prefix: str) -> list[Block]:
    blocks: list[Block] = []
    for name, child in reversed(list(decoder.named_children())):
        if not _has_parameters(child):
            continue
        path = f"{prefix}.{name}"
        if name == "blocks" and isinstance(child, nn.ModuleList | nn.Sequential):
            blocks += [
                Block(f"{path}.{i}", (f"{path}.{i}",))
                for i in reversed(range(len(child)))
                if _has_parameters(child[i])
            ]
        else:
            blocks.append(Block(path, (path,)))
    return blocks


def _depth_limit(encoder: nn.Module) -> int | None:
    """The last ``layerN`` an smp ResNet-style encoder of depth ``d`` runs: ``d - 1``."""
    depth = getattr(encoder, "_depth", None)
    named = dict(encoder.named_children())
    if isinstance(depth, int) and all(f"layer{i}" in named for i in (1, 2, 3, 4)):
        return depth - 1
    return None


def _stage_blocks(encoder: nn.Module, prefix: str, last_layer: int | None) -> list[Block]:
    """Stages deepest first, then the stem; consecutive single layers form one block."""
    groups: list[list[str]] = []
    single = False
    for name, child in encoder.named_children():
        if not _has_parameters(child):
            continue
        number = name[5:] if name.startswith("layer") else ""
        if last_layer is not None and number.isdigit() and int(number) > last_layer:
            continue  # smp's ResNet builds layer3/4 at depth 3 but never runs them
        if name in _STAGE_LISTS and isinstance(child, nn.ModuleList | nn.Sequential):
            groups += [[f"{name}.{i}"] for i in range(len(child)) if _has_parameters(child[i])]
            single = False
        elif _is_layer(child):
            if single:
                groups[-1].append(name)
            else:
                groups.append([name])
            single = True
        else:
            groups.append([name])
            single = False
    return [
        Block(f"{prefix}.{'+'.join(names)}", tuple(f"{prefix}.{n}" for n in names))
        for names in reversed(groups)
    ]


def block_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th block (discovery order): distinct per block, reproducible."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


# --- re-initialisation -------------------------------------------------------------------------

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def _randomise_module(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the parameters ``module`` holds itself (not its children's)."""
    own = dict(module.named_parameters(recurse=False))
    if isinstance(module, _NORMS):
        reset = getattr(module, "reset_running_stats", None)
        if callable(reset) and getattr(module, "track_running_stats", False):
            reset()
        for name, param in own.items():
            if name == "weight":
                values = torch.rand(param.shape, generator=generator, dtype=torch.float64)
            else:
                values = 0.1 * torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.copy_(values)
        return
    if not own:
        return
    if callable(getattr(module, "reset_parameters", None)):
        fresh = copy.deepcopy(module).to("cpu")
        state = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(state)
            fresh.reset_parameters()  # type: ignore[operator]
        renewed = dict(fresh.named_parameters(recurse=False))
        for name, param in own.items():
            param.copy_(renewed[name])
        return
    for param in own.values():
        std = float(param.detach().double().std()) if param.numel() > 1 else 0.0
        scale = std if std > 0 and math.isfinite(std) else 1.0
        param.copy_(scale * torch.randn(param.shape, generator=generator, dtype=torch.float64))


def randomise_block(model: nn.Module, block: Block, seed: int) -> None:
    """Re-initialise every parameter of ``block`` in ``model`` **in place**, from ``seed``.

    See the module's docstring for the initialisers. Call it on a copy.
    """
    generator = torch.Generator().manual_seed(seed)
    for path in block.modules:
        for module in _submodule(model, block, path).modules():
            _randomise_module(module, generator)


def _submodule(model: nn.Module, block: Block, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise GeocamError(f"block {block.name!r}: the model has no module {path!r}") from None


def randomised_copy(model: nn.Module, blocks: Sequence[Block], seeds: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with ``blocks`` re-initialised from their ``seeds``."""
    randomised = copy.deepcopy(model)
    for block, seed in zip(blocks, seeds, strict=True):
        randomise_block(randomised, block, seed)
    return randomised


# --- map functions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedRegion:
    """A region held in memory, ``(H, W)`` float32 weights of the scene (a RegionSource)."""

    weights: np.ndarray
    name: str = "fixed region"

    def read(self, window: Window) -> np.ndarray:
        """The weights of ``window``."""
        rows, cols = window.toslices()
        out: np.ndarray = self.weights[rows, cols]
        return out


def predicted_region(
    model: nn.Module,
    spec: ModelSpec,
    scene: Scene,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
) -> np.ndarray:
    """The ``(H, W)`` float32 region (1 or 0) where ``model`` predicts the explained class.

    The class map that ``--class-map`` writes (the predicted region's rule: the argmax, or the
    threshold of a one-channel network), on valid pixels; computed on a copy of ``model``.
    """
    sinks: dict[str, ArraySink] = {}

    def sink(product: ProductSpec) -> ArraySink:
        grid = product.grid
        fill = 255 if product.name == "classes" else np.nan
        made = ArraySink(len(product.bands), grid.height, grid.width, product.dtype, fill)
        sinks[product.name] = made
        return made

    # the class map does not depend on the method: one Grad-CAM pass of per-tile weights
    region_run = replace(explanation, method="gradcam", weights="tile", region="predicted")
    with contextlib.suppress(ZeroMap):  # the class map is complete: written before the refusal
        explain_scene(
            copy.deepcopy(model), spec, scene.source(), region_run, sink,
            tiling=tiling, runtime=runtime or Runtime(progress=False),
            products=Products(class_map=True),
        )  # fmt: skip
    classes = sinks["classes"].data[0]
    if (classes[scene.valid] == 255).any():  # pragma: no cover - the run stopped early
        raise GeocamError("the original model's class map is incomplete: no region to keep")
    code = class_code(spec, spec.class_index(explanation.classes[0]))
    region: np.ndarray = ((classes == code) & scene.valid).astype(np.float32)
    return region


def scene_map_function(
    model: nn.Module,
    spec: ModelSpec,
    scene: Scene,
    explanation: Explanation,
    *,
    tiling: Tiling | None = None,
    runtime: Runtime | None = None,
) -> MapFunction:
    """Maps of ``scene`` through the scene engine for any model, the region held fixed.

    One class at a time. With the ``predicted`` region, ``model``'s (the original's) predicted
    region is computed once and given to every later model as a fixed region. A map the scene
    engine refuses as zero everywhere is returned as zeros at the valid pixels.
    """
    if len(explanation.classes) != 1:
        raise GeocamError(
            f"randomisation: explain one class at a time (Explanation.classes has "
            f"{len(explanation.classes)})"
        )
    if explanation.region == "predicted":
        weights = predicted_region(model, spec, scene, explanation, tiling=tiling, runtime=runtime)
        name = "predicted by the original model"
        explanation = replace(explanation, region=FixedRegion(weights, name), region_name=name)
    fixed = explanation

    def maps(network: nn.Module) -> np.ndarray:
        try:
            heat, _ = scene_maps(network, spec, scene, fixed, tiling=tiling, runtime=runtime)
        except ZeroMap:
            return np.where(scene.valid, 0.0, np.nan).astype(np.float32)
        signed: np.ndarray = heat[0, 1]
        return signed

    return maps


def edge_map(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the bands' mean, ``(H, W)`` float32, NaN where not valid.

    Bands are scaled to unit standard deviation over the valid pixels first; nodata pixels
    take the band's mean, so they make no edge.
    """
    bands = np.asarray(pixels, dtype=np.float64)
    if not valid.any():
        raise GeocamError("the scene has no valid pixel: no edge map")
    means = bands[:, valid].mean(axis=1)
    stds = bands[:, valid].std(axis=1)
    filled = np.where(valid[None], bands, means[:, None, None])
    image = ((filled - means[:, None, None]) / np.where(stds > 0, stds, 1.0)[:, None, None]).mean(0)
    p = np.pad(image, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.where(valid, np.hypot(gx, gy), np.nan).astype(np.float32)


def edge_map_function(scene: Scene) -> MapFunction:
    """The negative control: the input's edge map, whatever the model (it must fail)."""
    edges = edge_map(scene.pixels, scene.valid)
    return lambda model: edges.copy()


# --- the check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassRule:
    """The fully randomised model's map must keep at most ``max_similarity`` of the original.

    Checked on the last cascading step: ``|Spearman|`` of the absolute and of the signed
    maps, and SSIM. 0.5 is fixed a priori (half the rank agreement or structure gone), not
    tuned on a model.
    """

    max_similarity: float = 0.5

    def failures(self, final: Similarity) -> list[str]:
        """The measures over the threshold, as ``name value`` strings (none: passed)."""
        values = {
            "|Spearman abs|": abs(final.spearman_abs),
            "|Spearman signed|": abs(final.spearman_signed),
            "SSIM": final.ssim,
        }
        return [f"{k} {v:.3f}" for k, v in values.items() if not v <= self.max_similarity]

    def describe(self) -> str:
        """The rule in one line."""
        return (
            "pass when the fully randomised model's map has |Spearman abs|, |Spearman signed| "
            f"and SSIM all <= {self.max_similarity:g}"
        )


@dataclass(frozen=True)
class StepResult:
    """One randomised model: which block(s), its seed, and its map's similarity."""

    mode: str
    """``cascading`` (this block and every one before it) or ``independent`` (this alone)."""
    step: int
    """1-based position of the block in randomisation order."""
    block: str
    seed: int
    similarity: Similarity
    entropy: float
    """Histogram entropy of the randomised map (nats)."""
    zero_map: bool
    """The randomised model's map was zero everywhere (taken as zeros)."""
    seconds: float
    """Randomising, mapping and comparing this step."""


@dataclass(frozen=True)
class RandomisationReport:
    """Everything the check measured, and its verdict."""

    label: str
    blocks: tuple[str, ...]
    skipped: tuple[str, ...]
    """Blocks discovered but never run by the original model's map (not randomised)."""
    cascading: tuple[StepResult, ...]
    independent: tuple[StepResult, ...]
    original_entropy: float
    original_seconds: float
    rule: PassRule = field(default_factory=PassRule)

    @property
    def final(self) -> StepResult:
        """The last cascading step: every block randomised."""
        return self.cascading[-1]

    @property
    def emprt(self) -> float:
        """eMPRT: relative entropy rise of the fully randomised model's map (NaN: undefined)."""
        return entropy_rise(self.original_entropy, self.final.entropy)

    @property
    def failures(self) -> list[str]:
        """The measures that broke the pass rule."""
        return self.rule.failures(self.final.similarity)

    @property
    def passed(self) -> bool:
        """Whether the explanation passed the randomisation check (see :class:`PassRule`)."""
        return not self.failures

    def mean(self, mode: str = "cascading") -> Similarity:
        """Each measure averaged over the randomised steps (never the original's 1.0)."""
        if mode not in ("cascading", "independent"):
            raise GeocamError(f"mode must be cascading or independent, not {mode!r}")
        steps = self.cascading if mode == "cascading" else self.independent
        if not steps:
            nan = math.nan
            return Similarity(nan, nan, nan)
        return Similarity(
            *(
                float(np.mean([getattr(s.similarity, f) for s in steps]))
                for f in ("spearman_signed", "spearman_abs", "ssim")
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None)."""
        report: dict[str, Any] = _json_ready(
            {
                "label": self.label,
                "passed": self.passed,
                "rule": self.rule.describe(),
                "failures": self.failures,
                "final": asdict(self.final.similarity),
                "emprt": self.emprt,
                "original_entropy": self.original_entropy,
                "randomised_entropy": self.final.entropy,
                "original_seconds": self.original_seconds,
                "mean_cascading": asdict(self.mean("cascading")),
                "mean_independent": asdict(self.mean("independent")),
                "blocks": list(self.blocks),
                "skipped_blocks": list(self.skipped),
                "cascading": [asdict(s) for s in self.cascading],
                "independent": [asdict(s) for s in self.independent],
            }
        )
        return report

    def table(self) -> list[str]:
        """Short text lines: the verdict, every step, the means and eMPRT."""
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.failures)})"
        lines = [
            f"randomisation {self.label}: {verdict}; {len(self.blocks)} blocks",
            f"  rule: {self.rule.describe()}",
            f"  {'step':<5} {'block':<34} {'rho_sgn':>7} {'rho_abs':>7} {'SSIM':>6} "
            f"{'H':>5} {'s':>5}",
            f"  {'orig':<5} {'(original model)':<34} {1:>7.3f} {1:>7.3f} {1:>6.3f} "
            f"{self.original_entropy:>5.2f} {self.original_seconds:>5.1f}",
        ]
        for s in (*self.cascading, *self.independent):
            sim = s.similarity
            tag = f"{s.mode[0]}{s.step}"
            zero = " (zero map)" if s.zero_map else ""
            lines.append(
                f"  {tag:<5} {_short(s.block, 34):<34} {sim.spearman_signed:>7.3f} "
                f"{sim.spearman_abs:>7.3f} {sim.ssim:>6.3f} {s.entropy:>5.2f} "
                f"{s.seconds:>5.1f}{zero}"
            )
        for mode in ("cascading", "independent"):
            if getattr(self, mode):
                m = self.mean(mode)
                lines.append(
                    f"  mean {mode} (original excluded): rho_sgn {m.spearman_signed:.3f} "
                    f"rho_abs {m.spearman_abs:.3f} SSIM {m.ssim:.3f}"
                )
        lines.append(
            f"  eMPRT {self.emprt:+.3f} (entropy {self.original_entropy:.3f} -> "
            f"{self.final.entropy:.3f} nats)"
        )
        return lines


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


@contextmanager
def _watch(model: nn.Module, blocks: Sequence[Block]) -> Iterator[dict[str, int]]:
    """Record the order in which blocks first run (a module's forward ending) in the context.

    The dict maps each block that ran to its rank; a block that never ran is absent. A
    block's first module to finish is its first layer, so the ranks follow the data flow.
    """
    called: dict[str, int] = {}
    handles = []
    for block in blocks:

        def hook(*_: object, name: str = block.name) -> None:
            called.setdefault(name, len(called))

        for path in block.modules:  # every module: a ModuleList itself is never called
            modules = _submodule(model, block, path).modules()
            handles += [m.register_forward_hook(hook) for m in modules]
    try:
        yield called
    finally:
        for handle in handles:
            handle.remove()


def _checked_map(values: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2 or (shape is not None and values.shape != shape):
        raise GeocamError(
            f"the map function returned shape {values.shape}; it must return one (H, W) map"
            + (f" of {shape}" if shape else "")
        )
    return values


def randomisation_check(
    model: nn.Module,
    maps: MapFunction,
    *,
    blocks: Iterable[Block] | None = None,
    independent: bool = True,
    seed: int = 0,
    rule: PassRule | None = None,
    label: str = "",
    progress: Callable[[str], None] | None = None,
) -> RandomisationReport:
    """Randomise ``model`` block by block (copies only) and compare each map with the original.

    ``blocks`` default to :func:`discover_blocks`, then ordered as the original map's forward
    pass runs them (seen by forward hooks), last first: the data-flow order from the output
    even where a network registers its modules in another order (``blocks`` given are kept
    in their order). Blocks the original map never runs are skipped and listed. ``progress``
    is called with each step's name.
    """
    discovered = blocks is None
    blocks = discover_blocks(model) if blocks is None else list(blocks)
    seeds = {b.name: block_seed(seed, i) for i, b in enumerate(blocks)}
    start = time.perf_counter()
    original_model = copy.deepcopy(model)
    with _watch(original_model, blocks) as called:
        original = _checked_map(maps(original_model), None).astype(np.float64)
    del original_model
    original_seconds = time.perf_counter() - start
    valid = np.isfinite(original)
    if not valid.any() or not np.any(original[valid]):
        raise GeocamError("the original model's map is empty or zero everywhere: nothing to check")
    used = blocks  # a map that never runs the model (the edge-map control): all, as found
    if called:
        used = [b for b in blocks if b.name in called]
        if discovered:  # the order the data flows in, from the output: last to run first
            used.sort(key=lambda b: called[b.name], reverse=True)
    skipped = tuple(b.name for b in blocks if b not in used)
    original_entropy = histogram_entropy(original, valid)

    def step(mode: str, index: int, block: Block, network: nn.Module) -> StepResult:
        if progress is not None:
            progress(f"{mode} {index}/{len(used)}: {block.name}")
        began = time.perf_counter()
        randomise_block(network, block, seeds[block.name])
        values = _checked_map(maps(network), original.shape).astype(np.float64)
        zero = not np.any(values[valid & np.isfinite(values)])
        return StepResult(
            mode=mode,
            step=index,
            block=block.name,
            seed=seeds[block.name],
            similarity=compare(original, values, valid),
            entropy=histogram_entropy(values, valid),
            zero_map=zero,
            seconds=time.perf_counter() - began,
        )

    cascade = copy.deepcopy(model)
    cascading = tuple(step("cascading", i, b, cascade) for i, b in enumerate(used, 1))
    del cascade
    alone = tuple(
        step("independent", i, b, copy.deepcopy(model)) for i, b in enumerate(used, 1)
    ) if independent else ()  # fmt: skip
    return RandomisationReport(
        label=label,
        blocks=tuple(b.name for b in used),
        skipped=skipped,
        cascading=cascading,
        independent=alone,
        original_entropy=original_entropy,
        original_seconds=original_seconds,
        rule=rule or PassRule(),
    )


# --- figure --------------------------------------------------------------------------------------


def plot_randomisation(
    reports: Sequence[RandomisationReport], path: str | Path, *, mode: str = "cascading"
) -> Path:
    """The randomisation curves of ``reports`` side by side, one panel each, as a PNG.

    x: the original model, then each step (``mode``: cascading or independent); y: Spearman
    of the absolute and of the signed maps, and SSIM; the pass threshold dashed. Drawn with
    matplotlib's Agg canvas (no pyplot, no display, no global state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise GeocamError("plot_randomisation: no report to plot")
    if mode not in ("cascading", "independent"):
        raise GeocamError(f"mode must be cascading or independent, not {mode!r}")
    path = Path(path)
    width = max(4.5, 0.32 * max(len(r.blocks) for r in reports) + 2.5)
    figure = Figure(figsize=(width * len(reports), 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(reports), sharey=True, squeeze=False)[0]
    for ax, report in zip(axes, reports, strict=True):
        steps = report.cascading if mode == "cascading" else report.independent
        x = np.arange(len(steps) + 1)
        for field_name, label, style in (
            ("spearman_abs", "Spearman |map|", "-o"),
            ("spearman_signed", "Spearman signed", "--s"),
            ("ssim", "SSIM |map|", ":^"),
        ):
            values = [1.0] + [getattr(s.similarity, field_name) for s in steps]
            ax.plot(x, values, style, markersize=3.5, label=label)
        ax.axhline(report.rule.max_similarity, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xticks(x, ["original", *(_short(s.block, 30) for s in steps)], rotation=70,
                      ha="right", fontsize=7)  # fmt: skip
        verdict = "PASS" if report.passed else "FAIL"
        ax.set_title(f"{report.label}\n{verdict}, eMPRT {report.emprt:+.2f}", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"similarity to the original map ({mode})")
    axes[0].legend(fontsize=7, loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
