"""Networks: from a spec (a preset), or from the model a user already has (a model source).

- :mod:`geocam.models.spec`: :class:`ModelSpec` and :class:`Normalisation`.
- :mod:`geocam.models.factories`: the smp factory, plugins, :func:`build_model`.
- :mod:`geocam.models.state_dict`: safetensors, ``torch.save`` and Lightning weights, read
  without running code (:mod:`geocam.models.unpickle`), loaded as torch's strict loader does.
- :mod:`geocam.models.source`: :func:`open_model` detects a source by content: an smp hub
  folder (:mod:`~geocam.models.hub`), ONNX (:mod:`~geocam.models.onnx`), a Lightning or
  TorchGeo checkpoint, torchvision by name (:mod:`~geocam.models.vision`), a state dict.
"""

from geocam.models.factories import (
    ENTRY_POINT_GROUP,
    ModelFactory,
    build_model,
    model_factories,
    smp_factory,
)
from geocam.models.source import KINDS, ModelSource, open_model
from geocam.models.spec import ModelSpec, Normalisation
from geocam.models.state_dict import (
    Checkpoint,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
    read_state_dict,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Checkpoint",
    "ModelFactory",
    "ModelSource",
    "ModelSpec",
    "Normalisation",
    "build_model",
    "file_sha256",
    "load_checkpoint",
    "model_factories",
    "open_model",
    "read_checkpoint",
    "read_state_dict",
    "smp_factory",
]
