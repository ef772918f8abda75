"""Reading annotators' label files as their tools and spreadsheets write them.

The format is told by the content, never by the file name:

- **CSV** separated by ``,`` (the default), ``;``, tab or ``|``: the separator is the one under
  which the header names the most of our columns (Excel's ``sep=;`` first line is honoured).
  Header names are matched ignoring case, surrounding space, and space or ``-`` for ``_``
  (``Item ID`` is ``item_id``).
- **JSONL**, a **JSON** list of records, or **Label Studio**'s JSON export.
- **.xlsx** workbooks (a zip holding ``xl/workbook.xml``): the first worksheet, its first
  non-empty row as the header, every cell as the text the annotator sees (``TRUE``, ``17``,
  ``0.5``; a date cell as ISO 8601 text).

Text is UTF-8 (with or without a byte-order mark), UTF-16 (with a byte-order mark, or without
one when the header shows it), or, when the bytes are not UTF-8, cp1252 — the Windows code
page Excel writes, which agrees with Latin-1 on every letter and reads bytes 0x80-0x9F as ``€``,
curly quotes and dashes where Latin-1 has invisible control codes — or Latin-1 when a byte is
undefined in cp1252. :func:`read_label_file` reports what it used (:class:`FileFormat`), so the
manifest can record it.

Label Studio's answers carry their own ids: each parsed row of its JSON export (and of its
JSON_MIN and CSV exports, which have ``annotation_id`` and ``annotator`` columns) has
``source_key`` = ``labelstudio:<annotation id>`` and ``annotator_id`` = ``labelstudio:<user id>``
(``annotator`` is that id too until validate knows the user's email); a skipped task
(``was_cancelled``) is a row with ``skipped`` true and no label. Other formats leave these empty.
An answer of several choices (Label Studio's multi-choice), like a JSONL list, is a label set:
its label is the JSON list, which validate reads as a set (``project.task: multilabel``) or
refuses, naming the labels, as one class.

Every field is read as text, exactly as sent; judging it is validate's job, helped by the pure
:func:`parse_label_times` (the accepted date forms) and :func:`match_classes` (class names
ignoring case). A file that cannot be read at all raises :class:`LabelFileError` with a
sentence naming the cause, and validate quarantines it whole.
"""

from __future__ import annotations

import calendar
import codecs
import csv
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

#: The fields of a label row, in the plain incoming CSV format.
FIELDS = ("item_id", "label", "annotator", "labeled_at", "comment")
REQUIRED = ("item_id", "label", "annotator", "labeled_at")
# other tools' names for our fields (Label Studio's CSV and JSON_MIN exports among them)
ALIASES = {"labeled_at": ("updated_at", "created_at"), "annotator": ("completed_by",)}
#: Columns a parsed row has besides :data:`FIELDS`: the tool's id of the answer and of the
#: annotator (Label Studio's; empty for other formats), and whether the row is a skip.
KEY_FIELDS = ("source_key", "annotator_id")
SKIPPED = "skipped"
LABELSTUDIO = "labelstudio"
# Label Studio's flat exports (JSON_MIN, CSV) are told by these columns, named exactly
_LABELSTUDIO_FLAT = ("annotation_id", "annotator", "id")
#: CSV separators told from the header, in order of preference on a tie.
SEPARATORS = (",", ";", "\t", "|")
#: ``validate.date_order``: how a date written ``a/b/yyyy`` is read.
DATE_ORDERS = ("auto", "day_first", "month_first")

_EXPECTED = "expected item_id,label,annotator,labeled_at[,comment]"
_SEPARATOR_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'", " ": "space"}
_EXCEL_SEP_LINE = re.compile(r"sep=(.)\r?\n?")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old Office binaries and encrypted OOXML
# (magic bytes, what the file is): formats people send by mistake, named in the refusal
_OTHER_BINARIES = (
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"Rar!", "a RAR archive (unpack it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (unpack it first)"),
)
# bytes a UTF-16 file without a byte-order mark is recognised by: the header is ASCII, so
# every other byte of its first characters is zero
_UTF16_PROBE_BYTES = 32


class LabelFileError(ValueError):
    """The file cannot be read as a label file at all."""


