"""``python -m medblip_dicom`` runs the ``medblip`` command."""

from medblip_dicom.apps.main import run

run()
