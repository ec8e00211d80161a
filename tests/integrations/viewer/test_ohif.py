"""OHIF, the web viewer, shows the AI report that a ``medblip node`` run delivered to Orthanc.

The node (``[output] pdf`` and ``secondary_capture`` on) receives a CT image by C-STORE, captions
it and forwards the SR, the Encapsulated PDF and the Secondary Capture to Orthanc, which also holds
the image itself. OHIF's prebuilt ``dist/`` (npm ``@ohif/app``, fetched by
``.ci/run``) is served on the same origin as Orthanc's DICOMweb (:class:`tests.support.viewer.ViewerServer`)
and driven by headless Chromium: the study's series list shows the AI report's series (SR, PDF and
Secondary Capture); the PDF, opened as the study's first series, is handed to the browser byte for
byte and its page is drawn (the status banner's colour is on screen); the Secondary Capture,
double-clicked, is drawn with its caption band (the notice's amber text is on screen). OHIF lists
the SR but does not render it: OHIF v3 renders TID 1500 measurement reports only (OHIF issue 4404).

``MEDBLIP_SCREENSHOT=docs/viewer.png`` also writes the screenshots the docs' viewer page shows
(``viewer.png``: the PDF; ``viewer-secondary-capture.png`` beside it).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from medblip_dicom.integrations.spool import JobState
from medblip_dicom.pdf_report import AI_PDF_SERIES_NUMBER, ENCAPSULATED_PDF
from medblip_dicom.report import SERIES_NUMBER as SR_SERIES_NUMBER
from tests.support.dicom import load_template, reissue
from tests.support.browser import browser as support_browser
from tests.support.env import dcmtk_env, free_port, wait_for
from tests.support.services import make_config
from tests.support.viewer import ViewerServer, ohif_version, require_ohif

SC_SERIES_NUMBER = 991
#: The PDF's status banner for an AI report (pdf_report: #b45309) and the Secondary Capture's amber notice.
BANNER, NOTICE = (180, 83, 9), (255, 200, 0)


def browser(profile: Path):
    # OHIF draws images with WebGL; without a GPU that is SwiftShader, which Chromium now wants asked
    # for by name (the page is our own, served from 127.0.0.1).
    return support_browser(profile, what="the viewer test", extra_flags=("--enable-unsafe-swiftshader",),
                           capture_console=True)


def colour_pixels(png: bytes, rect: dict[str, float], colour: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels inside `rect` (CSS pixels of the window) are within `tolerance` of `colour`."""
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    box = (int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["width"]), int(rect["y"] + rect["height"]))
    pixels = np.asarray(shot.crop(box), dtype=np.int16)
    return int((np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=-1).sum())


@pytest.mark.slow
def test_ohif_lists_the_ai_report_and_shows_its_pdf_and_secondary_capture(run_service, orthanc_factory, tool,
                                                                          tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dist = require_ohif()
    dcmsend = tool("dcmsend")
    driver = browser(tmp_path / "profile")  # skips before anything else starts when the browser is missing
    server = None
    try:
        pacs = orthanc_factory(dicomweb=True)
        pacs.start()
        source_path, _ = reissue(load_template("CT_small.dcm"), tmp_path / "in", study_uid=generate_uid())
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        study = str(source.StudyInstanceUID)
        pacs.post("/instances", source_path.read_bytes())  # the image, as the modality stored it

        config = make_config(tmp_path, node={"port": free_port(), "allowed_calling_aets": ["MODALITY"]},
                             forward={"destination": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"},
                             output={"pdf": True, "secondary_capture": True})
        service = run_service(config, node=True)
        sent = subprocess.run([dcmsend, "127.0.0.1", str(config.node.port), "-aec", "MEDBLIP", "-aet", "MODALITY",
                               str(source_path)], capture_output=True, text=True, env=dcmtk_env(), timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        finished = (JobState.DELIVERED, JobState.FAILED, JobState.SKIPPED)
        (job,) = wait_for(lambda: [j for j in service.spool.jobs() if j.state in finished], 120,
                          "the report delivered to Orthanc")
        assert job.state is JobState.DELIVERED, job.reason
        assert [pacs.count(study, m) for m in ("SR", "DOC", "OT")] == [1, 1, 1]
        (sr,) = pacs.instances(study, "SR")
        (doc,) = pacs.instances(study, "DOC")
        assert doc.SOPClassUID == ENCAPSULATED_PDF and doc.PatientID == source.PatientID
        assert doc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID

        server = ViewerServer(dist, pacs.url)
        server.start()
        driver.get(f"{server.url}/app-config.js")  # the origin, to mark OHIF's onboarding tour as seen
        driver.execute_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
        driver.get(f"{server.url}/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={doc.SeriesInstanceUID}")
        wait = WebDriverWait(driver, 90)

        def diagnosis() -> str:
            logs = [f"{e['level']} {e['message'][:300]}" for e in driver.get_log("browser")
                    if e["level"] in ("SEVERE", "WARNING")]
            failed = [r for r in server.requests if r[2] >= 400]
            return f"OHIF {ohif_version(dist)}; browser log: {logs[-10:]}; failed requests: {failed[-10:]}"

        # The series list: the image's series and the AI report's three, with their descriptions.
        def thumbnail(number: int):
            found = driver.find_elements(By.CSS_SELECTOR, f"[data-series='{number}']")
            return found[0] if found else None

        try:
            wait.until(lambda d: all(thumbnail(n) for n in (SR_SERIES_NUMBER, SC_SERIES_NUMBER, AI_PDF_SERIES_NUMBER)))
        except Exception:
            pytest.fail("OHIF did not list the AI report's series: " + diagnosis())
        assert "AI caption PDF" in thumbnail(AI_PDF_SERIES_NUMBER).text
        assert "AI caption" in thumbnail(SR_SERIES_NUMBER).text

        # The PDF: OHIF hands the browser exactly the document the node wrote, and its page is drawn.
        try:
            pdf = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "object[type='application/pdf']"))[0]
        except Exception:
            pytest.fail("OHIF did not open the PDF: " + diagnosis())
        digest = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b))"
            ".then(h => done(Array.from(new Uint8Array(h)).map(x => x.toString(16).padStart(2, '0')).join('')))"
            ".catch(e => done(String(e)));", pdf.get_attribute("data"))
        assert digest == hashlib.sha256(bytes(doc.EncapsulatedDocument)).hexdigest(), digest
        try:
            wait.until(lambda d: colour_pixels(d.get_screenshot_as_png(), pdf.rect, BANNER) > 2000)
        except Exception:
            pytest.fail("the PDF's page was not drawn (no status banner on screen): " + diagnosis())
        shots = {"viewer.png": driver.get_screenshot_as_png()}

        # The Secondary Capture: double-clicked into the viewport, drawn with its caption band.
        ActionChains(driver).double_click(thumbnail(SC_SERIES_NUMBER)).perform()
        try:
            viewport = "[data-viewport-uid] canvas, .cornerstone-canvas"
            canvas = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, viewport))[0]
            wait.until(lambda d: colour_pixels(d.get_screenshot_as_png(), canvas.rect, NOTICE, 40) > 50)
        except Exception:
            pytest.fail("the Secondary Capture was not drawn (no caption notice on screen): " + diagnosis())
        shots["viewer-secondary-capture.png"] = driver.get_screenshot_as_png()

        for name, png in shots.items():
            (tmp_path / name).write_bytes(png)
        target = os.environ.get("MEDBLIP_SCREENSHOT")
        if target:
            for name, png in shots.items():
                Path(target).with_name(name).write_bytes(png)
    finally:
        driver.quit()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
