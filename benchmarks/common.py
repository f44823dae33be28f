"""What every benchmark group shares: rows and targets, interleaved timing, the table."""

from __future__ import annotations

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

import torch

Unit: TypeAlias = Literal["s", "x", "diff", "count", "MiB", "r", "MP/s"]


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
    """What the command line asked for; ``device`` a resolved torch device (cpu, cuda:N)."""

    repeats: int
    quick: bool
    device: str = "cpu"
    smoke: bool = False

    @property
    def torch_device(self) -> torch.device:
        """:attr:`device` as a :class:`torch.device`."""
        return torch.device(self.device)

    @property
    def tiles(self) -> tuple[int, int, int, int]:
        """Shape of the batch of tiles, ``(B, C, H, W)``: tiny for a smoke test (figures mean
        nothing then), small with ``quick``."""
        if self.smoke:
            return (1, 4, 64, 64)
        return (2, 4, 256, 256) if self.quick else (4, 4, 512, 512)


GroupFn: TypeAlias = Callable[[Settings], list[Row]]
GROUPS: dict[str, GroupFn] = {}
CPU_ONLY: set[str] = set()
"""Groups that measure the CPU whatever ``--device`` says (the header says so)."""


def register(name: str, *, devices: bool = True) -> Callable[[GroupFn], GroupFn]:
    """Add a benchmark group to the registry under ``name`` (its docstring describes it).

    ``devices=False``: the group runs on the CPU only (host memory, a CPU-only comparison).
    """

    def add(fn: GroupFn) -> GroupFn:
        GROUPS[name] = fn
        if not devices:
            CPU_ONLY.add(name)
        return fn

    return add


def resolve(name: str) -> str:
    """``cpu``, ``cuda`` (or ``cuda:N``), or ``auto`` (CUDA when present) as a device name.

    Fails in one line when the device asked for is not there: a benchmark never falls back.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks: error: --device {name}: CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"benchmarks: error: --device {name}: use cpu, cuda[:N] or auto")
    return str(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def megapixels_per_second(tiles: Sequence[int], seconds: float) -> float:
    """Throughput of a batch of tiles ``(B, C, H, W)`` processed in ``seconds``."""
    b, _, h, w = tiles
    return b * h * w / 1e6 / seconds


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


def measure(
    competitors: dict[str, Callable[[], object]],
    repeats: int,
    warm_up: bool = True,
    device: torch.device | str = "cpu",
) -> Timings:
    """Time each callable: one warm-up each (unless already warm), then interleaved rounds.

    On CUDA the clock stops once the device has finished the callable's work.
    """
    for name, fn in competitors.items():
        if warm_up:
            log(f"  warm-up {name}")
            fn()
    times: dict[str, list[float]] = {name: [] for name in competitors}
    for round_ in range(repeats):
        for name, fn in competitors.items():
            gc.collect()
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
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
    quick = " [--smoke: figures mean nothing]" if settings.smoke else ""
    quick = quick or (" [--quick]" if settings.quick else "")
    lines = [
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), load average at start {load}",
        f"- device: {device_line(settings.torch_device)}",
        f"- platform: {platform.platform()}",
        f"- packages: {packages}",
        f"- tiles {b} x {c} x {h} x {w} (torch.rand, seed 0){quick}"
        f"; {settings.repeats} interleaved rounds after one warm-up: median times, "
        "median per-round ratios",
    ]
    for name in groups:
        doc = (GROUPS[name].__doc__ or "").strip().splitlines()
        text = doc[0] if doc else ""
        if name in CPU_ONLY and settings.torch_device.type != "cpu":
            text = f"**on the CPU, not {settings.device}: this group measures the CPU**; {text}"
        lines.append(f"- `{name}`: {text}")
    return lines


def device_line(device: torch.device) -> str:
    """What runs the groups: the CPU, or the GPU's name, memory and CUDA version."""
    if device.type != "cuda":
        return "cpu"
    props = torch.cuda.get_device_properties(device)
    memory = props.total_memory / 2**30
    return f"{device} ({props.name}, {memory:.0f} GiB, CUDA {torch.version.cuda})"


def fmt(value: float, unit: Unit) -> str:
    """A value in its unit: seconds, a ratio, a difference or a count."""
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "r":
        return f"{value:.3f}"
    if unit == "MP/s":
        return f"{value:.2f} MP/s"
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
