"""The DICOM node with real peers: dcmtk sends, Orthanc receives the reports."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless

from tests.support.dicom import reissued
from tests.support.env import free_port, run_tool, wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME, assert_no_patient_data
from tests.support.services import make_certificates, make_config

from medblip_dicom.integrations.spool import JobState


def node_config(tmp_path: Path, **sections):
    node = {"ae_title": "MEDBLIP", "port": free_port()}
    node.update(sections.pop("node", {}))
    return make_config(tmp_path, node=node, **sections)


def test_mixed_study_via_dcmsend_gets_one_sr_per_image_in_orthanc(
        tmp_path, tool, mixed_study, orthanc_factory, run_service, caplog, validate_sr):
    caplog.set_level(logging.DEBUG, logger="medblip_dicom")
    dcmsend = tool("dcmsend")
    study_uid, files = mixed_study
    config = node_config(tmp_path)
    pacs = orthanc_factory(modalities={"MEDBLIP": config.node.port})
    pacs.start()
    config = node_config(tmp_path, node={"port": config.node.port},
                         forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"})
    service = run_service(config, node=True)

    proc = run_tool([dcmsend, "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP", "-aet", "MODALITY",
                     *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    wait_for(lambda: pacs.count(study_uid, "SR") >= len(files), 90, "one SR per image in Orthanc")
    srs = pacs.instances(study_uid, "SR")
    assert len(srs) == len(files)
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    referenced = set()
    for sr in srs:
        assert sr.StudyInstanceUID == study_uid
        assert sr.PatientID == PATIENT_ID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        referenced.add(str(evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
    assert referenced == sources  # one report per image, each on its own source

    # Orthanc confirms each store before the journal records it: wait for the journal too.
    wait_for(lambda: service.spool.count(JobState.DELIVERED) == len(files), 30, "the journal to say delivered")
    jobs = service.spool.jobs()
    assert len(jobs) == len(files)
    # The JPEG 2000 file arrived compressed: the node accepts the syntaxes the decoders handle.
    assert any(j.transfer_syntax_uid == JPEG2000Lossless for j in jobs)
    for i, sr in enumerate(srs[:2]):
        path = tmp_path / f"sr{i}.dcm"
        sr.save_as(path)
        validate_sr(path)
    assert_no_patient_data(caplog.text)


def test_duplicate_send_gives_one_sr(tmp_path, tool, td, run_service):
    dcmsend = tool("dcmsend")
    out = tmp_path / "out"
    config = node_config(tmp_path, output={"dir": str(out)})
    service = run_service(config, node=True)
    ct = td("CT_small.dcm")
    for _ in range(2):
        proc = run_tool([dcmsend, "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP", ct])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: service.spool.summary().queue_depth == 0 and len(service.spool.jobs()) == 2, 30,
             "both sends to be handled")
    states = [j.state for j in service.spool.jobs()]
    assert sorted(s.value for s in states) == ["delivered", "skipped"]
    skipped = service.spool.jobs(JobState.SKIPPED)[0]
    assert skipped.reason.startswith("duplicate of job")
    assert len(list(out.glob("*.dcm"))) == 1


def test_full_spool_answers_out_of_resources(tmp_path, td):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage

    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    ct, mr = td("CT_small.dcm"), td("MR_small.dcm")
    limit = os.path.getsize(ct) + 1000  # room for the CT, not for the MR after it
    config = node_config(tmp_path)
    with Spool(tmp_path / "spool", max_bytes=limit, min_free_bytes=0) as spool:
        node = StorageNode(spool, config.node)
        node.start()
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage)
            ae.add_requested_context(MRImageStorage)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            assert assoc.is_established
            first = assoc.send_c_store(pydicom.dcmread(ct))
            second = assoc.send_c_store(pydicom.dcmread(mr))
            assoc.release()
        finally:
            node.stop()
        assert first.Status == 0x0000
        assert second.Status == 0xA700
        assert "spool full" in second.ErrorComment
        assert [j.sop_instance_uid for j in spool.jobs()] == [str(pydicom.dcmread(ct).SOPInstanceUID)]
        assert list((tmp_path / "spool" / "tmp").iterdir()) == []  # nothing half-written left


def test_undecodable_data_set_is_refused_with_cannot_understand(tmp_path, td):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    # A valid file meta header and UIDs, then an element with the invalid VR "ZZ".
    good = pydicom.dcmread(td("CT_small.dcm"))
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = good.SOPClassUID
    meta.MediaStorageSOPInstanceUID = good.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    header = pydicom.Dataset()
    header.file_meta = meta
    header.SOPClassUID = good.SOPClassUID
    header.SOPInstanceUID = good.SOPInstanceUID
    path = tmp_path / "bad.dcm"
    header.save_as(path, enforce_file_format=True)
    with open(path, "ab") as fh:
        fh.write(b"\x10\x00\x10\x00ZZ\x04\x00abcd")

    config = node_config(tmp_path)
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, config.node)
        node.start()
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            status = assoc.send_c_store(path)  # sent as it is, without decoding
            good_status = assoc.send_c_store(good)
            assoc.release()
        finally:
            node.stop()
        assert status.Status == 0xC210
        assert good_status.Status == 0x0000  # the association goes on
        assert len(spool.jobs()) == 1  # only the good one


def test_calling_ae_not_on_the_allow_list_is_rejected(tmp_path, tool, td):
    echoscu, storescu = tool("echoscu"), tool("storescu")
    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    config = node_config(tmp_path, node={"allowed_calling_aets": ["CT01", "PACS"]})
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, config.node)
        node.start()
        try:
            port = str(node.port)
            allowed = run_tool([echoscu, "-aet", "CT01", "-aec", "MEDBLIP", "127.0.0.1", port])
            refused = run_tool([echoscu, "-aet", "INTRUDER", "-aec", "MEDBLIP", "127.0.0.1", port])
            store = run_tool([storescu, "-aet", "INTRUDER", "-aec", "MEDBLIP", "127.0.0.1", port,
                              td("CT_small.dcm")])
        finally:
            node.stop()
        assert allowed.returncode == 0, allowed.stderr
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        assert store.returncode != 0
        assert spool.jobs() == []


def test_tls_association_works_and_plain_is_refused(tmp_path, tool, td):
    echoscu, storescu, openssl = tool("echoscu"), tool("storescu"), tool("openssl")
    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    certs = make_certificates(tmp_path / "certs", openssl)
    config = node_config(tmp_path, node={"tls": {"cert": str(certs["server.pem"]), "key": str(certs["server.key"]),
                                                 "client_ca": str(certs["ca.pem"])}})
    tls_client = ["+tls", str(certs["client.key"]), str(certs["client.pem"]), "+cf", str(certs["ca.pem"])]
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, config.node)
        node.start()
        try:
            port = str(node.port)
            echo = run_tool([echoscu, *tls_client, "-aec", "MEDBLIP", "127.0.0.1", port])
            store = run_tool([storescu, *tls_client, "-aec", "MEDBLIP", "127.0.0.1", port, td("CT_small.dcm")])
            plain = run_tool([echoscu, "-aec", "MEDBLIP", "127.0.0.1", port], timeout_s=60)
            plain_store = run_tool([storescu, "-aec", "MEDBLIP", "127.0.0.1", port, td("MR_small.dcm")])
            no_client_cert = run_tool([echoscu, "+tla", "+cf", str(certs["ca.pem"]), "-aec", "MEDBLIP",
                                       "127.0.0.1", port])
        finally:
            node.stop()
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert store.returncode == 0, store.stdout + store.stderr
        assert plain.returncode != 0
        assert plain_store.returncode != 0
        assert no_client_cert.returncode != 0  # client certificates are required with client_ca
        assert [j.sop_instance_uid for j in spool.jobs()] == [str(pydicom.dcmread(td("CT_small.dcm")).SOPInstanceUID)]


def test_node_command_runs_until_sigterm(tmp_path, tool, td, tiny_model_dir):
    """`medblip node` as an operator starts it: a process that serves, captions, and stops on SIGTERM."""
    echoscu, dcmsend = tool("echoscu"), tool("dcmsend")
    out, spool, port = tmp_path / "out", tmp_path / "spool", free_port()
    source = reissued(td, "CT_small.dcm", tmp_path / "in", PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    log = open(tmp_path / "node.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medblip_dicom", "node", "--ae-title", "MEDBLIP", "--port", str(port),
         "--model", str(tiny_model_dir), "--out", str(out), "--spool", str(spool), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    log.close()
    try:
        wait_for(lambda: proc.poll() is not None or run_tool([echoscu, "-aec", "MEDBLIP", "127.0.0.1",
                                                              str(port)]).returncode == 0,
                 120, "the node to answer C-ECHO")
        assert proc.poll() is None, (tmp_path / "node.log").read_text()
        sent = run_tool([dcmsend, "127.0.0.1", str(port), "-aec", "MEDBLIP", str(source)])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: list(out.glob("*.dcm")), 60, "the SR in the output folder")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = (tmp_path / "node.log").read_text()
    assert "listening on 127.0.0.1:" in text  # loopback unless told otherwise
    assert "delivered SR" in text
    assert_no_patient_data(text)
    status = subprocess.run([sys.executable, "-m", "medblip_dicom", "status", "--spool", str(spool)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0
    assert "delivered 1" in status.stdout and "queue depth    0" in status.stdout


def test_maximum_associations_is_enforced(tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from medblip_dicom.integrations.ingest.node import StorageNode
    from medblip_dicom.integrations.spool import Spool

    config = node_config(tmp_path, node={"max_associations": 1, "max_pdu": 65536})
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, config.node)
        node.start()
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(Verification)
            first = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            second = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            try:
                assert first.is_established
                assert first.acceptor.maximum_length == 65536  # the configured PDU size
                assert second.is_rejected
            finally:
                for assoc in (first, second):
                    if assoc.is_established:
                        assoc.release()

            def slot_free() -> bool:  # the first association's thread ends shortly after release
                assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
                established = assoc.is_established
                if established:
                    assoc.release()
                return established

            wait_for(slot_free, 10, "the slot to be free again")
        finally:
            node.stop()


def test_associations_poll_their_reactor_at_the_node_setting(tmp_path):
    """Each accepted association's DUL reactor polls every DUL_POLL_S (pynetdicom's default: 1 ms)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from medblip_dicom.integrations.ingest.node import DUL_POLL_S, StorageNode
    from medblip_dicom.integrations.spool import Spool

    assert DUL_POLL_S < 0.001
    with Spool(tmp_path / "spool", min_free_bytes=0) as spool:
        node = StorageNode(spool, node_config(tmp_path).node)
        node.start()
        try:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDBLIP")
            try:
                assert assoc.is_established
                assert assoc.send_c_echo().Status == 0x0000
                accepted = wait_for(lambda: node._server.active_associations, 10, "the accepted association")
                assert [a.dul._run_loop_delay for a in accepted] == [DUL_POLL_S]
            finally:
                assoc.release()
        finally:
            node.stop()
