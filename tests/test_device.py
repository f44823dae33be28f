"""Device choice, precision and the out-of-memory back-off, exercised on the CPU."""

from __future__ import annotations

import pytest
import torch

from geocam import GeocamError
from geocam.device import BatchSizer, autocast_dtype, is_out_of_memory, resolve_device, to_device


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    with pytest.raises(GeocamError, match="--device 'gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GeocamError, match="CUDA is not available here"):
            resolve_device("cuda:1")


def test_precision() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(GeocamError, match="fp16 needs an accelerator"):
        autocast_dtype("fp16", cpu)
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16


def test_to_device_on_the_cpu_is_a_plain_move() -> None:
    batch = torch.ones(2, 3)
    assert to_device(batch, torch.device("cpu")) is batch


def test_out_of_memory_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_batch_sizer_halves_and_keeps_order() -> None:
    sizer = BatchSizer(8)
    seen = []

    def work(chunk: list[int]) -> list[int]:
        seen.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("simulated")
        return [x * 10 for x in chunk]

    results = sizer.run(list(range(10)), work)
    assert [x for chunk in results for x in chunk] == [x * 10 for x in range(10)]
    assert sizer.size == 2 and sizer.halvings == 2 and seen[:3] == [8, 4, 2]


def test_batch_sizer_gives_up_at_one() -> None:
    def always(chunk: list[int]) -> None:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        BatchSizer(2).run([1, 2], always)
    with pytest.raises(ValueError, match="other"):
        BatchSizer(2).run([1], lambda chunk: (_ for _ in ()).throw(ValueError("other")))
