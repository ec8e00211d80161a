"""``python -m medblip_dicom`` runs the ``medblip`` command."""

import sys

from medblip_dicom.cli import main

sys.exit(main())
