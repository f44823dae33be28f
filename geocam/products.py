"""GIS products made from a heatmap GeoTIFF: QGIS style, RGBA overlay, quicklook, hotspots.

Each is written to a scratch file beside its destination (see :class:`geocam.output.Destination`)
and moved into place when complete; with a shared destination, together with the run's rasters.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize, shapes
from rasterio.windows import Window

from geocam.errors import GeocamError, first_line
from geocam.methods import METHODS
from geocam.output import BLOCK, Destination, to_cog, write_failed
from geocam.sources import Grid

COLORMAP = "inferno"


@contextlib.contextmanager
def atomic(path: Path, overwrite: bool, destination: Destination | None = None) -> Iterator[Path]:
    """A scratch path to write ``path`` to: staged in ``destination``, or moved into place now.

    A failure while writing (a full disk, a file size limit) is one :class:`WriteFailed` line;
    the scratch file is removed.
    """
    with contextlib.ExitStack() as stack:
        own = destination is None
        if destination is None:
            destination = stack.enter_context(Destination({"file": path}, overwrite=overwrite))
        partial = destination.scratch(path)
        try:
            yield partial
        except GeocamError:
            raise
        except Exception as error:
            if _io_error(error):
                raise write_failed(partial, error) from error
            raise
        if own:
            destination.commit()


def _io_error(error: BaseException) -> bool:
    """Whether ``error`` comes from writing a file (the OS, GDAL, OGR)."""
    module = type(error).__module__ or ""
    return isinstance(error, OSError) or module.startswith(("rasterio", "fiona"))


def _reading(heatmap: Path, destination: Destination | None) -> Path:
    """Where the heatmap is now: its scratch file until the destination commits it."""
    return heatmap if destination is None else destination.current(heatmap)


def display_range(heatmap: rasterio.io.DatasetReader, band: int) -> tuple[float, float]:
    """0 to the 99th percentile of the band (from its statistics tags), for a steady ramp."""
    tags = heatmap.tags(band)
    high = float(tags.get("GEOCAM_P99", tags.get("STATISTICS_MAXIMUM", "1")))
    if not np.isfinite(high) or high <= 0:
        high = float(tags.get("STATISTICS_MAXIMUM", "1")) or 1.0
    return 0.0, high if high > 0 else 1.0


def ramp(count: int = 6) -> list[tuple[float, tuple[int, int, int]]]:
    """``count`` stops of the colour map as (position 0..1, RGB)."""
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    stops = []
    for position in np.linspace(0, 1, count):
        r, g, b = (round(255 * float(c)) for c in cmap(position)[:3])
        stops.append((float(position), (r, g, b)))
    return stops


QML_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
HEAT_OPACITY = 0.8
"""The opacity of the hottest heat in the QGIS style; zero heat is fully transparent."""


def heat_alpha(scaled: np.ndarray | float) -> np.ndarray:
    """The opacity (0..1) of heat scaled to 0..1: 0 at zero heat, rising as its square root."""
    return np.asarray(HEAT_OPACITY * np.sqrt(np.clip(scaled, 0, 1)))


def heat_items(low: float, high: float, what: str, count: int = 11) -> list[dict[str, str]]:
    """The colour-ramp stops of the heat style: colour, opacity rising from 0, legend label."""
    items = []
    for i, (s, (r, g, b)) in enumerate(ramp(count)):
        value = low + s * (high - low)
        label = f"{value:.3g}"
        if i == 0:
            label = f"{value:.3g}: no evidence for {what}"
        elif i == count - 1:
            label = f"{value:.3g} (99th percentile) and above: strongest evidence"
        items.append({
            "value": f"{value:.6g}", "label": label, "color": f"#{r:02x}{g:02x}{b:02x}",
            "alpha": str(round(255 * float(heat_alpha(s)))),
        })  # fmt: skip
    return items


def pseudocolor_renderer(
    band: int, low: float, high: float, items: Sequence[Mapping[str, str]], indent: str = "    "
) -> str:
    """A ``singlebandpseudocolor`` raster renderer (QGIS XML) with interpolated ``items``."""
    stops = "".join(
        f'\n{indent}      <item value="{i["value"]}" label="{escape(i["label"], QUOTES)}" '
        f'color="{i["color"]}" alpha="{i["alpha"]}"/>'
        for i in items
    )
    return f"""{indent}<rasterrenderer type="singlebandpseudocolor" band="{band}" opacity="1"
{indent}    alphaBand="-1" classificationMin="{low:.6g}" classificationMax="{high:.6g}"
{indent}    nodataColor="">
{indent}  <rasterTransparency/>
{indent}  <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent></minMaxOrigin>
{indent}  <rastershader>
{indent}    <colorrampshader colorRampType="INTERPOLATED" classificationMode="2" clip="0"
{indent}        minimumValue="{low:.6g}" maximumValue="{high:.6g}" labelPrecision="4">{stops}
{indent}    </colorrampshader>
{indent}  </rastershader>
{indent}</rasterrenderer>
{indent}<brightnesscontrast brightness="0" contrast="0"/>"""


QUOTES = {'"': "&quot;"}


def raster_qml(renderer: str) -> str:
    """A QGIS raster style file holding ``renderer`` (from :func:`pseudocolor_renderer`)."""
    return f"""{QML_HEADER}<qgis version="3.22.16" styleCategories="Symbology">
  <pipe>
{renderer}
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def heat_renderer(heatmap: rasterio.io.DatasetReader, band: int, indent: str = "    ") -> str:
    """The heat style's renderer of ``band``: transparent at zero heat, labelled legend."""
    low, high = display_range(heatmap, band)
    what = heatmap.tags(band).get("CLASS") or heatmap.descriptions[band - 1] or "the class"
    return pseudocolor_renderer(band, low, high, heat_items(low, high, what), indent)


