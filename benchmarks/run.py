"""Benchmark runner: prints a markdown table of measured figures, with the machine's details.

Every ratio is measured side by side in one process: each competitor is warmed up once, then
the competitors run interleaved (A, B, C, A, B, C, ...) for ``--repeats`` rounds, so drift in
the machine's load affects all of them alike. Times are medians over the rounds; a ratio is the
median of the per-round ratios, which cancels drift that a ratio of medians would keep.

    python benchmarks/run.py                 # every group
    python benchmarks/run.py core --quick    # one group on small tiles (a smoke test)

Groups register themselves with :func:`register` and return :class:`Row` objects.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal, TypeAlias

import numpy as np
import torch
from torch import nn

import geocam

Unit: TypeAlias = Literal["s", "x", "diff", "count"]


@dataclass(frozen=True)
class Target:
    """A bound a measured value must meet, e.g. ``Target(">=", 1.5)``."""

    op: Literal["<", "<=", ">="]
    bound: float

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the bound."""
        if self.op == "<":
            return value < self.bound
        if self.op == "<=":
            return value <= self.bound
        return value >= self.bound


@dataclass(frozen=True)
class Row:
    """One line of the table: a measured value and, unless informational, its target."""

    name: str
    value: float
    unit: Unit
    target: Target | None = None

    @property
    def verdict(self) -> str:
        """``pass``, ``FAIL``, or ``info`` for a row without a target."""
        if self.target is None:
            return "info"
        return "pass" if self.target.met(self.value) else "**FAIL**"


@dataclass(frozen=True)
class Settings:
    """What the command line asked for."""

    repeats: int
    quick: bool

    @property
    def tiles(self) -> tuple[int, int, int, int]:
        """Shape of the batch of tiles, ``(B, C, H, W)``."""
        return (2, 4, 256, 256) if self.quick else (4, 4, 512, 512)


GroupFn: TypeAlias = Callable[[Settings], list[Row]]
GROUPS: dict[str, GroupFn] = {}


def register(name: str) -> Callable[[GroupFn], GroupFn]:
    """Add a benchmark group to the registry under ``name`` (its docstring describes it)."""

    def add(fn: GroupFn) -> GroupFn:
        GROUPS[name] = fn
        return fn

    return add


# --- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """Seconds per round of each competitor, measured interleaved."""

    rounds: dict[str, list[float]]

    def __getitem__(self, name: str) -> float:
        """Median seconds of ``name``."""
        return statistics.median(self.rounds[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over the rounds of ``numerator / denominator`` (same round, same load)."""
        pairs = zip(self.rounds[numerator], self.rounds[denominator], strict=True)
        return statistics.median(a / b for a, b in pairs)


def measure(competitors: dict[str, Callable[[], object]], repeats: int) -> Timings:
    """Time each callable: one warm-up each, then ``repeats`` interleaved rounds."""
    for name, fn in competitors.items():
        log(f"  warm-up {name}")
        fn()
    times: dict[str, list[float]] = {name: [] for name in competitors}
    for round_ in range(repeats):
        for name, fn in competitors.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        summary = ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items())
        log(f"  round {round_ + 1}/{repeats}: {summary}")
    return Timings(times)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


# --- machine details and table --------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform module knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``-`` if it is missing."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def header(settings: Settings, groups: Sequence[str]) -> list[str]:
    """Markdown lines describing the machine, the software and the setting."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
    packages = ", ".join(
        f"{name} {package_version(name)}"
        for name in ("geocam", "segmentation-models-pytorch", "grad-cam", "captum")
    )
    b, c, h, w = settings.tiles
    quick = " [--quick]" if settings.quick else ""
    lines = [
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), load average at start {load}",
        f"- platform: {platform.platform()}",
        f"- packages: {packages}",
        f"- tiles {b} x {c} x {h} x {w} (torch.rand, seed 0){quick}"
        f"; {settings.repeats} interleaved rounds after one warm-up: median times, "
        "median per-round ratios",
    ]
    for name in groups:
        doc = (GROUPS[name].__doc__ or "").strip().splitlines()
        lines.append(f"- `{name}`: {doc[0] if doc else ''}")
    return lines


def fmt(value: float, unit: Unit) -> str:
    """A value in its unit: seconds, a ratio, a difference or a count."""
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:.1e}"


