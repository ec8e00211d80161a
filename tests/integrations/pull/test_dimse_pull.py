"""``medblip pull --from dimse://...`` against two real archives, Orthanc and dcmtk's dcmqrscp, each
holding a shuffled CT series, a localizer, a CR and an SR: the middle slice by position and the CR
are captioned, only those two instances are retrieved from the archive that answers position at
IMAGE level (Orthanc), the SRs go back and a rerun adds nothing; C-GET refused -> C-MOVE to the
pull's listener; a move destination the archive does not know -> what to configure; the archive
stopped mid-retrieve -> a report per instance and exit 1, nothing half-written; a hand-off to a
running node; DICOM TLS with a client certificate; doctor's check of the configured archive."""

from __future__ import annotations

import logging
import tempfile
from functools import partial

import pydicom
import pytest
from tests.support.dcmqrscp import Dcmqrscp
from tests.support.env import free_port
from tests.support.pull import archive_study, report_sources
from tests.support.services import write_toml

from medblip_dicom.api import CaptionResult, caption_dicoms
from medblip_dicom.apps.main import main
from medblip_dicom.integrations.config.file import Destination
from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient
from medblip_dicom.integrations.pull.dimse import DimsePuller
from medblip_dicom.integrations.pull.dimse_link import DimseSettings
from medblip_dicom.integrations.pull.dimse_receive import Receiver
from medblip_dicom.selection import SelectConfig


@pytest.fixture
def dcmqrscp_factory(tmp_path):
    """Make dcmqrscp archives (not started); every one is stopped, with its children, in teardown."""
    made: list[Dcmqrscp] = []

    def make(**kwargs) -> Dcmqrscp:
        archive = Dcmqrscp(tmp_path / f"dcmqrscp{len(made)}", **kwargs)
        made.append(archive)
        return archive

    yield make
    for archive in made:
        archive.stop()


@pytest.fixture(autouse=True)
def _session_captioner(monkeypatch, captioner):
    """The command captions with the session's tiny model (short captions): the command's own model
    loading is tested by the DICOMweb pull's tests; here every second goes to the archives."""
    monkeypatch.setattr("medblip_dicom.apps.pull._load", lambda args: captioner)


def _orthanc(orthanc_factory, study, **peer):
    pacs = orthanc_factory(modalities={"MEDBLIP": peer or free_port()})
    pacs.start()
    for path in study.paths:
        pacs.post("/instances", path.read_bytes())
    return pacs


def _pull(tiny_model_dir, source, *args):
    return main(["pull", "--from", source, *args, "--model", str(tiny_model_dir), "--device", "cpu",
                 "--dtype", "float32", "-q"])


def test_both_archives_give_the_reports_a_whole_retrieve_gives_and_orthanc_costs_two_instances(
        tmp_path, td, captioner, orthanc_factory, dcmqrscp_factory):
    study = archive_study(td, tmp_path / "data")
    pacs = _orthanc(orthanc_factory, study)
    qr = dcmqrscp_factory()
    qr.start()
    qr.store(study.paths)
    select = SelectConfig()
    local = {o.sr_sop_instance_uid for o in caption_dicoms(study.paths, model=captioner, select=select)
             if isinstance(o, CaptionResult)}
    assert len(local) == 2
    archives = ((Destination("ORTHANC", "127.0.0.1", pacs.dicom_port), 2, pacs.instances),
                (Destination("QRSCP", "127.0.0.1", qr.port), study.images, qr.instances))
    for archive, retrieved, held in archives:
        caption = partial(caption_dicoms, model=captioner, select=select)
        puller = DimsePuller(archive, DimseSettings(), caption=caption, select=select, store_to=ForwardClient(archive))
        assert puller.find_studies({"AccessionNumber": study.accession}) == [study.study_uid]
        # dcmqrscp does not answer ModalitiesInStudy: the study's series say whether it matches
        assert puller.find_studies({"ModalitiesInStudy": "CR"}) == [study.study_uid]
        assert puller.find_studies({"ModalitiesInStudy": "MR"}) == []
        for _ in range(2):  # the second run is a rerun: it stores the same two reports again
            result = puller.pull(study.study_uid)
            assert (result.found, len(result.retrieved), set(result.captioned)) == (9, retrieved, study.captioned)
            assert result.complete and len(result.stored) == 2 and len(result.skipped) == 7
            srs = held(study.study_uid, "SR")
            assert report_sources(srs) == study.captioned and len(srs) == 3  # theirs and our two
            assert {str(sr.SOPInstanceUID) for sr in srs} - {study.sr.stem} == local
    assert qr.files() == len(study.paths) + 2  # the rerun replaced, it did not add