def probability_renderer(band: int, name: str, indent: str = "    ") -> str:
    """A style for a probability band: 0 transparent to 1 opaque, viridis."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    items = []
    for s in np.linspace(0, 1, 6):
        r, g, b = (round(255 * float(c)) for c in cmap(s)[:3])
        label = f"{s:.1f}" + (f": probability of {name}" if s == 1 else "")
        items.append({"value": f"{s:.6g}", "label": label, "color": f"#{r:02x}{g:02x}{b:02x}",
                      "alpha": str(round(255 * (0.15 + 0.7 * s)))})  # fmt: skip
    return pseudocolor_renderer(band, 0.0, 1.0, items, indent)


def write_qml(
    heatmap_path: Path,
    band: int = 1,
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
    path: Path | None = None,
) -> Path:
    """A QGIS style for ``band`` (``NAME.qml`` beside ``NAME.tif`` is applied by QGIS on load).

    A colour ramp whose opacity rises from 0 at zero heat, so the image underneath keeps its
    brightness where the map is zero; the legend says what the values are.
    """
    with rasterio.open(_reading(heatmap_path, destination)) as heatmap:
        qml = raster_qml(heat_renderer(heatmap, band))
    path = path or heatmap_path.with_suffix(".qml")
    with atomic(path, overwrite, destination) as partial:
        partial.write_text(qml, encoding="utf-8")
    return path


def write_probability_qml(
    probabilities: Path,
    path: Path,
    band: int = 1,
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
) -> Path:
    """A QGIS style for a probability raster (``NAME.qml``): 0..1, named in the legend."""
    with rasterio.open(_reading(probabilities, destination)) as dataset:
        name = dataset.tags(band).get("CLASS", "the class")
    with atomic(path, overwrite, destination) as partial:
        partial.write_text(raster_qml(probability_renderer(band, name)), encoding="utf-8")
    return path


HOTSPOT_SYMBOL = """<symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" pass="0" locked="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{fill}"/>
            <Option type="QString" name="joinstyle" value="bevel"/>
            <Option type="QString" name="outline_color" value="{line}"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="{width}"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="style" value="{style}"/>
          </Option>
        </layer>
      </symbol>"""


def outline_renderer(
    line: str = "0,255,255,255", fill: str = "0,255,255,40", width: float = 0.6
) -> str:
    """A single-symbol vector renderer: an outline and a light (or no) fill."""
    symbol = HOTSPOT_SYMBOL.format(
        fill=fill, line=line, width=width, style="solid" if fill else "no"
    )
    return f"""<renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      {symbol}
    </symbols>
    <rotation/><sizescale/>
  </renderer-v2>"""


def vector_qml(renderer: str) -> str:
    """A QGIS vector style file holding ``renderer``."""
    return f"""{QML_HEADER}<qgis version="3.22.16" styleCategories="Symbology">
  {renderer}
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerOpacity>1</layerOpacity>
</qgis>
"""


def write_hotspots_qml(
    path: Path, overwrite: bool = False, *, destination: Destination | None = None
) -> Path:
    """The hotspots' style (``NAME_hotspots.qml``, applied on load): outline, light fill."""
    with atomic(path, overwrite, destination) as partial:
        partial.write_text(vector_qml(outline_renderer()), encoding="utf-8")
    return path