@dataclass(frozen=True)
class FileFormat:
    """How a label file was read; recorded in the round's manifest.

    Attributes
    ----------
    format : str
        ``"csv"``, ``"xlsx"``, ``"jsonl"``, ``"json"`` or ``"labelstudio"``.
    encoding : str or None
        The text encoding used (``"utf-8"``, ``"utf-8-sig"``, ``"utf-16"``, ``"utf-16-le"``,
        ``"utf-16-be"``, ``"cp1252"``, ``"latin-1"``); None for a workbook.
    separator : str or None
        The CSV separator; None for other formats.
    sheet : str or None
        The worksheet read, for a workbook.
    """

    format: str
    encoding: str | None = None
    separator: str | None = None
    sheet: str | None = None

    def as_manifest(self) -> dict[str, str]:
        """The fields that apply, for a manifest entry."""
        return {key: value for key, value in asdict(self).items() if value is not None}


# -- bytes to text ----------------------------------------------------------------------------
def _utf16_without_bom(content: bytes) -> str | None:
    """``"utf-16-le"`` or ``"utf-16-be"`` when the first characters are ASCII in UTF-16."""
    probe = content[: min(len(content), _UTF16_PROBE_BYTES) // 2 * 2]
    if len(probe) < 4:
        return None
    even, odd = probe[0::2], probe[1::2]
    if not any(odd) and all(even):
        return "utf-16-le"
    if not any(even) and all(odd):
        return "utf-16-be"
    return None


_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)


def _is_utf8(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:  # a surrogate or an overlong form has UTF-8's shape only
        return False
    return True


def _decode(content: bytes) -> tuple[str, str]:
    """The text of a label file and the encoding it was read with."""
    if content.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = _utf16_without_bom(content) or ""
    if encoding:
        try:
            return content.decode(encoding), encoding
        except UnicodeDecodeError as exc:
            raise LabelFileError(
                f"starts as {encoding} text, but bytes {exc.start}-{exc.end - 1} are not "
                f"{encoding} ({exc.reason}): the file is damaged or mixes encodings; "
                "save it again as UTF-8"
            ) from exc
    try:
        return content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        bad = exc.start
    header_end = content.find(b"\n")
    at = content.find(b"\x00", 0, header_end if header_end >= 0 else len(content))
    if at >= 0:  # a header never holds a zero byte; a cell may, as in a UTF-8 file
        raise LabelFileError(
            f"binary data, not text (a zero byte at {at}): not a CSV, JSON or .xlsx label file"
        )
    utf8 = next((m for m in _UTF8_MULTIBYTE.finditer(content) if _is_utf8(m.group())), None)
    if utf8 is not None:
        raise LabelFileError(
            f"mixes encodings: bytes {utf8.start()}-{utf8.end() - 1} are UTF-8 "
            f"({utf8.group().decode()!r}) but byte {bad} ({content[bad : bad + 1]!r}) is not; "
            "the file is damaged or was pasted together from two sources: save it again as UTF-8"
        )
    try:
        return content.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # a byte cp1252 leaves undefined: only Latin-1 reads every byte
        return content.decode("latin-1"), "latin-1"


def _sniff_binary(content: bytes) -> None:
    """Refuse, with its name, a binary format that is not a label file."""
    if content.startswith(_OLE2_MAGIC):
        # the directory of a compound file names its streams in UTF-16
        if "EncryptionInfo".encode("utf-16-le") in content:
            raise LabelFileError(
                "a password-protected workbook: remove the password in Excel (File > Info > "
                "Protect Workbook) and save it as .xlsx or CSV"
            )
        if any(name.encode("utf-16-le") in content for name in ("Workbook", "Book")):
            raise LabelFileError("an old .xls workbook: save it as .xlsx or CSV")
        raise LabelFileError(
            "an old Microsoft Office binary file (not a workbook): save the labels as .xlsx or CSV"
        )
    for magic, what in _OTHER_BINARIES:
        if content.startswith(magic):
            raise LabelFileError(f"{what}, not a CSV, JSON or .xlsx label file")


# -- fields -----------------------------------------------------------------------------------
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


def _header_key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def _find_columns(names: Sequence[str]) -> dict[str, int]:
    """Our field -> its position in the header; exact names first, then loosely matched."""
    exact = {name.strip(): i for i, name in reversed(list(enumerate(names)))}
    loose = {_header_key(name): i for i, name in reversed(list(enumerate(names)))}
    columns: dict[str, int] = {}
    for field in FIELDS:
        candidates = (field, *ALIASES.get(field, ()))
        for table in (exact, loose):
            found = next((table[c] for c in candidates if c in table), None)
            if found is not None:
                columns[field] = found
                break
    return columns


def _header_error(names: list[str], columns: dict[str, int], what: str, hint: str = "") -> str:
    missing = [name for name in REQUIRED if name not in columns]
    shown = [name for name in names if name.strip()][:12]
    message = (
        f"{what} has the columns {shown} but lacks the columns {missing} ({_EXPECTED}; "
        "names are matched ignoring case and surrounding space)"
        if shown
        else f"{what} is empty: the first row must name the columns ({_EXPECTED})"
    )
    return message + hint


def _labelstudio_id(value: Any) -> str | None:
    text = _text(value)
    return f"{LABELSTUDIO}:{text.strip()}" if text is not None else None


def _is_labelstudio_flat(names: Iterable[str]) -> bool:
    """Whether a header (or a record's keys) is Label Studio's JSON_MIN or CSV export."""
    return set(_LABELSTUDIO_FLAT) <= {name.strip() for name in names}


def _add_labelstudio_keys(row: dict[str, Any], annotation_id: Any) -> None:
    """A row of Label Studio's JSON_MIN or CSV export: its annotation's key, and its
    ``annotator`` (a user id there) as the annotator's id."""
    row["source_key"] = _labelstudio_id(annotation_id)
    user = row.get("annotator")
    if user is not None and user.strip().isdigit():
        row["annotator_id"] = row["annotator"] = _labelstudio_id(user)


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
        if _is_labelstudio_flat(record):
            _add_labelstudio_keys(row, record.get("annotation_id"))
        rows.append(row)
    return _frame(rows)


#: The columns of the rows a reader returns, in order.
ROW_FIELDS = ("source_row", *FIELDS, "malformed", *KEY_FIELDS, SKIPPED)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ROW_FIELDS))
    frame[SKIPPED] = frame[SKIPPED].astype("boolean").fillna(False)
    text = {c: "string" for c in (*FIELDS, "malformed", *KEY_FIELDS)}
    return frame.astype({"source_row": "int64", SKIPPED: "boolean", **text})


