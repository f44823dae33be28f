"""Bad inputs through the command line: one clear line, a non-zero exit, nothing written.

Every case builds its inputs (a tiny smp Unet config, 64 x 64 rasters in EPSG:32618, vector
files, checkpoints) in ``tmp_path/in`` and runs ``geocam explain`` with the heatmap going to
``tmp_path/out/heat.tif``. Whatever the mistake, the command must exit non-zero with exactly
one line ``geocam: error: ...`` naming the file or option and what to do, and must leave every
file under ``tmp_path`` as it was: no heatmap, no ``.partial``, no sidecars, no journal.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA, tiny_preset
from rasterio.transform import from_origin
from safetensors.torch import save_file

from geocam import build_model
from geocam.cli import cli
from geocam.config import load_config

ZURICH = "zurich/img_1091-322_00.tif"  # 175 x 120, 3 x uint8, JPEG strips of 32 rows
ZURICH_MASK = "zurich/response_img_1091-322_00.tif"  # no CRS, no geotransform
ANDROS = "andros/RGB.byte.tif"

TINY = tiny_preset()
AUX = TINY.replace("options: {", "options: {aux_params: {classes: 2}, ")  # + a classifier head
CRS = "EPSG:32618"
LEFT, TOP, PIXEL = 600_000.0, 4_500_000.0, 10.0
INSIDE = (LEFT + 100, TOP - 500, LEFT + 300, TOP - 200)  # map coordinates inside the scene
FAR = (LEFT + 90_000, TOP - 90_000, LEFT + 90_200, TOP - 89_800)


@dataclass
class Run:
    """One case's folders and default arguments: inputs go to ``inputs``, the heatmap to ``out``."""

    inputs: Path
    out: Path
    config: Path
    scene: Path
    markers: list[Path] = field(default_factory=list)  # files that must never appear
    locked: list[Path] = field(default_factory=list)  # folders to make writable again

    @classmethod
    def make(cls, tmp_path: Path) -> Run:
        """The case's files; the tiny network's random weights seeded (not left to test order)."""
        torch.manual_seed(0)
        inputs, folder = tmp_path / "in", tmp_path / "out"
        inputs.mkdir()
        folder.mkdir()
        pixels = np.random.default_rng(0).integers(1, 255, (3, 64, 64), dtype=np.uint8)
        scene = raster(inputs / "scene.tif", pixels)
        return cls(inputs, folder / "heat.tif", text(inputs / "tiny.yaml", TINY), scene)

    def explain(
        self, *extra: object, source: object = None, config: object = None, cls: str = "water"
    ) -> list[str]:
        """``geocam explain SOURCE -c CONFIG --class CLS -o OUT`` and ``extra`` options."""
        args = ["explain", source or self.scene, "-c", config or self.config, "--class", cls]
        if "-o" not in extra:
            args += ["-o", self.out]
        return [str(a) for a in [*args, *extra]]

    def with_config(self, name: str, body: str, *extra: object) -> list[str]:
        return self.explain(*extra, config=text(self.inputs / name, body))

    def with_scene(
        self, name: str, pixels: np.ndarray, *extra: object, **profile: Any
    ) -> list[str]:
        return self.explain(*extra, source=raster(self.inputs / name, pixels, **profile))


def raster(path: Path, pixels: np.ndarray, **profile: Any) -> Path:
    """Write ``pixels`` (bands, rows, cols) as a GeoTIFF in EPSG:32618 unless told otherwise."""
    options = {
        "driver": "GTiff", "count": pixels.shape[0], "height": pixels.shape[1],
        "width": pixels.shape[2], "dtype": pixels.dtype, "crs": CRS,
        "transform": from_origin(LEFT, TOP, PIXEL, PIXEL),
    } | profile  # fmt: skip
    with rasterio.open(path, "w", **options) as dataset:
        dataset.write(pixels)
    return path


