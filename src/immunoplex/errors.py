"""The project's own exception types.

Every error a user can cause by bad input is one of these, with a one-line message that names the
file (and row, where there is one) and the reason. CLIs print ``str(err)`` without a traceback and
exit non-zero.
"""

from __future__ import annotations


class ImmunoplexError(Exception):
    """Base class for all errors caused by input the user controls."""


class SlideReadError(ImmunoplexError):
    """A slide file cannot be read (corrupt, truncated, not a TIFF, unsupported codec...)."""


class PanelMismatchError(ImmunoplexError):
    """A slide's channels do not provide the markers a model or config requires."""


class ResolutionError(ImmunoplexError):
    """The physical pixel size (µm/px) is unknown or a requested resolution cannot be produced."""


class ManifestError(ImmunoplexError):
    """A manifest/label table is malformed (missing columns, bad values, duplicated ids...)."""


class ExpressionError(ImmunoplexError):
    """An expression table is malformed (NaN/inf, duplicated ids, no usable genes...)."""


class SplitError(ImmunoplexError):
    """A split is impossible or unsafe (patient leakage, a fold with one class...)."""


class CheckpointError(ImmunoplexError):
    """A checkpoint is missing, incompatible, or refused as unsafe."""


class ConfigError(ImmunoplexError):
    """A configuration value is invalid."""
