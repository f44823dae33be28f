"""Benchmark runner: prints a markdown table of measured figures, with the machine's details.

Every ratio is measured side by side in one process: each competitor is warmed up once, then
the competitors run interleaved (A, B, C, A, B, C, ...) for ``--repeats`` rounds, so drift in
the machine's load affects all of them alike. Times are medians over the rounds; a ratio is the
median of the per-round ratios, which cancels drift that a ratio of medians would keep.

    python benchmarks/run.py                 # every group
    python benchmarks/run.py core --quick    # one group on small tiles
    python benchmarks/run.py core --smoke --repeats 1   # runs, prints every row (CI, seconds)
    python benchmarks/run.py nodata          # peak memory, mostly nodata vs valid (minutes)
    python benchmarks/run.py batch           # 8 scenes in-process vs a local Dask cluster
    python benchmarks/run.py core scene --device cuda   # the same groups on a GPU
    python benchmarks/run.py split           # one 8192^2 mosaic: one process vs 2 Dask workers

Groups register themselves with :func:`register` and return :class:`Row` objects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import batch  # noqa: F401  (registers its group)
import core  # noqa: F401
import nodata  # noqa: F401
import scene  # noqa: F401
import split  # noqa: F401
from common import GROUPS, Row, Settings, header, resolve, table

# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected groups and print the header and the table on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "groups", nargs="*", metavar="GROUP", help=f"groups to run (default: all of {list(GROUPS)})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median counts")
    parser.add_argument("--quick", action="store_true", help="small tiles and scenes: a quick look")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny tiles (core) and --quick otherwise: that the groups run, not what they measure",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda[:N] or auto (CUDA when present): where the networks run (default: cpu)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.groups if name not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    settings = Settings(
        repeats=args.repeats,
        quick=args.quick or args.smoke,
        device=resolve(args.device),
        smoke=args.smoke,
    )
    groups: list[str] = args.groups or list(GROUPS)

    rows: list[tuple[str, Row]] = []
    lines = header(settings, groups)
    for name in groups:
        rows.extend((name, row) for row in GROUPS[name](settings))
    print("\n".join([*lines, "", *table(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