def test_cli_by_accession_from_orthanc_stores_back_and_writes_out_and_a_rerun_adds_nothing(
        tmp_path, td, tiny_model_dir, orthanc_factory, capsys):
    study = archive_study(td, tmp_path / "data")
    pacs = _orthanc(orthanc_factory, study)
    source, out = f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}", tmp_path / "out"
    for _ in range(2):
        assert _pull(tiny_model_dir, source, "--accession", study.accession, "--out", str(out)) == 0
        captured = capsys.readouterr()
        assert "9 found, 2 retrieved, 2 captioned, 7 skipped, 0 failed, 2 stored" in captured.err
        assert {line.split("\t")[1] for line in captured.out.splitlines()} == study.captioned
        srs = pacs.instances(study.study_uid, "SR")
        assert report_sources(srs) == study.captioned and len(srs) == 3
        assert sorted(p.stem for p in out.glob("*.dcm")) == sorted(str(sr.SOPInstanceUID) for sr in srs
                                                                   if str(sr.SOPInstanceUID) != study.sr.stem)


def test_cget_refused_falls_back_to_cmove_to_the_pulls_own_listener(tmp_path, td, tiny_model_dir, orthanc_factory,
                                                                     capsys, caplog):
    study = archive_study(td, tmp_path / "data")
    port = free_port()
    pacs = _orthanc(orthanc_factory, study, Port=port, AllowGet=False)  # Orthanc aborts a C-GET from us
    caplog.set_level(logging.WARNING, "medblip_dicom")
    assert _pull(tiny_model_dir, f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}", "--study", study.study_uid,
                 "--listen", f"127.0.0.1:{port}", "--no-store", "--out", str(tmp_path / "out")) == 0
    assert "9 found, 2 retrieved, 2 captioned" in capsys.readouterr().err
    assert "refused C-GET" in caplog.text and "retrieving by C-MOVE to MEDBLIP" in caplog.text
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2 and report_sources(
        [pydicom.dcmread(p) for p in (tmp_path / "out").glob("*.dcm")]) == study.captioned


def test_a_move_destination_the_archive_does_not_know_is_a_sentence_saying_what_to_configure(
        tmp_path, td, tiny_model_dir, orthanc_factory, dcmqrscp_factory, capsys):
    study = archive_study(td, tmp_path / "data", slices=3)
    qr = dcmqrscp_factory()  # knows no peer
    qr.start()
    qr.store(study.paths)
    port = free_port()
    assert _pull(tiny_model_dir, f"dimse://QRSCP@127.0.0.1:{qr.port}", "--study", study.study_uid, "--retrieve",
                 "move", "--listen", str(port)) == 1
    err = capsys.readouterr().err
    assert f"does not know the move destination MEDBLIP (0xA801): add MEDBLIP at 127.0.0.1:{port} to its DICOM " \
           "peers (Orthanc: DicomModalities" in err and "Traceback" not in err
    pacs = _orthanc(orthanc_factory, study)  # Orthanc answers an unknown destination with 0xC000
    assert _pull(tiny_model_dir, f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}", "--study", study.study_uid,
                 "--retrieve", "move", "--move-destination", "ELSEWHERE", "--listen", str(port)) == 1
    assert "could not process the C-MOVE to ELSEWHERE (0xC000 unable to process) and sent nothing: check that " \
           f"it knows ELSEWHERE at 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_archive_stopped_mid_retrieve_is_reported_per_instance_with_exit_1_and_nothing_half_written(
        tmp_path, td, tiny_model_dir, dcmqrscp_factory, monkeypatch, capsys):
    study = archive_study(td, tmp_path / "data")
    qr = dcmqrscp_factory()
    qr.start()
    qr.store(study.paths)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    store = Receiver.handle_store
    arrived: list[str] = []

    def then_stop(receiver, event):
        status = store(receiver, event)
        arrived.append(str(event.request.AffectedSOPInstanceUID))
        if len(arrived) == 3:
            qr.stop()  # the archive and the child serving our association: killed
        return status

    monkeypatch.setattr(Receiver, "handle_store", then_stop)
    out = tmp_path / "out"
    assert _pull(tiny_model_dir, f"dimse://QRSCP@127.0.0.1:{qr.port}", "--study", study.study_uid,
                 "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert "stopped answering during the C-GET" in captured.err and "NOT CAPTIONED" in captured.err
    summary = captured.err.strip().splitlines()[-1]
    assert "9 found" in summary and "0 not retrieved" not in summary and "0 stored" in summary
    captioned = {line.split("\t")[1] for line in captured.out.splitlines()}
    assert captioned <= set(arrived) and captioned <= study.captioned  # never a representative of part of a series
    assert report_sources([pydicom.dcmread(p) for p in out.glob("*")]) == captioned  # whole reports only
    assert not list(temp.iterdir())  # the retrieved instances went with their temporary folder


def test_doctor_says_whether_the_configured_dimse_archive_answers_echo_and_find(tmp_path, orthanc_factory, capsys):
    pacs = orthanc_factory(modalities={"MEDBLIP": free_port()})
    pacs.start()
    config = write_toml(tmp_path / "medblip.toml", {"node": {"port": free_port()}, "forward": {
        "destination": f"ORTHANC@127.0.0.1:{pacs.dicom_port}", "calling_ae_title": "MEDBLIP"}})
    main(["doctor", "--config", str(config)])
    text = capsys.readouterr().out
    assert "[dimse]" in text and "answered C-ECHO: 0x0000 success" in text and "answered a Study Root C-FIND" in text
    pacs.stop()
    assert main(["doctor", "--config", str(config)]) == 1
    text = capsys.readouterr().out
    assert "FAIL  archive ORTHANC@127.0.0.1" in text and "cannot be reached" in text and "-> check [forward]" in text


def test_a_move_to_a_running_node_hands_off_only_what_it_will_caption_without_a_model(
        tmp_path, td, orthanc_factory, capsys):
    from medblip_dicom.integrations.pull.dimse_listen import MoveListener

    study = archive_study(td, tmp_path / "data", slices=5)
    node_port = free_port()
    pacs = orthanc_factory(modalities={"MEDBLIP": free_port(), "NODE": node_port})
    pacs.start()
    for path in study.paths:
        pacs.post("/instances", path.read_bytes())
    node = Receiver()  # a stand-in for `medblip node`: a Storage SCP called NODE
    node.expect(sorted(study.captioned), tmp_path)
    with MoveListener(node, "NODE", "127.0.0.1", node_port):
        assert main(["pull", "--from", f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}", "--study", study.study_uid,
                     "--retrieve", "move", "--move-destination", "NODE", "-q"]) == 0
        assert set(node.received(study.captioned)) == study.captioned
    captured = capsys.readouterr()
    assert {line.split("\t")[1] for line in captured.out.splitlines() if line.endswith("moved to NODE")} == \
        study.captioned
    assert "7 found, 0 retrieved, 0 captioned, 5 skipped" in captured.err and "2 moved" in captured.err
    assert pacs.count(study.study_uid, "SR") == 1  # the node stores its reports; the pull stores none


