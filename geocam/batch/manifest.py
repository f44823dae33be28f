"""Which scenes a batch explains: paths and globs on the command line, or a manifest file.

A manifest is CSV (a header row, then one scene a row) or JSON lines (one object a line;
blank lines and lines starting with ``#`` are skipped). Fields:

- ``sources`` (or ``source``): the scene's raster(s), stacked in order; in CSV separated by
  ``;``, in JSON a string or a list;
- ``name`` (optional): the scene's output name [default: the first source's file stem];
- ``class`` (optional): class(es) to explain in this scene (``;``-separated in CSV),
  instead of the batch's ``--class``;
- ``region``, ``where`` (optional): the scene's region and vector filter, instead of the
  batch's.

Relative paths (sources, ``mask:``/``vector:`` regions) are relative to the manifest's folder.
A mistake is one line naming the file and the row.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from geocam.errors import GeocamError
from geocam.sources import is_gdal_virtual

FIELDS = ("sources", "source", "name", "class", "region", "where")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Scene:
    """One scene of a batch: its output name, its stacked sources and its own choices."""

    name: str
    sources: tuple[str, ...]
    classes: tuple[str, ...] = ()
    region: str | None = None
    where: str | None = None
    origin: str = ""
    """Where the scene was named (``scenes.csv, row 3``), for messages."""


def absolute(path: str, base: Path) -> str:
    """``path`` relative to ``base`` made absolute; GDAL virtual paths and URLs kept."""
    if is_gdal_virtual(path) or "://" in path:
        return path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def absolute_region(region: str | None, base: Path) -> str | None:
    """A ``mask:PATH`` or ``vector:PATH[:LAYER]`` region with its path made absolute."""
    if region is None:
        return None
    kind, _, rest = region.partition(":")
    if kind == "mask" and rest:
        return f"mask:{absolute(rest, base)}"
    if kind == "vector" and rest:
        path, layer_colon, layer = rest.partition(":")
        return f"vector:{absolute(path, base)}{layer_colon}{layer}"
    return region


def default_name(source: str) -> str:
    """A scene's output name from its first source: the file stem, made a safe file name."""
    stem = Path(source.rstrip("/")).stem or "scene"
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", stem).lstrip("._-+")
    return safe or "scene"


def scenes_from_arguments(arguments: Sequence[str], base: Path | None = None) -> list[Scene]:
    """One scene per path; a glob (``*``, ``?``, ``[``) names every file it matches, sorted."""
    base = base or Path.cwd()
    scenes = []
    for argument in arguments:
        if GLOB.search(argument) and not is_gdal_virtual(argument):
            matches = sorted(glob.glob(absolute(argument, base), recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                raise GeocamError(f"{argument}: the pattern matches no file")
        else:
            files = [absolute(argument, base)]
        scenes += [Scene(default_name(f), (f,), origin=f"argument {argument}") for f in files]
    return scenes


def read_manifest(path: str | Path) -> list[Scene]:
    """The scenes of a CSV or JSON-lines manifest (by its suffix: ``.csv``, else JSON lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise GeocamError(f"--manifest {path}: cannot read it ({error})") from None
    base = path.resolve().parent
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = _csv_rows(path, text)
    else:
        rows = _json_rows(path, text)
    scenes = [_scene(row, f"{path.name}, {where}", base) for where, row in rows]
    if not scenes:
        raise GeocamError(f"--manifest {path}: names no scene")
    return scenes


def _csv_rows(path: Path, text: str) -> Iterable[tuple[str, dict[str, object]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter, restval="")
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in FIELDS]
    if unknown:
        raise GeocamError(
            f"{path.name}, row 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(FIELDS)}"
        )
    if "sources" not in header and "source" not in header:
        raise GeocamError(f"{path.name}, row 1: no 'sources' column")
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise GeocamError(f"{path.name}, row {number}: more fields than columns")
        values: dict[str, object] = {}
        for key, value in row.items():
            value = (value or "").strip()
            if value:
                split = key.strip() in ("sources", "source", "class")
                values[key.strip()] = [v.strip() for v in value.split(";")] if split else value
        if values:
            yield f"row {number}", values


def _json_rows(path: Path, text: str) -> Iterable[tuple[str, dict[str, object]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise GeocamError(f"{path.name}, line {number}: not JSON ({error})") from None
        if not isinstance(row, dict):
            raise GeocamError(f"{path.name}, line {number}: not a JSON object")
        unknown = [k for k in row if k not in FIELDS]
        if unknown:
            raise GeocamError(
                f"{path.name}, line {number}: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected {', '.join(FIELDS)}"
            )
        yield f"line {number}", row


def _strings(value: object, what: str, origin: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise GeocamError(f"{origin}: '{what}' must be a path or a list of them, not {value!r}")
    return tuple(v.strip() for v in items)


def _text(row: Mapping[str, object], key: str, origin: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise GeocamError(f"{origin}: '{key}' must be a non-empty string, not {value!r}")
    return value.strip()


def _scene(row: Mapping[str, object], origin: str, base: Path) -> Scene:
    if "sources" in row and "source" in row:
        raise GeocamError(f"{origin}: give 'sources' or 'source', not both")
    raw = row.get("sources", row.get("source"))
    if raw is None or raw == "" or raw == []:
        raise GeocamError(f"{origin}: no sources")
    sources = tuple(absolute(s, base) for s in _strings(raw, "sources", origin))
    classes = _strings(row["class"], "class", origin) if row.get("class") else ()
    name = _text(row, "name", origin)
    if name is not None and not NAME.fullmatch(name):
        raise GeocamError(
            f"{origin}: name {name!r} is not a plain file name (letters, digits, . _ + -)"
        )
    region = absolute_region(_text(row, "region", origin), base)
    return Scene(
        name=name or default_name(sources[0]),
        sources=sources,
        classes=classes,
        region=region,
        where=_text(row, "where", origin),
        origin=origin,
    )


def check_unique(scenes: Sequence[Scene]) -> None:
    """Refuse two scenes with one output name (the second would overwrite the first)."""
    seen: dict[str, Scene] = {}
    for scene in scenes:
        if scene.name in seen:
            first = seen[scene.name]
            raise GeocamError(
                f"two scenes are named {scene.name!r} ({first.origin}; {scene.origin}); give "
                "each a 'name' in a manifest"
            )
        seen[scene.name] = scene