def table(rows: Sequence[tuple[str, Row]]) -> list[str]:
    """Markdown table of ``(group, row)`` pairs."""
    lines = ["| group | benchmark | measured | target | result |", "|---|---|---|---|---|"]
    for group, row in rows:
        target = "-" if row.target is None else f"{row.target.op} {fmt(row.target.bound, row.unit)}"
        lines.append(
            f"| {group} | {row.name} | {fmt(row.value, row.unit)} | {target} | {row.verdict} |"
        )
    return lines


# --- the core group -------------------------------------------------------------------------

LAYER = "encoder.layer4"
CLASS = 1
CLASSES = [0, 1, 2, 3, 4]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of ``(B, H, W)`` maps, as pytorch-grad-cam does it."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low + 1e-7)


@register("core")
def core(settings: Settings) -> list[Row]:
    """CPU, smp Unet resnet34 (random weights, seed 0), target `encoder.layer4`, region = predicted mask."""  # noqa: E501
    import segmentation_models_pytorch as smp
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model: nn.Module = smp.Unet("resnet34", encoder_weights=None, in_channels=4, classes=5)
    model.eval()
    images = torch.rand(settings.tiles, generator=torch.Generator().manual_seed(0))
    size = (images.shape[-2], images.shape[-1])

    # Predicted masks from a plain forward, once, outside timing (no_grad, not inference_mode:
    # Captum multiplies the mask into its graph).
    with torch.no_grad():
        logits: torch.Tensor = model(images)
        mask = (logits.argmax(dim=1) == CLASS).float()
        logits = model(images.contiguous(memory_format=torch.channels_last))
        mask_cl = (logits.argmax(dim=1) == CLASS).float()
        del logits

    # pytorch-grad-cam keeps forward hooks on its target layer for as long as it lives; it
    # gets its own copy of the network so that its hooks never run inside the competitors.
    reference = copy.deepcopy(model)
    grad_cam = GradCAM(model=reference, target_layers=[geocam.resolve_layer(reference, LAYER)])
    targets = [SemanticSegmentationTarget(CLASS, m.numpy()) for m in mask]

    def region_score(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(x)
        return (out[:, CLASS] * mask).sum(dim=(-2, -1))

    captum = LayerGradCam(region_score, geocam.resolve_layer(model, LAYER))

    def geocam_one() -> geocam.CamResult:
        return geocam.explain(model, images, [CLASS], LAYER, region="predicted")

    def geocam_one_upsampled() -> geocam.CamResult:
        return geocam_one().upsample(size)

    def pytorch_grad_cam() -> np.ndarray:
        return np.asarray(grad_cam(input_tensor=images, targets=targets))

    def captum_gradcam() -> torch.Tensor:
        out: torch.Tensor = captum.attribute(images, relu_attributions=False)
        return out

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(images)
        return out

    channels_last = images.contiguous(memory_format=torch.channels_last)

    def forward_channels_last() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(channels_last)
        return out

    def five(options: geocam.CamOptions | None = None) -> Callable[[], geocam.CamResult]:
        def run() -> geocam.CamResult:
            return geocam.explain(model, images, CLASSES, LAYER, options=options)

        return run

    def five_calls() -> list[geocam.CamResult]:
        return [geocam.explain(model, images, [k], LAYER) for k in CLASSES]

    log("core 1/4: geocam vs pytorch-grad-cam vs Captum, one class")
    t1 = measure(
        {"geocam": geocam_one_upsampled, "pytorch-grad-cam": pytorch_grad_cam,
         "captum": captum_gradcam},
        settings.repeats,
    )  # fmt: skip
    log("core 2/4: geocam vs the bare forward pass")
    t2 = measure(
        {"geocam": geocam_one, "forward": forward, "forward channels-last": forward_channels_last},
        settings.repeats,
    )
    log("core 3/4: five classes in one call vs five calls")
    t3 = measure(
        {
            "one call": five(),
            "five calls": five_calls,
            "batched": five(geocam.CamOptions(backward="batched")),
            "sequential": five(geocam.CamOptions(backward="sequential")),
        },
        settings.repeats,
    )
    log("core 4/4: agreement of the maps")
    result = geocam_one()
    ours = minmax(result.upsample(size).positive[:, 0])
    theirs = torch.from_numpy(pytorch_grad_cam())
    difference = float((ours - theirs).abs().max())
    signed = result.signed[:, 0]
    captum_map = captum_gradcam().detach()[:, 0]
    relative = float((captum_map - signed).abs().max() / signed.abs().max())

    return [
        Row("Grad-CAM, class 1, upsampled to the input: geocam", t1["geocam"], "s"),
        Row("Grad-CAM, class 1: pytorch-grad-cam", t1["pytorch-grad-cam"], "s"),
        Row("Grad-CAM, class 1: Captum LayerGradCam (layer resolution)", t1["captum"], "s"),
        Row(
            "speed-up of geocam over pytorch-grad-cam",
            t1.ratio("pytorch-grad-cam", "geocam"),
            "x",
            Target(">=", 1.5),
        ),
        Row("speed-up of geocam over Captum", t1.ratio("captum", "geocam"), "x"),
        Row("forward pass, inference_mode, NCHW", t2["forward"], "s"),
        Row("forward pass, inference_mode, channels-last", t2["forward channels-last"], "s"),
        Row("geocam, class 1 (explain only)", t2["geocam"], "s"),
        Row(
            "geocam one class / NCHW forward",
            t2.ratio("geocam", "forward"),
            "x",
            Target("<=", 1.8),
        ),
        Row(
            "geocam one class / channels-last forward",
            t2.ratio("geocam", "forward channels-last"),
            "x",
        ),
        Row("geocam, 5 classes in one call (default options)", t3["one call"], "s"),
        Row("geocam, 5 one-class calls", t3["five calls"], "s"),
        Row(
            "5 classes in one call / 5 one-class calls",
            t3.ratio("one call", "five calls"),
            "x",
            Target("<=", 0.65),
        ),
        Row('geocam, 5 classes, backward="batched"', t3["batched"], "s"),
        Row('backward="batched" / 5 one-class calls', t3.ratio("batched", "five calls"), "x"),
        Row('geocam, 5 classes, backward="sequential"', t3["sequential"], "s"),
        Row(
            'backward="sequential" / 5 one-class calls',
            t3.ratio("sequential", "five calls"),
            "x",
        ),
        Row(
            "max abs. difference, min-max scaled maps: geocam vs pytorch-grad-cam",
            difference,
            "diff",
            Target("<", 1e-4),
        ),
        Row("max rel. difference, signed maps: Captum vs geocam", relative, "diff"),
        Row(
            "class-1 mask pixels that differ, NCHW vs channels-last forward",
            float((mask != mask_cl).sum()),
            "count",
        ),
    ]


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected groups and print the header and the table on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "groups", nargs="*", metavar="GROUP", help=f"groups to run (default: all of {list(GROUPS)})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts")
    parser.add_argument("--quick", action="store_true", help="small tiles, for a smoke test")
    args = parser.parse_args(argv)
    unknown = [name for name in args.groups if name not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    settings = Settings(repeats=args.repeats, quick=args.quick)
    groups: list[str] = args.groups or list(GROUPS)

    rows: list[tuple[str, Row]] = []
    lines = header(settings, groups)
    for name in groups:
        rows.extend((name, row) for row in GROUPS[name](settings))
    print("\n".join([*lines, "", *table(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
