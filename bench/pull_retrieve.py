"""``medblip pull --from dimse://...``: instances retrieved per series captioned, side by side (a
benchmark, never run as a test).

One study holds one CT series of --slices slices (CT_small re-issued, shuffled positions). Each
contender pulls it with the default selection (one caption per series: the middle slice by
position) and the same tiny model, by C-GET, and must caption the same instance into the same SR:

(a) Orthanc, the series retrieved whole and chosen after (a pull that does not decide on the
    C-FIND answers: they are cut to Modality and SOPClassUID before planning);
(b) Orthanc, as shipped: the choice is made on the IMAGE-level C-FIND answers (position), so one
    instance is retrieved;
(c) dcmtk's dcmqrscp, as shipped: it does not answer position at IMAGE level, so the series is
    retrieved whole.

Prints instances retrieved per series captioned, KiB retrieved and seconds per pull (C-FIND, the
retrieve, captioning, the SR stored back; best of --rounds), and the ratios a/b. Needs Orthanc and
dcmqrscp (Debian packages orthanc, dcmtk). Appends the run to bench/RESULTS.md.

    python bench/pull_retrieve.py               # 100 slices
    python bench/pull_retrieve.py --slices 400
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test archives (tests/support) start Orthanc and dcmqrscp

from benchlib import RESULTS, record  # noqa: E402

from medblip_dicom.api import caption_dicoms  # noqa: E402
from medblip_dicom.captioner import Captioner  # noqa: E402
from medblip_dicom.generation import GenerationSettings  # noqa: E402
from medblip_dicom.integrations.config.file import Destination  # noqa: E402
from medblip_dicom.integrations.delivery.sinks.dicom import ForwardClient  # noqa: E402
from medblip_dicom.integrations.pull.choose import Answer, plan_retrieval  # noqa: E402
from medblip_dicom.integrations.pull.dimse import DimsePuller  # noqa: E402
from medblip_dicom.integrations.pull.dimse_link import DimseSettings  # noqa: E402
from medblip_dicom.selection import SelectConfig  # noqa: E402
from medblip_dicom.training.demo_model import build_blip_model  # noqa: E402


class WholeSeries(DimsePuller):
    """A pull that does not decide on the answers: only Modality and SOPClassUID count as answered."""

    def plan(self, study_uid, series_uid=None):  # noqa: ANN001, ANN201
        answers = [Answer(a.facts, a.answered & {"Modality", "SOPClassUID"})
                   for a in self.finder.find_answers(study_uid, series_uid)]
        return plan_retrieval(answers, self.select)


def pull_once(puller: DimsePuller, study_uid: str) -> tuple[float, int, float, set[str]]:
    """(seconds, instances retrieved, KiB retrieved, SR UIDs) of one pull of the study."""
    sizes: list[int] = []
    store = puller.receiver.handle_store

    def counting(event):  # noqa: ANN001, ANN202
        status = store(event)
        sizes.append(len(event.request.DataSet.getvalue()) if hasattr(event.request.DataSet, "getvalue") else 0)
        return status

    puller.receiver.handle_store = counting  # type: ignore[method-assign]
    started = time.perf_counter()
    result = puller.pull(study_uid)
    seconds = time.perf_counter() - started
    puller.receiver.handle_store = store  # type: ignore[method-assign]
    if not result.complete or len(result.captioned) != 1:
        raise RuntimeError(f"the pull did not caption one instance cleanly: {result.counts()} {result.failed}")
    return seconds, len(result.retrieved), sum(sizes) / 1024, set(result.stored)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()) or not shutil.which("dcmqrscp"):
        print("pull_retrieve: needs Orthanc and dcmqrscp (Debian packages orthanc, dcmtk); skipped")
        return 0
    from pydicom.data import get_testdata_file

    from tests.support.dcmqrscp import Dcmqrscp
    from tests.support.dicom import ct_series
    from tests.support.orthanc import Orthanc

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        folder = Path(tmp)
        files = ct_series(get_testdata_file, folder / "ct", args.slices, shuffle=True)
        import pydicom

        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        captioner = Captioner.load(build_blip_model(folder / "model", size="tiny", seed=0), device="cpu",
                                   dtype="float32", settings=GenerationSettings(num_beams=1, max_new_tokens=8,
                                                                                min_new_tokens=8))
        orthanc = Orthanc(folder / "orthanc", modalities={"MEDBLIP": 1})
        qr = Dcmqrscp(folder / "dcmqrscp")
        orthanc.start()
        qr.start()
        try:
            for path in files:
                orthanc.post("/instances", path.read_bytes())
            qr.store(files)
            select = SelectConfig()
            caption = partial(caption_dicoms, model=captioner, select=select)
            o_dest = Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port)
            q_dest = Destination("QRSCP", "127.0.0.1", qr.port)
            contenders = {
                "a": WholeSeries(o_dest, DimseSettings(), caption=caption, select=select,
                                 store_to=ForwardClient(o_dest)),
                "b": DimsePuller(o_dest, DimseSettings(), caption=caption, select=select,
                                 store_to=ForwardClient(o_dest)),
                "c": DimsePuller(q_dest, DimseSettings(), caption=caption, select=select,
                                 store_to=ForwardClient(q_dest)),
            }
            best: dict[str, tuple[float, int, float, set[str]]] = {}
            for _ in range(args.rounds):
                for name, puller in contenders.items():
                    run = pull_once(puller, study_uid)
                    if name not in best or run[0] < best[name][0]:
                        best[name] = run
        finally:
            orthanc.stop()
            qr.stop()
    same = len({frozenset(run[3]) for run in best.values()}) == 1
    a, b, c = best["a"], best["b"], best["c"]
    table = ["| contender | instances retrieved per series captioned | KiB retrieved | s per pull |",
             "|---|---|---|---|",
             f"| (a) Orthanc, series retrieved whole, chosen after | {a[1]} | {a[2]:.0f} | {a[0]:.2f} |",
             f"| (b) Orthanc, chosen on the C-FIND answers | {b[1]} | {b[2]:.0f} | {b[0]:.2f} |",
             f"| (c) dcmqrscp (no position at IMAGE level), as shipped | {c[1]} | {c[2]:.0f} | {c[0]:.2f} |",
             f"| **a/b** | **{a[1] / b[1]:.0f}x** instances | | **{a[0] / b[0]:.1f}x** time |",
             f"| same SR from every contender | {'yes' if same else 'NO'} | | |"]
    record("Pull: instances retrieved per series captioned",
           f"One CT series of {args.slices} slices (CT_small, 38 KiB each, shuffled), default selection, C-GET "
           f"over loopback, tiny model, SR stored back; best of {args.rounds}.", table, argv, RESULTS)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
