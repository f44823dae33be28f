"""Networks from a spec: the built-in smp factory and those of plugins.

Built-in networks come from segmentation-models-pytorch; other factories register through the
``geocam.models`` entry-point group, so any package can make its networks explainable by
geocam without geocam knowing about them.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

from torch import nn

from geocam.errors import GeocamError
from geocam.models.spec import ModelSpec
from geocam.models.state_dict import listing as _listing
from geocam.models.state_dict import load_checkpoint

ModelFactory = Callable[[ModelSpec], nn.Module]
"""A function that builds an (untrained) network from a spec."""

ENTRY_POINT_GROUP = "geocam.models"


def smp_factory(spec: ModelSpec) -> nn.Module:
    """Build a segmentation-models-pytorch network with random weights (none downloaded)."""
    import segmentation_models_pytorch as smp

    try:
        model: nn.Module = smp.create_model(
            spec.arch,
            encoder_name=spec.encoder,
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=len(spec.classes),
            **dict(spec.options),
        )
    except KeyError as exc:
        raise GeocamError(_unknown_smp_name(spec, exc)) from None
    except TypeError as exc:
        raise GeocamError(f"smp rejected the model options {dict(spec.options)}: {exc}") from None
    except RuntimeError as exc:  # timm's "Unknown model (NAME)" for a tu- encoder
        if "Unknown model" not in str(exc):
            raise
        raise GeocamError(
            f"smp cannot build encoder={spec.encoder!r}: timm has no such model; fix encoder in "
            "the config (tu- plus a name from timm.list_models())"
        ) from None
    return model


def _unknown_smp_name(spec: ModelSpec, error: KeyError) -> str:
    """Which of arch and encoder smp does not know, with the closest names it does."""
    import segmentation_models_pytorch as smp

    mapping = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", {})
    archs = {key.lower(): getattr(cls, "__name__", key) for key, cls in mapping.items()}
    encoders = list(smp.encoders.get_encoder_names())
    prefix = f"smp cannot build arch={spec.arch!r} with encoder={spec.encoder!r}"
    if archs and spec.arch.lower() not in archs:
        field, wrong, known = "arch", spec.arch, list(archs.values())
    elif not spec.encoder.startswith("tu-") and spec.encoder not in encoders:
        field, wrong, known = "encoder", spec.encoder, encoders
    else:
        return f"{prefix}: {str(error.args[0] if error.args else error).splitlines()[0]}"
    close = difflib.get_close_matches(wrong, known, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"known: {_listing(known, 8)}"
    return f"{prefix}: no such {field} ({hint}); fix {field} in the config"


def model_factories() -> dict[str, ModelFactory]:
    """All registered factories: the built-in ``smp`` one and those of installed plugins."""
    factories: dict[str, ModelFactory] = {"smp": smp_factory}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in factories and entry.value == "geocam.models:smp_factory":
            continue
        try:
            factory = entry.load()
        except Exception as exc:  # a broken plugin must not break geocam itself
            warnings.warn(
                f"model plugin {entry.name!r} ({entry.value}) failed to load: {exc}",
                stacklevel=2,
            )
            continue
        if entry.name in factories:
            warnings.warn(
                f"model plugin {entry.name!r} ({entry.value}) is ignored: the name is taken",
                stacklevel=2,
            )
            continue
        factories[entry.name] = factory
    return factories


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network of ``spec`` and load its checkpoint, if any; returned in eval mode."""
    factories = model_factories()
    if spec.factory not in factories:
        raise GeocamError(
            f"unknown model factory {spec.factory!r}; registered: {', '.join(sorted(factories))}"
        )
    model = factories[spec.factory](spec)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()
