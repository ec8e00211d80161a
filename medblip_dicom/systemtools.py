"""Finding the system's DICOM command-line tools (dcmtk, dicom3tools, Orthanc).

Used by ``medblip doctor``, the tests and the benchmarks, which drive the real tools.
"""

from __future__ import annotations

import os
import shutil
import sys

#: The tools this project works with, and the Debian package of each.
TOOLS = {
    "dcmsend": "dcmtk", "storescu": "dcmtk", "echoscu": "dcmtk", "storescp": "dcmtk", "dsrdump": "dcmtk",
    "dciodvfy": "dicom3tools",
}


def find_system_tool(name: str) -> str | None:
    """Path of a DICOM command-line tool from the system (dcmtk, dicom3tools, Orthanc).

    pynetdicom installs Python apps called ``echoscu``, ``storescu``, ``findscu``... into the
    virtual environment's ``bin``; when that environment is active they shadow dcmtk's tools of the
    same name, whose options differ. Folders inside the running Python's prefix are skipped, and so
    is the ``bin`` of any other virtual environment on the PATH (one that holds ``pyvenv.cfg``: a
    developer's shell often has another project's environment active; pip never installs dcmtk).
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix)}
    folders = [d for d in os.environ.get("PATH", "").split(os.pathsep)
               if d and not any(os.path.realpath(d).startswith(p + os.sep) for p in prefixes)
               and not os.path.isfile(os.path.join(os.path.dirname(os.path.realpath(d)), "pyvenv.cfg"))]
    found = shutil.which(name, path=os.pathsep.join(folders))
    if found is None and name == "Orthanc" and os.access("/usr/sbin/Orthanc", os.X_OK):
        found = "/usr/sbin/Orthanc"  # Debian installs it outside an ordinary PATH
    return found