def text(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def vector(
    path: Path,
    boxes: list[tuple[float, float, float, float]],
    *,
    crs: str | None = CRS,
    driver: str = "GPKG",
) -> Path:
    """Rectangles as polygons with a ``name`` field (``a``, ``b``, ...)."""
    schema = {"geometry": "Polygon", "properties": {"name": "str"}}
    with fiona.open(path, "w", driver=driver, crs=crs, schema=schema) as sink:
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            sink.write(
                {
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"name": "abcdefgh"[index]},
                }
            )
    return path


def with_file(path: Path, data: bytes, args: list[str]) -> list[str]:
    """``args``, once ``path`` holds ``data``."""
    path.write_bytes(data)
    return args


def shapes(path: Path, kind: str) -> Path:
    """One feature of geometry type ``kind`` inside the scene (a Polygon is left empty)."""
    x0, y0, x1, y1 = INSIDE
    coordinates = {
        "Point": (x0, y0),
        "LineString": [(x0, y0), (x1, y1)],
        "Polygon": [],
    }[kind]
    schema = {"geometry": kind, "properties": {"name": "str"}}
    with fiona.open(path, "w", driver="GPKG", crs=CRS, schema=schema) as sink:
        sink.write(
            {"geometry": {"type": kind, "coordinates": coordinates}, "properties": {"name": "a"}}
        )
    return path


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def hardlink(link: Path, target: Path) -> Path:
    link.hardlink_to(target)
    return link


def far_mask(path: Path) -> Path:
    """A mask on its own grid, 90 km east of the scene."""
    far = from_origin(LEFT + 90_000, TOP, PIXEL, PIXEL)
    return raster(path, np.ones((1, 32, 32), np.uint8), transform=far)


