"""De-identification for moving images and captions off-site: DICOM PS3.15 Annex E, through deid.

- :class:`Deidentifier` (:mod:`.engine`): the Basic Application Level Confidentiality Profile and
  the options a user names (:data:`OPTIONS`), as deid recipes shipped with this package
  (:mod:`.profile`), with keyed pseudonyms (:class:`Pseudonyms`, :func:`read_key`, :func:`new_key`)
  and the burned-in text check (:mod:`.burned_in`);
- :mod:`.scrub`: a caption or description cleaned of the header values the profile removes;
- :class:`ExportWriter` and :func:`deidentify` (:mod:`.manifest`): manifests that ``medblip train
  --data`` reads unchanged, folders of DICOM, and the data card.

deid is the ``deid`` extra, imported only when de-identification runs. docs/deidentification.md
says which profile and options are applied, why deid, and what is not covered.
"""

from __future__ import annotations

from medblip_dicom.deid.engine import Deidentifier, Result
from medblip_dicom.deid.errors import DeidentificationError
from medblip_dicom.deid.manifest import ExportWriter, deidentify
from medblip_dicom.deid.keys import KeyFileError, Pseudonyms, new_key, read_key
from medblip_dicom.deid.profile import OPTIONS
from medblip_dicom.deid.scrub import Identifiers, identifiers_of

__all__ = ["OPTIONS", "DeidentificationError", "Deidentifier", "ExportWriter", "Identifiers", "KeyFileError",
           "Pseudonyms", "Result", "deidentify", "identifiers_of", "new_key", "read_key"]
