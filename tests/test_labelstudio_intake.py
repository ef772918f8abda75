"""Label Studio's exports consumed exactly once: each answer known by its annotation id and
update time, skips recorded as skips, annotators named by their email with their id beside it.

The rounds here run the real validate, merge and flag stages (their ``run``, as the flow calls
them) on a small workspace folder, with Label Studio 1.23.2's own export
(``tests/fixtures/labelstudio/export.json``: 12 tasks, 13 annotations by users 1 and 2, two of
them skips).
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import flag, merge, schema, validate
from tasks.catalog import Catalog, RoundInfo
from tasks.context import StageContext
from tasks.params import ValidateParams, load_params
from tasks.parsing import read_label_file
from tasks.validate import get_manifest, read_label_files, validate_labels

EXPORT = json.loads((FIXTURES / "labelstudio" / "export.json").read_text())
ANNOTATIONS = [a for task in EXPORT for a in task["annotations"]]
SKIPS = [a for a in ANNOTATIONS if a["was_cancelled"]]
CLASSES = tuple(str(c) for c in range(10))
ITEMS = [str(1000 + n) for n in range(14)]  # the export's 12 items and two more
PARAMS = load_params({"project": {"classes": list(CLASSES)}, "merge": {"consensus": "majority"}})
STARTED = "2026-12-01T00:00:00Z"  # after every time in the export
ANSWERS = ("label", "relabel", "skip")


@pytest.fixture
def workspace(tmp_path):
    """A workspace folder: a pool of the export's items, the default suite, and every item
    issued in round 1."""
    catalog = Catalog(tmp_path)
    pool = catalog.path("pool")
    pool.mkdir(parents=True)
    pd.DataFrame({"item_id": ITEMS, "x": np.arange(len(ITEMS), dtype=float)}).to_parquet(
        pool / "part-0001.parquet"
    )
    catalog.save("suite", validate.get_default_suite())
    issued = pd.DataFrame({"item_id": ITEMS, "round_id": 1, "split": "train", "reason": "seed"})
    catalog.save("issued", issued.assign(utility=0.0))
    return catalog


def _run_round(catalog: Catalog, round_id: int, files: dict[str, bytes]):
    """Drop ``files`` into incoming and run validate, merge and flag as a round does."""
    for name, content in files.items():
        (catalog.path("incoming") / name).parent.mkdir(parents=True, exist_ok=True)
        (catalog.path("incoming") / name).write_bytes(content)
    ctx = StageContext(catalog, PARAMS, RoundInfo(round_id, STARTED))
    validated = validate.run(ctx.for_stage(validate.STAGE))
    merged = merge.run(ctx.for_stage(merge.STAGE))
    flag.run(ctx.for_stage(flag.STAGE))
    manifest = {e["file"]: e for e in catalog.load("manifest", round_id)}
    return validated, merged, manifest


def _added(catalog: Catalog, round_id: int) -> pd.DataFrame:
    """The answers (label, relabel, skip events) the ledger got in ``round_id``."""
    ledger = catalog.load("ledger")
    return ledger[(ledger["round_id"] == round_id) & ledger["event"].isin(ANSWERS)]


def _export(tasks: list[dict]) -> bytes:
    return json.dumps(tasks, indent=1).encode()


def _changed(annotation_id: int, **fields) -> list[dict]:
    """The export with one annotation as Label Studio has it after an edit."""
    tasks = copy.deepcopy(EXPORT)
    for task in tasks:
        for annotation in task["annotations"]:
            if annotation["id"] == annotation_id:
                annotation.update(fields)
    return tasks


def _choice(label: str) -> list[dict]:
    return [
        {"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}
    ]


# -- the same export, twice ---------------------------------------------------------------------
def test_the_same_export_in_a_later_round_adds_no_event_and_is_counted_as_consumed(
    workspace, caplog
):
    first, merged, manifest = _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    assert (first.rows_read, first.rows_accepted, first.rows_quarantined) == (13, 13, 0)
    assert first.rows_already_consumed == 0
    assert (merged.events_label, merged.events_relabel, merged.events_skip) == (11, 0, 2)
    assert _added(workspace, 2)["source_key"].tolist() == [
        f"labelstudio:{a['id']}" for a in ANNOTATIONS
    ]
    ledger_before = workspace.load("ledger")

    # Label Studio's export is cumulative: the next one holds the same answers (other bytes)
    again = json.dumps(EXPORT, indent=4).encode()
    with caplog.at_level(logging.INFO, logger="tasks.validate"):
        second, merged, manifest = _run_round(workspace, 3, {"export-2.json": again})
    assert manifest["export-2.json"]["rows_read"] == 13
    assert manifest["export-2.json"]["already_consumed"] == 13
    assert manifest["export-2.json"]["accepted"] == manifest["export-2.json"]["quarantined"] == 0
    assert (second.rows_accepted, second.rows_quarantined, second.rows_already_consumed) == (
        0,
        0,
        13,
    )
    assert (merged.events_label, merged.events_relabel, merged.events_skip) == (0, 0, 0)
    assert _added(workspace, 3).empty
    ledger = workspace.load("ledger")
    pd.testing.assert_frame_equal(ledger[ledger["round_id"] < 3], ledger_before)
    assert "export-2.json: 13 of its 13 rows already consumed" in caplog.text

    # the same bytes once more: known as a file already consumed, read no further
    third, _, manifest = _run_round(workspace, 4, {"export-3.json": again})
    assert manifest["export-3.json"]["status"] == "already_consumed"
    assert third.rows_read == 0 and _added(workspace, 4).empty


def test_an_export_with_new_annotations_adds_only_those(workspace):
    _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    tasks = copy.deepcopy(EXPORT)
    new = copy.deepcopy(EXPORT[1])  # a new task, answered by user 2
    new["id"] = 13
    new["data"]["item_id"] = 1012
    new["annotations"][0].update(id=14, completed_by=2, result=_choice("6"))
    new["annotations"][0]["updated_at"] = "2026-11-24T09:00:00.000000Z"
    tasks.append(new)
    validated, merged, manifest = _run_round(workspace, 3, {"export.json": _export(tasks)})
    assert manifest["export.json"]["rows_read"] == 14
    assert (validated.rows_accepted, validated.rows_already_consumed) == (1, 13)
    added = _added(workspace, 3)
    assert added[["event", "item_id", "label", "source_key", "annotator"]].values.tolist() == [
        ["label", "1012", "6", "labelstudio:14", "labelstudio:2"]
    ]
    assert merged.labeled_items == 11  # 10 items answered before, one now; skipped ones none


def test_a_csv_sent_again_with_one_more_row_adds_only_that_row(workspace):
    header = "item_id,label,annotator,labeled_at\n"
    rows = "1000,3,ann,2026-11-20T10:00:00Z\n1001,4,ann,2026-11-20T10:01:00Z\n"
    _run_round(workspace, 2, {"labels.csv": (header + rows).encode()})
    more = header + rows + "1002,5,ann,2026-11-20T10:02:00Z\n"
    validated, merged, manifest = _run_round(workspace, 3, {"labels.csv": more.encode()})
    assert manifest["labels.csv"]["already_consumed"] == 2
    assert (validated.rows_accepted, merged.events_label, merged.events_relabel) == (1, 1, 0)
    # an answer sent again at another time is a new vote, as before: a relabel
    later = header + "1000,3,ann,2026-11-21T10:00:00Z\n"
    _, merged, _ = _run_round(workspace, 4, {"labels.csv": later.encode()})
    assert merged.events_relabel == 1


# -- an answer changed in Label Studio --------------------------------------------------------
def test_an_annotation_updated_after_it_was_consumed_is_one_relabel_of_its_annotator(workspace):
    _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    edited = _changed(2, result=_choice("7"), updated_at="2026-11-25T08:00:00.000000Z")
    validated, merged, _ = _run_round(workspace, 3, {"export.json": _export(edited)})
    assert (validated.rows_accepted, validated.rows_already_consumed) == (1, 12)
    assert (merged.events_label, merged.events_relabel) == (0, 1)
    event = _added(workspace, 3).iloc[0]
    assert (event["event"], event["item_id"], event["label"]) == ("relabel", "1001", "7")
    assert (event["annotator"], event["source_key"]) == ("labelstudio:1", "labelstudio:2")
    current = workspace.load("current").set_index("item_id")
    assert current.loc["1001", "label"] == "7" and current.loc["1001", "n_votes"] == 1
    # an older export dropped after the newer one is not a change back
    validated, merged, _ = _run_round(workspace, 4, {"old.json": json.dumps(EXPORT).encode()})
    assert validated.rows_already_consumed == 13 and _added(workspace, 4).empty


def test_two_versions_of_an_annotation_in_one_round_enter_once_the_latest(workspace):
    edited = _changed(2, result=_choice("7"), updated_at="2026-11-25T08:00:00.000000Z")
    validated, merged, manifest = _run_round(
        workspace, 2, {"a-old.json": _export(EXPORT), "b-new.json": _export(edited)}
    )
    assert validated.rows_quarantined == 0
    assert manifest["a-old.json"]["already_consumed"] == 1  # its version of annotation 2
    assert manifest["b-new.json"]["already_consumed"] == 12  # the rest, read from a-old.json
    assert (merged.events_label, merged.events_relabel, merged.events_skip) == (11, 0, 2)
    assert workspace.load("current").set_index("item_id").loc["1001", "label"] == "7"


# -- skips ------------------------------------------------------------------------------------
def test_a_skip_is_one_skip_event_not_a_vote_and_not_entered_twice(workspace):
    _, merged, _ = _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    skips = _added(workspace, 2).query("event == 'skip'")
    assert sorted(skips["source_key"]) == sorted(f"labelstudio:{a['id']}" for a in SKIPS)
    assert skips["label"].isna().all() and skips["outcome"].eq("accepted").all()
    assert merged.events_skip == 2
    # items 1009 and 1011 were only skipped: no label, no vote, no annotator statistics
    current = workspace.load("current")
    assert not {"1009", "1011"} & set(current["item_id"])
    assert current["n_votes"].sum() == 11
    assert workspace.load("annotators")["n_labels"].sum() == 11
    validated, merged, _ = _run_round(workspace, 3, {"export.json": _export(EXPORT[::-1])})
    assert validated.rows_already_consumed == 13
    assert merged.events_skip == 0 and _added(workspace, 3).empty


def test_a_skip_later_answered_is_a_label(workspace):
    _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    skip = SKIPS[0]
    answered = _changed(
        skip["id"], was_cancelled=False, result=_choice("2"), updated_at="2026-11-26T00:00:00Z"
    )
    _, merged, _ = _run_round(workspace, 3, {"export.json": _export(answered)})
    assert (merged.events_label, merged.events_relabel, merged.events_skip) == (1, 0, 0)
    added = _added(workspace, 3).iloc[0]
    assert (added["event"], added["source_key"]) == ("label", f"labelstudio:{skip['id']}")


def test_a_skip_gets_the_checks_that_apply_to_it_and_never_the_label_checks():
    _, rows = read_label_file(_export(EXPORT))
    result = validate_labels(
        rows.assign(source_file="export.json", source_sha256="h"),
        pool_ids=pd.Series(ITEMS, dtype="string"),
        issued_ids=pd.Series([i for i in ITEMS if i != "1011"], dtype="string"),
        classes=CLASSES,
        as_of=pd.Timestamp(STARTED),
        params=ValidateParams(),
    )
    assert result.quarantined[["item_id", "reason_code"]].values.tolist() == [
        ["1011", "not_issued"]
    ]
    skipped = result.accepted[result.accepted["label"].isna()]
    assert skipped["item_id"].tolist() == ["1009"]


# -- annotators by email ---------------------------------------------------------------------
def test_a_users_map_names_annotators_by_email_with_their_id_beside(workspace):
    workspace.save("labelstudio_users", {"1": "ann@example.org", "2": "bob@example.org"})
    _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    added = _added(workspace, 2)
    pairs = set(zip(added["annotator"], added["annotator_id"], strict=True))
    assert pairs == {("ann@example.org", "labelstudio:1"), ("bob@example.org", "labelstudio:2")}
    assert set(workspace.load("annotators")["annotator"]) == {"ann@example.org", "bob@example.org"}


def test_an_annotator_whose_email_became_known_later_is_the_same_annotator(workspace):
    _run_round(workspace, 2, {"export.json": _export(EXPORT)})  # no users map yet
    assert set(_added(workspace, 2)["annotator"]) == {"labelstudio:1", "labelstudio:2"}
    workspace.save("labelstudio_users", {"1": "ann@example.org"})
    edited = _changed(2, result=_choice("7"), updated_at="2026-11-25T08:00:00.000000Z")
    _, merged, _ = _run_round(workspace, 3, {"export.json": _export(edited)})
    event = _added(workspace, 3).iloc[0]
    assert event["event"] == "relabel"  # the same person, not a second vote
    assert (event["annotator"], event["annotator_id"]) == ("ann@example.org", "labelstudio:1")
    assert workspace.load("current").set_index("item_id").loc["1001", "n_votes"] == 1
    stats = workspace.load("annotators").query("round_id == 3")
    assert set(stats["annotator"]) == {"ann@example.org", "labelstudio:2"}  # the latest name
    assert merged.annotators == 2
    # the ledger keeps each event as it was recorded: round 2's still say labelstudio:1
    assert set(_added(workspace, 2)["annotator"]) == {"labelstudio:1", "labelstudio:2"}


def test_a_users_map_that_is_not_an_object_of_emails_is_refused_naming_the_file():
    assert validate.get_labelstudio_users(None) == {}
    with pytest.raises(ValueError, match="labelstudio/users.json must hold an object"):
        validate.get_labelstudio_users(["ann@example.org"])
    with pytest.raises(ValueError, match=r"users \['2'\] have no email"):
        validate.get_labelstudio_users({"1": "ann@example.org", "2": ""})


# -- workspaces made before ------------------------------------------------------------------
def test_an_old_ledger_without_the_new_columns_is_read_and_appended_to(workspace):
    old_columns = [c for c in schema.LEDGER if c not in schema.ADDED_LATER]
    old = pd.DataFrame(
        {
            "event_id": ["r0001-000001"],
            "round_id": [1],
            "event": ["label"],
            "item_id": ["1013"],
            "label": ["3"],
            "annotator": ["ann"],
            "labeled_at": ["2026-11-01T00:00:00.000000Z"],
            "comment": [None],
            "source_file": ["labels.csv"],
            "source_sha256": ["h"],
            "source_row": [1],
            "outcome": ["accepted"],
            "detail": [""],
        }
    )[old_columns]
    for name in ("ledger", "accepted"):
        workspace.path(name).parent.mkdir(parents=True, exist_ok=True)
    old.to_parquet(workspace.path("ledger"))
    old_accepted = old[[c for c in schema.ACCEPTED if c not in schema.ADDED_LATER]]
    old_accepted.to_parquet(workspace.path("accepted"))
    assert workspace.load("accepted")[["source_key", "annotator_id"]].isna().all().all()
    read = workspace.load("ledger")
    assert list(read.columns) == list(schema.LEDGER)
    assert read[["source_key", "annotator_id"]].isna().all().all()

    _run_round(workspace, 2, {"export.json": _export(EXPORT)})
    ledger = workspace.load("ledger")
    assert len(ledger) > 1
    first = ledger.iloc[:1]
    pd.testing.assert_frame_equal(first[old_columns].reset_index(drop=True), read[old_columns])
    assert first[["source_key", "annotator_id"]].isna().all().all()
    assert ledger["source_key"].iloc[1:].notna().any()


# -- accounting ------------------------------------------------------------------------------
answer = st.fixed_dictionaries(
    {
        "id": st.integers(1, 6),
        "completed_by": st.sampled_from([1, 2]),
        "was_cancelled": st.booleans(),
        "result": st.sampled_from([[], _choice("1"), _choice("2"), _choice("x")]),
        "updated_at": st.sampled_from(
            ["2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z", "oops"]
        ),
    }
)
task = st.fixed_dictionaries(
    {"data": st.fixed_dictionaries({"item_id": st.sampled_from(ITEMS[:4] + ["77"])})}
).flatmap(lambda t: st.lists(answer, max_size=3).map(lambda a: {**t, "annotations": a}))
csv_row = st.tuples(
    st.sampled_from(ITEMS[:3]),
    st.sampled_from(["1", "2"]),
    st.sampled_from(["ann", "bob"]),
    st.sampled_from(["2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(task, max_size=4), min_size=1, max_size=3),
    st.lists(csv_row, max_size=6),
    st.data(),
)
def test_rows_read_are_accepted_plus_quarantined_plus_already_consumed_per_file(
    exports, csv_rows, data
):
    """Whatever the ledger already holds, each file's rows are accepted, quarantined or
    already consumed, exactly once."""
    csv_text = "item_id,label,annotator,labeled_at\n" + "".join(
        ",".join(r) + "\n" for r in csv_rows
    )
    files = {f"e{n}.json": _export(tasks) for n, tasks in enumerate(exports)}
    files["z.csv"] = csv_text.encode()
    intake = read_label_files(files, consumed={}, archive_name="round-0003")
    kwargs = dict(
        pool_ids=pd.Series(ITEMS, dtype="string"),
        issued_ids=pd.Series(ITEMS[:3], dtype="string"),
        classes=CLASSES,
        as_of=pd.Timestamp(STARTED),
        params=ValidateParams(),
    )
    # a ledger holding some of the same answers, as an earlier round recorded them
    earlier = validate_labels(intake.rows, **kwargs).accepted
    kept = data.draw(st.lists(st.booleans(), min_size=len(earlier), max_size=len(earlier)))
    before = earlier[np.asarray(kept, dtype=bool)]
    ledger = schema.number_events(
        before.assign(event=np.where(before["label"].isna(), "skip", "label")), round_id=2
    )
    result = validate_labels(intake.rows, ledger=ledger, **kwargs)
    manifest = get_manifest(intake, result)  # raises when a file's rows do not add up
    for entry in manifest:
        if entry["status"] == "read":
            assert (
                entry["accepted"] + entry["quarantined"] + entry["already_consumed"]
                == entry["rows_read"]
            )
    seen = pd.concat(
        [
            t[["source_file", "source_row"]]
            for t in (result.accepted, result.quarantined, result.already_consumed)
        ]
    )
    assert not seen.duplicated().any() and len(seen) == len(intake.rows)
    assert len(result.already_consumed) >= len(before)  # what the ledger holds never re-enters
