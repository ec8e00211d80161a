"""Identifying header values taken out of free text (captions, descriptions, rejection reasons)."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from medblip_dicom.deid.scrub import Identifiers, identifiers_of

from tests.support.phi import ACCESSION, ADDRESS, INSTITUTION, crafted
from tests.support.privacy import PATIENT_ID


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> Identifiers:
    return identifiers_of(pydicom.dcmread(crafted(tmp_path_factory.mktemp("phi"))))


@pytest.mark.parametrize("text", [
    "Reliabilitytest Ottoline Quennell", "QUENNELL, OTTOLINE", "ottoline quennell", "Mrs Quennell's",
    "Ottoline Q. Reliabilitytest-Quennell",
])
def test_names_are_found_in_any_order_and_case(found, text):
    cleaned = found.scrub(f"nodule seen in {text} left lung")
    assert "quennell" not in cleaned.lower() and "ottoline" not in cleaned.lower()
    assert cleaned.startswith("nodule seen in") and cleaned.endswith("left lung")


@pytest.mark.parametrize("text", [PATIENT_ID, PATIENT_ID.lower(), PATIENT_ID.replace("-", ""),
                                  PATIENT_ID.replace("-", " "), ACCESSION, "OPX77123KW"])
def test_identifiers_are_found_with_or_without_separators(found, text):
    assert found.scrub(f"see {text} for priors") == "see for priors"


@pytest.mark.parametrize("text", ["20230514", "2023-05-14", "14/05/2023", "05/14/2023", "14.5.2023", "14/05/23",
                                  "14 May 2023", "May 14th, 2023", "14th of May 2023", "19610817", "17 Aug. 1961"])
def test_dates_are_found_in_common_formats(found, text):
    assert found.scrub(f"compared with {text}: stable") == "compared with: stable"


def test_places_and_their_parts_go_and_the_rest_of_the_text_stays(found):
    assert found.scrub(f"sent from {INSTITUTION} ({ADDRESS.split(',')[1].strip()})") == "sent from"
    assert found.scrub("a small nodule in the right upper lobe, 4 mm") == "a small nodule in the right upper lobe, 4 mm"
    assert found.scrub("the 2023 guideline and 14 mm") == "the 2023 guideline and 14 mm"


def test_titles_and_short_values_are_not_looked_for():
    ds = Dataset()
    ds.PatientName = "Ng^Li^^Dr^MD"
    ds.PatientID = "12"
    found = identifiers_of(ds)
    assert found.scrub("Dr said MD review; Li Ng; series 12") == "Dr said MD review; series 12"


def test_values_the_output_keeps_are_not_removed(found):
    kept = found.without([INSTITUTION])
    assert INSTITUTION in kept.scrub(f"from {INSTITUTION}") and PATIENT_ID not in kept.scrub(PATIENT_ID)
