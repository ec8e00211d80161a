"""Deployment (job spool, watch folder, DICOM node), installed as ``medblip_dicom.integrations``.

The spool, the watch folder and the Storage SCP/SCU arrive with the deployment issue; they call
:func:`medblip_dicom.api.caption_dicoms`.
"""
