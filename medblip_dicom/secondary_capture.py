"""A Secondary Capture for viewers that do not render SR: the image with its caption beneath.

Many PACS viewers show any image but not the text of a Structured Report. When ``[output]
secondary_capture = true`` the worker also writes this image and sends it with the SR: the windowed frame
the model saw (:func:`medblip_dicom.pixels.dataset_to_image`), scaled to a readable width, with a
white-on-black band below holding the caption and the words "machine-generated, UNVERIFIED, not for
diagnosis". It is a Secondary Capture Image (highdicom ``SCImage``) in its own series of the same
study, ImageType DERIVED\\SECONDARY, referencing the source image, with a deterministic UID (same
source and model: same UID), exactly like the SR. Its text follows the SR's rule
(:mod:`medblip_dicom.dicomtext`): the caption is machine text (what a value refuses is removed),
Unicode is kept, and the image declares ``ISO_IR 192`` when any value is not ASCII. (In this
project "picture" is the model's 8-bit input, :mod:`medblip_dicom.pixels`, and "preview" the PNG,
:mod:`medblip_dicom.preview`.)
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medblip_dicom.dicomtext import declare_character_set, dicom_text
from medblip_dicom.identity import ModelIdentity
from medblip_dicom.preview import NOTICE, render_captioned_image
from medblip_dicom.report_view import patient_and_study
from medblip_dicom.uids import stable_uid

#: Series Number of the Secondary Capture series (the SR series is 990).
SC_SERIES_NUMBER = 991
#: Its Series Description (as written since the first release; viewers show it).
SC_SERIES_DESCRIPTION = "AI caption picture: machine-generated, not for diagnosis"


def secondary_capture_uids(source: Dataset, identity: ModelIdentity) -> tuple[str, str]:
    """``(series_uid, sop_instance_uid)`` of the Secondary Capture for `source`: deterministic, like the SR's."""
    series = stable_uid("medblip-dicom/sc-series", str(source.SeriesInstanceUID), identity.content_key)
    instance = stable_uid("medblip-dicom/sc", str(source.SOPInstanceUID), identity.content_key)
    return series, instance


def build_secondary_capture(source: Dataset, image: Image.Image, caption: str, sr: Dataset,
                            identity: ModelIdentity) -> Dataset:
    """Build the Secondary Capture for `source` (whose windowed frame is `image`).

    Patient and study attributes are taken from `sr`, which already holds them cleaned of values
    that break their VR, so the Secondary Capture and the report always agree; so does the caption, cleaned
    by the same rule as the report's finding.
    """
    import highdicom as hd

    from medblip_dicom import __version__

    caption = dicom_text(caption, "UT", what="the caption", machine=True)
    captioned = render_captioned_image(image, caption)
    series_uid, sop_uid = secondary_capture_uids(source, identity)


    with warnings.catch_warnings():  # highdicom warns about single-component person names
        warnings.simplefilter("ignore", UserWarning)
        sc = hd.sc.SCImage(
            pixel_array=np.asarray(captioned, dtype=np.uint8),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            patient_orientation=("L", "F"),  # replaced below: the source's orientation, or empty
            **patient_and_study(sr),
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=int(sr.get("InstanceNumber") or 1),
            manufacturer="medblip-dicom",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            series_description=_lo(SC_SERIES_DESCRIPTION),
            manufacturer_model_name=_lo(identity.name),
            software_versions=[_lo(f"medblip-dicom {__version__}"), _lo(identity.version)],
            device_serial_number=_lo(identity.weights_sha256),
        )
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation is not None and len(orientation) == 2 else ""
    laterality = source.get("Laterality")
    sc.Laterality = laterality if laterality in ("R", "L") else ""  # type 2C: empty when unknown
    sc.ConversionType = "WSD"  # workstation: produced by software, not digitised
    sc.BurnedInAnnotation = "NO"  # the burned-in text is the caption, nothing that identifies the patient
    sc.DerivationDescription = "Windowed source image with its machine-generated caption rendered beneath"
    sc.ImageComments = dicom_text(f"{NOTICE}. Caption: {caption}", "LT", what="the image comments", machine=True)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    if "StudyDescription" in sr:
        sc.StudyDescription = sr.StudyDescription
    return declare_character_set(sc)


def _lo(text: str) -> str:
    return dicom_text(text, "LO", what="a model attribute", machine=True)
