"""A QGIS project (``.qgz``) that shows an explanation with one double-click.

Written as XML (a ``.qgz`` is a zip holding one ``.qgs``), so geocam never needs QGIS itself.
Layers, top to bottom: the region's outline, the hotspots, one styled heatmap per class (the
first shown), the class map (hidden) and the source image as an RGB composite; the project has
the scene's CRS and opens on its extent. Paths are relative to the project, so the folder can
be moved as a whole.
"""

from __future__ import annotations

import os
import secrets
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling

from geocam.output import Destination, classes_renderer
from geocam.products import (
    _reading,
    atomic,
    heat_renderer,
    outline_renderer,
    stretch_limits,
)
from geocam.sources import Grid


@dataclass(frozen=True)
class ProjectLayer:
    """One layer of the project: its XML, its tree entry."""

    id: str
    name: str
    source: str
    provider: str
    kind: str  # "raster" or "vector"
    body: str
    visible: bool = True
    geometry: str = ""


@dataclass
class QgisProject:
    """The layers of a project, top first, and its CRS and extent."""

    title: str
    crs: CRS
    bounds: tuple[float, float, float, float]
    layers: list[ProjectLayer] = field(default_factory=list)


def spatialrefsys(crs: CRS) -> str:
    """A QGIS ``<spatialrefsys>`` element for ``crs`` (WKT, and the EPSG code when it has one)."""
    code = crs.to_epsg()
    authid = f"<authid>EPSG:{code}</authid>" if code else ""
    return (
        f'<spatialrefsys nativeFormat="Wkt"><wkt>{escape(crs.to_wkt())}</wkt>{authid}'
        "</spatialrefsys>"
    )


