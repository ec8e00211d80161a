"""``python -m medblip_dicom`` runs the ``medblip`` command."""

import sys

from medblip_dicom.apps.main import main

sys.exit(main())
