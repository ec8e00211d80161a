"""The settle tracker on its own: no watcher, no model, a clock and files the test controls."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medblip_dicom.integrations.ingest.settle import SettleTracker


def test_a_file_is_taken_only_after_it_stayed_unchanged_for_settle_s(tmp_path: Path):
    f = tmp_path / "a.dcm"
    f.write_bytes(b"x" * 10)
    tracker = SettleTracker(2.0)
    tracker.notice(f, now=100.0)
    assert tracker.settled(100.0) == []  # first look: size and mtime recorded, clock starts
    assert tracker.settled(101.9) == []
    assert tracker.settled(102.0) == [f]
    assert f in tracker  # taking it is the caller's job


def test_growth_restarts_the_clock(tmp_path: Path):
    f = tmp_path / "growing.dcm"
    f.write_bytes(b"x")
    tracker = SettleTracker(1.0)
    tracker.notice(f, now=0.0)
    tracker.settled(0.0)
    with f.open("ab") as fh:  # a copy still in progress
        fh.write(b"more")
    assert tracker.settled(0.9) == []
    assert tracker.settled(1.5) == []  # unchanged since 0.9 only
    assert tracker.settled(2.0) == [f]


def test_an_mtime_change_at_the_same_size_restarts_the_clock(tmp_path: Path):
    f = tmp_path / "rewritten.dcm"
    f.write_bytes(b"abcd")
    tracker = SettleTracker(1.0)
    tracker.notice(f, now=0.0)
    tracker.settled(0.0)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert tracker.settled(1.0) == []
    assert tracker.settled(2.0) == [f]


def test_notice_restarts_and_vanished_or_non_regular_paths_are_forgotten(tmp_path: Path):
    f, d = tmp_path / "f.dcm", tmp_path / "folder"
    f.write_bytes(b"1")
    d.mkdir()
    tracker = SettleTracker(0.5)
    for p in (f, d, tmp_path / "never-existed"):
        tracker.notice(p, now=0.0)
    assert tracker.settled(0.0) == []
    assert tracker.paths() == {f}
    tracker.notice(f, now=0.4)  # the observer saw it change again
    tracker.settled(0.4)
    assert tracker.settled(0.8) == []
    assert tracker.settled(0.9) == [f]
    f.unlink()
    assert tracker.settled(1.0) == [] and len(tracker) == 0


def test_a_stat_error_keeps_the_path_without_taking_it(tmp_path: Path):
    calls = []

    def flaky_stat(path: Path) -> os.stat_result:
        calls.append(path)
        if len(calls) <= 2:
            raise PermissionError("share went away")
        return os.stat_result((stat.S_IFREG | 0o644, 1, 1, 1, 0, 0, 7, 0, 0, 0))

    tracker = SettleTracker(0.0, stat=flaky_stat)
    p = tmp_path / "on-a-share.dcm"
    tracker.notice(p, now=0.0)
    assert tracker.settled(0.0) == [] and tracker.settled(1.0) == [] and p in tracker
    assert tracker.settled(2.0) == []  # first good stat records size and mtime
    assert tracker.settled(2.0) == [p]


def test_settle_s_must_not_be_negative():
    with pytest.raises(ValueError, match="settle_s"):
        SettleTracker(-1)


def test_with_close_events_an_open_file_waits_however_long_its_writer_pauses(tmp_path: Path):
    f = tmp_path / "slow.dcm"
    f.write_bytes(b"half")
    tracker = SettleTracker(2.0)
    tracker.notice(f, now=0.0)
    tracker.opened(f, now=0.0)
    tracker.settled(0.0)
    assert tracker.settled(100.0) == []  # unchanged for far longer than settle_s, but still open
    tracker.opened(f, now=100.0)  # a reader (a virus scanner) comes and goes meanwhile
    tracker.closed(f, now=101.0, wrote=False)
    assert tracker.settled(101.0) == []
    tracker.closed(f, now=102.0, wrote=True)  # the writer is done
    assert tracker.settled(102.0) == [f]  # at once, no settle wait


def test_a_reader_closing_lets_the_settle_clock_decide(tmp_path: Path):
    f = tmp_path / "read.dcm"
    f.write_bytes(b"complete")
    tracker = SettleTracker(1.0)
    tracker.notice(f, now=0.0)
    tracker.opened(f, now=0.0)
    tracker.settled(0.0)
    tracker.closed(f, now=5.0, wrote=False)
    assert tracker.settled(5.0) == [f]  # unchanged since 0.0 and nobody holds it


def test_a_change_after_the_close_needs_a_new_close_or_the_settle_clock(tmp_path: Path):
    f = tmp_path / "again.dcm"
    f.write_bytes(b"v1")
    tracker = SettleTracker(1.0)
    tracker.closed(f, now=0.0, wrote=True)  # a writer that opened before anyone watched
    tracker.notice(f, now=0.1)  # ... and something changed it after
    assert tracker.settled(0.1) == []
    assert tracker.settled(1.2) == [f]


def test_lost_events_fall_back_to_the_settle_clock(tmp_path: Path):
    f = tmp_path / "lost.dcm"
    f.write_bytes(b"x")
    tracker = SettleTracker(1.0)
    tracker.opened(f, now=0.0)  # its close event may be among those lost
    tracker.events_lost(now=10.0)
    assert tracker.settled(10.0) == []
    assert tracker.settled(11.0) == [f]


def test_links_and_fifos_are_reported_at_once_and_never_followed(tmp_path: Path):
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    (target_dir / "secret").write_bytes(b"s")
    link, dir_link, fifo = tmp_path / "x.dcm", tmp_path / "ward", tmp_path / "pipe.dcm"
    link.symlink_to(target_dir / "secret")
    dir_link.symlink_to(target_dir)
    os.mkfifo(fifo)
    tracker = SettleTracker(60.0)
    for p in (link, dir_link, fifo):
        tracker.notice(p, now=0.0)
    assert sorted(tracker.settled(0.0)) == sorted([link, dir_link, fifo])  # for the watcher to refuse


def test_a_file_replaced_under_the_same_name_restarts_the_clock(tmp_path: Path):
    f, other = tmp_path / "f.dcm", tmp_path / "f.dcm.new"
    f.write_bytes(b"same")
    tracker = SettleTracker(1.0)
    tracker.notice(f, now=0.0)
    tracker.settled(0.0)
    other.write_bytes(b"same")
    os.utime(other, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))  # same size and mtime, new inode
    os.replace(other, f)
    assert tracker.settled(1.0) == []
    assert tracker.settled(2.0) == [f]
