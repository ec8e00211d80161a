"""The one exception hierarchy of medblip-dicom.

Every error a user can cause (a bad file, a missing model, an unusable device) is a
:class:`MedblipError`. Its message names the file and, where one is involved, the DICOM
attribute, and says what to do. CLIs print ``str(error)`` as one line and exit non-zero.

Errors about one source (:class:`SourceError`: reading it, building its report) keep the source's
label and the reason apart (``error.source``, ``error.reason``), so that a service can record the
reason without the spool path it read the file from, and so that they cross a process boundary
(:mod:`medblip_dicom.cpupool`) intact.
"""

from __future__ import annotations


class MedblipError(Exception):
    """Base class of every error this project raises on purpose."""


class SourceError(MedblipError):
    """Something is wrong with one source: ``str(error)`` is ``"<source>: <reason>"``."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Exceptions pickle their message as the one argument; this one takes two.
        return (type(self), (self.source, self.reason))


class DicomReadError(SourceError):
    """The source could not be read as a DICOM image we can caption."""


class NotDicomError(DicomReadError):
    """The source is not a DICOM file at all (or is truncated before its first element)."""


class InvalidDicomError(DicomReadError):
    """The file is DICOM but is corrupt, truncated or misses a required attribute."""


class NotAnImageError(DicomReadError):
    """A valid DICOM instance that holds no image: SR, RT plan, PDF, DICOMDIR, waveform, ..."""


class PixelDecodeError(DicomReadError):
    """The pixel data could not be decoded or turned into an image."""


class ReportError(SourceError):
    """A Structured Report could not be built or written for a source."""


class ModelLoadError(MedblipError):
    """The captioning model could not be loaded."""


class MissingDependencyError(MedblipError):
    """A package a command needs is not installed; the message names the extra to install."""
