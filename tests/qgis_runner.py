"""Open geocam's outputs in a real QGIS, headless: run with the system Python that has PyQGIS.

Not a test module: ``tests/test_qgis.py`` runs it as ``/usr/bin/python3 tests/qgis_runner.py``
(QGIS's bindings live in the system Python, not in the project's), feeding a JSON list of jobs on
stdin and reading a JSON list of results on stdout. It imports only QGIS and the standard library.

Jobs (``op``):

- ``layer``: open ``path`` as QGIS does when a user adds it (default style and ``.qmd``
  metadata loaded) and report validity, CRS, extent, renderer, legend, metadata, features
  (their extents in the CRS of the layer ``in_crs_of``, when given).
- ``render``: draw ``layers`` (bottom first; ``rgb`` makes a raster an RGB composite) on the
  extent and grid of the first one, ``width`` x ``height`` pixels, to the PNG ``out``.
- ``project``: read the ``.qgz``/``.qgs`` at ``path``; its CRS and every layer's validity; with
  ``out``, render its visible layers on its first raster's extent, ``width`` pixels wide.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsContrastEnhancement,
    QgsCoordinateTransform,
    QgsMapLayer,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def open_layer(path: str) -> QgsMapLayer:
    """A layer as QGIS's "Add layer" makes it: default style and metadata applied."""
    raster = path.lower().endswith((".tif", ".tiff", ".vrt"))
    layer: QgsMapLayer
    if raster:
        layer = QgsRasterLayer(path, os.path.basename(path))
    else:
        layer = QgsVectorLayer(path, os.path.basename(path), "ogr")
    layer.loadDefaultMetadata()
    return layer


def extent(layer: QgsMapLayer) -> list[float]:
    box = layer.extent()
    return [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]


def describe(job: dict[str, Any]) -> dict[str, Any]:
    layer = open_layer(job["path"])
    out: dict[str, Any] = {
        "valid": layer.isValid(),
        "crs_wkt": layer.crs().toWkt(),
        "crs_authid": layer.crs().authid(),
        "extent": extent(layer),
        "title": layer.metadata().title(),
        "abstract": layer.metadata().abstract(),
    }
    if isinstance(layer, QgsRasterLayer):
        renderer = layer.renderer()
        out["renderer"] = renderer.type()
        out["legend"] = [label for label, _ in renderer.legendSymbologyItems()]
        out["bands"] = [layer.bandName(i) for i in range(1, layer.bandCount() + 1)]
        shader = getattr(renderer, "shader", lambda: None)()
        if shader is not None:
            items = shader.rasterShaderFunction().colorRampItemList()
            out["ramp"] = [[i.value, i.color.alpha(), i.label] for i in items]
        if renderer.type() == "paletted":
            out["classes"] = [[c.value, c.label] for c in renderer.classes()]
    else:
        assert isinstance(layer, QgsVectorLayer)
        out["renderer"] = layer.renderer().type() if layer.renderer() else None
        symbol = layer.renderer().symbol() if out["renderer"] == "singleSymbol" else None
        if symbol is not None:
            properties = symbol.symbolLayer(0).properties()
            out["symbol"] = {k: properties.get(k) for k in ("color", "outline_color", "style")}
        out["features"] = layer.featureCount()
        geometries = [f.geometry() for f in layer.getFeatures()]
        if job.get("in_crs_of"):  # where QGIS draws them over that layer
            target = QgsRasterLayer(job["in_crs_of"], "target").crs()
            transform = QgsCoordinateTransform(layer.crs(), target, QgsProject.instance())
            for geometry in geometries:
                geometry.transform(transform)
        boxes = [geometry.boundingBox() for geometry in geometries]
        out["feature_extents"] = [
            [b.xMinimum(), b.yMinimum(), b.xMaximum(), b.yMaximum()] for b in boxes
        ]
    return out


