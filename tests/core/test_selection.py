"""Selection on its own: rules, the representative of a series, and a plan for a complete set."""

from __future__ import annotations

import random

import pydicom
import pytest

from medblip_dicom.selection import (
    InstanceFacts, Rule, SelectConfig, SelectionError, config_from_mapping, decide, plan, representative,
)
from tests.support.dicom import ct_series


def facts(uid: str, **kw) -> InstanceFacts:
    return InstanceFacts(sop_instance_uid=uid, series_instance_uid=kw.pop("series", "1.2.3"), **kw)


class TestRepresentative:
    def test_middle_by_position_along_the_normal_whatever_the_instance_numbers(self, td, tmp_path):
        paths = ct_series(td, tmp_path, 7, shuffle=True)
        members = [InstanceFacts.from_dataset(pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
        by_position = sorted(members, key=lambda m: m.slice_position)
        rep = representative(members)
        assert rep is by_position[3]
        numbers = sorted(m.instance_number for m in members)
        assert rep.instance_number != numbers[3]  # the numbers disagree with the positions on purpose

    def test_the_choice_does_not_depend_on_arrival_order(self, td, tmp_path):
        members = [InstanceFacts.from_dataset(pydicom.dcmread(p, stop_before_pixels=True))
                   for p in ct_series(td, tmp_path, 6)]
        rng = random.Random(3)
        chosen = set()
        for _ in range(10):
            rng.shuffle(members)
            chosen.add(representative(members).sop_instance_uid)
        assert len(chosen) == 1

    def test_an_oblique_stack_sorts_along_its_own_normal(self):
        # Rows along x, columns along (0, cos, sin): the normal is (0, -sin, cos); positions step along it.
        import math

        a = math.radians(30)
        orientation = (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))
        normal = (0.0, -math.sin(a), math.cos(a))
        members = [facts(f"1.{i}", position=tuple(k * (10 - i) for k in normal), orientation=orientation,
                         instance_number=i) for i in range(5)]
        assert representative(members).sop_instance_uid == "1.2"
        assert [m.sop_instance_uid for m in sorted(members, key=lambda m: m.slice_position)] == \
            ["1.4", "1.3", "1.2", "1.1", "1.0"]

    def test_without_positions_by_instance_number_then_uid(self):
        members = [facts("1.9", instance_number=1), facts("1.8", instance_number=3), facts("1.7", instance_number=2)]
        assert representative(members).sop_instance_uid == "1.7"
        members.append(facts("1.6"))  # one without a number: by UID for all
        assert representative(members).sop_instance_uid == "1.8"

    def test_one_instance_is_its_own_representative(self):
        only = facts("1.1", frames=40)
        assert representative([only]) is only


class TestRules:
    def test_localizers_and_scouts_are_skipped_by_default(self):
        loc = facts("1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
        d = decide(loc, SelectConfig())
        assert not d.caption and d.kind == "localizer" and "LOCALIZER" in d.reason
        assert decide(facts("2", image_type=("DERIVED", "SECONDARY", "SCOUT")), SelectConfig()).kind == "localizer"
        assert decide(facts("3", image_type=("ORIGINAL", "PRIMARY", "AXIAL")), SelectConfig()).caption

    def test_first_match_wins_and_a_caption_rule_overrides_the_defaults(self):
        config = config_from_mapping({"rule": [
            {"action": "caption", "image_type": ["LOCALIZER"], "modality": ["CT"]},
            {"action": "skip", "modality": ["PR", "KO"], "name": "presentation states"},
        ]})
        assert decide(facts("1", modality="CT", image_type=("LOCALIZER",)), config).caption
        assert not decide(facts("2", modality="MR", image_type=("LOCALIZER",)), config).caption
        skipped = decide(facts("3", modality="KO"), config)
        assert skipped.kind == "rule" and "presentation states" in skipped.reason and "modality PR, KO" in skipped.reason
        assert not config_from_mapping({"defaults": False}).all_rules

    def test_every_criterion_of_a_rule_must_hold(self):
        rule = Rule.from_mapping({"action": "skip", "modality": ["CT"], "series_description": "(?i)scout|topo",
                                  "min_rows": 256}, "test")
        assert rule.matches(facts("1", modality="CT", series_description="Topogram 0.6", rows=512))
        assert not rule.matches(facts("1", modality="CT", series_description="Topogram 0.6", rows=128))
        assert not rule.matches(facts("1", modality="MR", series_description="SCOUT", rows=512))
        assert not rule.matches(facts("1", modality="CT", series_description="Thorax", rows=512))

    def test_sop_classes_by_uid_or_pydicom_keyword_and_an_allow_list(self):
        config = config_from_mapping({"rule": [
            {"action": "caption", "sop_class": ["CTImageStorage", "1.2.840.10008.5.1.4.1.1.1"]},
            {"action": "skip", "name": "everything else"},
        ]})
        assert decide(facts("1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2"), config).caption
        assert decide(facts("2", sop_class_uid="1.2.840.10008.5.1.4.1.1.1"), config).caption
        other = decide(facts("3", sop_class_uid="1.2.840.10008.5.1.4.1.1.4"), config)
        assert not other.caption and "everything else (every instance)" in other.reason

    @pytest.mark.parametrize("table, message", [
        ({"rule": [{"action": "skip", "modality": ["CT"], "modalty": ["MR"]}]}, "#1: unknown key 'modalty'"),
        ({"rule": [{"action": "skip", "series_description": "(unclosed"}]}, "#1 series_description"),
        ({"rule": [{"action": "drop", "modality": ["CT"]}]}, "#1 action"),
        ({"rule": [{"action": "skip", "modality": "CT"}]}, "#1 modality: must be a list"),
        ({"rule": [{"action": "skip", "sop_class": ["NoSuchStorage"]}]}, "#1 sop_class"),
        ({"rule": [{"action": "skip"}, {"action": "skip", "min_rows": 0}]}, "#2 min_rows"),
        ({"per_series": "all"}, "[select] per_series"),
        ({"series_quiet_s": -1}, "[select] series_quiet_s"),
        ({"quiet": 3}, "[select] unknown key 'quiet'"),
    ])
    def test_mistakes_name_the_key(self, table, message):
        with pytest.raises(SelectionError) as info:
            config_from_mapping(table)
        assert message in str(info.value)


class TestPlan:
    def test_one_caption_per_series_in_input_order(self, td, tmp_path):
        ct = [InstanceFacts.from_dataset(pydicom.dcmread(p, stop_before_pixels=True))
              for p in ct_series(td, tmp_path / "ct", 5, shuffle=True)]
        mr = InstanceFacts.from_dataset(pydicom.dcmread(td("MR_small.dcm"), stop_before_pixels=True))
        loc = facts("9.9", series="9", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
        choices = plan([ct[0], mr, *ct[1:], loc], SelectConfig())
        assert [c.facts for c in choices] == [ct[0], mr, *ct[1:], loc]
        captioned = [c for c in choices if c.caption]
        assert {c.facts.sop_instance_uid for c in captioned} == {representative(ct).sop_instance_uid,
                                                                 mr.sop_instance_uid}
        rep_uid = representative(ct).sop_instance_uid
        others = [c for c in choices if c.kind == "not_representative"]
        assert len(others) == 4 and all(rep_uid in c.reason and ct[0].series_instance_uid in c.reason for c in others)
        assert [c.kind for c in choices if c.facts is loc] == ["localizer"]
        assert next(c for c in captioned if c.facts.sop_instance_uid == rep_uid).series_size == 5

    def test_each_keeps_one_caption_per_instance(self, td, tmp_path):
        ct = [InstanceFacts.from_dataset(pydicom.dcmread(p, stop_before_pixels=True))
              for p in ct_series(td, tmp_path, 3)]
        assert all(c.caption for c in plan(ct, SelectConfig(per_series="each")))


class TestCaptionDicoms:
    def test_select_yields_one_outcome_per_source_in_order(self, td, tmp_path, captioner):
        from medblip_dicom import CaptionResult, CaptionSkipped, caption_dicoms

        ct = ct_series(td, tmp_path / "ct", 5, shuffle=True)
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(b"not dicom")
        sources = [str(ct[0]), str(junk), td("MR_small.dcm"), *map(str, ct[1:])]
        outcomes = list(caption_dicoms(sources, model=captioner, select=SelectConfig(), batch_size=2))
        assert [o.source for o in outcomes] == sources
        results = [o for o in outcomes if isinstance(o, CaptionResult)]
        skipped = [o for o in outcomes if isinstance(o, CaptionSkipped)]
        assert len(results) == 2 and len(skipped) == 4 and not outcomes[1].ok  # junk fails, with its reason
        mid = representative([InstanceFacts.from_dataset(pydicom.dcmread(p)) for p in ct]).sop_instance_uid
        assert mid in {r.sop_instance_uid for r in results}
        assert all(s.kind == "not_representative" and mid in s.reason for s in skipped)
        ct_report = next(r for r in results if r.sop_instance_uid == mid)
        assert "5 instances" in note_of(ct_report.sr)

    def test_without_select_every_source_is_captioned(self, td, tmp_path, captioner):
        from medblip_dicom import caption_dicoms

        ct = ct_series(td, tmp_path / "ct", 3)
        assert all(o.ok for o in caption_dicoms(list(map(str, ct)), model=captioner))


def note_of(sr) -> str:
    from medblip_dicom.report_view import CaptionReport

    return CaptionReport.from_dataset(sr).note