# -- CSV --------------------------------------------------------------------------------------
def _first_record(line: str, separator: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=separator), [])
    except csv.Error:
        return []


def _find_separator(header_line: str) -> str:
    """The separator under which the header names the most of our columns; more fields on a
    tie, then the order of :data:`SEPARATORS` (``,`` first)."""
    return max(
        SEPARATORS,
        key=lambda sep: (
            len(_find_columns(_first_record(header_line, sep))),
            len(_first_record(header_line, sep)),
        ),
    )


def _other_separator_hint(header_line: str) -> str:
    """A sentence when the header would name every required column under a separator we do
    not read (``:``, spaces, ...)."""
    candidates = sorted(
        {ch for ch in header_line if not ch.isalnum() and ch not in "_-\r\n\"'"} - set(SEPARATORS)
    )
    for sep in candidates:
        parts = [part for part in header_line.split(sep) if part.strip()]
        if all(name in _find_columns(parts) for name in REQUIRED):
            shown = _SEPARATOR_NAMES.get(sep, repr(sep))
            return (
                f"; the header looks separated by {shown}, which is not read: "
                "separate the columns by ',', ';', tab or '|'"
            )
    return ""


def _separator_name(separator: str) -> str:
    return _SEPARATOR_NAMES.get(separator, repr(separator))


def _ragged_hint(record: list[str], separator: str, width: int) -> str:
    for other in SEPARATORS:
        if (
            other != separator
            and len(record) == 1
            and len(_first_record(record[0], other)) == width
        ):
            return (
                f" (it looks separated by {_SEPARATOR_NAMES[other]}, the header by "
                f"{_SEPARATOR_NAMES[separator]})"
            )
    return ""