def provenance(tags: Mapping[str, str], band_tags: Sequence[Mapping[str, str]]) -> str:
    """What a geocam raster holds and how it was made, in a few sentences, from its tags."""
    classes = tags.get("GEOCAM_CLASSES", "")
    model_hash = tags.get("GEOCAM_MODEL_SHA256") or tags.get("GEOCAM_CHECKPOINT_SHA256") or "none"
    method = tags.get("GEOCAM_METHOD", "")
    kind = "Grad-CAM" if method in METHODS or not method else f"{method} (pixel baseline)"
    lines = [
        f"{kind} explanation of class(es) {classes} by geocam {tags.get('GEOCAM_VERSION', '')}.",
        f"Method: {tags.get('GEOCAM_METHOD', '')}; layer: {tags.get('GEOCAM_LAYER', '')} "
        f"(stride {tags.get('GEOCAM_LAYER_STRIDE', '')}); region: {tags.get('GEOCAM_REGION', '')}"
        f"; score: {tags.get('GEOCAM_SCORE', '')}; weights: {tags.get('GEOCAM_WEIGHTS', '')}.",
        f"Model: {tags.get('GEOCAM_MODEL', '')} ({tags.get('GEOCAM_MODEL_SOURCE', 'preset')}), "
        f"SHA-256 {model_hash}.",
        f"Sources: {tags.get('GEOCAM_SOURCES', '')}.",
        f"Values are raw {kind}, not normalised: comparable across tiles and scenes; the "
        "'positive' band is the evidence for the class (0: none), the 'signed' band also shows "
        "evidence against it (negative).",
    ]
    for index, band in enumerate(band_tags, start=1):
        if "STATISTICS_MAXIMUM" in band:
            lines.append(
                f"Band {index} ({band.get('CLASS', '')} {band.get('KIND', '')}): min "
                f"{float(band.get('STATISTICS_MINIMUM', 'nan')):.4g}, max "
                f"{float(band['STATISTICS_MAXIMUM']):.4g}, 99th percentile "
                f"{float(band.get('GEOCAM_P99', 'nan')):.4g}."
            )
    return "\n".join(lines)


def qmd(title: str, abstract: str, keywords: Sequence[str], crs_wkt: str) -> str:
    """A QGIS layer metadata file (``NAME.qmd``, read by QGIS when it opens ``NAME.tif``)."""
    words = "".join(f"<keyword>{escape(k)}</keyword>" for k in keywords)
    return f"""{QML_HEADER}<qgis version="3.22.16">
  <identifier>{escape(title)}</identifier>
  <parentidentifier></parentidentifier>
  <language></language>
  <type>dataset</type>
  <title>{escape(title)}</title>
  <abstract>{escape(abstract)}</abstract>
  <keywords vocabulary="geocam">{words}</keywords>
  <links/>
  <fees></fees>
  <encoding></encoding>
  <crs><spatialrefsys nativeFormat="Wkt"><wkt>{escape(crs_wkt)}</wkt></spatialrefsys></crs>
  <extent/>
</qgis>
"""


def write_qmd(
    raster: Path,
    path: Path,
    what: str,
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
) -> Path:
    """The ``.qmd`` metadata sidecar of a geocam raster: title ``what``, its provenance."""
    with rasterio.open(_reading(raster, destination)) as dataset:
        tags = dataset.tags()
        bands = [dataset.tags(i) for i in range(1, dataset.count + 1)]
        wkt = dataset.crs.to_wkt() if dataset.crs else ""
    keywords = ["geocam", "Grad-CAM", tags.get("GEOCAM_METHOD", ""),
                *tags.get("GEOCAM_CLASSES", "").split(",")]  # fmt: skip
    text = qmd(f"{what} ({raster.name})", provenance(tags, bands), keywords, wkt)
    with atomic(path, overwrite, destination) as partial:
        partial.write_text(text, encoding="utf-8")
    return path


