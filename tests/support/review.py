"""The review station's test helpers and fixtures: a spool whose AI reports went through delivery into
the review (``review_spool``, ``client``), and logging in through the form.

The AI reports are built by :func:`medblip_dicom.report.build_report` (what the worker writes) for a
fixed model identity, so no model is loaded; delivery (:class:`Delivery` with a :class:`ReviewIntake`)
puts them under review as the running services do. The conftest files that use the fixtures import
them from here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from medblip_dicom.identity import ModelIdentity
from medblip_dicom.report import build_report, write_report

from tests.support.dicom import load_template, reissue

IDENTITY = ModelIdentity("tiny-blip", "v1.0", "ab" * 32, "test")
PASSWORD = "correct horse battery"


@dataclass
class ReviewSpool:
    """A spool with AI reports under review, the store and the app's test client."""

    root: Path
    out: Path
    spool: object
    store: object
    ai_uids: list[str]
    sources: list[Path]

    def close(self) -> None:
        self.store.close()
        self.spool.close()


def report_into_spool(spool, source: Path, caption: str) -> tuple[int, str]:
    """Admit `source`, write its AI report as the worker does and mark the job reported."""
    admission = spool.add_file(source, origin="node", name=source.name)
    job = spool.job(admission.job_id)
    ds = pydicom.dcmread(spool.input_path(job))
    sr = build_report(ds, caption, IDENTITY)
    path = write_report(sr, spool.report_dir(job.id))
    spool.mark_reported(job.id, [path], str(sr.SOPInstanceUID))
    return job.id, str(sr.SOPInstanceUID)


def login(client, username: str = "alice", password: str = PASSWORD):
    """Log in through the form (fetches the login CSRF token first); returns the POST's response."""
    import re

    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"username": username, "password": password, "csrf": token},
                       follow_redirects=False)


def csrf_of(html: str) -> str:
    import re

    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def api_token(client, username: str = "alice") -> dict[str, str]:
    from medblip_dicom.integrations.review.accounts import Accounts

    return {"Authorization": f"Bearer {Accounts(client.rs.store.db).add_token(username)}"}


@pytest.fixture
def review_spool(tmp_path: Path) -> Iterator[Callable[..., ReviewSpool]]:
    """Make a spool with `count` CT / MR AI reports delivered through a review intake."""
    from medblip_dicom.integrations.delivery.loop import Delivery
    from medblip_dicom.integrations.review.accounts import Accounts
    from medblip_dicom.integrations.review.intake import ReviewIntake
    from medblip_dicom.integrations.review.store import ReviewStore
    from medblip_dicom.integrations.spool import Spool

    made: list[ReviewSpool] = []

    def make(count: int = 2, *, hold: bool = False, captions: list[str] | None = None,
             rejection_note: bool = False, forward=None) -> ReviewSpool:
        root, out = tmp_path / f"spool{len(made)}", tmp_path / f"out{len(made)}"
        spool = Spool(root, min_free_bytes=0)
        templates = ["CT_small.dcm", "MR_small.dcm"]
        sources, uids = [], []
        for i in range(count):
            path, _ = reissue(load_template(templates[i % 2]), tmp_path / "sources")
            text = (captions or [])[i] if captions and i < len(captions) else f"ai caption number {i} of the scan"
            _, uid = report_into_spool(spool, path, text)
            sources.append(path)
            uids.append(uid)
        store = ReviewStore(root, organization="Test Hospital", send_rejection_note=rejection_note)
        intake = ReviewIntake(spool, hold_until_signed=hold, store=store)
        Delivery(spool, out_dir=out, forward=forward, review=intake).deliver_all_once()
        accounts = Accounts(store.db, max_failures=3)
        accounts.add_user("alice", "Doe^Alice", PASSWORD)
        accounts.add_user("bob", "Roe^Bob", PASSWORD)
        made.append(ReviewSpool(root, out, spool, store, uids, sources))
        return made[-1]

    yield make
    for rs in made:
        rs.close()


@pytest.fixture
def client(review_spool):
    """A TestClient on a fresh review spool with two AI reports (``client.rs`` is the spool)."""
    from fastapi.testclient import TestClient

    from medblip_dicom.integrations.review.app import create_app

    rs = review_spool(2)
    app = create_app(rs.store, organization="Test Hospital", max_login_failures=3)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.rs = rs
        yield c