def _parse_csv(text: str) -> tuple[pd.DataFrame, str]:
    body = text.lstrip("\r\n")
    given = _EXCEL_SEP_LINE.match(body)
    if given is not None:  # Excel's hint line: "sep=;"
        separator = given.group(1)
        body = body[given.end() :].lstrip("\r\n")
    else:
        separator = _find_separator(body.split("\n", 1)[0].rstrip("\r"))
    try:
        reader = csv.reader(io.StringIO(body, newline=""), delimiter=separator, strict=True)
        header = next(reader, None)
        if header is None:
            raise LabelFileError("empty file: no header row")
        names = [h.strip() for h in header]
        columns = _find_columns(names)
        if any(name not in columns for name in REQUIRED):
            head = body.split("\n", 1)[0].rstrip("\r")
            raise LabelFileError(
                _header_error(
                    names,
                    columns,
                    f"the CSV header (separated by {_separator_name(separator)})",
                    _other_separator_hint(head),
                )
            )
        flat = names.index("annotation_id") if _is_labelstudio_flat(names) else None
        rows = []
        for number, record in enumerate(reader, start=1):
            if not any(cell.strip() for cell in record):
                continue  # blank line: nothing was sent
            row: dict[str, Any] = {"source_row": number, "malformed": None}
            if len(record) != len(names):
                row["malformed"] = (
                    f"has {len(record)} fields, the header has {len(names)}"
                    + _ragged_hint(record, separator, len(names))
                )
            for name, index in columns.items():
                row[name] = _text(record[index]) if index < len(record) else None
            if flat is not None:
                _add_labelstudio_keys(row, record[flat] if flat < len(record) else None)
            rows.append(row)
    except csv.Error as exc:
        raise LabelFileError(f"CSV syntax error: {exc}") from exc
    return _frame(rows), separator


# -- JSON -------------------------------------------------------------------------------------
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


def _labelstudio_annotator(completed_by: Any) -> tuple[str | None, str | None]:
    """``(annotator, annotator_id)`` of an annotation's ``completed_by``: a user id (1.23's
    export), or an object with the id and maybe the email (other versions and the API)."""
    email = None
    if isinstance(completed_by, dict):
        email = _text(completed_by.get("email"))
        completed_by = completed_by.get("id")
    user = _labelstudio_id(completed_by)
    return email or user, user


def _parse_labelstudio(tasks: list[Any]) -> pd.DataFrame:
    """Label Studio's JSON export: one row per annotation, a skip (``was_cancelled``) a row
    without a label; each known by its annotation id and its update time."""
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
            row["source_key"] = _labelstudio_id(annotation.get("id"))
            row["annotator"], row["annotator_id"] = _labelstudio_annotator(
                annotation.get("completed_by")
            )
            row["labeled_at"] = _text(annotation.get("updated_at") or annotation.get("created_at"))
            row["comment"] = None
            if annotation.get("was_cancelled"):  # a skip: the annotator sent no label
                row["skipped"] = True
                rows.append(row)
                continue
            choices = [
                choice
                for result in annotation.get("result") or []
                if isinstance(result, dict) and result.get("type") == "choices"
                for choice in (result.get("value") or {}).get("choices") or []
            ]
            # several choices (a multi-choice: a label set) travel as a JSON list
            row["label"] = _text(choices if len(choices) > 1 else choices[0]) if choices else None
            rows.append(row)
    return _frame(rows)


