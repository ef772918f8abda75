"""Label files as annotators really make them: other separators and encodings, Excel
workbooks, the dates spreadsheets write, class names in another case; and, for a file that
cannot be read, a refusal that names the cause. Unit tests of the pure functions only."""

from __future__ import annotations

import datetime as dt
import io
import typing
import zipfile

import openpyxl
import pandas as pd
import pytest

from tasks.params import ValidateParams
from tasks.parsing import (
    DATE_ORDERS,
    LabelFileError,
    match_classes,
    parse_label_times,
    read_label_file,
)
from tasks.validate import validate_labels

HEADER = ["item_id", "label", "annotator", "labeled_at"]
POOL = [str(i) for i in range(1, 9)]
AS_OF = pd.Timestamp("2027-01-01T00:00:00Z")


def _csv(rows: list[list[str]], sep: str = ",", header: list[str] = HEADER) -> str:
    return "".join(sep.join(fields) + "\r\n" for fields in [header, *rows])


def _validate(
    files: dict[str, bytes], classes=("benign", "malignant"), **params
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read files as the stage does and validate their rows against a pool of items 1-8,
    all issued."""
    parsed = [
        read_label_file(content)[1].assign(source_file=name) for name, content in files.items()
    ]
    rows = pd.concat(parsed, ignore_index=True).assign(source_sha256="h")
    result = validate_labels(
        rows.astype({c: "string" for c in rows.columns if c != "source_row"}),
        pool_ids=pd.Series(POOL, dtype="string"),
        issued_ids=pd.Series(POOL, dtype="string"),
        classes=classes,
        as_of=AS_OF,
        params=ValidateParams(**params),
    )
    assert len(result.accepted) + len(result.quarantined) == len(rows)
    return result.accepted, result.quarantined


def _workbook(rows: list[list[object]], *, title: str = "Labels") -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


# -- separators --------------------------------------------------------------------------------
@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_a_csv_with_another_separator_is_read_and_its_separator_recorded(sep, name):
    content = _csv(
        [["1", "benign", "ann", "2026-11-30T16:04:00Z"], ["2", "malignant", "ann", "x, y"]], sep
    ).encode()
    read_as, rows = read_label_file(content)
    assert (read_as.format, read_as.separator, read_as.encoding) == ("csv", sep, "utf-8")
    assert rows["item_id"].tolist() == ["1", "2"]
    assert rows["labeled_at"].tolist() == ["2026-11-30T16:04:00Z", "x, y"]
    assert rows["malformed"].isna().all()


def test_a_semicolon_csv_as_european_excel_saves_it():
    # Excel in a comma-decimal locale: ';' between fields, ',' inside a comment, dates
    # day first, a "sep=;" hint line on top
    content = (
        "sep=;\r\nItem ID;Label;Annotator;Labeled at;Comment\r\n"
        '3;Benign;René;30/11/2026 16:04;"sure, clear"\r\n'
    ).encode("cp1252")
    read_as, rows = read_label_file(content)
    assert read_as.as_manifest() == {"format": "csv", "encoding": "cp1252", "separator": ";"}
    assert rows.iloc[0][["annotator", "comment"]].tolist() == ["René", "sure, clear"]
    accepted, quarantined = _validate({"eu.csv": content})
    assert quarantined.empty
    assert accepted.iloc[0][["label", "labeled_at"]].tolist() == [
        "benign",
        "2026-11-30T16:04:00.000000Z",
    ]


def test_a_row_split_by_another_separator_than_the_header_says_so():
    _, rows = read_label_file(b"item_id,label,annotator,labeled_at\n1;benign;ann;2026-11-30\n")
    assert "separated by ';', the header by ','" in rows["malformed"].iloc[0]


# -- encodings ---------------------------------------------------------------------------------
def test_a_cp1252_file_is_read_with_its_accents_and_curly_quotes():
    content = _csv(
        [["1", "benign", "René", "2026-11-30 16:04", "“ok” – 5€"]], header=[*HEADER, "comment"]
    )
    read_as, rows = read_label_file(content.encode("cp1252"))
    assert read_as.encoding == "cp1252"
    assert rows.iloc[0][["annotator", "comment"]].tolist() == ["René", "“ok” – 5€"]


def test_a_byte_cp1252_leaves_undefined_falls_back_to_latin1():
    content = _csv([["1", "benign", "René", "2026-11-30"]]).encode("latin-1") + b"\x81\r\n"
    read_as, rows = read_label_file(content)
    assert read_as.encoding == "latin-1"
    assert rows["annotator"].iloc[0] == "René"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_as_excel_saves_unicode_text(encoding):
    # Excel's "Unicode Text": UTF-16 little-endian with a byte-order mark, tab-separated
    content = _csv([["1", "benign", "Zoë", "2026-11-30 16:04"]], "\t").encode(encoding)
    read_as, rows = read_label_file(content)
    assert read_as.encoding == encoding and read_as.separator == "\t"
    assert rows.iloc[0][["item_id", "annotator"]].tolist() == ["1", "Zoë"]


def test_a_utf8_file_with_a_byte_order_mark():
    read_as, rows = read_label_file(_csv([["1", "benign", "Zoë", "x"]]).encode("utf-8-sig"))
    assert read_as.encoding == "utf-8-sig"
    assert rows.iloc[0]["item_id"] == "1"


def test_a_file_mixing_utf8_and_other_bytes_is_refused_with_the_cause():
    content = _csv([["1", "benign", "Zoë", "x"]]).encode() + "René\r\n".encode("cp1252")
    with pytest.raises(LabelFileError, match="mixes encodings.*'ë'"):
        read_label_file(content)


# -- .xlsx -------------------------------------------------------------------------------------
def test_an_xlsx_workbook_is_read_by_content_with_cells_as_the_annotator_sees_them():
    content = _workbook(
        [
            ["Item ID", "Label", "Annotator", "Labeled at", "Comment"],
            [1, "Benign", "ann", dt.datetime(2026, 11, 30, 16, 4), None],
            [2, " malignant ", "bob", "30/11/2026 16:05", 0.5],
            [],
            [3, "benign", True, 46356.67, "a serial in a General cell"],
        ]
    )
    read_as, rows = read_label_file(content)
    assert read_as.as_manifest() == {"format": "xlsx", "sheet": "Labels"}
    assert rows["source_row"].tolist() == [1, 2, 4]  # the blank row counts, as in a CSV
    assert rows["item_id"].tolist() == ["1", "2", "3"]
    assert rows["annotator"].tolist() == ["ann", "bob", "TRUE"]
    assert rows["labeled_at"].tolist() == ["2026-11-30T16:04:00", "30/11/2026 16:05", "46356.67"]
    assert rows["comment"].tolist()[1] == "0.5"
    accepted, quarantined = _validate({"labels.xlsx": content})
    assert quarantined.empty
    assert accepted["label"].tolist() == ["benign", "malignant", "benign"]
    assert accepted["labeled_at"].tolist() == [
        "2026-11-30T16:04:00.000000Z",
        "2026-11-30T16:05:00.000000Z",
        "2026-11-30T16:04:48.000000Z",
    ]


def test_an_xlsx_date_only_cell_is_an_iso_date_and_a_value_without_header_is_malformed():
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER)
    sheet.append([1, "benign", "ann", dt.date(2026, 11, 30), None, "stray"])
    sheet["D2"].number_format = "dd/mm/yyyy"
    out = io.BytesIO()
    book.save(out)
    _, rows = read_label_file(out.getvalue())
    assert rows["labeled_at"].tolist() == ["2026-11-30"]
    assert rows["malformed"].tolist() == ["has a value in column F, which has no header"]


def test_an_xlsx_named_csv_is_still_a_workbook():
    # the format is told by the content: the archive sees no file name at all
    _, rows = read_label_file(_workbook([HEADER, [1, "benign", "ann", "2026-11-30"]]))
    assert len(rows) == 1


def test_only_the_first_sheet_is_read():
    book = openpyxl.Workbook()
    book.active.append(HEADER)
    book.active.append([1, "benign", "ann", "2026-11-30"])
    other = book.create_sheet("notes")
    other.append(HEADER)
    other.append([2, "benign", "ann", "2026-11-30"])
    out = io.BytesIO()
    book.save(out)
    _, rows = read_label_file(out.getvalue())
    assert rows["item_id"].tolist() == ["1"]


# -- refusals that name the cause --------------------------------------------------------------
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (OLE2 + "Workbook".encode("utf-16-le"), "an old .xls workbook: save it as .xlsx or CSV"),
        (
            OLE2 + "EncryptionInfo".encode("utf-16-le") + "EncryptedPackage".encode("utf-16-le"),
            "a password-protected workbook",
        ),
        (b"PK\x03\x04\x14\x00garbage", "a damaged zip archive"),
        (b"%PDF-1.7\n", "a PDF document"),
        (b"\x89PNG\r\n\x1a\n\x00", "a PNG image"),
    ],
)
def test_binary_files_are_refused_with_what_they_are(content, cause):
    with pytest.raises(LabelFileError, match=cause):
        read_label_file(content)


def test_a_truncated_workbook_is_refused_as_damaged():
    content = _workbook([HEADER, [1, "benign", "ann", "2026-11-30"]])
    with pytest.raises(LabelFileError, match="damaged"):
        read_label_file(content[: len(content) // 2])


def test_a_zip_that_is_not_a_workbook_says_what_it_holds():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("labels.csv", _csv([["1", "benign", "ann", "x"]]))
    with pytest.raises(LabelFileError, match=r"not an \.xlsx workbook.*labels\.csv"):
        read_label_file(out.getvalue())


def test_an_opendocument_spreadsheet_is_named():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("content.xml", "<x/>")
    with pytest.raises(LabelFileError, match=r"OpenDocument spreadsheet \(\.ods\)"):
        read_label_file(out.getvalue())


def test_a_wrong_header_names_the_columns_found_and_the_separator():
    with pytest.raises(LabelFileError) as caught:
        read_label_file(b"id;class;who;when\n1;benign;ann;2026-11-30\n")
    message = str(caught.value)
    assert "separated by ';'" in message
    assert "['id', 'class', 'who', 'when']" in message
    assert "['item_id', 'label', 'annotator', 'labeled_at']" in message


def test_a_header_separated_by_spaces_says_another_separator_would_have_worked():
    with pytest.raises(LabelFileError, match="looks separated by space, which is not read"):
        read_label_file(b"item_id label annotator labeled_at\n1 benign ann 2026-11-30\n")


def test_a_workbook_with_a_wrong_header_names_its_row_and_sheet():
    content = _workbook([["id", "class"], [1, "benign"]], title="Sheet1")
    with pytest.raises(LabelFileError, match=r"header row \(row 1\) of sheet 'Sheet1'.*'class'"):
        read_label_file(content)


def test_binary_text_is_refused_as_binary():
    with pytest.raises(LabelFileError, match="binary data, not text"):
        read_label_file(b"item_id,label\xff\x00\x01\x02")


# -- the manifest ------------------------------------------------------------------------------
def test_the_manifest_records_format_encoding_and_separator():
    from tasks.validate import read_label_files  # the stage's reading of a round's files

    intake = read_label_files(
        {
            "a.csv": _csv([["1", "benign", "René", "x"]], ";").encode("cp1252"),
            "b.xlsx": _workbook([HEADER, [2, "benign", "ann", "2026-11-30"]]),
            "c.xls": OLE2 + "Workbook".encode("utf-16-le"),
        },
        consumed={},
        archive_name="round-0002",
    )
    entries = {entry["file"]: entry for entry in intake.manifest}
    assert entries["a.csv"]["format"] == "csv"
    assert entries["a.csv"]["encoding"] == "cp1252"
    assert entries["a.csv"]["separator"] == ";"
    assert entries["b.xlsx"]["format"] == "xlsx" and entries["b.xlsx"]["sheet"] == "Labels"
    assert entries["c.xls"]["status"] == "unreadable"
    assert "an old .xls workbook" in entries["c.xls"]["error"]


# -- dates -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("30/11/2026 16:04", "2026-11-30T16:04:00"),
        ("30/11/2026 16:04:05", "2026-11-30T16:04:05"),
        ("11/30/2026 4:04 PM", "2026-11-30T16:04:00"),
        ("11/30/2026 4:04:05 PM", "2026-11-30T16:04:05"),
        ("11/30/2026 12:04 AM", "2026-11-30T00:04:00"),
        ("11/30/26 4:04 pm", "2026-11-30T16:04:00"),
        ("30.11.2026 16:04", "2026-11-30T16:04:00"),
        ("2026-11-30 16:04", "2026-11-30T16:04:00"),
        ("2026-11-30 16:04:05", "2026-11-30T16:04:05"),
        ("2026/11/30 4:04 PM", "2026-11-30T16:04:00"),
        ("46356.67", "2026-11-30T16:04:48"),
        ("46356,67", "2026-11-30T16:04:48"),
        ("46356", "2026-11-30T00:00:00"),
        ("2026-11-30T16:04:00+01:00", "2026-11-30T15:04:00"),
    ],
)
def test_each_spreadsheet_date_form_is_read(written, meant):
    times, problems = parse_label_times(pd.Series([written], dtype="string"))
    assert problems.isna().all(), problems.iloc[0]
    assert times.iloc[0] == pd.Timestamp(meant, tz="UTC")


def test_spreadsheet_dates_are_accepted_and_stored_as_iso_8601():
    content = _csv(
        [
            ["1", "benign", "ann", "30/11/2026 16:04"],
            ["2", "benign", "ann", "46356.67"],
            ["3", "benign", "ann", "2026-11-30 16:04"],
        ],
        ";",
    ).encode()
    accepted, quarantined = _validate({"f.csv": content})
    assert quarantined.empty
    assert accepted["labeled_at"].tolist() == [
        "2026-11-30T16:04:00.000000Z",
        "2026-11-30T16:04:48.000000Z",
        "2026-11-30T16:04:00.000000Z",
    ]


def test_an_ambiguous_date_is_quarantined_with_a_sentence_that_names_it_and_the_param():
    content = _csv([["1", "benign", "ann", "03/04/2026 10:00"]]).encode()
    accepted, quarantined = _validate({"f.csv": content})
    assert accepted.empty
    assert quarantined["reason_code"].tolist() == ["bad_timestamp"]
    reason = quarantined["reason"].iloc[0]
    assert "'03/04/2026 10:00' is ambiguous: 3 April or 4 March" in reason
    assert "validate.date_order" in reason and "day_first" in reason


def test_a_day_first_file_is_inferred_from_its_other_rows_and_only_its_own():
    day_first = _csv(
        [["1", "benign", "ann", "03/04/2026 10:00"], ["2", "benign", "ann", "30/11/2026 16:04"]]
    ).encode()
    month_first = _csv(
        [["3", "benign", "bob", "03/04/2026 10:00"], ["4", "benign", "bob", "11/30/2026 4:04 PM"]]
    ).encode()
    alone = _csv([["5", "benign", "eve", "03/04/2026 10:00"]]).encode()
    accepted, quarantined = _validate({"uk.csv": day_first, "us.csv": month_first, "x.csv": alone})
    when = dict(zip(accepted["item_id"], accepted["labeled_at"], strict=True))
    assert when["1"] == "2026-04-03T10:00:00.000000Z"
    assert when["3"] == "2026-03-04T10:00:00.000000Z"
    assert quarantined["item_id"].tolist() == ["5"]  # the other files do not decide for it


def test_a_file_mixing_both_orders_leaves_its_ambiguous_dates_undecided():
    times, problems = parse_label_times(
        pd.Series(["03/04/2026", "30/11/2026", "11/30/2026"], dtype="string")
    )
    assert times.notna().tolist() == [False, True, True]
    assert "other dates disagree" in problems.iloc[0]


@pytest.mark.parametrize(
    ("date_order", "meant"),
    [("day_first", "2026-04-03T10:00:00.000000Z"), ("month_first", "2026-03-04T10:00:00.000000Z")],
)
def test_the_date_order_param_is_honoured(date_order, meant):
    content = _csv([["1", "benign", "ann", "03/04/2026 10:00"]]).encode()
    accepted, _ = _validate({"f.csv": content}, date_order=date_order)
    assert accepted["labeled_at"].tolist() == [meant]


def test_a_date_against_the_date_order_param_is_quarantined_naming_it():
    content = _csv([["1", "benign", "ann", "11/30/2026 4:04 PM"]]).encode()
    _, quarantined = _validate({"f.csv": content}, date_order="day_first")
    assert quarantined["reason_code"].tolist() == ["bad_timestamp"]
    assert "no month 30 with validate.date_order day_first" in quarantined["reason"].iloc[0]


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("31/02/2026", "names no day and time of the calendar"),
        ("30/11/2026 13:00 PM", "names no day and time of the calendar"),
        ("5", "not an Excel date serial"),
        ("last tuesday", "not a time in a known form"),
    ],
)
def test_an_unreadable_time_gets_a_sentence_that_says_why(written, why):
    _, problems = parse_label_times(pd.Series([written], dtype="string"))
    assert why in problems.iloc[0] and repr(written) in problems.iloc[0]


def test_date_order_values_agree_with_the_param_and_are_checked():
    assert typing.get_args(ValidateParams.model_fields["date_order"].annotation) == DATE_ORDERS
    with pytest.raises(ValueError, match="date_order.*'dayfirst'"):
        parse_label_times(pd.Series(["x"]), date_order="dayfirst")


# -- class names -------------------------------------------------------------------------------
def test_class_names_match_ignoring_case_and_space_and_store_the_declared_spelling():
    content = _csv(
        [
            ["1", "Benign", "ann", "2026-11-30"],
            ["2", " benign ", "bob", "2026-11-30"],
            ["3", "MALIGNANT", "ann", "2026-11-30"],
            ["4", "benignish", "ann", "2026-11-30"],
        ]
    ).encode()
    accepted, quarantined = _validate({"f.csv": content})
    assert accepted["label"].tolist() == ["benign", "benign", "malignant"]
    assert quarantined["reason_code"].tolist() == ["unknown_class"]


def test_a_label_in_another_case_and_its_repeat_are_one_label_not_a_conflict():
    content = _csv(
        [["1", "Benign", "ann", "2026-11-30"], ["1", "benign", "ann", "2026-11-30"]]
    ).encode()
    accepted, quarantined = _validate({"f.csv": content})
    assert accepted["label"].tolist() == ["benign"]
    assert quarantined["reason_code"].tolist() == ["duplicate_row"]


def test_classes_that_differ_only_in_case_are_matched_exactly():
    labels = pd.Series(["A", "a", " a ", "B", "b", None], dtype="string")
    assert match_classes(labels, ["A", "a", "b"]).tolist() == ["A", "a", "a", "b", "b", pd.NA]
