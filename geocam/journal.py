"""Durable progress of a run, so that ``--resume`` continues where a crash stopped it.

A run that writes ``NAME`` keeps a folder ``NAME.resume`` beside it while it works: the run's
fingerprint (``run.json``), every strip handed to each product's writer (``PRODUCT-ROW.npy``),
and the state a resumed run needs besides the strips (``state.npz``: the scene's channel
weights after pass 1, and the region pixels counted per tile). Every file is written under a
temporary name, flushed to the disk and renamed, so a file that exists is complete, whenever
the process was killed or the power cut; a strip that is unreadable all the same is computed
again. ``owner.json`` names the run holding the journal, whose scratch files a later run
removes. The folder is only touched by the run holding the outputs' lock
(:class:`geocam.output.Destination`).

A resumed run replays the stored strips into fresh GeoTIFFs and computes only what is missing,
in the same order and with the same batches as an uninterrupted run, so its outputs are
bitwise identical to one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from geocam.errors import GeocamError
from geocam.output import StripSink, atomic_write, fsync_folder, remove_scratch
from geocam.sources import is_gdal_virtual

SUFFIX = ".resume"
STATE = "state.npz"
RUN = "run.json"
OWNER = "owner.json"
_OWN = re.compile(r"(run\.json|owner\.json|state\.npz|[A-Za-z_]+-\d{9}\.npy|\..*\.tmp)")
"""The names of the files geocam writes in a journal folder: the only ones it ever deletes."""


class Journal:
    """The ``NAME.resume`` folder of one run; see the module docstring.

    With ``resume`` an existing folder is continued if its fingerprint matches (a mismatch is an
    error: the inputs or settings changed); without it the files of an old journal are deleted.
    A folder that is not geocam's (no ``run.json``), or a file of that name, is refused, never
    deleted. ``run_id`` names this run's scratch files: those an earlier, killed run of the
    journal left beside the outputs are removed.
    """

    def __init__(
        self,
        folder: Path,
        fingerprint: Mapping[str, object],
        *,
        resume: bool,
        run_id: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self._sinks: dict[str, StripSink] = {}
        exists = self.folder.exists() or self.folder.is_symlink()
        if exists:
            self._check_kind()
        if exists and resume:
            self._check_fingerprint()
        else:
            if exists:
                self._remove_own_files()
            else:
                self._create()
            text = json.dumps(self.fingerprint, indent=1).encode()
            try:
                atomic_write(self.folder / RUN, lambda handle: handle.write(text))
            except BaseException:
                self.discard()
                raise
        self._claim(run_id)

    def _check_kind(self) -> None:
        if self.folder.is_symlink() or not self.folder.is_dir():
            raise GeocamError(
                f"{self.folder} exists and is not geocam's resume folder (a file or a link); "
                "move it away"
            )
        if not (self.folder / RUN).exists():
            raise GeocamError(
                f"{self.folder} is not geocam's resume folder (it has no {RUN}); move it away"
            )

    def _create(self) -> None:
        try:
            self.folder.mkdir()
            fsync_folder(self.folder.parent)
        except OSError as error:
            from geocam.output import write_failed

            raise write_failed(self.folder, error) from error

    def _claim(self, run_id: str | None) -> None:
        """Remove the scratch files of the run that last held the journal; record this one."""
        if run_id is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            earlier = json.loads((self.folder / OWNER).read_text())["run"]
            if isinstance(earlier, str) and re.fullmatch(r"[0-9a-f]{8}", earlier):
                remove_scratch(self.folder.parent, earlier)
        owner = json.dumps({"run": run_id, "pid": os.getpid()}).encode()
        atomic_write(self.folder / OWNER, lambda handle: handle.write(owner))

    def _check_fingerprint(self) -> None:
        try:
            stored = json.loads((self.folder / RUN).read_text())
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict):
            raise GeocamError(
                f"{self.folder}: {RUN} is missing or unreadable; run without --resume to start over"
            )
        if stored != self.fingerprint:
            keys = set(self.fingerprint) | set(stored)
            changed = sorted(k for k in keys if stored.get(k) != self.fingerprint.get(k))
            raise GeocamError(
                f"{self.folder}: the interrupted run had other inputs or settings "
                f"({', '.join(changed)}); run without --resume to start over"
            )

    # --- strips ----------------------------------------------------------------------------

    def record(self, product: str, sink: StripSink) -> StripSink:
        """``sink``, wrapped so that every strip written to it is stored first."""
        self._sinks[product] = sink
        return _Recorded(self, product, sink)

    def _strips(self, product: str) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.glob(f"{product}-*.npy"):
            with contextlib.suppress(ValueError):
                found.append((int(path.stem.rsplit("-", 1)[1]), path))
        return sorted(found)

    def store_strip(self, product: str, row: int, data: np.ndarray) -> None:
        """Store one strip of ``product`` starting at ``row``."""
        name = f"{product}-{row:09d}.npy"
        self._atomic_write(name, lambda handle: np.save(handle, data, allow_pickle=False))

    def stored_rows(self, product: str) -> int:
        """How many leading rows of ``product`` are stored without a gap.

        A strip that cannot be read (truncated by a power cut on a file system that lost it)
        ends the stored rows: it and the ones after it are computed again.
        """
        rows = 0
        for row, path in self._strips(product):
            if row != rows:
                break
            try:
                rows += int(np.load(path, mmap_mode="r", allow_pickle=False).shape[1])
            except (OSError, ValueError, EOFError, IndexError):
                break
        return rows

    def replay(self, product: str, rows: int) -> None:
        """Write the stored strips above row ``rows`` to the product's sink; drop the others."""
        sink = self._sinks[product]
        for row, path in self._strips(product):
            if row < rows:
                sink.write(row, np.load(path, allow_pickle=False))
            else:
                path.unlink()

    # --- state -----------------------------------------------------------------------------

    def save_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Store the arrays a resumed run needs besides the strips (replacing earlier ones)."""
        self._atomic_write(STATE, lambda handle: np.savez(handle, **state))  # type: ignore[arg-type]

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The stored state, or None when there is none yet (or it cannot be read)."""
        path = self.folder / STATE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, KeyError):
            return None  # unreadable: computed again

    # --- the folder ------------------------------------------------------------------------

    def _atomic_write(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a file so that it exists only when complete (see :func:`atomic_write`)."""
        atomic_write(self.folder / name, write)

    def _remove_own_files(self) -> None:
        for path in self.folder.iterdir():
            if _OWN.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                path.unlink()

    def discard(self) -> None:
        """Delete the journal (after success, or after an error that makes it useless).

        Only the files geocam writes are deleted; the folder goes when nothing else is in it.
        """
        with contextlib.suppress(OSError):
            self._remove_own_files()
            self.folder.rmdir()


@dataclass(frozen=True)
class _Recorded:
    """A sink whose strips go to the journal before they reach it."""

    journal: Journal
    product: str
    sink: StripSink

    def write(self, row_start: int, data: np.ndarray) -> None:
        self.journal.store_strip(self.product, row_start, data)
        self.sink.write(row_start, data)


def journal_folder(out: Path) -> Path:
    """The ``NAME.resume`` folder of the run writing ``out``."""
    return out.with_name(out.name + SUFFIX)


# --- what a run reads -------------------------------------------------------------------------

SAMPLES = 16
SAMPLE_BYTES = 65536


def file_identity(path: Path) -> list[object]:
    """Path, size, modification time and a hash of sampled blocks (cheap, content-based).

    The hash reads ``SAMPLES`` blocks of 64 KiB spread over the file (first and last
    included): an edit that keeps size and time still shows unless it misses every block.
    A GDAL virtual path (``/vsizip/...``) is identified by the archive it is in.
    """
    local = local_file(path)
    if local is None:
        return [str(path)]
    stat = local.stat()
    digest = hashlib.blake2b(digest_size=16)
    with open(local, "rb") as handle:
        size = stat.st_size
        offsets = {0, max(0, size - SAMPLE_BYTES)}
        offsets |= {size * i // SAMPLES for i in range(1, SAMPLES - 1)}
        for offset in sorted(offsets):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return [str(path), str(local.resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest()]


def local_file(path: Path | str) -> Path | None:
    """The file on disk behind ``path``: itself, or the archive of a ``/vsizip/``-like path."""
    text = str(path)
    if not is_gdal_virtual(text):
        local = Path(text)
        return local if local.is_file() else None
    parts = text.split("/")
    start = next((i for i, part in enumerate(parts) if i > 0 and not part.startswith("vsi")), None)
    if start is None:
        return None
    for end in range(len(parts), start, -1):
        candidate = Path("/" + "/".join(parts[start:end]))
        if candidate.is_file():
            return candidate
    return None


def identities(paths: list[Path]) -> list[list[object]]:
    """:func:`file_identity` of each of ``paths``, with a shapefile's sidecars."""
    found = []
    for path in paths:
        found.append(file_identity(path))
        if path.suffix.lower() == ".shp":
            for sidecar in sorted(path.parent.glob(f"{glob_escape(path.stem)}.*")):
                if sidecar != path and sidecar.is_file():
                    found.append(file_identity(sidecar))
    return found


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def journal_size(folder: Path) -> int:
    """Bytes the strips already stored in a journal folder take (0 without one)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.glob("*.npy") if p.is_file())
