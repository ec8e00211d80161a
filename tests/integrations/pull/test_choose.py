"""What a pull retrieves, decided on query answers: only what will be captioned where the answers
say enough, the series whole where they do not, and never a different choice than selection makes
on the retrieved headers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from medblip_dicom.integrations.pull.choose import Answer, plan_retrieval
from medblip_dicom.selection import InstanceFacts, SelectConfig, plan, series_note

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CT, CR, SR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.88.33"
#: Everything an archive may answer at SERIES and IMAGE level, as keyword -> InstanceFacts field.
KEYS = {"SOPClassUID": "sop_class_uid", "Modality": "modality", "BodyPartExamined": "body_part",
        "SeriesDescription": "series_description", "ImageType": "image_type", "Rows": "rows", "Columns": "columns",
        "ImagePositionPatient": "position", "ImageOrientationPatient": "orientation",
        "InstanceNumber": "instance_number"}


def answer(facts: InstanceFacts, answered=tuple(KEYS)) -> Answer:
    """`facts` as an archive answering only the `answered` keys (and the UIDs) would describe it."""
    ds = Dataset()
    ds.SOPInstanceUID, ds.SeriesInstanceUID = facts.sop_instance_uid, facts.series_instance_uid
    for keyword in answered:
        value = getattr(facts, KEYS[keyword])
        setattr(ds, keyword, list(value) if isinstance(value, tuple) else value if value not in ("",) else None)
    return Answer.from_dataset(ds)


def ct(series: str, n: int, **extra) -> list[InstanceFacts]:
    """A CT series of `n` slices whose InstanceNumbers run against their positions."""
    return [InstanceFacts(f"{series}.{i}", series, modality="CT", sop_class_uid=CT, image_type=("ORIGINAL", "PRIMARY"),
                          rows=512, columns=512, position=(0.0, 0.0, 5.0 * i), orientation=AXIAL,
                          instance_number=n - i, **extra) for i in range(n)]


def test_a_series_the_archive_describes_fully_costs_one_instance_with_the_series_note():
    series = ct("1.1", 9)
    result = plan_retrieval([answer(f) for f in reversed(series)], SelectConfig())
    assert [w.sop_uid for w in result.wanted] == ["1.1.4"]  # the middle by position, not by number
    assert result.wanted[0].note == series_note("1.1", 9) and result.found == 9
    assert len(result.skipped) == 8 and not result.whole_series


def test_an_archive_that_does_not_answer_position_gets_the_series_retrieved_whole():
    series = ct("1.1", 5)
    result = plan_retrieval([answer(f, ("Modality", "SOPClassUID", "InstanceNumber", "ImageType")) for f in series],
                            SelectConfig())
    assert sorted(w.sop_uid for w in result.wanted) == sorted(f.sop_instance_uid for f in series)
    assert result.whole_series == {"1.1"} and all(w.note is None for w in result.wanted)


def test_a_localizer_is_not_retrieved_where_image_type_is_answered_and_is_where_it_is_not():
    scout = InstanceFacts("2.1", "2", modality="CT", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    told = plan_retrieval([answer(scout)], SelectConfig())
    assert not told.wanted and "localizer" in told.skipped[0][1]
    untold = plan_retrieval([answer(scout, ("Modality",))], SelectConfig())
    assert [w.sop_uid for w in untold.wanted] == ["2.1"] and not untold.skipped


def test_an_empty_answer_is_empty_only_where_the_archive_answered_that_key_for_another_instance():
    # A CR has no position; the CT beside it shows the archive answers position, so the CR's empty
    # answer is a fact and its three-image series is reduced by InstanceNumber.
    crs = [InstanceFacts(f"3.{i}", "3", modality="CR", sop_class_uid=CR, instance_number=i) for i in range(3)]
    with_ct = plan_retrieval([answer(f) for f in [*crs, *ct("1.1", 3)]], SelectConfig())
    assert {w.sop_uid for w in with_ct.wanted} == {"3.1", "1.1.1"}
    alone = plan_retrieval([answer(f) for f in crs], SelectConfig())  # nobody has a position: unknown
    assert {w.sop_uid for w in alone.wanted} == {"3.0", "3.1", "3.2"} and alone.whole_series == {"3"}


def test_a_rule_on_a_value_the_archive_does_not_answer_leaves_the_instance_to_the_retrieved_header():
    only_chest = SelectConfig(rules=({"action": "caption", "body_part": ["CHEST"]}, {"action": "skip"}))
    series = ct("1.1", 4, body_part="CHEST")
    unanswered = plan_retrieval([answer(f, tuple(k for k in KEYS if k != "BodyPartExamined")) for f in series],
                                only_chest)
    assert len(unanswered.wanted) == 4 and not unanswered.skipped  # never skipped on a guess
    answered = plan_retrieval([answer(f) for f in series], only_chest)
    assert len(answered.wanted) == 1
    head = plan_retrieval([answer(dataclasses.replace(f, body_part="HEAD")) for f in series], only_chest)
    assert not head.wanted and len(head.skipped) == 4


def test_reports_are_never_retrieved_and_each_retrieves_every_image():
    report = InstanceFacts("9.1", "9", modality="SR", sop_class_uid=SR)
    result = plan_retrieval([answer(f) for f in [report, *ct("1.1", 3)]], SelectConfig(per_series="each"))
    assert sorted(w.sop_uid for w in result.wanted) == ["1.1.0", "1.1.1", "1.1.2"] and result.found == 3


# -- the invariant, over archives that answer any subset of the keys ------------------------------

RULES = [(), ({"action": "skip", "body_part": ["HEAD"]},),
         ({"action": "caption", "body_part": ["CHEST"]}, {"action": "skip"}),
         ({"action": "skip", "min_rows": 300},), ({"action": "caption", "image_type": ["LOCALIZER"]},),
         ({"action": "skip", "series_description": "^scout"}, {"action": "skip", "sop_class": ["CTImageStorage"]})]


@st.composite
def studies(draw, numbered: bool = False):
    facts = []
    for s in range(draw(st.integers(1, 3))):
        modality = draw(st.sampled_from(["CT", "CR"]))
        body, description = draw(st.sampled_from(["CHEST", "HEAD", ""])), draw(st.sampled_from(["", "scout view"]))
        for i in range(draw(st.integers(1, 6))):
            positioned = modality == "CT" and draw(st.booleans() if s == 2 else st.just(True))
            facts.append(InstanceFacts(
                f"{s}.{i}", f"{s}", modality=modality, sop_class_uid=CT if modality == "CT" else CR, body_part=body,
                series_description=description, rows=draw(st.sampled_from([256, 512])), columns=512,
                image_type=("ORIGINAL", "PRIMARY", *draw(st.sampled_from([(), ("LOCALIZER",)]))),
                position=(0.0, 0.0, float(draw(st.integers(0, 4)))) if positioned else None,
                orientation=AXIAL if positioned else None,
                instance_number=draw(st.integers(1, 9) if numbered else st.one_of(st.none(), st.integers(1, 9)))))
    return facts


@settings(max_examples=150, deadline=None)
@given(facts=studies(), answered=st.sets(st.sampled_from(sorted(KEYS))), rules=st.sampled_from(RULES),
       each=st.booleans())
def test_retrieving_the_plan_then_selecting_captions_exactly_what_selecting_everything_captions(
        facts, answered, rules, each):
    config = SelectConfig(rules=rules, per_series="each" if each else "representative")
    expected = {c.facts.sop_instance_uid: c.series_size for c in plan(facts, config) if c.caption}
    result = plan_retrieval([answer(f, tuple(answered)) for f in facts], config)
    by_uid = {f.sop_instance_uid: f for f in facts}
    notes = {w.sop_uid: w.note for w in result.wanted}
    after = {c.facts.sop_instance_uid: c.series_size for c in plan([by_uid[u] for u in notes], config) if c.caption}
    assert set(after) == set(expected)  # the same instances, whatever the archive answered
    for uid, size in after.items():  # and the same series note on each report
        note = notes[uid] or (series_note(by_uid[uid].series_instance_uid, size) if size > 1 else None)
        want = series_note(by_uid[uid].series_instance_uid, expected[uid]) if expected[uid] > 1 else None
        assert note == want
    assert not set(expected) & {uid for uid, _ in result.skipped}


@settings(max_examples=60, deadline=None)
@given(facts=studies(numbered=True), rules=st.sampled_from(RULES), each=st.booleans())
def test_an_archive_that_answers_every_key_costs_one_instance_per_report(facts, rules, each):
    # once the study shows a value of each key somewhere (else an empty answer cannot be told from an
    # unsupported key) and every instance has an InstanceNumber (the choice's fallback where a
    # position is absent)
    assume({k for k, name in KEYS.items() if any(getattr(f, name) not in (None, "", ()) for f in facts)} == set(KEYS))
    config = SelectConfig(rules=rules, per_series="each" if each else "representative")
    expected = {c.facts.sop_instance_uid for c in plan(facts, config) if c.caption}
    result = plan_retrieval([answer(f) for f in facts], config)
    assert {w.sop_uid for w in result.wanted} == expected and not result.whole_series


@pytest.mark.parametrize("answered", [(), ("Modality",)])
def test_an_archive_that_answers_nothing_useful_gets_everything_but_reports_retrieved(answered):
    facts = [*ct("1.1", 3), InstanceFacts("2.1", "2", modality="CR")]
    result = plan_retrieval([answer(f, answered) for f in facts], SelectConfig())
    assert len(result.wanted) == 4 and not result.skipped
