"""Label files as annotators' tools write them."""

from __future__ import annotations

import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.parsing import LabelFileError, parse_label_file

LS = FIXTURES / "labelstudio"


def test_plain_csv():
    kind, rows = parse_label_file(
        b"item_id,label,annotator,labeled_at\n1,a,ann,2026-01-01T00:00:00Z\n\n2,b,bob,x\n"
    )
    assert kind == "csv"
    assert rows["item_id"].tolist() == ["1", "2"]
    assert rows["source_row"].tolist() == [1, 3]


def test_csv_without_required_columns_is_refused_whole():
    with pytest.raises(LabelFileError, match="lacks the columns.*labeled_at"):
        parse_label_file(b"item_id,label,annotator\n1,a,x\n")


def test_ragged_csv_row_is_marked_malformed():
    _, rows = parse_label_file(b"item_id,label,annotator,labeled_at\n1,a,x,t,extra\n")
    assert "5 fields" in rows["malformed"].iloc[0]


def test_label_studio_json_export_fixture():
    content = (LS / "export.json").read_bytes()
    kind, rows = parse_label_file(content)
    assert kind == "labelstudio"
    import json

    tasks = json.loads(content)
    annotations = [a for t in tasks for a in t["annotations"]]
    assert len(rows) == len(annotations)  # a skip is a row too, marked as one, without label
    assert rows["skipped"].tolist() == [a["was_cancelled"] for a in annotations]
    assert rows.loc[rows["skipped"], "label"].isna().all()
    submitted = [a for a in annotations if not a["was_cancelled"]]
    first = rows.iloc[0]
    assert first["item_id"] == str(tasks[0]["data"]["item_id"])
    assert first["label"] == submitted[0]["result"][0]["value"]["choices"][0]
    # Label Studio's own ids: the annotation's and the user's; no email known yet
    assert first["source_key"] == f"labelstudio:{submitted[0]['id']}"
    assert first["annotator_id"] == f"labelstudio:{submitted[0]['completed_by']}"
    assert first["annotator"] == first["annotator_id"]
    assert first["labeled_at"] == submitted[0]["updated_at"]


def test_label_studio_flat_exports_carry_the_same_keys_as_the_json_export():
    _, full = parse_label_file((LS / "export.json").read_bytes())
    answers = full[~full["skipped"]].set_index("source_key")
    for name in ("export.csv", "export_min.json"):  # Label Studio leaves skips out of these
        _, rows = parse_label_file((LS / name).read_bytes())
        got = rows.set_index("source_key")
        assert set(got.index) == set(answers.index), name
        columns = ["item_id", "label", "annotator", "annotator_id", "labeled_at"]
        assert got.loc[answers.index, columns].equals(answers[columns]), name


def test_a_plain_csv_has_no_keys_and_no_skips():
    _, rows = parse_label_file(b"item_id,label,annotator,labeled_at\n1,a,ann,2026-01-01\n")
    assert rows[["source_key", "annotator_id"]].isna().all().all()
    assert not rows["skipped"].any()


@pytest.mark.parametrize("name", ["export.csv", "export_min.json"])
def test_label_studio_csv_and_min_exports(name):
    _, rows = parse_label_file((LS / name).read_bytes())
    assert len(rows) > 0
    assert rows[["item_id", "label", "annotator", "labeled_at"]].notna().all().all()


def test_jsonl_with_a_broken_line():
    kind, rows = parse_label_file(
        b'{"item_id": 1, "label": "a", "annotator": "x", "labeled_at": "t"}\n{oops\n'
    )
    assert kind == "jsonl"
    assert rows["malformed"].isna().tolist() == [True, False]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b'[{"item_id": 1,', b'"just text"'])
def test_unreadable_files_raise(content):
    with pytest.raises(LabelFileError):
        parse_label_file(content)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_either_parse_or_raise_label_file_error(content):
    try:
        _, rows = parse_label_file(content)
    except LabelFileError:
        return
    assert list(rows.columns[:1]) == ["source_row"]
