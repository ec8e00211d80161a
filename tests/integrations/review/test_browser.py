"""The whole review path in a real browser (Debian's chromium + chromedriver, selenium).

The AI reports go to the output folder and to Orthanc through the services' delivery; the
review station runs as ``medblip review`` in its own process; a service's delivery loop runs in a
thread meanwhile. In the browser: log in, the worklist, open a report, the image has loaded, edit,
sign. Then the signed SR is in the output folder and in Orthanc, dciodvfy-clean, its predecessor
the AI report. ``MEDBLIP_SCREENSHOT=docs/review-station.png`` also writes the screenshot the review page of the docs shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.support.review import PASSWORD
from tests.support.dicom import validate_sr
from tests.support.browser import browser as support_browser
from tests.support.env import free_port, wait_for
from tests.support.privacy import PATIENT_ID, PATIENT_NAME

def browser(profile: Path):
    return support_browser(profile, what="the browser test")


@pytest.mark.slow
def test_log_in_open_edit_and_sign_in_a_browser_then_the_pacs_has_it(review_spool, orthanc_factory, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from medblip_dicom.integrations.config.file import Destination
    from medblip_dicom.integrations.delivery.loop import Delivery
    from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient

    pacs = orthanc_factory()
    pacs.start()
    forward = ForwardClient(Destination(pacs.aet, "127.0.0.1", pacs.dicom_port), timeout_s=10)
    rs = review_spool(2, forward=forward, captions=["a ct image of the chest", "an mr image of the head"])
    ai_uid, other = rs.ai_uids  # the CT's report, then the MR's
    study = str(pydicom.dcmread(rs.out / f"{ai_uid}.dcm").StudyInstanceUID)
    assert len(pacs.instances(study, "SR")) == 1  # the AI report went out at once (no hold)

    stop = threading.Event()
    delivery = threading.Thread(target=Delivery(rs.spool, out_dir=rs.out, forward=forward).run, args=(stop,),
                                kwargs={"poll_s": 0.2}, daemon=True)
    delivery.start()
    port = free_port()
    log_path = tmp_path / "review.log"
    log = open(log_path, "wb")
    station = subprocess.Popen([sys.executable, "-m", "medblip_dicom", "review", "--spool", str(rs.root),
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    driver = None
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def up() -> bool:
            assert station.poll() is None, log_path.read_text()
            try:
                return opener.open(f"http://127.0.0.1:{port}/login", timeout=5).status == 200
            except OSError:
                return False

        wait_for(up, 60, "the review station")
        driver = browser(tmp_path / "chromium-profile")
        wait = WebDriverWait(driver, 30)
        base = f"http://127.0.0.1:{port}"
        driver.get(base + "/")
        wait.until(ec.presence_of_element_located((By.ID, "login")))  # redirected to /login
        driver.find_element(By.ID, "username").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        wait.until(ec.presence_of_element_located((By.ID, "worklist")))
        assert driver.find_element(By.ID, "count-pending").text == "2"
        assert PATIENT_NAME in driver.page_source  # the reviewer must know the patient
        driver.find_element(By.CSS_SELECTOR, f"a.open-report[href='/reports/{ai_uid}']").click()
        image = wait.until(ec.presence_of_element_located((By.ID, "source-image")))
        loaded = "return arguments[0].complete && arguments[0].naturalWidth"
        wait.until(lambda d: d.execute_script(loaded, image) > 0)
        assert driver.find_element(By.ID, "ai-caption").text == "a ct image of the chest"
        driver.find_element(By.CSS_SELECTOR, "button.window[data-window='lung']").click()  # a CT preset
        wait.until(lambda d: image.get_attribute("src").endswith("?window=lung") and d.execute_script(loaded, image) > 0)
        text = driver.find_element(By.ID, "text")
        text.clear()
        text.send_keys("axial CT image of the chest in lung window, no nodule")
        shot = tmp_path / "review-station.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("MEDBLIP_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["MEDBLIP_SCREENSHOT"])
        driver.find_element(By.ID, "sign-edited").click()
        # on to the next report waiting (the other one)
        wait.until(lambda d: other in d.current_url)
        assert "signed" in driver.find_element(By.ID, "message").text

        (signature,) = rs.store.signatures(ai_uid)
        out = rs.out / f"{signature.uid}.dcm"
        wait_for(out.exists, 30, "the signed SR in the output folder")
        validate_sr(out)
        sr = pydicom.dcmread(out)
        assert sr.VerificationFlag == "VERIFIED" and sr.VerifyingObserverSequence[0].VerifyingObserverName == "Doe^Alice"
        predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == ai_uid
        in_pacs = wait_for(lambda: [ds for ds in pacs.instances(study, "SR") if ds.VerificationFlag == "VERIFIED"],
                           30, "the signed SR in Orthanc")
        assert [str(ds.SOPInstanceUID) for ds in in_pacs] == [signature.uid]
        assert in_pacs[0].ContentSequence  # the whole document, not a stub
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(station.pid, signal.SIGTERM)
        station.wait(timeout=30)
        log.close()
        stop.set()
        delivery.join(10)
    text = log_path.read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text
