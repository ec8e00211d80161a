"""Which imaging modality an evaluation row belongs to, for per-modality scores.

From the DICOM Modality when the row's image is a DICOM file (CT -> CT; MR -> MRI; CR, DX, DR, RG,
MG, PX, IO -> X-ray; US -> ultrasound; XA, RF -> angiography; PT, NM -> PET/nuclear; anything else
-> other). Otherwise from the words of the reference caption (lower-cased), the first group of
:data:`CAPTION_RULES` whose pattern matches, in this order:

1. PET/nuclear: ``pet``, ``pet-ct``, ``fdg``, ``spect``, ``scintigraphy``, ``scintigram``, ``nuclear``,
   ``bone scan``, ``radionuclide``, ``octreoscan``, ``mibg`` (so PET-CT counts as PET);
2. CT: ``ct``, ``cta``, ``hrct``, ``cect``, ``ncct``, ``mdct``, ``cbct``, ``computed tomograph...``,
   ``computerised``/``computerized tomograph...``, ``tomodensitom...`` (so CT angiography counts as CT);
3. MRI: ``mri``, ``mr``, ``mra``, ``mrcp``, ``cmr``, ``magnetic resonance``, ``t1``/``t2``(-weighted),
   ``flair``, ``dwi``, ``adc``, ``stir``, ``irm``;
4. ultrasound: ``ultrasound``, ``ultrasonograph...``, ``ultrasonic``, ``sonograph...``, ``sonogram``,
   ``us``, ``usg``, ``doppler``, ``echocardiogra...``, ``echography``, ``echo``, ``transvaginal``,
   ``transthoracic``, ``transoesophageal``/``transesophageal``, ``parasternal``;
5. angiography: ``angiogra...``, ``arteriogra...``, ``venogra...``, ``cavogra...``, ``dsa``,
   ``catheter angiogram``, ``coronarogra...``;
6. X-ray: ``x-ray``, ``x ray``, ``xray``, ``radiograph...``, ``radiographie``, ``cxr``, ``plain film``,
   ``chest film``, ``fluoroscop...``, ``mammogra...``, ``orthopantomogra...``, ``opg``, ``panoramic``,
   ``barium``, ``kub``, ``pyelogra...``, ``urogra...``, ``hysterosalpingogra...``, ``hsg``;
7. other: no pattern matched.

The words are ROCO's (English, with some French and Spanish captions); the rule is a heuristic for
grouping scores, not a classifier of record.
"""

from __future__ import annotations

import re
from pathlib import Path

GROUPS = ("CT", "MRI", "X-ray", "ultrasound", "angiography", "PET/nuclear", "other")

#: DICOM Modality (0008,0060) -> group.
DICOM_MODALITIES = {
    "CT": "CT", "MR": "MRI", "CR": "X-ray", "DX": "X-ray", "DR": "X-ray", "RG": "X-ray", "MG": "X-ray",
    "PX": "X-ray", "IO": "X-ray", "US": "ultrasound", "XA": "angiography", "RF": "angiography",
    "PT": "PET/nuclear", "NM": "PET/nuclear",
}

CAPTION_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((group, re.compile(pattern)) for group, pattern in (
    ("PET/nuclear", r"\b(pet|pet-ct|fdg|spect|scintigra\w*|scintigram\w*|nuclear|bone scan\w*|radionuclide|"
                    r"octreoscan|mibg)\b"),
    ("CT", r"\b(ct|cta|hrct|cect|ncct|mdct|cbct|computed tomograph\w*|computeri[sz]ed tomograph\w*|"
           r"tomodensitom\w*)\b"),
    ("MRI", r"\b(mri|mr|mra|mrcp|cmr|magnetic resonance|t1|t2|t1-weighted|t2-weighted|flair|dwi|adc|stir|irm)\b"),
    ("ultrasound", r"\b(ultrasound|ultrasonograph\w*|ultrasonic|sonograph\w*|sonogram\w*|us|usg|doppler|"
                   r"echocardiogra\w*|echograph\w*|echo|transvaginal|transthoracic|transoesophageal|"
                   r"transesophageal|parasternal)\b"),
    ("angiography", r"\b(angiogra\w*|arteriogra\w*|venogra\w*|cavogra\w*|dsa|coronarogra\w*)\b"),
    ("X-ray", r"(\bx[- ]?rays?\b|\bradiograph\w*|\bradiographie|\bcxr\b|\bplain film|\bchest film|\bfluoroscop\w*|"
              r"\bmammogra\w*|\borthopantomogra\w*|\bopg\b|\bpanoramic\b|\bbarium\b|\bkub\b|\bpyelogra\w*|"
              r"\burogra\w*|\bhysterosalpingogra\w*|\bhsg\b)"),
))


def modality_from_caption(caption: str) -> str:
    """The group of a caption by its words (see the module docstring)."""
    text = caption.lower()
    for group, pattern in CAPTION_RULES:
        if pattern.search(text):
            return group
    return "other"


def modality_from_dicom(path: str | Path) -> str | None:
    """The group of a DICOM image by its Modality attribute; None when the file is not DICOM."""
    from medblip_dicom.reading import read_header

    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if head[128:132] != b"DICM" and path.suffix.lower() != ".dcm":
        return None
    header = read_header(path, ("Modality",))
    if header is None or "Modality" not in header:
        return None
    return DICOM_MODALITIES.get(str(header.Modality).strip().upper(), "other")


def modality_of(image: str | Path | None, reference: str) -> tuple[str, str]:
    """``(group, source)``: from the DICOM Modality when the image is DICOM, else from the caption."""
    if image is not None:
        group = modality_from_dicom(image)
        if group is not None:
            return group, "dicom"
    return modality_from_caption(reference), "caption"
