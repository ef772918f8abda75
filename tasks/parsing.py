"""Reading annotators' label files: CSV, JSONL and Label Studio's JSON export.

The format is told by the content, not the file name. Every field is read as text, exactly as
sent; judging it is validate's job. A file that cannot be read at all raises
:class:`LabelFileError` with the parser's message, and validate quarantines it whole.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pandas as pd

#: The fields of a label row, in the plain incoming CSV format.
FIELDS = ("item_id", "label", "annotator", "labeled_at", "comment")
REQUIRED = ("item_id", "label", "annotator", "labeled_at")
# other tools' names for our fields (Label Studio's CSV and JSON_MIN exports among them)
ALIASES = {"labeled_at": ("updated_at", "created_at"), "annotator": ("completed_by",)}


class LabelFileError(ValueError):
    """The file cannot be read as a label file at all."""


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(
            f"not UTF-8 text (byte {exc.start}: {content[exc.start : exc.start + 1]!r})"
        ) from exc


def _text(value: Any) -> str | None:
    """A field as text; None for missing or empty values."""
    if value is None:
        return None
    if isinstance(value, bool | dict | list):
        return json.dumps(value)
    text = str(value)
    if text.startswith("'") and text[1:2] and text[1] in "=+-@\t\r":
        text = text[1:]  # written defused by alloop's own CSV export: read it back as it was
    return text if text.strip() else None


def _rows_from_records(records: list[Any], where: str) -> pd.DataFrame:
    rows = []
    for position, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            rows.append(
                {"source_row": position, "malformed": f"{where} {position} is not an object"}
            )
            continue
        row = {"source_row": position, "malformed": None}
        for name in FIELDS:
            value = record.get(name)
            for alias in ALIASES.get(name, ()):
                if value is None:
                    value = record.get(alias)
            row[name] = _text(value)
        rows.append(row)
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["source_row", *FIELDS, "malformed"])
    return frame.astype({"source_row": "int64", **{c: "string" for c in (*FIELDS, "malformed")}})


def _parse_csv(text: str) -> pd.DataFrame:
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader, None)
        if header is None:
            raise LabelFileError("empty file: no header row")
        names = [h.strip() for h in header]
        columns = {}
        for name in FIELDS:
            for candidate in (name, *ALIASES.get(name, ())):
                if candidate in names:
                    columns[name] = names.index(candidate)
                    break
        missing = [name for name in REQUIRED if name not in columns]
        if missing:
            raise LabelFileError(
                f"CSV header {names[:12]} lacks the columns {missing} "
                f"(expected item_id,label,annotator,labeled_at[,comment])"
            )
        rows = []
        for number, record in enumerate(reader, start=1):
            if not any(cell.strip() for cell in record):
                continue  # blank line: nothing was sent
            row: dict[str, Any] = {"source_row": number, "malformed": None}
            if len(record) != len(names):
                row["malformed"] = f"has {len(record)} fields, the header has {len(names)}"
            for name, index in columns.items():
                row[name] = _text(record[index]) if index < len(record) else None
            rows.append(row)
    except csv.Error as exc:
        raise LabelFileError(f"CSV syntax error: {exc}") from exc
    return _frame(rows)


def _parse_jsonl(text: str) -> pd.DataFrame:
    records: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            records.append(f"line {number}: {exc.msg}")
    frame = _rows_from_records(records, "line")
    bad = [i for i, r in enumerate(records) if isinstance(r, str)]
    frame.loc[bad, "malformed"] = [f"not valid JSON ({records[i]})" for i in bad]
    return frame


def _parse_labelstudio(tasks: list[Any]) -> pd.DataFrame:
    """Label Studio's JSON export: one row per submitted annotation; skips are not labels."""
    rows = []
    position = 0
    for task_no, task in enumerate(tasks, start=1):
        annotations = task.get("annotations") if isinstance(task, dict) else None
        data = task.get("data") if isinstance(task, dict) else None
        item_id = _text(data.get("item_id")) if isinstance(data, dict) else None
        for annotation in annotations or []:
            position += 1
            row: dict[str, Any] = {"source_row": position, "malformed": None, "item_id": item_id}
            if not isinstance(annotation, dict):
                row["malformed"] = f"task {task_no}: an annotation is not an object"
                rows.append(row)
                continue
            if annotation.get("was_cancelled"):
                position -= 1  # a skip: the annotator sent no label
                continue
            choices = [
                choice
                for result in annotation.get("result") or []
                if isinstance(result, dict) and result.get("type") == "choices"
                for choice in (result.get("value") or {}).get("choices") or []
            ]
            if len(choices) > 1:
                row["malformed"] = (
                    f"task {task_no}: {len(choices)} choices {choices} in one annotation"
                )
            row["label"] = _text(choices[0]) if choices else None
            row["annotator"] = _text(annotation.get("completed_by"))
            row["labeled_at"] = _text(annotation.get("updated_at") or annotation.get("created_at"))
            row["comment"] = None
            rows.append(row)
    return _frame(rows)


def _detect(text: str) -> str:
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        return "jsonl"
    return "csv"


def detect_format(content: bytes) -> str:
    """``"json"`` (a list: Label Studio export or records), ``"jsonl"`` or ``"csv"``."""
    return _detect(_decode(content))


def parse_label_file(content: bytes) -> tuple[str, pd.DataFrame]:
    """Parse a label file.

    Returns
    -------
    (str, pd.DataFrame)
        The detected format, and one row per label sent: ``source_row`` (1-based position in
        the file), the text fields of :data:`FIELDS` (None where absent) and ``malformed``
        (None, or why the row cannot be read).

    Raises
    ------
    LabelFileError
        When the file as a whole cannot be read.
    """
    text = _decode(content)
    kind = _detect(text)
    if kind == "csv":
        return kind, _parse_csv(text)
    if kind == "jsonl":
        return kind, _parse_jsonl(text)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"JSON syntax error at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(records, list):
        raise LabelFileError("a JSON file must hold a list of tasks or label records")
    if any(isinstance(r, dict) and "annotations" in r for r in records):
        return "labelstudio", _parse_labelstudio(records)
    return kind, _rows_from_records(records, "record")