# -- .xlsx ------------------------------------------------------------------------------------
def _open_zip(content: bytes) -> zipfile.ZipFile:
    """The zip archive of a workbook; refuses a damaged zip or a zip that is not a workbook."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        names = set(archive.namelist())
        mimetype = archive.read("mimetype")[:80] if "mimetype" in names else b""
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise LabelFileError(
            f"a damaged zip archive ({exc}): if it is an .xlsx workbook, open it in Excel and "
            "save it again, or save it as CSV"
        ) from exc
    if "xl/workbook.xml" in names:
        return archive
    if mimetype.startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
        raise LabelFileError("an OpenDocument spreadsheet (.ods): save it as .xlsx or CSV")
    raise LabelFileError(
        f"a zip archive, not an .xlsx workbook (it holds {sorted(names)[:5]}): "
        "send the label file itself"
    )


def _cell_text(value: Any, number_format: str | None) -> str | None:
    """A cell as the annotator sees it: dates as ISO 8601, whole numbers without ``.0``."""
    from openpyxl.styles.numbers import is_datetime

    if value is None:
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and is_datetime(number_format or "") == "date":
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return _text(value)


def _column_letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index + 1)


def _sheet_rows(content: bytes) -> tuple[list[tuple[int, list[str | None]]], str]:
    """(Excel row number, cell texts) of every non-empty row of the first worksheet."""
    from openpyxl import load_workbook

    archive = _open_zip(content)
    archive.close()
    try:
        book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises KeyError, ValueError, XML and zip errors alike
        raise LabelFileError(
            f"a damaged .xlsx workbook ({type(exc).__name__}: {exc}): open it in Excel and "
            "save it again, or save it as CSV"
        ) from exc
    try:
        if not book.worksheets:
            raise LabelFileError("an .xlsx workbook without a worksheet")
        sheet = book.worksheets[0]
        sheet.reset_dimensions()  # a workbook's declared size can be wrong: read every row
        rows = []
        for cells in sheet.iter_rows():
            numbers = [cell.row for cell in cells if getattr(cell, "row", None)]
            texts = [_cell_text(cell.value, getattr(cell, "number_format", None)) for cell in cells]
            if numbers and any(text is not None for text in texts):
                rows.append((numbers[0], texts))
        return rows, sheet.title
    except LabelFileError:
        raise
    except Exception as exc:  # a sheet's XML can be damaged too; found only while reading it
        raise LabelFileError(
            f"a damaged .xlsx workbook ({type(exc).__name__}: {exc}): open it in Excel and "
            "save it again, or save it as CSV"
        ) from exc
    finally:
        book.close()


def _parse_xlsx(content: bytes) -> tuple[pd.DataFrame, str]:
    sheet_rows, title = _sheet_rows(content)
    if not sheet_rows:
        raise LabelFileError(f"the first worksheet ({title!r}) of the workbook is empty")
    header_row, header = sheet_rows[0]
    while header and header[-1] is None:
        header = header[:-1]
    names = [text or "" for text in header]
    columns = _find_columns(names)
    if any(name not in columns for name in REQUIRED):
        raise LabelFileError(
            _header_error(names, columns, f"the header row (row {header_row}) of sheet {title!r}")
        )
    flat = names.index("annotation_id") if _is_labelstudio_flat(names) else None
    rows = []
    for number, texts in sheet_rows[1:]:
        row: dict[str, Any] = {"source_row": number - header_row, "malformed": None}
        beyond = [
            i
            for i, text in enumerate(texts)
            if text is not None and (i >= len(names) or not names[i])
        ]
        if beyond:
            row["malformed"] = (
                f"has a value in column {_column_letter(beyond[0])}, which has no header"
            )
        for name, index in columns.items():
            row[name] = _text(texts[index]) if index < len(texts) else None
        if flat is not None:
            _add_labelstudio_keys(row, texts[flat] if flat < len(texts) else None)
        rows.append(row)
    return _frame(rows), title


# -- the public readers -----------------------------------------------------------------------
def _detect(text: str) -> str:
    head = text.lstrip()[:1]
    if head == "[":
        return "json"
    if head == "{":
        return "jsonl"
    return "csv"


def detect_format(content: bytes) -> str:
    """``"xlsx"``, ``"json"`` (a list: Label Studio export or records), ``"jsonl"`` or ``"csv"``."""
    if content.startswith(_ZIP_MAGIC):
        return "xlsx"
    return _detect(_decode(content)[0])


def read_label_file(content: bytes) -> tuple[FileFormat, pd.DataFrame]:
    """Read a label file, telling its format, encoding and separator from its bytes.

    Parameters
    ----------
    content : bytes
        The file exactly as received.

    Returns
    -------
    (FileFormat, pd.DataFrame)
        How the file was read, and one row per label sent (columns :data:`ROW_FIELDS`):
        ``source_row`` (1-based position after the header, or in the list of records; blank
        lines count), the text fields of :data:`FIELDS` (None where absent), ``malformed``
        (None, or why the row cannot be read), the :data:`KEY_FIELDS` (Label Studio's ids;
        None for other formats) and ``skipped`` (a Label Studio skip: no label).

    Raises
    ------
    LabelFileError
        When the file as a whole cannot be read; the message names the cause.
    """
    if content.startswith(_ZIP_MAGIC):
        rows, sheet = _parse_xlsx(content)
        return FileFormat("xlsx", sheet=sheet), rows
    _sniff_binary(content)
    text, encoding = _decode(content)
    kind = _detect(text)
    if kind == "csv":
        rows, separator = _parse_csv(text)
        return FileFormat(kind, encoding=encoding, separator=separator), rows
    if kind == "jsonl":
        return FileFormat(kind, encoding=encoding), _parse_jsonl(text)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"JSON syntax error at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(records, list):
        raise LabelFileError("a JSON file must hold a list of tasks or label records")
    if any(isinstance(r, dict) and "annotations" in r for r in records):
        return FileFormat("labelstudio", encoding=encoding), _parse_labelstudio(records)
    return FileFormat(kind, encoding=encoding), _rows_from_records(records, "record")


def parse_label_file(content: bytes) -> tuple[str, pd.DataFrame]:
    """Parse a label file: :func:`read_label_file` with the format's name only.

    Returns
    -------
    (str, pd.DataFrame)
        The detected format (``"csv"``, ``"xlsx"``, ``"jsonl"``, ``"json"``,
        ``"labelstudio"``) and the rows, as :func:`read_label_file`.

    Raises
    ------
    LabelFileError
        When the file as a whole cannot be read.
    """
    read_as, rows = read_label_file(content)
    return read_as.format, rows


# -- times ------------------------------------------------------------------------------------
# Excel counts days from 1899-12-30 and, after Lotus 1-2-3, a 29 February 1900 that never was:
# serials from 61 (1 March 1900) on are true days since that epoch; 2958465 is 9999-12-31
_EXCEL_EPOCH = pd.Timestamp("1899-12-30", tz="UTC").as_unit("ms")
_EXCEL_FIRST_SERIAL = 61
_EXCEL_LAST_SERIAL = 2_958_465
_MS_PER_DAY = 86_400_000
_TWO_DIGIT_YEAR_CENTURY = 2000  # "30/11/26": labels are written this century
_TWELVE = 12  # months in a year, hours on a 12-hour clock
_TIME_UNIT = "datetime64[us, UTC]"  # not ns: a serial may reach 9999-12-31
_ASSEMBLED = "%Y-%m-%dT%H:%M:%S.%f"
_SERIAL = r"\d+(?:[.,]\d+)?"
_CLOCK = (
    r"(?:[ T]+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<sec>\d{2})(?:[.,](?P<frac>\d{1,6}))?)?"
    r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?)?"
)
_PART_FIRST = (
    r"^(?P<a>\d{1,2})(?P<sep>[/.\-])(?P<b>\d{1,2})(?P=sep)(?P<year>\d{4}|\d{2})" + _CLOCK + "$"
)
_YEAR_FIRST = (
    r"^(?P<year>\d{4})(?P<sep>[/.\-])(?P<month>\d{1,2})(?P=sep)(?P<day>\d{1,2})" + _CLOCK + "$"
)
_GENERIC_PROBLEM = (
    "is not a time in a known form (ISO 8601 such as 2026-11-30T16:04:00Z; 30/11/2026 16:04 or "
    "11/30/2026 4:04 PM, with or without seconds; or an Excel serial number such as 46356.67)"
)


class LabelTimes(NamedTuple):
    """Times read by :func:`parse_label_times`, aligned with the values given."""

    times: pd.Series  # datetime64[us, UTC]; NaT where empty, unreadable or ambiguous
    problems: pd.Series  # string: why a non-empty value was not read; NA where it was


def _nat(index: pd.Index) -> pd.Series:
    return pd.Series(pd.NaT, index=index, dtype=_TIME_UNIT)


def _day_month(day: int, month: int) -> str:
    return f"{day} {calendar.month_name[month]}"


def _assemble(parts: pd.DataFrame, year: pd.Series, month: pd.Series, day: pd.Series) -> pd.Series:
    """UTC times from a date and the clock groups of ``parts``; NaT where they name no instant
    of the calendar (30 February, 25:00, 13 PM)."""
    hour = pd.to_numeric(parts["hour"]).fillna(0).astype("int64").to_numpy()
    ampm = parts["ampm"].str.lower().str[0]
    twelve = ampm.notna().to_numpy(dtype=bool)
    pm = ampm.eq("p").fillna(False).to_numpy(dtype=bool)
    broken = twelve & (hour > _TWELVE)
    hour = pd.Series(np.where(twelve, hour % _TWELVE + pm * _TWELVE, hour), index=parts.index)
    minute = pd.to_numeric(parts["minute"]).fillna(0).astype("int64")
    second = pd.to_numeric(parts["sec"]).fillna(0).astype("int64")
    frac = parts["frac"].fillna("").str.ljust(6, "0")
    text = (
        year.astype("string").str.zfill(4)
        + "-"
        + month.astype("string").str.zfill(2)
        + "-"
        + day.astype("string").str.zfill(2)
        + "T"
        + hour.astype("string").str.zfill(2)
        + ":"
        + minute.astype("string").str.zfill(2)
        + ":"
        + second.astype("string").str.zfill(2)
        + "."
        + frac
    )
    times = pd.to_datetime(text, format=_ASSEMBLED, errors="coerce", utc=True).astype(_TIME_UNIT)
    return times.mask(broken)


def _read_year_first(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Dates written ``yyyy/mm/dd`` (or with ``.``, ``-``), with a clock ISO 8601 lacks."""
    parts = text.str.extract(_YEAR_FIRST)
    parts = parts[parts["year"].notna()]
    times = _nat(text.index)
    if not parts.empty:
        year, month, day = (pd.to_numeric(parts[c]) for c in ("year", "month", "day"))
        times[parts.index] = _assemble(parts, year, month, day)
    return times, _no_such_day(text, parts.index, times)


