"""Where the network runs: device choice, reduced precision, host-to-device copies, OOM back-off.

Written device-agnostic: the same code drives CUDA, MPS and the CPU. Pinned host memory and
non-blocking copies are used only where they help (CUDA); autocast only where it is supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from geocam.errors import GeocamError

Precision = Literal["fp32", "bf16", "fp16"]
T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GeocamError(
            f"--device {name!r} is not a device: use auto, cpu, cuda[:N] or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GeocamError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GeocamError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise GeocamError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise GeocamError(f"--device {name!r}: use auto, cpu, cuda[:N] or mps")
    return device


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means full float32."""
    if precision == "fp32":
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise GeocamError(f"--precision {precision!r}: use fp32, bf16 or fp16")
    if device.type == "cpu" and dtype == torch.float16:
        raise GeocamError("--precision fp16 needs an accelerator; on the CPU use bf16 or fp32")
    return dtype


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host batch to ``device``: pinned and non-blocking on CUDA, a plain move elsewhere."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device (or host allocator) out-of-memory error."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@dataclass
class BatchSizer:
    """The batch size in force: halved on every out-of-memory error, never below one."""

    size: int
    halvings: int = 0

    def run(self, items: Sequence[T], work: Callable[[Sequence[T]], R]) -> list[R]:
        """Apply ``work`` to ``items`` in chunks of the current size, halving it on OOM.

        A chunk that runs out of memory is retried in halves; results come back in order.
        """
        results: list[R] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.size]
            try:
                results.append(work(chunk))
            except Exception as error:
                if not is_out_of_memory(error) or self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                self.halvings += 1
                _release_cached_memory()
                continue
            start += len(chunk)
        return results


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
