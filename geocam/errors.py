"""The one exception type for user mistakes: its message is a single line saying what to fix."""


class GeocamError(Exception):
    """A problem with the caller's input (file, option, model, region), not a bug in geocam.

    The command line prints the message alone, without a traceback; library users catch it
    to tell their own mistakes from internal failures.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