def shared(name: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA / name


def truncated(source: Path, copy: Path) -> Path:
    data = source.read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    return copy


def weights(run: Run, body: str = TINY) -> dict[str, torch.Tensor]:
    """The state dict of the network ``body`` describes (seeded random weights)."""
    torch.manual_seed(0)
    state = build_model(load_config(text(run.inputs / "weights.yaml", body)).spec).state_dict()
    return {k: v.contiguous() for k, v in state.items()}


def with_checkpoint(run: Run, name: str, state: dict[str, torch.Tensor]) -> list[str]:
    save_file(state, str(run.inputs / name))
    return run.with_config("checkpoint.yaml", TINY + f"checkpoint: {name}\n")


class Payload:
    """Unpickling this creates ``marker``: proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def pickled_code(run: Run) -> list[str]:
    marker = run.inputs.parent / "PAYLOAD_RAN"
    run.markers.append(marker)
    torch.save({"state_dict": weights(run), "extra": Payload(marker)}, run.inputs / "model.pt")
    return run.with_config("pickled.yaml", TINY + "checkpoint: model.pt\n")


def unwritable_folder(run: Run) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop writes (see the os.access test)")
    folder = run.out.parent / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    run.locked.append(folder)
    return run.explain("-o", folder / "heat.tif")


def noisy(bands: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(1, 255, (bands, 64, 64), dtype=np.uint8)


def full(value: float, dtype: str = "float32") -> np.ndarray:
    return np.full((3, 64, 64), value, dtype=dtype)


Make = Callable[[Run], list[str]]


def case(case_id: str, make: Make, *expected: str) -> pytest.ParameterSet:
    return pytest.param(make, expected, id=case_id)


CASES = [
    # --- the command line itself ---------------------------------------------------------------
    case(
        "option-class-missing",
        lambda r: [a for a in r.explain() if a not in ("--class", "water")],
        "Missing option '--class'",
        "see geocam explain --help",
    ),
    case(
        "option-batch-size-not-a-number",
        lambda r: r.explain("--batch-size", "four"),
        "'--batch-size'",
        "not a valid integer",
    ),
    case(
        "option-method-unknown",
        lambda r: r.explain("--method", "shap"),
        "'--method'",
        "'shap' is not one of",
    ),
    # --- the source raster -------------------------------------------------------------------
    case(
        "source-missing",
        lambda r: r.explain(source=r.inputs / "nope.tif"),
        "nope.tif: no such file",
    ),
    case(
        "source-not-a-raster",
        lambda r: r.explain(source=text(r.inputs / "notes.tif", "not pixels\n")),
        "notes.tif: not a readable raster",
        "give a GeoTIFF",
    ),
    case(
        "source-is-a-folder",
        lambda r: r.explain(source=r.inputs),
        f"{os.sep}in: not a readable raster",
        "give a GeoTIFF",
    ),
    case(
        "source-truncated-strips",  # the header survives: the read fails halfway down
        lambda r: r.explain(source=truncated(shared(ZURICH), r.inputs / "cut.tif")),
        "cut.tif: cannot read rows",
        "truncated or damaged",
        "re-download",
    ),
    case(
        "source-truncated-directory",  # the TIFF directory is in the lost half: open fails
        lambda r: r.explain(source=truncated(shared(ANDROS), r.inputs / "cut.tif")),
        "cut.tif: not a readable raster",
        "give a GeoTIFF",
    ),
    case(
        "source-no-crs",
        lambda r: r.with_scene("nocrs.tif", noisy(), crs=None),
        "nocrs.tif: the raster has no CRS",
        "gdal_edit.py -a_srs",
    ),
    case(
        "source-no-geotransform",
        lambda r: r.with_scene("notransform.tif", noisy(), transform=None),
        "notransform.tif: the raster has no geotransform",
        "gdal_edit.py -a_ullr",
    ),
    case(
        "source-no-georeferencing-zurich-mask",
        lambda r: r.explain(source=shared(ZURICH_MASK)),
        "response_img_1091-322_00.tif: the raster has no CRS and no geotransform",
        "georeference it",
    ),
    case(
        "source-band-count",
        lambda r: r.with_scene("four.tif", noisy(4)),
        "the sources have 4 band(s) but the model takes 3",
        "check the sources",
    ),
    case(
        "config-bands-not-in-source",
        lambda r: r.with_config("bands.yaml", TINY + "bands: [[1, 2, 5]]\n"),
        "scene.tif: band(s) [5] do not exist",
        "has 3 band(s)",
    ),
    case(
        "source-count",
        lambda r: r.explain(
            r.scene, config=text(r.inputs / "one.yaml", TINY + "bands: [[1, 2, 3]]\n")
        ),
        "the model reads 1 raster(s) but 2 were given",
        "pass 1 source file(s)",
    ),
    case(
        "source-dtype-complex64",
        lambda r: r.with_scene("c64.tif", (noisy() + 1j * noisy()).astype("complex64")),
        "c64.tif: band(s) [1, 2, 3] hold complex values (complex64)",
        "convert them",
    ),
    case(
        "source-dtype-complex-int16",
        lambda r: r.with_scene("ci16.tif", full(3, "complex64"), dtype="complex_int16"),
        "ci16.tif: band(s) [1, 2, 3] hold complex values (complex_int16)",
        "convert them",
    ),
    case(
        "source-all-nodata",
        lambda r: r.with_scene("blank.tif", np.zeros((3, 64, 64), np.uint8), nodata=0),
        "blank.tif",
        "nodata",
    ),
    case(
        "source-all-nodata-hirescam",
        lambda r: r.with_scene(
            "blank.tif", np.zeros((3, 64, 64), np.uint8), "--method", "hirescam", nodata=0
        ),
        "blank.tif",
        "nodata",
    ),
    case(
        "source-all-nan",
        lambda r: r.with_scene("nan.tif", full(np.nan)),
        "nan.tif",
        "nodata",
    ),
    case(
        "source-all-inf-layercam",
        lambda r: r.with_scene("inf.tif", full(np.inf), "--method", "layercam"),
        "inf.tif",
        "nodata",
    ),
    # --- classes and layers ------------------------------------------------------------------
    case(
        "class-unknown",
        lambda r: r.explain(cls="jungle"),
        "unknown class 'jungle'",
        "the model's classes are land, water",
    ),
    case(
        "class-index-out-of-range",
        lambda r: r.explain(cls="7"),
        "class index 7 is out of range",
        "2 classes (0..1)",
    ),
    case(
        "layer-unknown",
        lambda r: r.explain("--layer", "encoder.nope"),
        "unknown layer 'encoder.nope'",
        "geocam layers -c CONFIG",
    ),
    case(
        "layer-flat-vector",  # smp's classification head: Flatten outputs (B, C)
        lambda r: r.with_config("aux.yaml", AUX, "--layer", "classification_head.1"),
        "layer 'classification_head.1' has no spatial output",
    ),
    case(
        "layer-global-pool",  # (B, C, 1, 1): one cell, no map
        lambda r: r.with_config("aux.yaml", AUX, "--layer", "classification_head.0"),
        "layer 'classification_head.0' has no spatial output",
    ),
    # --- regions -----------------------------------------------------------------------------
    case(
        "region-unknown-kind",
        lambda r: r.explain("--region", "circle:3"),
        "--region 'circle:3'",
        "use predicted, all, mask:PATH",
    ),
    case(
        "region-polygons-outside-scene",
        lambda r: r.explain("--region", f"vector:{vector(r.inputs / 'far.gpkg', [FAR])}"),
        "--region vector:far.gpkg: the region lies outside the scene",
        "check its coordinates",
    ),
    case(
        "region-vector-empty",
        lambda r: r.explain("--region", f"vector:{vector(r.inputs / 'empty.gpkg', [])}"),
        "empty.gpkg has no features",
        "give a file with polygons",
    ),
    case(
        "region-vector-no-crs",  # a shapefile without its .prj
        lambda r: r.explain(
            "--region",
            f"vector:{vector(r.inputs / 'noprj.shp', [INSIDE], driver='ESRI Shapefile', crs=None)}",
        ),
        "noprj.shp declares no CRS",
        "add one",
    ),
    case(
        "region-geojson-no-crs",  # GeoJSON without crs is lon/lat: these UTM numbers are not
        lambda r: r.explain(
            "--region",
            f"vector:{vector(r.inputs / 'utm.geojson', [INSIDE], driver='GeoJSON', crs=None)}",
        ),
        "cannot reproject",
        "utm.geojson",
        "declares the CRS of its coordinates",
    ),
    case(
        "region-vector-unknown-layer",
        lambda r: r.explain("--region", f"vector:{vector(r.inputs / 'in.gpkg', [INSIDE])}:roads"),
        "in.gpkg:roads: no layer 'roads'",
        "layers: in",
    ),
    case(
        "where-selects-nothing",
        lambda r: r.explain(
            "--region", f"vector:{vector(r.inputs / 'in.gpkg', [INSIDE])}", "--where", "name=zzz"
        ),
        "--where name=zzz: no features in",
        "in.gpkg",
        "check the field's values",
    ),
    case(
        "where-unknown-field",
        lambda r: r.explain(
            "--region", f"vector:{vector(r.inputs / 'in.gpkg', [INSIDE])}", "--where", "kind=a"
        ),
        "--where",
        "has no field 'kind'",
        "fields: name",
    ),
    case(
        "region-mask-no-overlap",  # another grid is warped onto the scene's; this one is far off
        lambda r: r.explain("--region", f"mask:{far_mask(r.inputs / 'faraway.tif')}"),
        "faraway.tif does not overlap the scene",
        "check its extent and CRS",
    ),
    case(
        "region-mask-empty",
        lambda r: r.explain(
            "--region", f"mask:{raster(r.inputs / 'zeros.tif', np.zeros((1, 64, 64), np.uint8))}"
        ),
        "zeros.tif has no non-zero pixels over the scene",
        "check the mask",
    ),
    case(
        "region-mask-no-georeferencing",
        lambda r: r.explain("--region", f"mask:{shared(ZURICH_MASK)}"),
        "response_img_1091-322_00.tif is on another grid and has no georeferencing",
    ),
    case(
        "region-bbox-outside-scene",
        lambda r: r.explain("--region", "bbox:0,0,10,10"),
        "--region bbox:0,0,10,10: the region lies outside the scene",
        "CRS",
    ),
    case(
        "region-bbox-malformed",
        lambda r: r.explain("--region", "bbox:1,2,3"),
        "--region bbox:1,2,3",
        "MINX,MINY,MAXX,MAXY",
    ),
    # --- the config and its checkpoint -------------------------------------------------------
    case(
        "config-missing",
        lambda r: r.explain(config=r.inputs / "nope.yaml"),
        "config",
        "nope.yaml does not exist",
    ),
    case(
        "config-missing-field",
        lambda r: r.with_config("noarch.yaml", TINY.replace("arch: Unet\n", "")),
        "noarch.yaml: field 'arch': missing",
        "required",
    ),
    case(
        "config-wrong-type",
        lambda r: r.with_config("type.yaml", TINY.replace("in_channels: 3", "in_channels: three")),
        "type.yaml: field 'in_channels': expected int, got str 'three'",
    ),
    case(
        "config-invalid-yaml",
        lambda r: r.with_config("broken.yaml", TINY + "rgb: [3, 2\n"),
        "broken.yaml: invalid YAML at line",
        "fix the syntax",
    ),
    case(
        "config-unknown-encoder",
        lambda r: r.with_config("enc.yaml", TINY.replace("resnet18", "resnet19")),
        "encoder='resnet19': no such encoder",
        "closest: resnet18",
        "fix encoder in the config",
    ),
    case(
        "config-unknown-timm-encoder",
        lambda r: r.with_config("timm.yaml", TINY.replace("resnet18", "tu-resnet19")),
        "encoder='tu-resnet19': timm has no such model",
        "fix encoder in the config",
    ),
    case(
        "checkpoint-missing",
        lambda r: r.with_config("gone.yaml", TINY + "checkpoint: gone.safetensors\n"),
        "field 'checkpoint'",
        "gone.safetensors does not exist",
    ),
    case(
        "checkpoint-mismatched-keys",
        lambda r: with_checkpoint(
            r, "renamed.safetensors", {f"net.{k}": v for k, v in weights(r).items()}
        ),
        "renamed.safetensors does not fit the model",
        "missing (",
        "unexpected (",
        "Check arch, encoder",
    ),
    case(
        "checkpoint-mismatched-shapes",
        lambda r: with_checkpoint(
            r, "three.safetensors", weights(r, TINY.replace("[land, water]", "[a, b, c]"))
        ),
        "three.safetensors does not fit the model",
        "shape mismatch",
        "segmentation_head.0.weight (3, 8, 3, 3) vs model (2, 8, 3, 3)",
    ),
    case(
        "checkpoint-pickled-code",
        pickled_code,
        "model.pt holds Python objects",
        "refused",
        "use safetensors",
    ),
    case(
        "checkpoint-garbage",
        lambda r: with_file(
            r.inputs / "junk.pt",
            b"\0" * 64,
            r.with_config("junk.yaml", TINY + "checkpoint: junk.pt\n"),
        ),
        "junk.pt cannot be read as a torch file",
    ),
    # --- the destination ---------------------------------------------------------------------
    case(
        "output-exists",
        lambda r: with_file(r.out, b"an earlier heatmap\0", r.explain()),
        "heat.tif exists",
        "pass --overwrite",
    ),
    case(
        "output-sidecar-exists",
        lambda r: with_file(r.out.with_suffix(".qml"), b"<qgis/>", r.explain()),
        "heat.qml exists",
        "pass --overwrite",
    ),
    case(
        "output-folder-missing",
        lambda r: r.explain("-o", r.out.parent / "later" / "heat.tif"),
        "later: output folder does not exist",
        "create it first",
    ),
    case(
        "output-parent-is-a-file",
        lambda r: r.explain("-o", text(r.out.parent / "notes.txt", "x") / "heat.tif"),
        "notes.txt",
        "not a folder",
    ),
    case(
        "output-folder-not-writable",
        unwritable_folder,
        "locked: output folder is not writable",
        "choose another --out",
    ),
    case(
        "output-is-a-folder",
        lambda r: r.explain("-o", r.out.parent),
        "--out",
        "is a folder; give a file name",
    ),
    # --- outputs that would destroy an input or another product (issue 11) -------------------
    case(
        "output-is-the-source",
        lambda r: r.explain("-o", r.scene, "--overwrite"),
        "scene.tif is an input (source",
        "never writes over its inputs",
    ),
    case(
        "output-is-the-source-through-a-symlink",
        lambda r: r.explain("-o", symlink(r.out.parent / "link.tif", r.scene), "--overwrite"),
        "link.tif is an input (source",
    ),
    case(
        "output-hard-link-to-the-source",
        lambda r: r.explain("-o", hardlink(r.out.parent / "same.tif", r.scene), "--overwrite"),
        "same.tif is an input (source",
    ),
    case(
        "class-map-is-the-source",  # heat_classes.tif is the input
        lambda r: r.explain(
            "-o",
            r.inputs / "heat.tif",
            "--class-map",
            "--overwrite",
            source=raster(r.inputs / "heat_classes.tif", noisy()),
        ),
        "heat_classes.tif is an input (source",
    ),
    case(
        "overlay-is-the-mask-region",
        lambda r: r.explain(
            "-o",
            r.inputs / "m.tif",
            "--overlay",
            "--overwrite",
            "--region",
            f"mask:{raster(r.inputs / 'm_overlay.tif', np.ones((1, 64, 64), np.uint8))}",
        ),
        "m_overlay.tif is an input (region",
    ),
    case(
        "qml-is-the-config",
        lambda r: r.explain(
            "-o", r.inputs / "tiny.tif", "--overwrite", config=text(r.inputs / "tiny.qml", TINY)
        ),
        "tiny.qml is an input (config",
    ),
    case(
        "hotspots-is-the-vector-region",
        lambda r: r.explain(
            "-o",
            r.inputs / "v.tif",
            "--hotspots",
            "--overwrite",
            "--region",
            f"vector:{vector(r.inputs / 'v_hotspots.gpkg', [INSIDE])}",
        ),
        "v_hotspots.gpkg is an input (region",
    ),
    case(
        "output-suffix-png-with-quicklook",  # heatmap and quicklook would both be heat.png
        lambda r: r.explain("-o", r.out.with_suffix(".png"), "--quicklook", "--overwrite"),
        "heat.png: the heatmap is a GeoTIFF",
        "ending in .tif or .tiff",
    ),
    case(
        "journal-folder-is-the-users",  # no run.json: not geocam's, never deleted
        lambda r: with_file(
            folder(r.out.parent / "heat.tif.resume") / "notes.txt", b"mine", r.explain()
        ),
        "heat.tif.resume is not geocam's resume folder",
        "move it away",
    ),
    case(
        "journal-folder-is-the-users-with-a-result-inside",
        lambda r: with_file(
            folder(r.out.parent / "heat.tif.resume") / "b.tif", b"a finished result", r.explain()
        ),
        "heat.tif.resume is not geocam's resume folder",
    ),
    case(
        "journal-name-is-a-file",
        lambda r: with_file(r.out.parent / "heat.tif.resume", b"a file", r.explain("--resume")),
        "heat.tif.resume exists and is not geocam's resume folder",
    ),
    case(
        "lock-name-is-a-folder",
        lambda r: with_file(folder(r.out.parent / "heat.tif.lock") / "x", b"x", r.explain()),
        "heat.tif.lock is a folder, not a geocam lock file",
    ),
    case(
        "lock-name-is-a-user-file",
        lambda r: with_file(r.out.parent / "heat.tif.lock", b"my notes", r.explain()),
        "heat.tif.lock exists and is not a geocam lock file",
    ),
    case(
        "where-without-a-vector-region",
        lambda r: r.explain("--where", "name=a"),
        "--where name=a: filters a vector region",
    ),
    case(
        "class-repeated",
        lambda r: [*r.explain(), "--class", "water"],
        "--class: a class is named twice",
    ),
    case(
        "region-vector-points",
        lambda r: r.explain("--region", f"vector:{shapes(r.inputs / 'wells.gpkg', 'Point')}"),
        "wells.gpkg holds Point geometries",
        "a region needs polygons",
    ),
    case(
        "region-vector-lines",
        lambda r: r.explain("--region", f"vector:{shapes(r.inputs / 'roads.gpkg', 'LineString')}"),
        "roads.gpkg holds LineString geometries",
    ),
    case(
        "region-vector-empty-geometry",
        lambda r: r.explain("--region", f"vector:{shapes(r.inputs / 'hole.gpkg', 'Polygon')}"),
        "hole.gpkg has no features",
    ),
    case(
        "checkpoint-empty",
        lambda r: r.with_config("empty.yaml", TINY + "checkpoint: ''\n"),
        "field 'checkpoint'",
        "is empty",
    ),
    # --- tiling and the other options --------------------------------------------------------
    case(
        "tile-overlap-off-stride",
        lambda r: r.explain("--tile", "256", "--overlap", "70"),
        "tile - overlap (256 - 70)",
        "use --overlap 64 or 72",
    ),
    case(
        "overlap-not-below-tile",
        lambda r: r.explain("--tile", "64", "--overlap", "64"),
        "overlap (64) must be smaller than the tile (64)",
        "lower --overlap",
    ),
    case(
        "tile-zero",
        lambda r: r.explain("--tile", "0"),
        "tile (0) must be at least 1",
        "raise --tile",
    ),
    case(
        "batch-size-zero",
        lambda r: r.explain("--batch-size", "0"),
        "--batch-size must be at least 1",
    ),
    case(
        "hotspot-threshold-malformed",
        lambda r: r.explain("--hotspots", "--hotspot-threshold", "p150"),
        "--hotspot-threshold 'p150'",
        "use pNN",
    ),
    case(
        "quicklook-rgb-bands-missing",
        lambda r: r.with_config("rgb.yaml", TINY + "rgb: [3, 2, 5]\n", "--quicklook"),
        "rgb: input band(s) [5] do not exist",
        "fix rgb in the config",
    ),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize(("make", "expected"), CASES)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, make: Make, expected: tuple[str, ...]
) -> None:
    run = Run.make(tmp_path)
    try:
        args = make(run)
        destination = Path(args[args.index("-o") + 1])
        existed = destination.exists()
        before = snapshot(tmp_path)
        result = CliRunner().invoke(cli, args)
        after = snapshot(tmp_path)
    finally:
        for folder in run.locked:
            folder.chmod(0o755)
    output = result.output
    assert result.exit_code != 0, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in output
    assert output.startswith("geocam: error: ") and output.count("\n") == 1, output
    for part in expected:
        assert part in output, f"{part!r} not in {output!r}"
    assert existed or not destination.exists()
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
    for marker in run.markers:
        assert not marker.exists(), f"{marker.name}: the checkpoint ran code"


def test_the_pickled_payload_is_live(tmp_path: Path) -> None:
    """The payload of checkpoint-pickled-code does run when unpickled without safeguards."""
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"extra": Payload(marker)}, tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=False)  # what geocam must never do
    assert marker.exists()


def test_the_table_covers_enough_cases() -> None:
    assert len(CASES) >= 27
    assert len({p.id for p in CASES}) == len(CASES)


def test_some_nan_and_inf_pixels_are_nodata_not_an_error(tmp_path: Path) -> None:
    """A float scene with a few NaN and +inf values (no declared nodata) is valid input.

    NaN or inf in every band: the pixel is nodata; in one band: that band is fed as its mean.
    """
    pixels = np.random.default_rng(2).uniform(0, 255, (3, 64, 96)).astype(np.float32)
    pixels[0, 5:15, 10:30] = np.nan
    pixels[2, 40:50, 60:90] = np.inf
    pixels[:, 20:30, 40:50] = np.nan
    source = raster(tmp_path / "holes.tif", pixels)
    out = tmp_path / "heat.tif"
    config = text(tmp_path / "tiny.yaml", TINY)
    args = ["explain", source, "-c", config, "--class", "water", "-o", out, "-q"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    holes = ~np.isfinite(pixels).any(axis=0)
    with rasterio.open(out) as heat:
        for band in heat.read():
            assert not np.isinf(band).any()
            assert np.isnan(band[holes]).all() and np.isfinite(band[~holes]).all()


def test_a_network_with_a_classifier_head_tiles_at_its_own_stride(tmp_path: Path) -> None:
    """The head's 1 x 1 pool is not a map: it must not raise the tile multiple to 128."""
    run = Run.make(tmp_path)
    result = CliRunner().invoke(cli, [*run.with_config("aux.yaml", AUX), "-q"])
    assert result.exit_code == 0, result.output
    with rasterio.open(run.out) as heat:
        assert heat.tags()["GEOCAM_TILE"] == "64" and heat.tags()["GEOCAM_OVERLAP"] == "16"


def test_a_failed_gis_product_takes_the_heatmap_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Products written after the heatmap are all or nothing with it."""
    from geocam import GeocamError

    def fail(*_: object, **__: object) -> Path:
        raise GeocamError("no positive heat in the map: no hotspots to outline")

    monkeypatch.setattr("geocam.products.write_hotspots", fail)
    run = Run.make(tmp_path)
    args = run.explain("--overlay", "--hotspots", "--class-map", "--probabilities")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "no hotspots" in result.output
    assert list(run.out.parent.iterdir()) == []


def test_quicklook_rgb_is_not_checked_without_a_quicklook(tmp_path: Path) -> None:
    """A two-band model without ``rgb`` in its config explains without --quicklook."""
    config = text(
        tmp_path / "two.yaml",
        TINY.replace("in_channels: 3", "in_channels: 2")
        .replace("[0.0039, 0.0039, 0.0039]", "[0.0039, 0.0039]")
        .replace("[0, 0, 0]", "[0, 0]")
        + "bands: [[1, 2]]\n",
    )
    source = raster(tmp_path / "scene.tif", noisy())
    out = tmp_path / "heat.tif"
    args = ["explain", source, "-c", config, "--class", "water", "-o", out, "-q"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def test_an_output_name_without_suffix_gets_tif(tmp_path: Path) -> None:
    run = Run.make(tmp_path)
    result = CliRunner().invoke(cli, run.explain("-o", run.out.with_suffix(""), "-q"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.out.parent.iterdir()) == ["heat.qmd", "heat.qml", "heat.tif"]


def test_an_unwritable_output_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "not writable" message, even as root (where chmod does not stop writes)."""
    run = Run.make(tmp_path)
    folder = run.out.parent
    access = os.access

    def deny(path: Any, mode: int, **options: Any) -> bool:
        if Path(path) == folder and mode & os.W_OK:
            return False
        return access(path, mode, **options)

    monkeypatch.setattr(os, "access", deny)
    result = CliRunner().invoke(cli, run.explain())
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"{folder}: output folder is not writable; choose another --out" in result.output
    assert list(folder.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """With ``--debug`` the same mistake raises, so click's runner sees the exception itself."""
    run = Run.make(tmp_path)
    result = CliRunner().invoke(cli, ["--debug", *run.explain(cls="jungle")])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "GeocamError"
    assert "unknown class 'jungle'" in str(result.exception)
    assert not run.out.exists()
