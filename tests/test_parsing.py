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
    submitted = [a for t in tasks for a in t["annotations"] if not a["was_cancelled"]]
    assert len(rows) == len(submitted)  # skips are not labels
    first = rows.iloc[0]
    assert first["item_id"] == str(tasks[0]["data"]["item_id"])
    assert first["label"] == submitted[0]["result"][0]["value"]["choices"][0]
    assert first["annotator"] == str(submitted[0]["completed_by"])
    assert first["labeled_at"] == submitted[0]["updated_at"]


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
