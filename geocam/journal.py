"""Durable progress of a run, so that ``--resume`` continues where a crash stopped it.

A run that writes ``NAME`` keeps a folder ``NAME.resume`` beside it while it works: the run's
fingerprint (``run.json``), every strip handed to each product's writer (``PRODUCT-ROW.npy``),
and the state a resumed run needs besides the strips (``state.npz``: the scene's channel
weights after pass 1, and the region pixels counted per tile). Every file is written under a
temporary name and renamed, so a file that exists is complete, whenever the process was killed.

A resumed run replays the stored strips into fresh GeoTIFFs and computes only what is missing,
in the same order and with the same batches as an uninterrupted run, so its outputs are
bitwise identical to one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from geocam.errors import GeocamError
from geocam.output import StripSink, write_failed

SUFFIX = ".resume"
STATE = "state.npz"
RUN = "run.json"


class Journal:
    """The ``NAME.resume`` folder of one run; see the module docstring.

    With ``resume`` an existing folder is continued if its fingerprint matches (a mismatch is an
    error: the inputs or settings changed); without it any old folder is discarded.
    """

    def __init__(self, folder: Path, fingerprint: Mapping[str, object], *, resume: bool) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self._sinks: dict[str, StripSink] = {}
        if self.folder.exists() and resume:
            self._check_fingerprint()
        else:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.folder.mkdir()
            try:
                text = json.dumps(self.fingerprint, indent=1).encode()
                self._atomic_write(RUN, lambda handle: handle.write(text))
            except BaseException:
                self.discard()
                raise

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
        """How many leading rows of ``product`` are stored without a gap."""
        rows = 0
        for row, path in self._strips(product):
            if row != rows:
                break
            rows += int(np.load(path, mmap_mode="r", allow_pickle=False).shape[1])
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
        """The stored state, or None when there is none yet."""
        path = self.folder / STATE
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    # --- the folder ------------------------------------------------------------------------

    def _atomic_write(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a file under a temporary name and rename it: it exists only when complete."""
        temporary = self.folder / f".{name}"
        try:
            with open(temporary, "wb") as handle:
                write(handle)
            os.replace(temporary, self.folder / name)
        except OSError as error:
            raise write_failed(self.folder / name, error) from error

    def discard(self) -> None:
        """Delete the folder (after success, or after an error that makes it useless)."""
        shutil.rmtree(self.folder, ignore_errors=True)


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