def write_overlay(
    heatmap_path: Path,
    out: Path,
    band: int = 1,
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
    cog: bool = False,
) -> Path:
    """An RGBA GeoTIFF of ``band`` coloured with the ramp, transparent where cold or nodata.

    With ``cog`` a Cloud-Optimized GeoTIFF with overviews (average resampling). It renders
    as it is, without a style (e.g. opened over HTTP, where QGIS never reads a ``.qml``).
    """
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    with (
        rasterio.open(_reading(heatmap_path, destination)) as heatmap,
        atomic(out, overwrite, destination) as partial,
    ):
        low, high = display_range(heatmap, band)
        profile = {
            "driver": "GTiff", "width": heatmap.width, "height": heatmap.height, "count": 4,
            "dtype": "uint8", "crs": heatmap.crs, "transform": heatmap.transform,
            "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
            "photometric": "RGB", "BIGTIFF": "IF_SAFER",
        }  # fmt: skip
        with rasterio.open(partial, "w", **profile) as dst:
            dst.colorinterp = [
                rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha,
            ]  # fmt: skip
            for row in range(0, heatmap.height, BLOCK):
                window = Window(0, row, heatmap.width, min(BLOCK, heatmap.height - row))
                values = heatmap.read(band, window=window)
                scaled = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0, 1)
                rgba = (cmap(scaled) * 255).astype(np.uint8)
                rgba[..., 3] = np.where(np.isfinite(values), (255 * np.sqrt(scaled)), 0)
                dst.write(np.moveaxis(rgba, -1, 0), window=window)
            dst.update_tags(**heatmap.tags())
            dst.update_tags(GEOCAM_OVERLAY_OF=f"band {band} ({heatmap.descriptions[band - 1]})")
        if cog:
            to_cog(partial, compress="deflate", predictor="YES", resampling="AVERAGE")
    return out


