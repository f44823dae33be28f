"""State dicts: read tensors from safetensors and torch files without running code, and load them.

The loader accepts what torch's ``load_state_dict(strict=True)`` accepts and a little more:
missing ``num_batches_tracked`` buffers (weights converted from ONNX or TensorFlow have none),
a Lightning/TorchGeo ``model.`` prefix, and missing parameters of modules the forward never
runs (reported, then tolerated). Torch files are unpickled with every class that is not a
tensor or a plain container replaced by an inert stub (:mod:`geocam.models.unpickle`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geocam.errors import GeocamError, GeocamWarning
from geocam.models.unpickle import UnreadableTorchFile, contains_stub, plain, read_torch_file

LIGHTNING_KEYS = ("pytorch-lightning_version", "hyper_parameters", "optimizer_states", "loops")
"""Top-level keys of a Lightning checkpoint beside its ``state_dict``."""


@dataclass
class Checkpoint:
    """The tensors of a weights file and what the file says about the network.

    ``kind`` is ``safetensors``, ``state-dict`` (a ``torch.save`` file) or ``lightning``;
    ``hyper_parameters`` a Lightning file's (plain values; objects become their fields).
    """

    state: dict[str, torch.Tensor]
    kind: str
    path: Path
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    """Keys outside the network (a Lightning task's loss weights, metrics), left out."""


def is_safetensors(path: Path) -> bool:
    """True when ``path`` starts like a safetensors file: a header length, then JSON."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if path.suffix == ".safetensors":
        return True
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return bool(0 < length <= os.path.getsize(path) - 8)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read the tensors of a safetensors, ``torch.save`` or Lightning file (detected by content)."""
    path = Path(path)
    if path.is_dir():
        hint = (
            " (an smp hub folder: pass it as the model source, -m FOLDER or `model:` in a preset)"
            if (path / "config.json").is_file()
            else ""
        )
        raise GeocamError(f"checkpoint {path} is a folder, not a weights file{hint}")
    if not path.is_file():
        raise GeocamError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return Checkpoint(dict(load_file(str(path), device="cpu")), "safetensors", path)
        except (SafetensorError, json.JSONDecodeError) as exc:
            raise GeocamError(f"checkpoint {path} is not a valid safetensors file: {exc}") from None
    try:
        data = read_torch_file(path)
    except UnreadableTorchFile as exc:
        raise GeocamError(
            f"checkpoint {path} cannot be read as a torch file ({exc}); save the weights with "
            "torch.save(model.state_dict()) or as safetensors"
        ) from None
    kind, hyper = "state-dict", dict[str, Any]()
    if (
        isinstance(data, dict)
        and isinstance(data.get("state_dict"), dict)
        and any(key in data for key in LIGHTNING_KEYS)
    ):
        kind = "lightning"
        hyper = plain(data.get("hyper_parameters")) or {}
        if not isinstance(hyper, dict):
            hyper = {}
        data = data["state_dict"]
    elif contains_stub(data):  # objects in a file of unknown structure: refuse it whole
        raise GeocamError(
            f"checkpoint {path} holds Python objects, not only tensors; refused (loading it could "
            "run code). Save model.state_dict() or use safetensors"
        )
    elif isinstance(data, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise GeocamError(f"checkpoint {path} does not hold a state dict of named tensors")
    if data and all(k.startswith("module.") for k in data):  # saved from DataParallel
        data = {k.removeprefix("module."): v for k, v in data.items()}
    checkpoint = Checkpoint(dict(data), kind, path, hyper)
    if kind == "lightning" and any(k.startswith("model.") for k in data):
        checkpoint.state = {k[6:]: v for k, v in data.items() if k.startswith("model.")}
        checkpoint.dropped = [k for k in data if not k.startswith("model.")]
    return checkpoint


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors or ``torch.save`` file without executing any code."""
    return read_checkpoint(path).state


def load_checkpoint(model: nn.Module, path: Path) -> list[str]:
    """Load the weights of ``path`` into ``model``; returns what was tolerated, in words.

    Every missing, unexpected or misshapen key is an error, except missing
    ``num_batches_tracked`` buffers and parameters of modules the forward never runs.
    """
    return load_state(model, read_checkpoint(path).state, str(path))


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> list[str]:
    """Load ``state`` into ``model`` as :func:`load_checkpoint` does; ``where`` names its file."""
    expected = model.state_dict()
    state = dict(state)
    if not any(k in expected for k in state) and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}  # a Lightning module's
    missing = [k for k in expected if k not in state]
    notes: list[str] = []
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    if counters:
        for key in counters:
            state[key] = expected[key]
        notes.append(f"{len(counters)} BatchNorm num_batches_tracked buffer(s) not in the file")
    missing = [k for k in missing if k not in state]
    if missing:
        unused = _never_run(model, missing)
        if unused:
            for key in unused:
                state[key] = expected[key]
            notes.append(
                f"{len(unused)} tensor(s) of modules the forward never runs are not in the file "
                f"and keep their initial values: {listing(unused, 3)}"
            )
            missing = [k for k in missing if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(items)}): {listing(items)}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", misshapen),
        )
        if items
    ]
    if problems:
        cause = _likely_cause(expected, state, missing, unexpected, misshapen)
        raise GeocamError(
            f"checkpoint {where} does not fit the model: {'; '.join(problems)}. "
            f"{cause}Check arch, encoder, in_channels and classes in the config"
        )
    model.load_state_dict(state, strict=True)
    for note in notes:
        warnings.warn(f"checkpoint {Path(where).name}: {note}", GeocamWarning, stacklevel=2)
    return notes


def _likely_cause(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing: Sequence[str],
    unexpected: Sequence[str],
    misshapen: Sequence[str],
) -> str:
    """One sentence naming what most likely went wrong: a key prefix, or the decoder's widths."""
    if missing and unexpected:
        heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
        if len(heads) == 1:
            prefix = f"{heads.pop()}."
            fits = sum(k.removeprefix(prefix) in expected for k in unexpected)
            if fits >= len(unexpected) // 2:
                return (
                    f"The file's keys carry a {prefix!r} prefix the network's do not "
                    f"({fits} of {len(unexpected)} match without it): strip it. "
                )
    names = [m.split(" ", 1)[0] for m in misshapen]
    if names and all(n.startswith("decoder.") for n in names):
        widths = decoder_channels(state)
        found = f" (the file's: {widths})" if widths else ""
        return (
            "Only decoder shapes differ: the network was trained with other decoder_channels"
            f"{found}; set options: {{decoder_channels: [...]}} in the preset. "
        )
    return ""


def decoder_channels(state: Mapping[str, torch.Tensor]) -> list[int]:
    """Smp Unet-style decoder widths read from the weights (``decoder.blocks.N.conv1``)."""
    widths = []
    index = 0
    while (key := f"decoder.blocks.{index}.conv1.0.weight") in state or (
        key := f"decoder.blocks.x_0_{index}.conv1.0.weight"
    ) in state:
        widths.append(int(state[key].shape[0]))
        index += 1
    return widths


def _never_run(model: nn.Module, keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` whose module does not run in a forward pass (a dry run)."""
    from geocam._guard import explanation_mode
    from geocam.layers import infer_in_channels

    ran: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda m, _, name=name: ran.add(name))
        for name, module in model.named_modules()
    ]
    try:
        channels = infer_in_channels(model)
        with explanation_mode(model), torch.no_grad():
            for size in (64, 128, 224, 256):
                try:
                    model(torch.zeros(1, channels, size, size))
                    break
                except Exception:  # the dry run is only a probe: any failure means "unknown"
                    ran.clear()
    except GeocamError:
        return []
    finally:
        for handle in handles:
            handle.remove()
    if not ran:
        return []
    return [k for k in keys if k.rpartition(".")[0] not in ran]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, recorded in outputs so a heatmap names the exact weights used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def listing(items: Sequence[str], limit: int = 5) -> str:
    """At most ``limit`` items, comma-separated, with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
