"""The one exception type for user mistakes: its message is a single line saying what to fix."""


class GeocamError(Exception):
    """A problem with the caller's input (file, option, model, region), not a bug in geocam.

    The command line prints the message alone, without a traceback; library users catch it
    to tell their own mistakes from internal failures.
    """
