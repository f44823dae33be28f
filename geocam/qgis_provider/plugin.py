"""The plugin: registers the provider in ``initProcessing`` (so ``qgis_process`` has it too)."""

from qgis.core import QgsApplication


class GeocamPlugin:
    """Adds the geocam Processing provider."""

    def __init__(self, iface=None):  # type: ignore[no-untyped-def]
        self.provider = None

    def initProcessing(self):  # type: ignore[no-untyped-def]
        from .provider import GeocamProvider

        self.provider = GeocamProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # type: ignore[no-untyped-def]
        self.initProcessing()

    def unload(self):  # type: ignore[no-untyped-def]
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
