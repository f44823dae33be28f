"""geocam's QGIS Processing provider: runs the geocam command line as an external process.

A QGIS plugin (copied into a profile by ``geocam qgis install``); it imports only QGIS and the
standard library, never geocam or torch. Not imported by geocam itself.
"""


def classFactory(iface):  # type: ignore[no-untyped-def]
    """QGIS's entry point."""
    from .plugin import GeocamPlugin

    return GeocamPlugin(iface)