def cam_resolution_read(
    heatmap: rasterio.io.DatasetReader, band: int, max_side: int | None = None
) -> tuple[np.ndarray, Affine]:
    """``band`` averaged onto the CAM's own grid (its layer's stride) or at most ``max_side``."""
    stride = int(heatmap.tags().get("GEOCAM_LAYER_STRIDE", "1"))
    if heatmap.tags().get("GEOCAM_RESOLUTION") == "native":
        stride = 1
    factor = max(stride, 1)
    if max_side is not None:
        factor = max(1, int(np.ceil(max(heatmap.width, heatmap.height) / max_side)))
    height, width = -(-heatmap.height // factor), -(-heatmap.width // factor)
    values = heatmap.read(band, out_shape=(height, width), resampling=Resampling.average)
    transform = heatmap.transform * Affine.scale(heatmap.width / width, heatmap.height / height)
    return values, transform


def hotspot_threshold(values: np.ndarray, rule: str) -> float:
    """The heat above which a cell is a hotspot: ``pNN`` (a percentile) or ``otsu``."""
    percentile = threshold_percentile(rule)
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.size == 0:
        raise GeocamError("no positive heat in the map: no hotspots to outline")
    if percentile is None:
        return otsu(finite)
    return float(np.percentile(finite, percentile))


def threshold_percentile(rule: str) -> float | None:
    """The percentile of a ``pNN`` rule, None for ``otsu``; anything else is an error."""
    if rule == "otsu":
        return None
    if rule.startswith("p") and rule[1:].replace(".", "", 1).isdigit():
        percentile = float(rule[1:])
        if 0 < percentile < 100:
            return percentile
    raise GeocamError(f"--hotspot-threshold {rule!r}: use pNN (e.g. p95) or otsu")


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of ``values``."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1)
    total = (counts * centres).sum()
    mean_high = (total - np.cumsum(counts * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def write_hotspots(
    heatmap_path: Path,
    out: Path,
    band: int = 1,
    rule: str = "p95",
    overwrite: bool = False,
    *,
    destination: Destination | None = None,
) -> Path:
    """Polygons where ``band`` exceeds the threshold, at the CAM's own resolution.

    Each polygon carries its area in square metres (geodesic on the ellipsoid for a geographic
    CRS), mean and max heat and the class; written as GeoPackage (``.gpkg``) or GeoJSON
    (``.geojson``) in the heatmap's CRS.
    """
    import fiona  # type: ignore[import-untyped]

    driver = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}.get(out.suffix.lower())
    if driver is None:
        raise GeocamError(f"--hotspots {out}: use a .gpkg or .geojson file name")
    with rasterio.open(_reading(heatmap_path, destination)) as heatmap:
        values, transform = cam_resolution_read(heatmap, band)
        crs = heatmap.crs
        klass = heatmap.tags(band).get("CLASS", "")
    threshold = hotspot_threshold(values, rule)
    hot = np.isfinite(values) & (values >= threshold)
    geometries = [g for g, _ in shapes(hot.astype(np.uint8), mask=hot, transform=transform)]
    labels = rasterize(
        [(g, i) for i, g in enumerate(geometries, start=1)],
        out_shape=values.shape, transform=transform, dtype="int32",
    )  # fmt: skip
    heat = np.where(hot, values, 0.0)
    cells = np.bincount(labels.ravel(), minlength=len(geometries) + 1)
    sums = np.bincount(labels.ravel(), weights=heat.ravel(), minlength=len(geometries) + 1)
    peaks = np.zeros(len(geometries) + 1)
    np.maximum.at(peaks, labels.ravel(), heat.ravel())
    try:
        areas = [0.0, *area_m2(geometries, crs)]
    except Exception as error:  # a CRS pyproj cannot measure in (no ellipsoid, no unit)
        raise GeocamError(
            f"--hotspots: cannot compute areas in the heatmap's CRS ({first_line(error)}); "
            "reproject the source to a projected CRS"
        ) from error
    features = [
        {
            "geometry": geometry,
            "properties": {
                "id": i, "class": klass, "area_m2": areas[i],
                "mean_heat": float(sums[i] / max(cells[i], 1)), "max_heat": float(peaks[i]),
                "threshold": threshold,
            },
        }
        for i, geometry in enumerate(geometries, start=1)
    ]  # fmt: skip
    schema = {
        "geometry": "Polygon",
        "properties": {"id": "int", "class": "str", "area_m2": "float", "mean_heat": "float",
                       "max_heat": "float", "threshold": "float"},
    }  # fmt: skip
    try:
        wkt = crs.to_wkt()
    except Exception as error:
        raise GeocamError(
            f"--hotspots: the heatmap's CRS has no WKT ({first_line(error)})"
        ) from error
    options: dict[str, str] = {}
    if driver == "GeoJSON":
        from rasterio.warp import transform_geom

        for feature in features:
            feature["geometry"] = transform_geom(crs, "EPSG:4326", feature["geometry"])
        wkt, options = CRS.from_epsg(4326).to_wkt(), {"RFC7946": "YES"}
    with (
        atomic(out, overwrite, destination) as partial,
        fiona.open(
            partial, "w", driver=driver, crs=wkt, schema=schema, layer="hotspots", **options
        ) as sink,
    ):
        sink.writerecords(features)
    return out


def area_m2(polygons: Sequence[Mapping[str, Any]], crs: CRS) -> list[float]:
    """Areas of GeoJSON-like polygons (holes subtracted) in square metres.

    Geodesic on the CRS's ellipsoid when it is geographic (pyproj), else planar in the CRS's
    linear unit converted to metres.
    """
    from pyproj import CRS as ProjCRS

    geod = ProjCRS.from_wkt(crs.to_wkt()).get_geod() if crs.is_geographic else None
    factor = 1.0 if geod is not None else float(crs.linear_units_factor[1]) ** 2

    def ring_area(ring: Sequence[Sequence[float]]) -> float:
        x, y = np.asarray(ring, dtype=np.float64).T
        if geod is not None:
            return abs(float(geod.polygon_area_perimeter(x, y)[0]))
        return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2

    areas = []
    for polygon in polygons:
        exterior, *holes = polygon["coordinates"]
        area = ring_area(exterior) - sum(ring_area(hole) for hole in holes)
        areas.append(area * factor)
    return areas


def write_quicklook(
    heatmap_path: Path,
    source: str | Path,
    out: Path,
    *,
    rgb: Sequence[int] = (1, 2, 3),
    band: int = 1,
    region: Callable[[Grid], np.ndarray] | None = None,
    overwrite: bool = False,
    max_side: int = 1200,
    destination: Destination | None = None,
) -> Path:
    """A PNG of the source as an RGB composite with the heatmap over it.

    With a colour bar, the region's outline (``region`` reads it as a mask on the quicklook's
    grid) and a title naming class, method, layer and region.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with rasterio.open(_reading(heatmap_path, destination)) as heatmap:
        heat, transform = cam_resolution_read(heatmap, band, max_side)
        outline = None
        if region is not None:
            outline = region(Grid(heatmap.crs, transform, heat.shape[1], heat.shape[0]))
        tags = heatmap.tags()
        low, high = display_range(heatmap, band)
        description = heatmap.descriptions[band - 1] or ""
    shape = heat.shape
    with rasterio.open(source) as src:
        bad = [b for b in rgb if not 1 <= b <= src.count]
        if bad:
            raise GeocamError(f"rgb bands {bad} do not exist in {source} ({src.count} bands)")
        composite = src.read(list(rgb), out_shape=(len(rgb), *shape), resampling=Resampling.average)
        valid = src.dataset_mask(out_shape=shape) > 0
    image = stretch(composite.astype(np.float32), valid)
    figure, axes = plt.subplots(figsize=(9, 9 * shape[0] / shape[1] + 0.6), dpi=110)
    axes.imshow(image)
    shown = np.ma.masked_where(~np.isfinite(heat) | (heat <= low), heat)
    scaled = np.clip((np.nan_to_num(heat, nan=low) - low) / (high - low), 0, 1)
    opacity = 0.75 * np.sqrt(scaled)  # weak heat fades into the image, as in the overlay
    layer = axes.imshow(shown, cmap=COLORMAP, vmin=low, vmax=high, alpha=opacity)
    if outline is not None and outline.any():
        axes.contour(outline.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    figure.colorbar(layer, ax=axes, fraction=0.035, pad=0.02, label=f"{description} (raw)")
    axes.set_title(
        f"{tags.get('GEOCAM_CLASSES', '')}: {tags.get('GEOCAM_METHOD', '')} at "
        f"{tags.get('GEOCAM_LAYER', '')}, region {tags.get('GEOCAM_REGION', '')}",
        fontsize=10,
    )
    axes.set_axis_off()
    try:
        with atomic(out, overwrite, destination) as partial:
            figure.savefig(partial, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return out


def stretch_limits(
    source: str | Path, bands: Sequence[int], max_side: int = 1024
) -> list[tuple[float, float]]:
    """The 2nd and 98th percentiles of ``bands`` (valid pixels, at most ``max_side`` a side)."""
    with rasterio.open(source) as src:
        factor = max(1, int(np.ceil(max(src.width, src.height) / max_side)))
        shape = (-(-src.height // factor), -(-src.width // factor))
        values = src.read(list(bands), out_shape=(len(bands), *shape))
        valid = src.dataset_mask(out_shape=shape) > 0
    limits = []
    for band in values:
        chosen = band[valid]
        low, high = np.percentile(chosen, [2, 98]) if chosen.size else (0.0, 1.0)
        limits.append((float(low), float(high) if high > low else float(low) + 1))
    return limits


def stretch(composite: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A 2-98 % percentile stretch of each band to 0..1; nodata white."""
    out = np.ones((*composite.shape[1:], 3), dtype=np.float32)
    for i, band in enumerate(composite[:3]):
        values = band[valid]
        low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        out[..., i] = np.where(valid, np.clip((band - low) / max(high - low, 1e-6), 0, 1), 1)
    return out


@dataclass(frozen=True)
class GisOptions:
    """Which GIS products to make from a heatmap, and how.

    ``classes`` names the heatmap's classes, in band order (two bands each, positive first):
    with several, each class gets its own style, overlay and hotspots. ``probabilities`` and
    ``class_map`` say whether those rasters exist (their styles and metadata are written).
    """

    qml: bool = True
    overlay: bool = False
    quicklook: bool = False
    hotspots: bool = False
    hotspot_threshold: str = "p95"
    hotspot_format: str = "gpkg"
    band: int = 1
    classes: tuple[str, ...] = ()
    probabilities: bool = False
    class_map: bool = False
    cog: bool = False
    qgis_project: bool = False


def slug(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``-`` and ``_``."""
    return re.sub(r"[^\w-]+", "_", name).strip("_") or "class"


def class_bands(options: GisOptions) -> list[tuple[str, int, str]]:
    """``(class, positive band, file-name infix)`` of each class the products are made for.

    One class (or none named): the products' plain names (``NAME_overlay.tif``); several: one
    set per class (``NAME_CLASS_overlay.tif``).
    """
    if len(options.classes) <= 1:
        return [(options.classes[0] if options.classes else "", options.band, "")]
    return [(name, 2 * k + 1, f"_{slug(name)}") for k, name in enumerate(options.classes)]


def gis_paths(heatmap: Path, options: GisOptions) -> dict[str, Path]:
    """Where each requested product goes, beside the heatmap (keys ``NAME`` or ``NAME:CLASS``)."""
    stem, folder = heatmap.stem, heatmap.parent
    several = len(options.classes) > 1
    paths: dict[str, Path] = {}
    if options.qml:
        paths["qml"] = heatmap.with_suffix(".qml")
        paths["qmd"] = heatmap.with_suffix(".qmd")
        if options.probabilities:
            paths["probabilities_qml"] = folder / f"{stem}_probability.qml"
            paths["probabilities_qmd"] = folder / f"{stem}_probability.qmd"
        if options.class_map:
            paths["classes_qmd"] = folder / f"{stem}_classes.qmd"
    for name, _, infix in class_bands(options):
        key = f":{name}" if several else ""
        if options.qml and several:
            paths[f"qml{key}"] = folder / f"{stem}{infix}.qml"
        if options.overlay:
            paths[f"overlay{key}"] = folder / f"{stem}{infix}_overlay.tif"
        if options.hotspots:
            paths[f"hotspots{key}"] = folder / f"{stem}{infix}_hotspots.{options.hotspot_format}"
            paths[f"hotspots_qml{key}"] = folder / f"{stem}{infix}_hotspots.qml"
    if options.quicklook:
        paths["quicklook"] = heatmap.with_suffix(".png")
    if options.qgis_project:
        paths["region"] = folder / f"{stem}_region.gpkg"
        paths["qgis_project"] = heatmap.with_suffix(".qgz")
    return paths


@dataclass(frozen=True)
class Put:
    """Where products are staged, and whether they may replace earlier ones."""

    overwrite: bool
    destination: Destination


def write_gis_products(
    heatmap: Path,
    source: str | Path,
    options: GisOptions,
    *,
    rgb: Sequence[int] = (1, 2, 3),
    region: Callable[[Grid], np.ndarray] | None = None,
    overwrite: bool = False,
    destination: Destination | None = None,
) -> dict[str, Path]:
    """Make every product ``options`` asks for; ``region`` reads the quicklook's outline.

    All or nothing: every product is staged in ``destination`` (the heatmap's, so that they
    are committed with it; read from its scratch file) or in one of its own, committed only
    when all of them succeeded.
    """
    paths = gis_paths(heatmap, options)
    several = len(options.classes) > 1
    with contextlib.ExitStack() as stack:
        own = destination is None
        if destination is None:
            destination = stack.enter_context(Destination(paths, overwrite=overwrite))
        put = Put(overwrite, destination)
        if "qml" in paths:
            write_qml(
                heatmap,
                class_bands(options)[0][1],
                overwrite=put.overwrite,
                destination=put.destination,
            )
            write_qmd(
                heatmap,
                paths["qmd"],
                "geocam heatmap",
                overwrite=put.overwrite,
                destination=put.destination,
            )
        if "probabilities_qml" in paths:
            probabilities = heatmap.with_name(f"{heatmap.stem}_probability{heatmap.suffix}")
            write_probability_qml(
                probabilities,
                paths["probabilities_qml"],
                overwrite=put.overwrite,
                destination=put.destination,
            )
            write_qmd(
                probabilities,
                paths["probabilities_qmd"],
                "geocam class probabilities",
                overwrite=put.overwrite,
                destination=put.destination,
            )
        if "classes_qmd" in paths:
            classes = heatmap.with_name(f"{heatmap.stem}_classes{heatmap.suffix}")
            write_qmd(
                classes,
                paths["classes_qmd"],
                "geocam predicted classes",
                overwrite=put.overwrite,
                destination=put.destination,
            )
        for name, band, _ in class_bands(options):
            key = f":{name}" if several else ""
            if f"qml{key}" in paths and several:
                write_qml(
                    heatmap,
                    band,
                    path=paths[f"qml{key}"],
                    overwrite=put.overwrite,
                    destination=put.destination,
                )
            if f"overlay{key}" in paths:
                write_overlay(
                    heatmap,
                    paths[f"overlay{key}"],
                    band,
                    cog=options.cog,
                    overwrite=put.overwrite,
                    destination=put.destination,
                )
            if f"hotspots{key}" in paths:
                write_hotspots(
                    heatmap, paths[f"hotspots{key}"], band, options.hotspot_threshold,
                    overwrite=put.overwrite, destination=put.destination,
                )  # fmt: skip
                write_hotspots_qml(
                    paths[f"hotspots_qml{key}"],
                    overwrite=put.overwrite,
                    destination=put.destination,
                )
        if "quicklook" in paths:
            write_quicklook(
                heatmap, source, paths["quicklook"], rgb=rgb, band=class_bands(options)[0][1],
                region=region, overwrite=overwrite, destination=destination,
            )  # fmt: skip
        if "qgis_project" in paths:
            _project(heatmap, source, options, paths, rgb, region, put)
        if own:
            destination.commit()
    return paths


def _project(
    heatmap: Path,
    source: str | Path,
    options: GisOptions,
    paths: Mapping[str, Path],
    rgb: Sequence[int],
    region: Callable[[Grid], np.ndarray] | None,
    put: Put,
) -> None:
    """The region's outline and the ``.qgz`` project showing every product."""
    from geocam.qgis_project import write_qgis_project, write_region_outline

    several = len(options.classes) > 1
    write_region_outline(
        region, heatmap, paths["region"], put.overwrite, destination=put.destination
    )
    bands = class_bands(options)
    hotspots = [
        (name, paths[f"hotspots:{name}" if several else "hotspots"])
        for name, _, _ in bands
        if (f"hotspots:{name}" if several else "hotspots") in paths
    ]
    class_map, names = None, ()
    candidate = heatmap.with_name(f"{heatmap.stem}_classes{heatmap.suffix}")
    if options.class_map:
        class_map = candidate
        with rasterio.open(_reading(candidate, put.destination)) as dataset:
            names = tuple(dataset.tags(1).get("CLASS_NAMES", "").split(","))
    write_qgis_project(
        heatmap, paths["qgis_project"], source=source, rgb=rgb,
        classes=[(name or "heat", band) for name, band, _ in bands], hotspots=hotspots,
        class_map=class_map, class_names=names, region_outline=paths["region"],
        overwrite=put.overwrite, destination=put.destination,
    )  # fmt: skip


def composite_source(
    sources: Sequence[str | Path], bands: Sequence[Sequence[int]], rgb: Sequence[int]
) -> tuple[str | Path, tuple[int, ...]]:
    """The raster and its bands that show ``rgb``, given as 1-based network input bands.

    ``bands`` is the model's selection per raster (empty: every band of the first raster), so
    a bi-temporal model can show its later image, e.g. input bands 5, 6, 7 of two 4-band
    rasters are bands 1, 2, 3 of the second raster.
    """
    if not bands:
        return sources[0], tuple(rgb)
    inputs = [(i, b) for i, selected in enumerate(bands) for b in selected]
    bad = [k for k in rgb if not 1 <= k <= len(inputs)]
    if bad:
        raise GeocamError(
            f"rgb: input band(s) {bad} do not exist; the model takes {len(inputs)} bands "
            "(fix rgb in the config)"
        )
    chosen = [inputs[k - 1] for k in rgb]
    rasters = {i for i, _ in chosen}
    if len(rasters) > 1:
        raise GeocamError(f"rgb: bands {list(rgb)} come from different rasters; pick one raster's")
    raster = rasters.pop()
    return sources[raster], tuple(b for _, b in chosen)


def region_outline(
    region: str, where: str | None, class_map: Path | None, class_index: int
) -> Callable[[Grid], np.ndarray] | None:
    """A reader of the explained region on a quicklook's grid (None for the whole scene)."""
    if region == "all":
        return None
    if region == "predicted":
        if class_map is None:
            return None

        def predicted(grid: Grid) -> np.ndarray:
            with rasterio.open(class_map) as dataset:
                classes = dataset.read(1, out_shape=(grid.height, grid.width))
            return np.asarray(classes == class_index)

        return predicted

    def opened(grid: Grid) -> np.ndarray:
        from geocam.region_sources import open_region

        return open_region(region, grid, where).read(Window(0, 0, grid.width, grid.height)) > 0

    return opened