def relative(path: Path, folder: Path) -> str:
    """``path`` as QGIS stores a relative data source: ``./name`` or ``../name``."""
    rel = os.path.relpath(Path(path).resolve(), folder.resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def _id(name: str) -> str:
    return f"{''.join(c if c.isalnum() else '_' for c in name)}_{secrets.token_hex(6)}"


def raster_layer(
    name: str, path: Path, folder: Path, crs: CRS, pipe: str, visible: bool = True
) -> ProjectLayer:
    """A raster layer (GDAL) drawn with ``pipe`` (renderer XML)."""
    layer_id, source = _id(name), relative(path, folder)
    body = f"""<maplayer type="raster" refreshOnNotifyEnabled="0" autoRefreshEnabled="0">
      <id>{layer_id}</id>
      <datasource>{escape(source)}</datasource>
      <layername>{escape(name)}</layername>
      <srs>{spatialrefsys(crs)}</srs>
      <provider>gdal</provider>
      <pipe>
{pipe}
      </pipe>
      <blendMode>0</blendMode>
    </maplayer>"""
    return ProjectLayer(layer_id, name, source, "gdal", "raster", body, visible)


def vector_layer(
    name: str, path: Path, folder: Path, crs: CRS, renderer: str, layer: str | None = None
) -> ProjectLayer:
    """A polygon layer (OGR) drawn with ``renderer`` (``renderer-v2`` XML)."""
    layer_id = _id(name)
    source = relative(path, folder) + (f"|layername={layer}" if layer else "")
    body = f"""<maplayer type="vector" geometry="Polygon" wkbType="MultiPolygon"
        refreshOnNotifyEnabled="0" autoRefreshEnabled="0">
      <id>{layer_id}</id>
      <datasource>{escape(source)}</datasource>
      <layername>{escape(name)}</layername>
      <srs>{spatialrefsys(crs)}</srs>
      <provider encoding="UTF-8">ogr</provider>
      {renderer}
      <blendMode>0</blendMode>
      <featureBlendMode>0</featureBlendMode>
      <layerOpacity>1</layerOpacity>
    </maplayer>"""
    return ProjectLayer(layer_id, name, source, "ogr", "vector", body, True, "Polygon")


def composite_pipe(source: str | Path, rgb: Sequence[int]) -> str:
    """A ``multibandcolor`` renderer of bands ``rgb``, each stretched over its 2-98 %."""
    limits = stretch_limits(source, rgb)
    colours = ("red", "green", "blue")
    enhancements = "".join(
        f"""
        <{colour}ContrastEnhancement><minValue>{low:.6g}</minValue><maxValue>{high:.6g}</maxValue>
          <algorithm>StretchToMinimumMaximum</algorithm></{colour}ContrastEnhancement>"""
        for colour, (low, high) in zip(colours, limits, strict=True)
    )
    return f"""        <rasterrenderer type="multibandcolor" opacity="1" alphaBand="-1"
            redBand="{rgb[0]}" greenBand="{rgb[1]}" blueBand="{rgb[2]}" nodataColor="">
          <rasterTransparency/>
          <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent></minMaxOrigin>{enhancements}
        </rasterrenderer>
        <brightnesscontrast brightness="0" contrast="0"/>"""


def project_xml(project: QgisProject) -> str:
    """The ``.qgs`` document of ``project``."""
    srs = spatialrefsys(project.crs)
    tree = "".join(
        f"""
    <layer-tree-layer id="{layer.id}" name={quoteattr(layer.name)} source={quoteattr(layer.source)}
        providerKey="{layer.provider}" checked="Qt::{"Checked" if layer.visible else "Unchecked"}"
        expanded="0"><customproperties/></layer-tree-layer>"""
        for layer in project.layers
    )
    order = "".join(f"<item>{layer.id}</item>" for layer in project.layers)
    layers = "\n    ".join(layer.body for layer in project.layers)
    xmin, ymin, xmax, ymax = project.bounds
    units = "degrees" if project.crs.is_geographic else "meters"
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis projectname={quoteattr(project.title)} version="3.22.16-Białowieża">
  <homePath path=""/>
  <title>{escape(project.title)}</title>
  <autotransaction active="0"/>
  <evaluateDefaultValues active="0"/>
  <trust active="0"/>
  <projectCrs>{srs}</projectCrs>
  <layer-tree-group>
    <customproperties/>{tree}
    <custom-order enabled="0">{order}</custom-order>
  </layer-tree-group>
  <mapcanvas name="theMapCanvas" annotationsVisible="1">
    <units>{units}</units>
    <extent><xmin>{xmin!r}</xmin><ymin>{ymin!r}</ymin><xmax>{xmax!r}</xmax><ymax>{ymax!r}</ymax></extent>
    <rotation>0</rotation>
    <destinationsrs>{srs}</destinationsrs>
    <rendermaptile>0</rendermaptile>
  </mapcanvas>
  <projectlayers>
    {layers}
  </projectlayers>
  <properties>
    <Paths><Absolute type="bool">false</Absolute></Paths>
    <SpatialRefSys><ProjectionsEnabled type="int">1</ProjectionsEnabled></SpatialRefSys>
  </properties>
</qgis>
"""


def write_region_outline(
    region: Callable[[Grid], np.ndarray] | None,
    heatmap: Path,
    out: Path,
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
    max_side: int = 2048,
) -> Path:
    """The explained region's outline as polygons (GeoPackage), on the heatmap's grid.

    ``region`` reads the region as a mask on a grid (None: the whole scene). Large scenes are
    read at most ``max_side`` pixels a side.
    """
    import fiona  # type: ignore[import-untyped]
    from affine import Affine
    from rasterio.features import shapes

    with rasterio.open(_reading(heatmap, destination)) as dataset:
        factor = max(1, int(np.ceil(max(dataset.width, dataset.height) / max_side)))
        height, width = -(-dataset.height // factor), -(-dataset.width // factor)
        transform = dataset.transform * Affine.scale(dataset.width / width, dataset.height / height)
        crs = dataset.crs
        valid = dataset.read_masks(1, out_shape=(height, width), resampling=Resampling.nearest)
    mask = valid > 0
    if region is not None:
        mask &= np.asarray(region(Grid(crs, transform, width, height)), dtype=bool)
    polygons = [g for g, _ in shapes(mask.astype(np.uint8), mask=mask, transform=transform)]
    schema = {"geometry": "Polygon", "properties": {"id": "int"}}
    with (
        atomic(out, overwrite, destination) as partial,
        fiona.open(
            partial, "w", driver="GPKG", crs=crs.to_wkt(), schema=schema, layer="region"
        ) as sink,
    ):
        sink.writerecords(
            {"geometry": g, "properties": {"id": i}} for i, g in enumerate(polygons, start=1)
        )
    return out


def write_qgis_project(
    heatmap: Path,
    out: Path,
    *,
    source: str | Path,
    rgb: Sequence[int],
    classes: Sequence[tuple[str, int]],
    hotspots: Sequence[tuple[str, Path]] = (),
    class_map: Path | None = None,
    class_names: Sequence[str] = (),
    region_outline: Path | None = None,
    overwrite: bool = False,
    destination: Destination | None = None,
) -> Path:
    """Write a QGIS project ``out`` (``.qgz``) showing the explanation in ``heatmap``.

    ``classes`` are ``(name, positive band)`` of the heatmap's classes; ``hotspots`` their
    polygons; ``class_map`` and its ``class_names``, ``region_outline`` (from
    :func:`write_region_outline`) are optional. Every path is stored relative to ``out``.
    """
    folder = out.parent
    with rasterio.open(_reading(heatmap, destination)) as dataset:
        crs, bounds = dataset.crs, tuple(dataset.bounds)
        heat = [
            raster_layer(
                f"{name} Grad-CAM", heatmap, folder, crs, heat_renderer(dataset, band, " " * 8),
                visible=k == 0,
            )
            for k, (name, band) in enumerate(classes)
        ]  # fmt: skip
        title = f"geocam: {dataset.tags().get('GEOCAM_CLASSES', '')}"
    with rasterio.open(source) as src:
        source_crs = src.crs
    layers: list[ProjectLayer] = []
    if region_outline is not None:
        layers.append(vector_layer(
            "region", region_outline, folder, crs,
            outline_renderer(line="255,255,255,255", fill="", width=0.4), "region",
        ))  # fmt: skip
    for name, path in hotspots:
        hot_crs = CRS.from_epsg(4326) if path.suffix.lower() != ".gpkg" else crs
        layer = "hotspots" if path.suffix.lower() == ".gpkg" else None
        layers.append(
            vector_layer(f"{name} hotspots", path, folder, hot_crs, outline_renderer(), layer)
        )
    layers += heat
    if class_map is not None:
        layers.append(raster_layer(
            "predicted classes", class_map, folder, crs,
            classes_renderer(class_names, " " * 8), visible=False,
        ))  # fmt: skip
    layers.append(
        raster_layer("source", Path(source), folder, source_crs, composite_pipe(source, rgb))
    )
    project = QgisProject(title, crs, bounds, layers)
    text = project_xml(project)
    with (
        atomic(out, overwrite, destination) as partial,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr(f"{out.stem}.qgs", text)
    return out
