"""The durable queue every producer feeds (installed as ``medblip_dicom.integrations.spool``).

``from medblip_dicom.integrations.spool import Spool, JobState`` is all most code needs; the parts
live in :mod:`.journal`, :mod:`.files`, :mod:`.owners`, :mod:`.recovery` and :mod:`.spool`.
"""

from medblip_dicom.integrations.spool.files import InstanceInfo, SpoolFullError, read_instance_info, reason_text
from medblip_dicom.integrations.spool.journal import (
    FINAL_STATES, PENDING_STATES, Job, JobState, SpoolError, SpoolSummary, open_readonly_summary,
)
from medblip_dicom.integrations.spool.spool import OWN_MANUFACTURER, Admission, Released, Spool

__all__ = [
    "FINAL_STATES", "OWN_MANUFACTURER", "PENDING_STATES", "Admission", "InstanceInfo", "Job", "JobState", "Released",
    "Spool", "SpoolError", "SpoolFullError", "SpoolSummary", "open_readonly_summary", "read_instance_info",
    "reason_text",
]
