"""Text attacks: what a radiologist signs, a model captions or an account holds reaches DICOM exactly,
or is refused (people) or cleaned (models) before it can break the report.

Each signed or captioned text is read back from the written file with pydicom, compared with what
was typed byte for byte (UTF-8), and the file passes dciodvfy with 0 errors and dsrdump reads it.
"""

from __future__ import annotations

import pydicom
import pytest
from fastapi.testclient import TestClient

from medblip_dicom.report_view import CaptionReport, content_items

from tests.support.review import PASSWORD, csrf_of, login
from tests.support.dicom import dciodvfy_errors

#: What the security review signed: symbols, Latin-1, Greek and CJK in one finding.
SIGNED = "Nodule ≥ 8 mm, ≤ 2 cm; 5 µg; 90°; ± 1; naïve; 肺結節"
#: A ROCO-like AI caption with the Greek mu that the worklist showed as "?".
ROCO_CAPTION = "Axial CT: 5 μg/kg contrast, 3 × 4 cm² mass, 45° tilt, naïve lung"
#: A reviewer with a Japanese name, at a hospital whose name is not ASCII.
PERSON = "Yamada^Tarou=山田^太郎"
ORGANIZATION = "Hôpital Saint-Éloi, 放射線科"
#: NUL, ESC, NEXT LINE (a C1 control) and LINE SEPARATOR: no DICOM text may hold them.
CONTROLS = {"NUL": "\x00", "ESC": "\x1b", "NEL": "\u0085", "LS": "\u2028"}


@pytest.fixture
def station(review_spool):
    """A review station (organization not ASCII) with a Japanese-named reviewer logged in, its API
    headers as ``station.api``, and its spool as ``station.rs``."""
    from medblip_dicom.integrations.review.accounts import Accounts
    from medblip_dicom.integrations.review.app import create_app

    rs = review_spool(2, captions=[ROCO_CAPTION, "ai caption"], rejection_note=True)
    accounts = Accounts(rs.store.db)
    accounts.add_user("yamada", PERSON, PASSWORD)
    with TestClient(create_app(rs.store, organization=ORGANIZATION), base_url="http://127.0.0.1") as c:
        assert login(c, "yamada").status_code == 303
        c.rs = rs
        c.api = {"Authorization": f"Bearer {accounts.add_token('yamada')}"}
        yield c


def finding_bytes(sr: pydicom.Dataset) -> bytes:
    """The Finding's TextValue as stored in the file (trailing padding removed)."""
    for item in content_items(sr):
        if item.ConceptNameCodeSequence[0].CodeValue == "121071" and item.ValueType == "TEXT":
            return item.get_item(0x0040A160).value.rstrip(b" ")
    raise AssertionError("no Finding in the report")


def signed_files(rs) -> list:
    return sorted((rs.root / "review" / "signed").glob("*.dcm"))


