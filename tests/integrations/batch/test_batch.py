"""``medblip batch`` on Ray Data: one row per input, the same outcomes as ``caption_dicoms``, exactly once.

All Ray tests share one local Ray session (2 CPUs, a 200 MB object store, no dashboard, usage
stats off) and one corpus: real images in several studies, a CT series (one caption for the series),
a localizer, and every kind of malformed file of :mod:`tests.support.inputs`.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from medblip_dicom.apps.options import iter_inputs
from medblip_dicom.apps.main import main
from medblip_dicom.report_view import CaptionReport
from tests.support.checks import check_exactly_one_sr_each, check_output_folder, validate_srs
from tests.support.dicom import ct_series, reissued
from tests.support.inputs import _BAD_MAKERS, make_bad_inputs, make_good_files

pytest.importorskip("ray")

GENERATION = ["--num-beams", "2", "--max-new-tokens", "12", "--min-new-tokens", "3"]  # the captioner fixture's


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test here (started once: it takes seconds)."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, td) -> Path:
    root = tmp_path_factory.mktemp("batch-corpus")
    make_good_files(root / "good", 7, studies=2)
    ct_series(td, root / "ct", 5)
    reissued(td, "CT_small.dcm", root / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    make_bad_inputs(root / "bad", len(_BAD_MAKERS), random.Random(15))
    return root


def _batch(corpus: Path | str, out: Path, model: Path, *extra: str) -> int:
    return main(["batch", str(corpus), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--dtype", "float32", "-q", *GENERATION, *extra])


@pytest.fixture(scope="module")
def first_run(ray_session, corpus: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    where = tmp_path_factory.mktemp("batch-run")
    out, results = where / "out", where / "results.parquet"
    rc = _batch(corpus, out, tiny_model_dir, "--results", str(results))
    return rc, out, results, pd.read_parquet(results)


def _expected(corpus: Path, captioner) -> dict[str, tuple[str, str, str, str]]:
    """What ``caption_dicoms`` (with ``medblip caption``'s rule for non-images found in a folder) says."""
    from medblip_dicom.api import CaptionFailure, CaptionSkipped, caption_dicoms
    from medblip_dicom.errors import NotAnImageError
    from medblip_dicom.selection import SelectConfig

    paths = [p for p, _ in iter_inputs([str(corpus)])]
    out = {}
    for path, outcome in zip(paths, caption_dicoms(paths, model=captioner, select=SelectConfig()), strict=True):
        if isinstance(outcome, CaptionSkipped):
            out[path] = ("skipped", _same(outcome.reason), "", "")
        elif isinstance(outcome, CaptionFailure):
            status = "skipped" if isinstance(outcome.error, NotAnImageError) else "failed"
            out[path] = (status, _same(outcome.error.reason), "", "")
        else:
            out[path] = ("captioned", "", outcome.sr_sop_instance_uid, outcome.caption)
    return out


def _outcomes(table: pd.DataFrame) -> dict[str, tuple[str, str, str, str]]:
    return {r.path: (r.status, _same(r.reason), r.sr_sop_instance_uid, r.caption) for r in table.itertuples()}


def _same(reason: str) -> str:
    """A reason without the object addresses some decoder messages carry (``<_io.BytesIO object at 0x..>``)."""
    return re.sub(r" at 0x[0-9a-f]+", " at 0x?", reason)


def test_every_input_has_one_row_with_the_outcome_caption_dicoms_gives(first_run, corpus, captioner, weights_sha256,
                                                                       tool):
    rc, out, _, table = first_run
    inputs = [p for p, _ in iter_inputs([str(corpus)])]
    assert rc == 1  # the malformed files failed
    assert sorted(table["path"]) == sorted(inputs) and len(table) == len(inputs)
    assert _outcomes(table) == _expected(corpus, captioner)
    counts = table["status"].value_counts()
    assert counts["captioned"] >= 5 and counts["skipped"] >= 6 and counts["failed"] >= 5, counts
    assert set(table.loc[table.status == "skipped", "kind"]) >= {"not_representative", "localizer", "not_an_image"}
    assert (table.loc[table.status == "failed", "reason"] != "").all()
    captioned = table[table.status == "captioned"]
    assert (captioned["model_version"] != "").all() and (captioned["caption_s"] > 0).all()
    # SRs exist only for the captioned rows, one each, at the deterministic path, and all are conformant
    by_source = check_output_folder(out)
    check_exactly_one_sr_each(by_source, captioned["sop_instance_uid"], weights_sha256)
    assert sorted(Path(p).name for p in captioned["sr_path"]) == sorted(p.name for p in out.iterdir())
    tool("dciodvfy")
    validate_srs(out.iterdir())
    # the representative's SR says which series it stands for
    ct = captioned[captioned.path.str.contains("/ct/")]
    assert len(ct) == 1 and "5 instances" in CaptionReport.from_file(ct.sr_path.iloc[0]).note


def test_a_rerun_writes_nothing_and_resume_skips_what_the_table_holds(first_run, corpus, tiny_model_dir, tmp_path,
                                                                      td):
    rc, out, results, table = first_run
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    again = tmp_path / "again.csv"
    assert _batch(corpus, out, tiny_model_dir, "--results", str(again)) == 1
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert _outcomes(pd.read_csv(again, dtype=str, keep_default_na=False)) == _outcomes(table)

    # one new file: --resume captions it alone and carries the other rows over as they were
    from pydicom.uid import generate_uid

    new = reissued(td, "MR_small.dcm", corpus / "late", SeriesInstanceUID=generate_uid())
    try:
        resumed = tmp_path / "resumed.parquet"
        assert _batch(corpus, out, tiny_model_dir, "--results", str(resumed), "--resume", str(results)) == 1
        rows = pd.read_parquet(resumed)
        assert len(rows) == len(table) + 1 and rows.path.is_unique
        fresh = rows[rows.path == str(new)]
        assert fresh.status.tolist() == ["captioned"]
        carried = rows[rows.path != str(new)].set_index("path").sort_index()
        pd.testing.assert_frame_equal(carried, table.set_index("path").sort_index())  # timings too: not redone
        assert set(p.name for p in out.iterdir()) == set(before) | {Path(fresh.sr_path.iloc[0]).name}
    finally:
        new.unlink()
        new.parent.rmdir()


def test_a_caption_actor_that_dies_is_restarted_and_the_table_is_complete(first_run, corpus, tiny_model_dir, tmp_path,
                                                                          weights_sha256):
    """The job reads a parquet manifest here, and its caption actor kills its own process once."""
    from medblip_dicom.integrations.batch.job import BatchConfig, run_batch

    _, _, _, table = first_run
    manifest = tmp_path / "files.parquet"
    pd.DataFrame({"path": [p for p, _ in iter_inputs([str(corpus)])]}).to_parquet(manifest)
    from medblip_dicom.apps.batch import _inputs

    marker = tmp_path / "crashed-once"
    config = BatchConfig(model=str(tiny_model_dir), output_dir=tmp_path / "out", device="cpu", dtype="float32",
                         generation={"num_beams": 2, "max_new_tokens": 12, "min_new_tokens": 3}, batch_size=4,
                         crash_once=str(marker))
    run = run_batch(_inputs([str(manifest)]), config)
    assert marker.exists()  # the actor did die once
    assert _outcomes(run.table) == _outcomes(table)
    by_source = check_output_folder(tmp_path / "out")
    check_exactly_one_sr_each(by_source, run.table.loc[run.table.status == "captioned", "sop_instance_uid"],
                              weights_sha256)


# -- without Ray -----------------------------------------------------------------------------------


def test_manifests_in_each_format_and_their_errors(tmp_path):
    from medblip_dicom.integrations.batch.manifest import ManifestError, read_manifest

    pd.DataFrame({"path": ["a.dcm", "/abs/b.dcm", "s3://bucket/c.dcm"], "other": [1, 2, 3]}).to_csv(
        tmp_path / "m.csv", index=False)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"path": p}) for p in ["a.dcm", "/abs/b.dcm"]))
    pd.DataFrame({"path": ["sub/a.dcm"]}).to_parquet(tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.csv") == [str(tmp_path / "a.dcm"), "/abs/b.dcm", "s3://bucket/c.dcm"]
    assert read_manifest(tmp_path / "m.jsonl") == [str(tmp_path / "a.dcm"), "/abs/b.dcm"]
    assert read_manifest(tmp_path / "m.parquet") == [str(tmp_path / "sub" / "a.dcm")]
    pd.DataFrame({"file": ["a.dcm"]}).to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(ManifestError, match="nopath.csv: has no 'path' column"):
        read_manifest(tmp_path / "nopath.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="broken.parquet: cannot be read as parquet"):
        read_manifest(tmp_path / "broken.parquet")


def test_the_results_table_round_trips_and_the_summary_counts(tmp_path):
    from medblip_dicom.integrations.batch.results import COLUMNS, empty_row, skipped_row, summary, table, write_table

    done = dict(empty_row("/a.dcm"), status="captioned", caption="a chest", caption_s=0.5)
    frame = table([done, skipped_row("/b.dcm", "a localizer", "localizer"),
                   dict(empty_row("/c.dcm"), status="failed", kind="NotDicomError", reason="not a DICOM file")])
    assert tuple(frame.columns) == COLUMNS
    for name in ("r.parquet", "r.csv"):
        write_table(frame, tmp_path / name)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r.parquet"), frame)
    assert pd.read_csv(tmp_path / "r.csv", keep_default_na=False)["status"].tolist() == ["captioned", "skipped", "failed"]
    text = summary(frame, 2.0)
    assert text.startswith("3 files: 1 captioned, 1 skipped, 1 failed; 1 images in 2.0 s, 0.50 images/s")
    assert "skipped   localizer: 1" in text and "failed    NotDicomError: 1" in text
    with pytest.raises(ValueError, match="parquet or .csv"):
        write_table(frame, tmp_path / "r.xlsx")


def test_usage_errors_exit_2_before_ray_starts(tmp_path, tiny_model_dir, capsys):
    import ray

    started = ray.is_initialized()
    (tmp_path / "x.dcm").write_bytes(b"not read: the command stops before")
    assert main(["batch", str(tmp_path), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot be loaded" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "missing"), "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["batch", str(tmp_path), "--model", str(tiny_model_dir), "--out", str(tmp_path),
                 "--results", str(tmp_path / "r.xlsx")]) == 2
    (tmp_path / "bad.csv").write_text("file\nx\n")
    assert main(["batch", str(tmp_path / "bad.csv"), "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 2
    assert "has no 'path' column" in capsys.readouterr().err
    assert ray.is_initialized() == started
