"""Label Studio's pure part (tasks/labelstudio.py) and the tasks export writes for it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import schema
from tasks.export import export_batch
from tasks.labelstudio import (
    get_label_config,
    get_latest_update,
    get_shown_columns,
    get_task_key,
    get_tasks_to_push,
    get_users_map,
    get_utc_time,
)
from tasks.params import ExportParams

FIXTURES = Path(__file__).parent / "fixtures" / "labelstudio"


def _batch_and_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    batch = schema.conform(
        pd.DataFrame(
            {
                "item_id": ["5", "1", "9"],
                "split": ["test", "train", "train"],
                "reason": ["test", "active", "relabel"],
                "utility": [0.1, 0.9, 0.2],
                "predicted_label": ["b", "a", "a"],
                "confidence": [0.6, 0.51, 0.7],
            }
        ),
        schema.BATCH,
    )
    rows = pd.DataFrame(
        {
            "item_id": ["1", "5", "9"],
            "width": [1.5, 2.0, np.nan],
            "colour": ["red", "blue", "<b>&"],
            "note": ["x", "y", "z"],
        }
    )
    return batch, rows


def test_the_label_config_shows_the_item_as_a_table_and_offers_each_class_once():
    classes = ["benign", "malignant", 'odd "one" <&>']
    config = get_label_config(classes, params=ExportParams())
    root = ET.fromstring(config)  # well-formed, whatever the class names hold
    table = root.find("Table")
    assert table is not None and table.get("name") == "item" and table.get("value") == "$item"
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "item"
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == classes
    with pytest.raises(ValueError, match="classes is empty"):
        get_label_config([], params=ExportParams())


def test_tasks_carry_item_round_and_the_suggestion_but_none_on_a_second_opinion():
    batch, rows = _batch_and_rows()
    _, _, tasks = export_batch(batch, rows, round_id=7, params=ExportParams())
    by_item = {t["data"]["item_id"]: t for t in tasks}
    assert {get_task_key(t) for t in tasks} == {("1", 7), ("5", 7), ("9", 7)}
    assert by_item["1"]["data"]["item"] == {"width": 1.5, "colour": "red", "note": "x"}
    assert by_item["9"]["data"]["item"]["width"] is None  # JSON has no NaN
    json.dumps(tasks, allow_nan=False)
    prediction = by_item["1"]["predictions"][0]
    assert prediction["model_version"] == "round-0007"
    assert prediction["result"][0]["value"] == {"choices": ["a"]}
    assert "predictions" not in by_item["9"]  # relabel: a blind second opinion


def test_chosen_columns_are_shown_in_their_order_and_unknown_ones_are_refused():
    batch, rows = _batch_and_rows()
    params = ExportParams(labelstudio_columns=("note", "width"))
    _, _, tasks = export_batch(batch, rows, round_id=2, params=params)
    assert list(tasks[0]["data"]["item"]) == ["note", "width"]
    with pytest.raises(ValueError, match=r"\['size'\], which the pool does not have"):
        get_shown_columns(["width"], params=ExportParams(labelstudio_columns=("size",)))


def test_a_text_column_is_shown_as_text_under_its_name_not_in_the_table():
    batch, rows = _batch_and_rows()
    params = ExportParams()
    _, _, tasks = export_batch(batch, rows, round_id=2, params=params, text_columns=("note",))
    by_item = {t["data"]["item_id"]: t for t in tasks}
    assert by_item["1"]["data"]["item"] == {"width": 1.5, "colour": "red"}
    assert by_item["1"]["data"]["text_0"] == "x"
    assert get_shown_columns(["width", "note"], params=params, text_columns=("note",)) == (
        ["width"],
        ["note"],
    )
    config = ET.fromstring(get_label_config(["a", "b"], params=params, text_columns=["note"]))
    text = config.find("Text")
    assert text is not None and text.get("name") == "text_0" and text.get("value") == "$text_0"
    assert [h.get("value") for h in config.findall("Header")] == ["Item $item_id", "note"]
    # the choices still label the item (its table), as the predictions say
    assert config.find("Choices").get("toName") == "item" and config.find("Table") is not None


def test_a_push_sends_only_what_the_project_does_not_hold():
    tasks = [{"data": {"item_id": str(i), "round_id": 3}} for i in range(4)]
    missing = get_tasks_to_push([*tasks, tasks[0]], {("1", 3), ("2", 2)})
    assert [get_task_key(t) for t in missing] == [("0", 3), ("2", 3), ("3", 3)]
    assert get_tasks_to_push(tasks, {get_task_key(t) for t in tasks}) == []
    assert get_task_key({"data": {"item_id": "1"}}) is None  # not a task alloop sent
    with pytest.raises(ValueError, match="no data.item_id"):
        get_tasks_to_push([{"data": {"text": "x"}}], set())


def test_the_latest_update_and_the_users_come_from_real_label_studio_files():
    export = json.loads((FIXTURES / "export.json").read_text())
    times = [a.get("updated_at") or a.get("created_at") for t in export for a in t["annotations"]]
    assert get_latest_update(export) == max(times)
    assert get_latest_update([]) is None
    users = [{"id": 1, "email": "ann@example.org"}, {"id": 2, "email": ""}, {"id": 3}]
    assert get_users_map(users) == {"1": "ann@example.org"}


def test_times_compare_as_times_whatever_their_spelling():
    # Label Studio drops the fraction of a whole second; text order would put it last
    export = [
        {"annotations": [{"updated_at": "2026-11-30T23:01:33.205074Z"}]},
        {"annotations": [{"updated_at": "2026-11-30T23:01:33Z"}, {"created_at": "bad"}]},
        {"annotations": [{"created_at": "2026-11-30T22:01:40+00:00"}]},
    ]
    assert get_latest_update(export) == "2026-11-30T23:01:33.205074Z"
    assert get_utc_time("2026-11-30T23:01:33Z") == "2026-11-30T23:01:33.000000Z"
    assert get_utc_time("2026-12-01T00:01:33+01:00") == "2026-11-30T23:01:33.000000Z"
    assert get_utc_time("2026-11-30 23:01:33") == "2026-11-30T23:01:33.000000Z"  # UTC
    assert get_utc_time("yesterday") is None
