"""Resuming an interrupted run: what an earlier run stored, and where to continue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from geocam.output import BLOCK
from geocam.scene.specs import ProductSpec


class Checkpoint(Protocol):
    """Durable progress of an earlier, interrupted run (:class:`geocam.journal.Journal`)."""

    def stored_rows(self, product: str) -> int:
        """How many leading rows of ``product`` are stored."""
        ...

    def replay(self, product: str, rows: int) -> None:
        """Hand the stored rows above ``rows`` to the product's sink again."""
        ...

    def save_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Store what a resumed run needs besides the strips."""
        ...

    def load_state(self) -> dict[str, np.ndarray] | None:
        """The stored state, if any."""
        ...


@dataclass(frozen=True)
class ResumePlan:
    """Where each product continues (its rows, replayed), and the source row computing resumes.

    ``state`` is the stored state to use (None: everything is computed again).
    """

    starts: dict[str, int]
    row: int
    state: dict[str, np.ndarray] | None


def plan_resume(
    specs: Sequence[ProductSpec],
    scales: Mapping[str, int],
    stored: Mapping[str, int],
    state: dict[str, np.ndarray] | None,
    scene_weights: bool,
    height: int,
) -> ResumePlan:
    """Decide what of an earlier run's ``stored`` rows (per product) and ``state`` is used.

    ``specs`` lists the heatmap first; ``scales`` is each product's source pixels per output
    pixel. Scene weights resume after pass 1 only: the other products are complete then, and
    the heatmap continues. Otherwise every product restarts on a common source row that is a
    whole number of strips of each.
    """
    starts = {spec.name: 0 for spec in specs}
    done = {s.name: stored[s.name] >= s.grid.height for s in specs}
    if scene_weights and not all(done[s.name] for s in specs[1:]):
        state = None  # pass 1 did not finish: it runs again, extra products included
    if state is None or (scene_weights and "weights" not in state):
        return ResumePlan(starts, 0, None)
    active = [specs[0]] if scene_weights else list(specs)
    for spec in specs:  # extra products of scene weights are complete
        starts[spec.name] = spec.grid.height
    rows = [height if done[s.name] else stored[s.name] * scales[s.name] for s in active]
    unit = max(BLOCK * scales[s.name] for s in active)
    row = min(rows) if min(rows) >= height else min(rows) // unit * unit
    for spec in active:
        starts[spec.name] = spec.grid.height if row >= height else row // scales[spec.name]
    return ResumePlan(starts, row, state)