def _no_such_day(text: pd.Series, matched: pd.Index, times: pd.Series) -> pd.Series:
    """Problems of values shaped like a date that name no day or time of the calendar."""
    problems = pd.Series(pd.NA, index=text.index, dtype="string")
    for index in matched[times[matched].isna().to_numpy()]:
        problems[index] = (
            f"labeled_at {text[index]!r} has the form of a date but names no day and time of "
            "the calendar"
        )
    return problems


def _read_part_first(
    text: pd.Series, groups: pd.Series, date_order: str
) -> tuple[pd.Series, pd.Series]:
    """Dates written ``a/b/year``: day and month told by ``date_order``, or by the file."""
    parts = text.str.extract(_PART_FIRST)
    parts = parts[parts["a"].notna()]
    times = _nat(text.index)
    problems = pd.Series(pd.NA, index=text.index, dtype="string")
    if parts.empty:
        return times, problems
    a = pd.to_numeric(parts["a"]).astype("int64")
    b = pd.to_numeric(parts["b"]).astype("int64")
    year = pd.to_numeric(parts["year"]).astype("int64")
    four_digits = (parts["year"].str.len() == 4).to_numpy(dtype=bool)
    year = year.where(four_digits, year + _TWO_DIGIT_YEAR_CENTURY)
    if date_order == "auto":
        says_day = (a > _TWELVE) & (b <= _TWELVE)
        says_month = (b > _TWELVE) & (a <= _TWELVE)
        group = groups.loc[parts.index]
        file_day = says_day.groupby(group).transform("any")
        file_month = says_month.groupby(group).transform("any")
        day_first = says_day | (file_day & ~file_month)
        ambiguous = (a <= _TWELVE) & (b <= _TWELVE) & (a != b)
        undecided = ambiguous & (file_day == file_month)
        for index in undecided[undecided].index:
            first, second = int(a[index]), int(b[index])
            why = (
                "the file's other dates disagree (some have the day first, some the month first)"
                if file_day[index]
                else "no other date in the file has a day above 12 to tell the order"
            )
            problems[index] = (
                f"labeled_at {text[index]!r} is ambiguous: {_day_month(first, second)} or "
                f"{_day_month(second, first)}, and {why}; set validate.date_order to day_first "
                "or month_first, or write the date as ISO 8601 (YYYY-MM-DD)"
            )
        keep = ~undecided
        parts, a, b, year, day_first = parts[keep], a[keep], b[keep], year[keep], day_first[keep]
    else:
        day_first = pd.Series(date_order == "day_first", index=parts.index)
    day, month = a.where(day_first, b), b.where(day_first, a)
    read = _assemble(parts, year, month, day)
    times[read.index] = read
    if date_order != "auto":
        for index in read.index[read.isna() & (month > _TWELVE)]:
            problems[index] = (
                f"labeled_at {text[index]!r} has no month {int(month[index])} with "
                f"validate.date_order {date_order}"
            )
    return times, problems.fillna(_no_such_day(text, read.index, times))


