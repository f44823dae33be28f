"""Unpickle torch files without running code: unknown classes become inert stubs.

A Lightning checkpoint pickles whatever its ``hyper_parameters`` hold (a Path, an Enum, an
argparse Namespace, a loss object). torch's ``weights_only`` loader refuses the whole file for
one such object, and ``safe_globals`` must name every class beforehand and still cannot build
an object through ``getattr``. Here every global that torch's own weights-only allowlist does not
hold (tensor rebuilders, storages, dtypes, plain containers) resolves to a stub class that only
records its arguments: calling it, building it or setting its state never runs the file's code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, ClassVar

import torch


class UnreadableTorchFile(Exception):
    """The file is not a torch file (or is damaged); the message says why in one line."""


class Stub:
    """An inert stand-in for a class the file names: records arguments, state and items."""

    _stub_name = "?"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # noqa: RUF012  (never mutated: replaced per instance)
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    @property
    def items(self) -> dict[Any, Any]:
        """Items set on the object (a pickled dict subclass's)."""
        items: dict[Any, Any] = self.__dict__.setdefault("_items", {})
        return items

    @property
    def values(self) -> list[Any]:
        """Items appended to the object (a pickled list subclass's)."""
        values: list[Any] = self.__dict__.setdefault("_values", [])
        return values

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:
        """Another stub: calling a stand-in (e.g. ``getattr``'s result) runs nothing."""
        return Stub(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Collect items a pickled list subclass appends."""
        self.values.append(value)

    def extend(self, values: Any) -> None:
        """Collect items a pickled list subclass extends with."""
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


_STUBS: dict[str, type[Stub]] = {}


def _stub(module: str, name: str) -> type[Stub]:
    key = f"{module}.{name}"
    if key not in _STUBS:
        _STUBS[key] = type(name, (Stub,), {"_stub_name": key, "__module__": __name__})
    return _STUBS[key]


def _allowed() -> dict[str, Any]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except ImportError:  # a torch without it: the essentials of tensor files
        import collections

        import torch._utils

        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch.Size": torch.Size,
        }


class _Unpickler(pickle.Unpickler):
    """Globals from torch's weights-only allowlist, stubs for everything else."""

    allowed: ClassVar[dict[str, Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get(f"{module}.{name}")
        if found is not None:
            return found
        if (
            module == "torch"
            and hasattr(torch, name)
            and isinstance(getattr(torch, name), torch.dtype)
        ):
            return getattr(torch, name)
        return _stub(module, name)


def _load(handle: IO[bytes], **kwargs: Any) -> Any:
    return _Unpickler(handle, **kwargs).load()


def read_torch_file(path: Path) -> Any:
    """The object a ``torch.save`` file holds, its tensors on the CPU and its classes stubbed."""
    _Unpickler.allowed = _allowed()
    module = SimpleNamespace(Unpickler=_Unpickler, load=_load, __name__="geocam_safe_pickle")
    try:
        return torch.load(  # nosec: the unpickler resolves no global outside torch's allowlist
            path, map_location="cpu", weights_only=False, pickle_module=module
        )
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise UnreadableTorchFile(str(exc).strip().splitlines()[0] if str(exc) else "") from None
    except Exception as exc:  # any other failure to parse: a damaged or foreign file
        raise UnreadableTorchFile(f"{type(exc).__name__}: {exc}") from None


def contains_stub(data: Any, depth: int = 0) -> bool:
    """True when a stub (an object the file named) is anywhere in nested containers."""
    if isinstance(data, Stub) or (isinstance(data, type) and issubclass(data, Stub)):
        return True
    if depth > 20:
        return False
    if isinstance(data, dict):
        return any(
            contains_stub(k, depth + 1) or contains_stub(v, depth + 1) for k, v in data.items()
        )
    if isinstance(data, list | tuple | set):
        return any(contains_stub(v, depth + 1) for v in data)
    return False


def plain(data: Any, depth: int = 0) -> Any:
    """Stubs as plain values: a dict-like one as its items, an object as its fields."""
    if depth > 20:
        return None
    if isinstance(data, Stub):
        if data.items:
            return {k: plain(v, depth + 1) for k, v in data.items.items()}
        if isinstance(data.state, dict):
            return {k: plain(v, depth + 1) for k, v in data.state.items()}
        if data._stub_name.startswith("pathlib.") and all(isinstance(a, str) for a in data.args):
            return str(Path(*data.args))
        if len(data.args) == 1 and not isinstance(data.args[0], Stub):
            return data.args[0]  # an Enum member's value, a Path's one part
        return repr(data)
    if isinstance(data, dict):
        return {k: plain(v, depth + 1) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [plain(v, depth + 1) for v in data]
    return data
