"""The node's one error hierarchy, split by what the caller should do about it.

* :class:`InvalidStudyError` and its subclasses are *permanent*: the input itself is wrong. Retrying cannot
  help; the study is marked failed with the message, which is written for a hospital user (no traceback needed).
* :class:`TransientError` subclasses are *temporary* (a peer is down, a lock is busy): jobs retry them.
* :class:`ProcessingError` is a failure inside our own pipeline on valid input (e.g. registration diverged).
* :class:`ConfigError` is a bad setting or configuration file.

Messages never contain patient names or IDs: they name series by SeriesDescription/UID and files by path.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""

    default_message = "the node could not complete the operation"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(NodeError):
    default_message = "invalid configuration"


class InvalidStudyError(NodeError):
    """The received study cannot be processed as it is (permanent)."""

    default_message = "the study cannot be processed"


class CorruptInstanceError(InvalidStudyError):
    default_message = "a file is not a readable DICOM instance"


class UnsupportedInstanceError(InvalidStudyError):
    """Readable DICOM, but not something the node processes (e.g. CT, unsupported pixel format)."""

    default_message = "an instance is of a kind the node does not process"


class MissingSeriesError(InvalidStudyError):
    default_message = "a required series is missing from the study"


class AmbiguousSeriesError(InvalidStudyError):
    default_message = "more than one series matches a required role"


class SegmentationError(InvalidStudyError):
    """The DICOM-SEG is unusable: references nothing received, empty segment, wrong frame of reference."""

    default_message = "the segmentation cannot be used"


class GeometryError(InvalidStudyError):
    """A series' slices do not form a regular volume (gaps, mixed orientations, duplicates)."""

    default_message = "the series geometry is not a regular volume"


class ProcessingError(NodeError):
    """Our pipeline failed on valid input (registration diverged, pons QC failed with no fallback...)."""

    default_message = "processing failed"


class TransientError(NodeError):
    """A temporary condition; the operation may succeed when retried."""

    default_message = "temporary failure"


class PacsUnavailableError(TransientError):
    """The destination PACS is down, refused or dropped the association, or answered a failure status."""

    default_message = "the destination PACS is not available"

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeliveryRefusedError(NodeError):
    """The destination refuses the object permanently (SOP class not supported, not authorised, bad dataset)."""

    default_message = "the destination refused the object"

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