def _read_serials(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Excel serial numbers: days since 1899-12-30, the fraction the time of day."""
    times = _nat(text.index)
    problems = pd.Series(pd.NA, index=text.index, dtype="string")
    numbers = text[text.str.fullmatch(_SERIAL).fillna(False).astype(bool)]
    if numbers.empty:
        return times, problems
    days = pd.to_numeric(numbers.str.replace(",", ".", regex=False))
    usable = days.between(_EXCEL_FIRST_SERIAL, _EXCEL_LAST_SERIAL)
    ms = (days[usable] * _MS_PER_DAY).round().astype("int64")
    times[ms.index] = (_EXCEL_EPOCH + pd.to_timedelta(ms, unit="ms")).astype(_TIME_UNIT)
    for index in usable.index[~usable]:
        problems[index] = (
            f"labeled_at {text[index]!r} is a number but not an Excel date serial (days since "
            f"1899-12-30, {_EXCEL_FIRST_SERIAL} to {_EXCEL_LAST_SERIAL})"
        )
    return times, problems


def parse_label_times(
    values: pd.Series,
    *,
    groups: pd.Series | None = None,
    date_order: str = "auto",
) -> LabelTimes:
    """Read label times in the forms spreadsheets and labeling tools write.

    Accepted, tried in this order:

    1. ISO 8601, with ``T`` or a space, with or without seconds and offset
       (``2026-11-30T16:04:05Z``, ``2026-11-30 16:04``, ``2026-11-30``).
    2. An Excel serial number: days since 1899-12-30, the fraction the time of day
       (``46356.67`` is 2026-11-30 16:04:48; ``,`` as the decimal mark too).
    3. A date with the year first and ``/``, ``.`` or ``-``, with a 12-hour clock
       (``2026/11/30 4:04 PM``).
    4. A date with the year last, ``a/b/yyyy`` (or ``.``, ``-``; a two-digit year is 20yy),
       optionally followed by ``hh:mm``, ``:ss``, ``.ffffff`` and ``AM``/``PM``:
       ``30/11/2026 16:04``, ``11/30/2026 4:04 PM``, ``30.11.2026 16:04:05``. Whether ``a`` is
       the day or the month is ``date_order``. In ``"auto"`` a part above 12 is the day; a date
       whose first two parts are both 12 or less and differ takes the order of the other dates
       of its group (file) when those have a day above 12 in one position only, and is not read
       otherwise: its problem names the date and the param to set.

    A time without an offset is taken as UTC.

    Parameters
    ----------
    values : pd.Series of str
        The ``labeled_at`` texts; NA for empty.
    groups : pd.Series, optional
        The file of each value, indexed like ``values``: an ambiguous date is told by the other
        dates of its file. All values are one group when omitted.
    date_order : {"auto", "day_first", "month_first"}
        ``validate.date_order``.

    Returns
    -------
    LabelTimes
        ``times`` (UTC; NaT where empty, unreadable or ambiguous) and ``problems`` (a sentence
        for each non-empty value not read; NA elsewhere), both indexed like ``values``.
    """
    if date_order not in DATE_ORDERS:
        raise ValueError(f"date_order must be one of {list(DATE_ORDERS)}, got {date_order!r}")
    if groups is None:
        groups = pd.Series("", index=values.index)
    elif not groups.index.equals(values.index):
        raise ValueError(
            f"groups must be indexed like values ({len(groups)} and {len(values)} rows)"
        )
    text = values.astype("string").str.strip().replace("", pd.NA)
    groups = groups.astype("string").fillna("")
    times = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601").astype(_TIME_UNIT)
    problems = pd.Series(pd.NA, index=text.index, dtype="string")
    readers = (
        _read_serials,
        _read_year_first,
        lambda rest: _read_part_first(rest, groups.loc[rest.index], date_order),
    )
    for reader in readers:
        rest = text[times.isna() & problems.isna() & text.notna()]
        if rest.empty:
            break
        times[rest.index], problems[rest.index] = reader(rest)
    unread = times.isna() & problems.isna() & text.notna()
    problems[unread] = [f"labeled_at {raw!r} {_GENERIC_PROBLEM}" for raw in text[unread]]
    return LabelTimes(times, problems)


# -- classes ----------------------------------------------------------------------------------
def match_classes(labels: pd.Series, classes: Iterable[str]) -> pd.Series:
    """Labels in the declared spelling of their class, matched ignoring case and surrounding
    space (``" Benign "`` is ``benign``).

    Classes that differ from each other only in case are matched exactly. A label matching no
    class is returned as sent (stripped), for validate to judge.

    Parameters
    ----------
    labels : pd.Series of str
    classes : iterable of str
        ``project.classes``.

    Returns
    -------
    pd.Series of str
        Aligned with ``labels``; NA stays NA.
    """
    declared = list(classes)
    keys: dict[str, list[str]] = {}
    for name in declared:
        keys.setdefault(name.strip().casefold(), []).append(name)
    loose = {key: names[0] for key, names in keys.items() if len(names) == 1}
    stripped = labels.astype("string").str.strip()
    exact = set(declared)
    matched = [
        value if value is pd.NA or value in exact else loose.get(value.casefold(), value)
        for value in stripped
    ]
    return pd.Series(matched, index=labels.index, dtype="string")
