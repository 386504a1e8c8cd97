"""The project's exception hierarchy (the lowest layer; every package raises these).

The library raises; one boundary (the CLI, the HTTP service) translates them.
"""

from __future__ import annotations


class PolypIndexError(Exception):
    """Base class of every error PolypIndex raises on purpose."""


class ConfigError(PolypIndexError, ValueError):
    """A configuration value is invalid; the message says how to fix it."""


class InvalidInputError(PolypIndexError, ValueError):
    """Input data given to a public function or the API is malformed."""


class InvalidAnnotationError(InvalidInputError):
    """A COCO annotation file or one of its records is malformed."""


class ImageReadError(InvalidInputError):
    """An image file or image bytes could not be decoded."""


class ModelLoadError(PolypIndexError):
    """A model artefact is missing, unreadable or lacks required metadata."""


class EncoderMismatchError(PolypIndexError):
    """Embeddings, index or probe were made by a different encoder version."""


class NotFoundError(PolypIndexError):
    """A requested resource does not exist."""


class TrackletNotFoundError(NotFoundError):
    """No tracklet has the requested id."""


class ProcedureNotFoundError(NotFoundError):
    """No procedure has the requested UID."""


class ConflictError(PolypIndexError):
    """Another writer changed the same resource at the same time; nothing was written."""


class IndexNotReadyError(PolypIndexError):
    """The vector index or the encoder is not loaded yet (or is empty)."""


class ProbeNotInstalledError(IndexNotReadyError):
    """A size or histology probe is needed but none is installed for this encoder."""
