"""The one exception type for user mistakes: its message is a single line saying what to fix.

GDAL and libtiff report problems through rasterio's and fiona's loggers; :func:`quiet_gdal`
keeps those messages (instead of printing them) so that a failure is told in geocam's one line,
with GDAL's own reason when the exception only says "See previous exception".
"""

from __future__ import annotations

import logging
from collections import deque


class GeocamError(Exception):
    """A problem with the caller's input (file, option, model, region), not a bug in geocam.

    The command line prints the message alone, without a traceback; library users catch it
    to tell their own mistakes from internal failures.
    """


class GeocamWarning(UserWarning):
    """A setting that works but gives a worse result than it could (tiles meeting at a cut).

    The command line prints it on one line, ``geocam: warning: ...``.
    """


class WriteFailed(GeocamError):
    """Writing an output failed (disk full, quota, file size limit): the inputs were fine.

    A run that fails this way keeps its resume journal, to be continued once there is room.
    """


class ZeroMap(GeocamError):
    """The maps are zero everywhere: the region's score does not depend on the layer there.

    Refused as a result nobody can read; model randomisation takes it as a step's result.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Recorder(logging.Handler):
    """Keeps the last GDAL/libtiff messages logged by rasterio and fiona."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: deque[str] = deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())


GDAL_MESSAGES = _Recorder()


def quiet_gdal(quiet: bool = True) -> None:
    """Keep GDAL's messages for geocam's one-line errors instead of printing each one.

    With ``quiet`` false (``--debug``) they are printed as well, as Python's logging would.
    """
    for name in ("rasterio", "fiona"):
        logger = logging.getLogger(name)
        if GDAL_MESSAGES not in logger.handlers:
            logger.addHandler(GDAL_MESSAGES)
        logger.propagate = not quiet


def gdal_reason(text: str) -> str:
    """``text``, or GDAL's last message when ``text`` only points to an earlier one."""
    if ("previous exception" in text or not text) and GDAL_MESSAGES.messages:
        return GDAL_MESSAGES.messages[-1]
    return text
