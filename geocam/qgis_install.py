r"""``geocam qgis install``: copy the Processing provider into a QGIS profile and enable it.

The provider (``geocam/qgis_provider``) imports only QGIS and the standard library: it runs
the geocam executable whose path the install stores as the Processing setting
``GEOCAM_EXECUTABLE`` (QGIS3.ini, ``[Processing] Configuration\GEOCAM_EXECUTABLE``), with the
commands' description (``describe.json``) beside it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from geocam.describe import describe_cli
from geocam.errors import GeocamError

PLUGIN = "geocam_provider"
SETTING = "GEOCAM_EXECUTABLE"


def default_profile() -> Path:
    """QGIS 3's default profile folder on Linux (and similar on macOS/Windows via QGIS)."""
    return Path.home() / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"


def find_executable() -> str:
    """The ``geocam`` beside this Python (its environment's), else on PATH."""
    beside = Path(sys.executable).with_name("geocam")
    if beside.exists():
        return str(beside)
    found = shutil.which("geocam")
    if found is None:
        raise GeocamError("qgis install: no geocam executable found; pass --executable PATH")
    return found


def set_ini(path: Path, section: str, key: str, value: str) -> None:
    """Set ``key=value`` in ``[section]`` of a Qt INI file, keeping every other line."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    header = f"[{section}]"
    if header not in lines:
        lines += ["", header] if lines else [header]
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    entry = f"{key}={value}"
    for i in range(start, end):
        if lines[i].split("=", 1)[0] == key:
            lines[i] = entry
            break
    else:
        at = end
        while at > start and not lines[at - 1].strip():
            at -= 1
        lines.insert(at, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def install(profile: Path | None, executable: str | None, cli: click.Group) -> Path:
    """Copy the provider into ``profile``, enable it, store the executable; the plugin folder."""
    profile = Path(profile) if profile is not None else default_profile()
    executable = executable or find_executable()
    if not Path(executable).exists():
        raise GeocamError(f"--executable {executable}: no such file")
    source = Path(__file__).with_name("qgis_provider")
    target = profile / "python" / "plugins" / PLUGIN
    try:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "describe.json").write_text(json.dumps(describe_cli(cli), indent=1))
        ini = profile / "QGIS" / "QGIS3.ini"
        set_ini(ini, "PythonPlugins", PLUGIN, "true")
        set_ini(ini, "Processing", f"Configuration\\{SETTING}", executable)
    except OSError as error:
        raise GeocamError(f"qgis install: {profile}: {error.strerror or error}") from error
    return target
