"""The exceptions fer-edge raises. The CLI prints them to stderr and exits non-zero."""
from __future__ import annotations


class FerEdgeError(Exception):
    """Base class of every error fer-edge reports to a user."""


class OptionError(FerEdgeError):
    """A command-line option value that is wrong on its own (an unknown name in a list, a bad PRECISION=VALUE):
    the CLI treats it as a usage error and exits 2."""


class DataError(FerEdgeError):
    """Bad or missing input data (a CSV row, an image file, a split)."""


class ModelError(FerEdgeError):
    """Unknown model name or bad model arguments."""


class CheckpointError(FerEdgeError):
    """A checkpoint that cannot be read or does not match its model."""


class TrainingError(FerEdgeError):
    """Training could not run (bad options, a resume that does not match)."""


class ExportError(FerEdgeError):
    """An export target failed."""


class ParityError(FerEdgeError):
    """An artifact's outputs do not match the PyTorch reference within thresholds."""


class RuntimeUnavailableError(FerEdgeError):
    """A runtime or device is not available on this machine (package missing, needs macOS...)."""


class UnknownDeviceError(RuntimeUnavailableError, OptionError):
    """A device name the runtime takes on no machine (a typo such as ``gpu`` for PyTorch, ``cpus``): wrong on its
    own, so the CLI treats it as a usage error (exit 2); a known device absent here stays a
    :class:`RuntimeUnavailableError` (exit 1)."""


class ArtifactError(FerEdgeError):
    """An artifact or manifest that is missing, tampered with or unreadable."""


class PlotError(FerEdgeError):
    """A plot could not be drawn (matplotlib missing or broken); callers keep their results and warn."""
