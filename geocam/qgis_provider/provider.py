"""The provider and its algorithms, generated from ``geocam describe --json``.

Each algorithm runs ``GEOCAM_EXECUTABLE COMMAND ...`` as an external process: progress comes
from ``--progress json`` lines, cancelling sends SIGTERM (geocam stops cleanly and leaves
nothing behind), geocam's one-line error reaches the log and fails the algorithm, the outputs
are loaded with their styles, and the log shows the equivalent command line.
"""

import json
import os
import shlex
import signal
import subprocess
import threading

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsProcessingProvider,
    QgsSettings,
)

SETTING = "GEOCAM_EXECUTABLE"
SETTINGS_KEY = f"Processing/Configuration/{SETTING}"
HERE = os.path.dirname(os.path.abspath(__file__))
COMMANDS = ("explain",)
"""The commands offered as algorithms."""
SET_BY_PROVIDER = ("progress_format",)
"""Options the provider sets itself (``--progress json``): not shown as parameters."""


def executable():  # type: ignore[no-untyped-def]
    """The geocam executable: the Processing setting (filled in by ``geocam qgis install``)."""
    return QgsSettings().value(SETTINGS_KEY, "") or "geocam"


def describe():  # type: ignore[no-untyped-def]
    """Geocam's description of its commands: describe.json, else ``geocam describe --json``."""
    cached = os.path.join(HERE, "describe.json")
    if os.path.exists(cached):
        with open(cached, encoding="utf-8") as handle:
            return json.load(handle)
    done = subprocess.run(
        [executable(), "describe", "--json"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return {"commands": {}}
    return json.loads(done.stdout)


def parameter_name(param):  # type: ignore[no-untyped-def]
    """A Processing parameter's name: the option's long flag (``--class`` is ``CLASS``)."""
    if param["kind"] == "argument":
        return param["name"].upper()
    longs = [f for f in param["flags"] if f.startswith("--")]
    return (longs[0] if longs else param["flags"][0]).lstrip("-").replace("-", "_").upper()


def parameters(command):  # type: ignore[no-untyped-def]
    """The command's parameters as the provider shows them (those it sets itself left out)."""
    return [p for p in command["params"] if p["name"] not in SET_BY_PROVIDER]


def processing_parameter(param):  # type: ignore[no-untyped-def]
    """The Processing parameter for one geocam parameter."""
    name, text = parameter_name(param), (param["help"] or param["name"]).split(" [")[0]
    optional = not param["required"]
    kind, default = param["type"], param["default"]
    if param["kind"] == "argument":
        return QgsProcessingParameterMultipleLayers(name, text, QgsProcessing.TypeRaster)
    if param["name"] == "out":
        return QgsProcessingParameterRasterDestination(name, text)
    if kind == "flag":
        return QgsProcessingParameterBoolean(name, text, bool(default))
    if kind == "choice":
        choices = param["choices"]
        index = choices.index(default) if default in choices else None
        return QgsProcessingParameterEnum(name, text, choices, False, index, optional)
    if kind in ("int", "float"):
        number = (
            QgsProcessingParameterNumber.Integer
            if kind == "int"
            else (QgsProcessingParameterNumber.Double)
        )
        return QgsProcessingParameterNumber(name, text, number, default, optional)
    if kind == "path":
        return QgsProcessingParameterFile(name, text, optional=optional)
    if param["multiple"]:
        text += " (comma-separated for several)"
    return QgsProcessingParameterString(name, text, default, False, optional)


class GeocamAlgorithm(QgsProcessingAlgorithm):
    """One geocam command, run as ``geocam COMMAND ...``."""

    def __init__(self, command):  # type: ignore[no-untyped-def]
        super().__init__()
        self.command = command

    def createInstance(self):  # type: ignore[no-untyped-def]
        return GeocamAlgorithm(self.command)

    def name(self):  # type: ignore[no-untyped-def]
        return self.command["name"].replace(" ", "_")

    def displayName(self):  # type: ignore[no-untyped-def]
        return f"geocam {self.command['name']}"

    def shortHelpString(self):  # type: ignore[no-untyped-def]
        return (
            f"{self.command['help']}\n\nRuns the geocam command line ({executable()}); the "
            "log shows the equivalent command, to run the same job on a server or in a batch."
        )

    def flags(self):  # type: ignore[no-untyped-def]
        return super().flags() | QgsProcessingAlgorithm.FlagNoThreading

    def initAlgorithm(self, config=None):  # type: ignore[no-untyped-def]
        for param in parameters(self.command):
            self.addParameter(processing_parameter(param))
        self.addOutput(QgsProcessingOutputString("COMMAND", "Equivalent command line"))

    def arguments(self, values, context):  # type: ignore[no-untyped-def]
        """The command line for the dialog's values."""
        args = [executable(), *self.command["name"].split()]
        for param in parameters(self.command):
            name = parameter_name(param)
            flag = param["flags"][0] if param["flags"] else ""
            if param["kind"] == "argument":
                layers = self.parameterAsLayerList(values, name, context)
                args += [layer.source() for layer in layers]
            elif param["name"] == "out":
                args += [flag, self.parameterAsOutputLayer(values, name, context)]
            elif param["type"] == "flag":
                if self.parameterAsBoolean(values, name, context) != bool(param["default"]):
                    args.append(flag if not param["default"] else param["secondary_flags"][0])
            elif param["type"] == "choice":
                if values.get(name) is None:
                    continue
                choice = param["choices"][self.parameterAsEnum(values, name, context)]
                if choice != param["default"]:
                    args += [flag, choice]
            elif param["type"] in ("int", "float"):
                if values.get(name) is None:
                    continue
                number = (
                    self.parameterAsInt(values, name, context)
                    if param["type"] == "int"
                    else self.parameterAsDouble(values, name, context)
                )
                if number != param["default"]:
                    args += [flag, str(number)]
            else:
                text = self.parameterAsString(values, name, context)
                if param["type"] == "path":
                    text = self.parameterAsFile(values, name, context)
                if not text or text == param["default"]:
                    continue
                items = [t.strip() for t in text.split(",")] if param["multiple"] else [text]
                for item in items:
                    args += [flag, item]
        return [*args, "--progress", "json"]

    def processAlgorithm(self, values, context, feedback):  # type: ignore[no-untyped-def]
        args = self.arguments(values, context)
        command = " ".join(shlex.quote(a) for a in args)
        feedback.pushCommandInfo(command)
        try:
            process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
            )
        except OSError as error:
            raise QgsProcessingException(
                f"cannot run geocam ({args[0]}): {error}; set the path in Processing options "
                "(Providers > geocam) or run: geocam qgis install"
            ) from error
        stdout = []
        reader = threading.Thread(target=lambda: stdout.extend(process.stdout), daemon=True)
        reader.start()
        errors = []
        for line in process.stderr:
            line = line.rstrip("\n")
            if feedback.isCanceled() and process.poll() is None:
                process.send_signal(signal.SIGTERM)  # geocam stops cleanly, leaves nothing
            if line.startswith("{"):
                try:
                    progress = json.loads(line)
                    share = progress["done"] / max(progress["total"], 1)
                    done = (progress["pass"] - 1 + share) / max(progress["passes"], 1)
                    feedback.setProgress(100 * done)
                    continue
                except (ValueError, KeyError):
                    pass
            if line.startswith("geocam: error:"):
                errors.append(line)
                feedback.reportError(line)
            elif line:
                feedback.pushInfo(line)
        process.wait()
        reader.join()
        process.stdout.close()
        process.stderr.close()
        if feedback.isCanceled():
            raise QgsProcessingException("geocam: cancelled; nothing was written")
        if process.returncode != 0:
            raise QgsProcessingException(
                errors[-1] if errors else f"geocam exited with {process.returncode}"
            )
        results = {"COMMAND": command}
        for line in stdout:
            name, _, path = line.strip().partition(": ")
            if not path or not os.path.isfile(path):
                continue
            feedback.pushInfo(line.strip())
            if name == "heatmap":
                results["OUT"] = path
            elif path.endswith((".tif", ".gpkg", ".geojson")) and not name.startswith("overlay"):
                # loaded like the heatmap: QGIS applies the .qml beside each file
                details = QgsProcessingContext.LayerDetails(
                    os.path.basename(path), context.project(), name
                )
                context.addLayerToLoadOnCompletion(path, details)
        return results


class GeocamProvider(QgsProcessingProvider):
    """The geocam provider: one algorithm per geocam command in :data:`COMMANDS`."""

    def load(self):  # type: ignore[no-untyped-def]
        try:  # shown in Settings > Options > Processing > Providers
            from processing.core.ProcessingConfig import ProcessingConfig, Setting

            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(), SETTING, "geocam executable", executable(), valuetype=Setting.FILE
                )
            )
            ProcessingConfig.readSettings()
        except ImportError:  # no Processing plugin: the QgsSettings key still works
            pass
        self.refreshAlgorithms()
        return True

    def id(self):  # type: ignore[no-untyped-def]
        return "geocam"

    def name(self):  # type: ignore[no-untyped-def]
        return "geocam"

    def longName(self):  # type: ignore[no-untyped-def]
        return "geocam (Grad-CAM for segmentation networks)"

    def loadAlgorithms(self):  # type: ignore[no-untyped-def]
        commands = describe().get("commands", {})
        for name in COMMANDS:
            if name in commands:
                self.addAlgorithm(GeocamAlgorithm(commands[name]))