def assert_signed_as_typed(rs, uid: str, validate_sr) -> None:
    """The signed SR says SIGNED, byte for byte, signed by PERSON of ORGANIZATION, and is valid."""
    path = rs.root / "review" / "signed" / f"{uid}.dcm"
    dump = validate_sr(path)  # dciodvfy: 0 errors; dsrdump reads it
    sr = pydicom.dcmread(path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert finding_bytes(sr) == SIGNED.encode("utf-8")
    assert CaptionReport.from_dataset(sr).caption == SIGNED
    verifier = sr.VerifyingObserverSequence[0]
    assert str(verifier.VerifyingObserverName) == PERSON and verifier.VerifyingOrganization == ORGANIZATION
    names = [str(i.PersonName) for i in content_items(sr) if i.ValueType == "PNAME"]
    assert names == [PERSON]
    assert "Finding" in dump


def test_the_api_signs_unicode_text_and_the_pacs_gets_exactly_that(station, validate_sr):
    uid = station.rs.ai_uids[0]
    response = station.post(f"/api/reports/{uid}/sign", json={"text": SIGNED}, headers=station.api)
    assert response.status_code == 201 and response.json()["text"] == SIGNED
    assert station.get(f"/api/reports/{uid}", headers=station.api).json()["signatures"][0]["text"] == SIGNED
    assert_signed_as_typed(station.rs, response.json()["uid"], validate_sr)


def test_the_page_signs_unicode_text_and_the_pacs_gets_exactly_that(station, validate_sr):
    uid = station.rs.ai_uids[0]
    page = station.get(f"/reports/{uid}").text
    response = station.post(f"/reports/{uid}/sign", data={"csrf": csrf_of(page), "action": "edited", "text": SIGNED,
                                                          "version": uid}, follow_redirects=False)
    assert response.status_code == 303
    (signature,) = station.rs.store.signatures(uid)
    assert signature.text == SIGNED
    assert_signed_as_typed(station.rs, signature.uid, validate_sr)


def test_the_worklist_shows_the_ai_caption_as_the_model_wrote_it(station):
    items = station.get("/api/worklist", headers=station.api).json()["items"]
    assert ROCO_CAPTION in [i["caption"] for i in items]
    assert ROCO_CAPTION in station.get(f"/reports/{station.rs.ai_uids[0]}").text


def _assert_nothing_signed(rs, uid: str) -> None:
    assert rs.store.item(uid)["state"] == "pending"
    assert rs.store.signatures(uid) == [] and signed_files(rs) == []


@pytest.mark.parametrize("name", CONTROLS)
def test_the_api_refuses_a_control_character_naming_it_and_its_position(station, name):
    char, uid = CONTROLS[name], station.rs.ai_uids[0]
    response = station.post(f"/api/reports/{uid}/sign", json={"text": f"Nodule{char} 8 mm"}, headers=station.api)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "signed text" in detail and "position 7" in detail and f"U+{ord(char):04X}" in detail
    rejected = station.post(f"/api/reports/{uid}/reject", json={"reason": f"wrong{char} side"}, headers=station.api)
    assert rejected.status_code == 422 and "position 6" in rejected.json()["detail"]
    _assert_nothing_signed(station.rs, uid)


@pytest.mark.parametrize("name", CONTROLS)
def test_the_page_refuses_a_control_character_with_a_form_error(station, name):
    char, uid = CONTROLS[name], station.rs.ai_uids[0]
    page = station.get(f"/reports/{uid}").text
    response = station.post(f"/reports/{uid}/sign", data={"csrf": csrf_of(page), "action": "edited",
                                                          "text": f"Nodule{char} 8 mm", "version": uid})
    assert response.status_code == 422 and 'id="message"' in response.text
    assert "position 7" in response.text and f"U+{ord(char):04X}" in response.text
    rejected = station.post(f"/reports/{uid}/reject", data={"csrf": csrf_of(page), "reason": f"wrong{char} side"})
    assert rejected.status_code == 422 and "position 6" in rejected.text
    _assert_nothing_signed(station.rs, uid)


def test_a_rejection_note_keeps_a_unicode_reason(station):
    uid, reason = station.rs.ai_uids[1], "Artefact: ≥ 2 cm shift, naïve reading; 肺結節 not seen"
    response = station.post(f"/api/reports/{uid}/reject", json={"reason": reason}, headers=station.api)
    assert response.status_code == 200
    path = station.rs.root / "review" / "notes" / f"{response.json()['rejection_note_uid']}.dcm"
    assert dciodvfy_errors(path) == []
    ko = pydicom.dcmread(path)
    assert ko.SpecificCharacterSet == "ISO_IR 192"
    texts = {i.ConceptNameCodeSequence[0].CodeValue: str(i.TextValue) for i in content_items(ko)
             if i.ValueType == "TEXT"}
    assert texts == {"113012": reason, "121009": ORGANIZATION}  # Key Object Description, Organization Name
    assert [str(i.PersonName) for i in content_items(ko) if i.ValueType == "PNAME"] == [PERSON]


def test_a_stored_person_name_holding_a_control_character_is_refused_not_signed(station):
    with station.rs.store.db.write() as db:  # as an account made before names were checked may hold
        db.execute("UPDATE review_users SET person_name=? WHERE username='yamada'", ("Yamada\x1b^Tarou",))
    login(station, "yamada")
    uid = station.rs.ai_uids[0]
    page = station.get(f"/reports/{uid}").text
    response = station.post(f"/reports/{uid}/sign", data={"csrf": csrf_of(page), "action": "as-is", "version": uid})
    assert response.status_code == 422 and "person name" in response.text and "U+001B" in response.text
    _assert_nothing_signed(station.rs, uid)


def test_a_model_emitting_roco_text_and_control_characters_through_medblip_caption(
        tiny_model_dir, td, tmp_path, monkeypatch, capsys, validate_sr):
    from medblip_dicom.apps.main import main
    from medblip_dicom.captioner import CaptionGenerator

    emitted = "5 µg{NUL} in the {ESC}left{NEL} lower{LS}lobe; 3 × 4 cm², 45°, naïve; 肺結節".format(**CONTROLS)
    expected = "5 µg in the left lower lobe; 3 × 4 cm², 45°, naïve; 肺結節"
    monkeypatch.setattr(CaptionGenerator, "generate", lambda self, pixels, settings=None: [emitted] * len(pixels))
    out = tmp_path / "srs"
    rc = main(["caption", td("CT_small.dcm"), td("MR_small.dcm"), "--model", str(tiny_model_dir), "--out", str(out),
               "--device", "cpu", "-q"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 2
    for line in lines:
        source, sr_path, caption = line.split("\t")
        assert caption == expected  # what the SR says, never a control character on a terminal
        validate_sr(sr_path)
        sr = pydicom.dcmread(sr_path)
        assert sr.SpecificCharacterSet == "ISO_IR 192" and finding_bytes(sr) == expected.encode("utf-8")


def test_the_secondary_capture_holds_the_caption_as_the_sr_does(td, tmp_path):
    from medblip_dicom.identity import ModelIdentity
    from medblip_dicom.pixels import dataset_to_image
    from medblip_dicom.report import build_report

    from medblip_dicom.secondary_capture import build_secondary_capture

    source = pydicom.dcmread(td("CT_small.dcm"))
    identity = ModelIdentity("tiny-blip", "v1.0", "ab" * 32, "test")
    emitted = f"{ROCO_CAPTION}\x00\x1b; 肺結節"
    sr = build_report(source, emitted, identity)
    built = build_secondary_capture(source, dataset_to_image(source), emitted, sr, identity)
    path = tmp_path / "sc.dcm"
    built.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    sc = pydicom.dcmread(path)
    assert sc.SpecificCharacterSet == "ISO_IR 192"
    assert sc.ImageComments.endswith(f"Caption: {ROCO_CAPTION}; 肺結節")
    assert CaptionReport.from_dataset(sr).caption == f"{ROCO_CAPTION}; 肺結節"


@pytest.mark.parametrize("name", CONTROLS)
def test_an_administrator_typing_a_control_character_into_a_person_name_is_told_where(review_spool, name):
    from medblip_dicom.integrations.review.accounts import AccountError, Accounts

    accounts = Accounts(review_spool(1).store.db)
    with pytest.raises(AccountError) as refused:
        accounts.add_user("carol", f"Doe{CONTROLS[name]}^Carol", PASSWORD)
    assert "position 4" in str(refused.value) and f"U+{ord(CONTROLS[name]):04X}" in str(refused.value)
    assert accounts.user("carol") is None
    assert accounts.add_user("carol", PERSON, PASSWORD).person_name == PERSON  # Unicode names are welcome
