"""geocam's commands and their parameters as data, read from click's own command objects.

One source of truth for GUIs (the QGIS Processing provider builds its algorithms from it):
``geocam describe --json`` prints :func:`describe_cli`.
"""

from __future__ import annotations

from typing import Any

import click


def describe_param(param: click.Parameter) -> dict[str, Any]:
    """One option or argument: its name, flags, type, choices, default, help."""
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag:
        type_name = "flag"
    elif isinstance(kind, click.Choice):
        type_name = "choice"
    elif isinstance(kind, click.types.IntParamType):
        type_name = "int"
    elif isinstance(kind, click.types.FloatParamType):
        type_name = "float"
    elif isinstance(kind, click.Path):
        type_name = "path"
    else:
        type_name = "string"
    default = param.default if not callable(param.default) else None
    described: dict[str, Any] = {
        "name": param.name,
        "kind": "argument" if isinstance(param, click.Argument) else "option",
        "flags": list(param.opts),
        "secondary_flags": list(param.secondary_opts),
        "type": type_name,
        "required": param.required,
        "multiple": bool(getattr(param, "multiple", False)) or param.nargs == -1,
        "default": default if isinstance(default, str | int | float | bool) else None,
        "help": getattr(param, "help", None) or "",
    }
    if isinstance(kind, click.Choice):
        described["choices"] = list(kind.choices)
    if isinstance(kind, click.FloatRange | click.IntRange):
        described["min"], described["max"] = kind.min, kind.max
    return described


def describe_command(command: click.Command, path: str) -> dict[str, Any]:
    """A command (its help and parameters, ``--help`` left out)."""
    return {
        "name": path,
        "help": (command.help or "").strip().split("\n\n")[0],
        "params": [describe_param(p) for p in command.params if p.name not in ("help", "as_json")],
    }


def describe_cli(group: click.Group, prefix: str = "") -> dict[str, Any]:
    """Every command of ``group`` (sub-groups' commands as ``GROUP COMMAND``)."""
    commands: dict[str, Any] = {}
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            commands |= describe_cli(command, f"{path} ")["commands"]
        else:
            commands[path] = describe_command(command, path)
    return {"program": "geocam", "commands": commands}
