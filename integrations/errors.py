"""Errors for bad input.

Every error a user can cause by handing clinseg a file carries a message that says what is wrong
and what to do. The app and the CLI catch `ClinsegInputError` and show the message, never a trace.
"""
from __future__ import annotations


class ClinsegInputError(Exception):
    """Base class: the input (file, folder, prompt) cannot be used as given."""

    exit_code = 2


class UnsupportedFormatError(ClinsegInputError):
    """The path is not a format clinseg reads."""


class EmptyFileError(ClinsegInputError):
    """A 0-byte file."""


class UnreadableFileError(ClinsegInputError):
    """The file exists but its contents cannot be decoded (corrupt, not what its name says)."""


class TruncatedFileError(UnreadableFileError):
    """The header reads but the pixel data stops short."""


class MixedSeriesError(ClinsegInputError):
    """A DICOM folder holds more than one series and none was chosen."""

    def __init__(self, message: str, series: dict[str, int] | None = None):
        super().__init__(message)
        # series UID -> number of files, so callers can offer a choice
        self.series = dict(series or {})


class MissingSlicesError(ClinsegInputError):
    """Slice positions of a series have gaps larger than its spacing."""


class InconsistentGeometryError(ClinsegInputError):
    """Slices of one series disagree on orientation, size or pixel spacing."""


class NonFiniteVoxelsError(ClinsegInputError):
    """The image contains NaN or infinite values."""


class ImageTooLargeError(ClinsegInputError):
    """The image exceeds the size limit (protects the machine from decompression bombs)."""


class InvalidPromptError(ClinsegInputError):
    """A prompt (box, point, scribble) that cannot be used: outside the image, degenerate, NaN."""


class NothingFoundError(Exception):
    """The request was valid but found nothing: an empty mask, a query naming no known structure."""

    exit_code = 4


class ModelWeightsError(Exception):
    """Model weights are missing, corrupt or do not match the architecture."""

    exit_code = 3
