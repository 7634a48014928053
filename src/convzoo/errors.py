"""Exception types: one per kind of failure, each a subclass of :class:`ConvzooError`.

The command line turns any :class:`ConvzooError` into a one-line message and exit code 2.
"""


class ConvzooError(Exception):
    """Base class of every error convzoo raises on purpose."""


class UnknownModelError(ConvzooError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputShapeError(ConvzooError, ValueError):
    """An input tensor too small for a model, or with the wrong number of channels."""


class ConfigError(ConvzooError, ValueError):
    """An unknown recipe, an unknown field, or an invalid value for a field."""


class DataError(ConvzooError):
    """A data set that is missing, empty, truncated or of the wrong format."""


class UnsafeFileError(ConvzooError):
    """A file that would run code or write outside its folder (crafted pickle, tar with ../)."""


class ChecksumError(ConvzooError):
    """A file whose MD5 or SHA-256 differs from the published one."""


class WeightsError(ConvzooError):
    """A weight file that cannot be read, or that does not fit the model."""


class ImageError(ConvzooError):
    """An image that is missing, unreadable, truncated or too large."""


class DownloadError(ConvzooError):
    """A file that could not be fetched."""


class CheckpointError(ConvzooError):
    """A run folder or checkpoint that is missing, broken or belongs to another model."""


class OutputError(ConvzooError):
    """A file or folder that cannot be written (full disk, no permission, a path through a file)."""


class DivergedError(ConvzooError):
    """A training loss that became NaN or infinite."""


class MissingDependencyError(ConvzooError):
    """An optional package (an extra such as ``convzoo[train]``) that a feature needs is not installed."""


class ConvzooWarning(UserWarning):
    """A warning convzoo gives on purpose; the command line shows it as one ``convzoo: warning:`` line."""


class AccuracyGuardError(ConvzooError):
    """A lower-precision model (bf16, int8) whose accuracy falls outside the guard against fp32."""