def test_a_pull_over_dicom_tls_with_a_client_certificate_from_the_configuration(tmp_path, td, tool, tiny_model_dir,
                                                                                orthanc_factory, capsys):
    from tests.support.services import make_certificates

    certs = make_certificates(tmp_path / "certs", tool("openssl"))
    study = archive_study(td, tmp_path / "data", slices=3)
    pacs = orthanc_factory(modalities={"MEDBLIP": free_port()}, settings={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(certs["server.pem"]),
        "DicomTlsPrivateKey": str(certs["server.key"]), "DicomTlsTrustedCertificates": str(certs["ca.pem"]),
        "DicomTlsRemoteCertificateRequired": True})  # only TLS, and only with a certificate of our CA
    pacs.start()
    for path in study.paths:
        pacs.post("/instances", path.read_bytes())
    config = write_toml(tmp_path / "medblip.toml", {"forward": {"calling_ae_title": "MEDBLIP", "tls": {
        "ca": str(certs["ca.pem"]), "cert": str(certs["client.pem"]), "key": str(certs["client.key"])}}})
    source = f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}"
    assert _pull(tiny_model_dir, source, "--study", study.study_uid, "--config", str(config)) == 0
    assert "5 found, 2 retrieved, 2 captioned, 3 skipped, 0 failed, 2 stored" in capsys.readouterr().err
    assert report_sources(pacs.instances(study.study_uid, "SR")) == study.captioned  # stored back over TLS too
    assert _pull(tiny_model_dir, source, "--study", study.study_uid) == 1  # without TLS: one sentence
    err = capsys.readouterr().err
    assert f"archive ORTHANC@127.0.0.1:{pacs.dicom_port} aborted the association" in err and "Traceback" not in err


def test_an_instance_the_archive_cannot_send_is_failed_alone_with_its_status(tmp_path, td, captioner,
                                                                             dcmqrscp_factory):
    study = archive_study(td, tmp_path / "data", slices=3)
    qr = dcmqrscp_factory()
    qr.start()
    qr.store(study.paths)
    cr = str(pydicom.dcmread(study.cr, stop_before_pixels=True).SOPInstanceUID)
    for path in qr.storage.iterdir():  # the archive's index still lists the CR; its file is gone
        if path.name != "index.dat" and pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == cr:
            path.unlink()
    select = SelectConfig()
    archive = Destination("QRSCP", "127.0.0.1", qr.port)
    puller = DimsePuller(archive, DimseSettings(), caption=partial(caption_dicoms, model=captioner, select=select),
                         select=select)
    result = puller.pull(study.study_uid)
    assert [uid for uid, _ in result.failed] == [cr] and "not retrieved: 0x" in result.failed[0][1]
    assert set(result.captioned) == study.captioned - {cr} and len(result.retrieved) == study.images - 1
    assert not result.not_retrieved and not result.server_error  # the archive is still there