def composite(layer: QgsRasterLayer, rgb: list[int]) -> None:
    """Show ``layer`` as bands ``rgb``, each stretched over its 2-98 % cumulative cut."""
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), *rgb)
    layer.setRenderer(renderer)
    layer.setContrastEnhancement(
        QgsContrastEnhancement.StretchToMinimumMaximum,
        QgsRasterMinMaxOrigin.CumulativeCut,
        layer.extent(),
        0,
        QgsRasterBandStats.All,
    )


def render(job: dict[str, Any]) -> dict[str, Any]:
    layers = []
    for spec in job["layers"]:
        layer = open_layer(spec["path"])
        if not layer.isValid():
            return {"error": f"invalid layer {spec['path']}"}
        if spec.get("rgb") and isinstance(layer, QgsRasterLayer):
            composite(layer, spec["rgb"])
        layers.append(layer)
    settings = QgsMapSettings()
    settings.setLayers(list(reversed(layers)))  # QGIS draws the list's last layer first
    settings.setDestinationCrs(layers[0].crs())
    settings.setExtent(layers[0].extent())
    settings.setOutputSize(QSize(job["width"], job["height"]))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job_ = QgsMapRendererSequentialJob(settings)
    job_.start()
    job_.waitForFinished()
    image = job_.renderedImage()
    saved = image.save(job["out"], "PNG")
    return {"saved": bool(saved), "size": [image.width(), image.height()]}


def project(job: dict[str, Any]) -> dict[str, Any]:
    instance = QgsProject.instance()
    read = instance.read(job["path"])
    root = instance.layerTreeRoot()
    order = [node.layerId() for node in root.findLayers()]
    layers = instance.mapLayers()
    if job.get("out"):
        shown = [layers[i] for i in order if root.findLayer(i).isVisible()]
        rasters = [layer for layer in shown if isinstance(layer, QgsRasterLayer)]
        box = rasters[0].extent()
        settings = QgsMapSettings()
        settings.setLayers(shown)
        settings.setDestinationCrs(instance.crs())
        settings.setExtent(box)
        height = round(job["width"] * box.height() / box.width())
        settings.setOutputSize(QSize(job["width"], height))
        settings.setBackgroundColor(QColor(255, 255, 255))
        drawing = QgsMapRendererSequentialJob(settings)
        drawing.start()
        drawing.waitForFinished()
        drawing.renderedImage().save(job["out"], "PNG")
    return {
        "read": bool(read),
        "crs_wkt": instance.crs().toWkt(),
        "layers": [
            {
                "name": layers[i].name(),
                "valid": layers[i].isValid(),
                "type": "raster" if isinstance(layers[i], QgsRasterLayer) else "vector",
                "renderer": (
                    layers[i].renderer().type() if layers[i].renderer() is not None else None
                ),
                "source": layers[i].source(),
                "extent": extent(layers[i]),
                "visible": root.findLayer(i).isVisible(),
            }
            for i in order
        ],
    }


def provider(job: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the installed provider's algorithms (plugin folder ``plugins``)."""
    sys.path.insert(0, job["plugins"])
    from geocam_provider.provider import GeocamProvider

    registry = QgsApplication.processingRegistry()
    registry.addProvider(GeocamProvider())
    algorithm = registry.algorithmById("geocam:explain")
    return {"explain": [p.name() for p in algorithm.parameterDefinitions()]}


OPS = {"layer": describe, "render": render, "project": project, "provider": provider}


def main() -> None:
    app = QgsApplication([], False)
    app.initQgis()
    results = [{"qgis": Qgis.version()}]
    for job in json.load(sys.stdin):
        try:
            results.append(OPS[job["op"]](job))
        except Exception as error:  # reported to the test, which fails with it
            results.append({"error": f"{type(error).__name__}: {error}"})
    sys.stdout.write(json.dumps(results))
    sys.stdout.flush()
    app.exitQgis()


if __name__ == "__main__":
    main()
