"""The errors of de-identification, and the one place the deid package is imported.

deid (the ``deid`` extra) is imported only when de-identification runs, so that the library and
``medblip --help`` work without it; a missing package is a
:class:`~medblip_dicom.errors.MissingDependencyError` naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from medblip_dicom.errors import MedblipError, MissingDependencyError


#: deid's message level that lets only an abort through (deid.logger.message.ABORT).
ABORT_ONLY = -5


class DeidentificationError(MedblipError, ValueError):
    """De-identification cannot run as asked (an unknown option, a bad recipe, an unreadable input)."""


def import_deid(module: str = "deid") -> ModuleType:
    """Import `module` of the deid package, or say which extra to install."""
    try:
        imported = importlib.import_module(module)
        from deid.logger import bot
    except ImportError:
        raise MissingDependencyError(
            "de-identification needs the deid package: install the extra with pip install 'medblip-dicom[deid]' "
            "(or -e '.[deid]' in a checkout)") from None
    # deid's messages go to the streams it held at import and may quote header values: only its
    # last words before it exits (which the callers turn into a DeidentificationError) are left.
    bot.level = ABORT_ONLY
    return imported
