"""The project's one exception family: every message says what was found, what was expected and the fix."""

from __future__ import annotations


class GlsnetError(Exception):
    """Base of every error this toolkit raises on purpose (CLIs print these without a traceback)."""


class InputError(GlsnetError):
    """A user-supplied file or value is unusable (image, mask, folder, option)."""


class BundleError(GlsnetError):
    """A bundle is missing, incomplete, corrupt or of another schema version."""


class CheckpointError(GlsnetError):
    """A checkpoint is not a GLSNet checkpoint or does not match the requested configuration."""


class MissingDependencyError(GlsnetError, ImportError):
    """An optional package is needed for this feature and is not installed."""


class AccuracyGateError(GlsnetError):
    """A converted graph set fell below its accuracy thresholds."""


class ClusterError(GlsnetError):
    """A Ray cluster cannot be reached, or cannot start the workers a batch asked for."""
