"""A running service with ``[review] enabled``: held AI reports, then the signed one delivered by it."""

from __future__ import annotations

import pydicom

from medblip_dicom.integrations.review.signing import Reviewer
from medblip_dicom.integrations.review.store import ReviewStore
from medblip_dicom.integrations.spool import JobState

from tests.support.dicom import reissued, validate_sr
from tests.support.env import wait_for
from tests.support.services import make_config


def test_hold_until_signed_in_a_running_service(tmp_path, td, run_service):
    out = tmp_path / "out"
    config = make_config(tmp_path, output={"dir": str(out)}, review={"enabled": True, "hold_until_signed": True})
    service = run_service(config)
    sources = [reissued(td, name, tmp_path / "in") for name in ("CT_small.dcm", "MR_small.dcm")]
    jobs = [service.spool.add_file(s, origin="test", name=s.name).job_id for s in sources]
    wait_for(lambda: all(service.spool.job(j).state is JobState.SKIPPED for j in jobs), 60,
             "the AI reports held for review")
    assert {service.spool.job(j).error_class for j in jobs} == {"HeldForReview"}
    assert not out.exists() or not list(out.iterdir())  # nothing went out

    store = ReviewStore(config.spool.dir, organization="Test Hospital")  # what `medblip review` opens
    try:
        waiting = store.worklist()
        assert len(waiting) == 2
        for item in waiting:  # the sources are kept although the spool disposed of its inputs
            source, _ = store.item_files(item)
            assert pydicom.dcmread(source).SOPInstanceUID == item["source_uid"]
        signature = store.sign(waiting[0]["ai_uid"], Reviewer("alice", "Doe^Alice", "Test Hospital"), "reviewed")
        path = out / f"{signature.uid}.dcm"
        wait_for(path.exists, 30, "the service's delivery of the signed report")
        validate_sr(path)
        assert [p.name for p in out.iterdir()] == [path.name]
        (job,) = [j for j in service.spool.jobs() if j.origin == "review"]
        wait_for(lambda: service.spool.job(job.id).state is JobState.DELIVERED, 10, "the review job delivered")
    finally:
        store.close()
