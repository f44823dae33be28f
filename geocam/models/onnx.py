"""ONNX files, converted to torch with onnx2torch (``pip install 'geocam[onnx]'``).

Grad-CAM needs gradients, which an ONNX runtime does not give; onnx2torch rebuilds the graph as
a torch ``GraphModule``. float16 and bfloat16 graphs are upcast to float32 first, Cast nodes
included (a plain ``.float()`` of the converted module leaves the casts, and float16 gradients
overflow into an all-NaN heatmap). Deepness-style ``metadata_props`` (class names,
standardisation) are read as JSON; nothing in the file is executed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geocam.errors import GeocamError, GeocamWarning
from geocam.models.source import ModelSource
from geocam.models.spec import Normalisation
from geocam.models.state_dict import file_sha256

_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16
_LOW = (_FLOAT16, _BFLOAT16)
HELPER_KINDS = (
    "Cast", "Constant", "Shape", "Pad", "Reshape", "Gather", "Unsqueeze", "Squeeze", "Slice",
    "Expand", "Range", "Identity", "Flatten", "Transpose", "Split", "Tile", "Where", "Equal",
)  # fmt: skip
"""Converted-graph modules that only move, cast or describe tensors: hidden from listings."""


def looks_like_onnx(path: Path) -> bool:
    """True when the file starts like an ONNX protobuf (``ir_version``, field 1) and parses."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:1] != b"\x08" or head[:2] == b"PK":
        return False
    try:
        import onnx
    except ImportError:
        raise GeocamError(
            f"model {path} looks like an ONNX file: install ONNX support with "
            "`pip install 'geocam[onnx]'` (onnx, onnx2torch)"
        ) from None
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf: some other file that starts with 0x08
        return False
    return True


def upcast(model: Any) -> tuple[int, int]:
    """float16/bfloat16 tensors, casts and declared types of an ONNX graph made float32.

    Returns how many tensors and how many Cast nodes changed.
    """
    from onnx import numpy_helper

    tensors = casts = 0
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type in _LOW:
            array = numpy_helper.to_array(init).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
            tensors += 1
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in _LOW:
                attr.i = _FLOAT
                casts += 1
            elif attr.t is not None and attr.HasField("t") and attr.t.data_type in _LOW:
                array = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
                tensors += 1
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type in _LOW:
            info.type.tensor_type.elem_type = _FLOAT
    return tensors, casts


def inline_identities(model: Any) -> None:
    """Identity nodes of initializers become initializers (onnx2torch needs them as such)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = graph.initializer.add()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            inits[copy.name] = copy
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def open_onnx(path: Path) -> ModelSource:
    """The ONNX file's network as torch, in float32, with what its metadata says."""
    import onnx

    try:
        from onnx2torch import convert
    except ImportError:
        raise GeocamError(
            f"model {path} is an ONNX file: install `pip install 'geocam[onnx]'` (onnx2torch)"
        ) from None
    proto = onnx.load(str(path))
    tensors, casts = upcast(proto)
    inline_identities(proto)
    notes = []
    if tensors or casts:
        notes.append(
            f"{path.name} is a float16 graph ({tensors} tensors, {casts} casts): upcast to float32 "
            "for explaining"
        )
        warnings.warn(notes[-1], GeocamWarning, stacklevel=2)
    try:
        model = convert(proto)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ...
        raise GeocamError(f"model {path}: onnx2torch cannot convert it ({exc})") from None
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    in_channels = _dim(proto.graph.input, 1)
    classes = _dim(proto.graph.output, 1)
    names = _class_names(metadata.get("class_names"))
    return ModelSource(
        model=model.float().eval(),
        kind="onnx",
        location=str(path),
        sha256=file_sha256(path),
        arch="onnx",
        encoder=path.name,
        classes=classes or (len(names) if names else None),
        in_channels=in_channels,
        class_names=names,
        normalisation=deepness_normalisation(metadata, in_channels),
        metadata=metadata,
        notes=notes,
    )


def onnx_difference(
    path: Path, model: torch.nn.Module, images: torch.Tensor
) -> tuple[float, float]:
    """Largest |difference| between onnxruntime's output and the converted network's.

    Returned with onnxruntime's largest |output|, the scale the difference is relative to.
    """
    import onnxruntime

    from geocam.cam import _main_output

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    dtype = np.float16 if "float16" in first.type else np.float32
    reference = session.run(None, {first.name: images.numpy().astype(dtype)})[0]
    with torch.no_grad():
        ours = _main_output(model(images.float())).numpy()
    reference = reference.astype(np.float32)
    return float(np.abs(ours - reference).max()), float(np.abs(reference).max())


def deepness_normalisation(metadata: dict[str, str], bands: int | None) -> Normalisation | None:
    """QGIS Deepness' ``standardization_mean``/``_std`` metadata as a normalisation, if present."""
    try:
        mean = json.loads(metadata["standardization_mean"])
        std = json.loads(metadata["standardization_std"])
    except (KeyError, json.JSONDecodeError):
        return None
    if bands and isinstance(mean, list) and len(mean) != bands:
        return None
    return Normalisation.mean_std([float(v) for v in mean], [float(v) for v in std])


def _class_names(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        return tuple(str(value[k]) for k in sorted(value, key=lambda k: int(k)))
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return None


def _dim(values: Any, index: int) -> int | None:
    """A static dimension of the graph's first input or output (None when symbolic)."""
    if not values:
        return None
    dims = values[0].type.tensor_type.shape.dim
    if len(dims) <= index or not dims[index].HasField("dim_value"):
        return None
    return int(dims[index].dim_value)


def verify_onnx(source: ModelSource, size: int = 256) -> str:
    """One line: onnxruntime's output against the converted network's, on one random tile."""
    if source.kind != "onnx":
        raise GeocamError(
            f"--verify compares ONNX files with onnxruntime; {source.location} is not one"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise GeocamError("--verify needs onnxruntime: pip install onnxruntime") from None
    from geocam.layers import fixed_tile, infer_in_channels

    size = fixed_tile(source.model) or size
    channels = source.in_channels or infer_in_channels(source.model)
    images = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    difference, scale = onnx_difference(Path(source.location), source.model, images)
    relative = difference / scale if scale > 0 else float("nan")
    return (
        f"verify: onnxruntime vs the converted network, one {size} x {size} tile: "
        f"max |difference| {difference:.3g} ({relative:.3g} of the largest output)"
    )
