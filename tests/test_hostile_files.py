"""Property tests: whatever files annotators drop, every row is accepted or quarantined with a
reason, the ledger only grows, and a file that cannot be read changes no label."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import schema
from tasks.flag import append_round
from tasks.merge import get_label_events, get_majority_labels, get_votes
from tasks.params import ValidateParams
from tasks.parsing import LabelFileError, parse_label_file, read_label_file
from tasks.validate import get_file_rejection, validate_labels

POOL = [str(i) for i in range(6)]
ISSUED = POOL[:4]
CLASSES = ("cat", "dog")
AS_OF = pd.Timestamp("2026-06-01T00:00:00Z")

nasty_text = st.one_of(
    st.sampled_from(
        [
            '=HYPERLINK("http://evil","x")',
            "+1+1",
            "@SUM(A1)",
            "-2",
            "NaN",
            "nan",
            "None",
            "null",
            "",
            "  ",
            "\x00",
            "\x1b[31m",
            "\u202e",
            "cat\ndog",
            "ü" * 3,
            "x" * 20_000,
        ]
    ),
    st.text(max_size=40),
)
item = st.one_of(st.sampled_from(POOL + ["99", "-1", "1.0", " 1 "]), nasty_text)
label = st.one_of(st.sampled_from([*CLASSES, "Cat", "bird"]), nasty_text)
when = st.one_of(
    st.sampled_from(
        [
            "2026-05-01T10:00:00Z",
            "2026-05-01",
            "2999-01-01T00:00:00Z",
            "yesterday",
            "2026-13-45T99:00:00",
        ]
    ),
    nasty_text,
)
row = st.fixed_dictionaries(
    {
        "item_id": item,
        "label": label,
        "annotator": st.sampled_from(["ann", "bob", "", "=1"]),
        "labeled_at": when,
    },
    optional={"comment": nasty_text},
)


def _render(kind: str, rows: list[dict], encoding: str) -> bytes:
    if kind == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=["item_id", "label", "annotator", "labeled_at", "comment"]
        )
        writer.writeheader()
        writer.writerows(rows)
        text = out.getvalue()
    elif kind == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif kind == "labelstudio":
        text = json.dumps(
            [
                {
                    "id": n,
                    "data": {"item_id": r["item_id"]},
                    "annotations": [
                        {
                            "completed_by": r["annotator"],
                            "was_cancelled": n % 5 == 4,
                            "result": [{"type": "choices", "value": {"choices": [r["label"]]}}],
                            "created_at": r["labeled_at"],
                            "updated_at": r["labeled_at"],
                        }
                    ],
                }
                for n, r in enumerate(rows)
            ]
        )
    else:  # a file cut short
        text = json.dumps(rows)[: max(1, len(rows))]
    return text.encode(encoding, errors="replace")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["csv", "jsonl", "labelstudio", "truncated"]),
            st.lists(row, max_size=12),
            st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_no_row_is_lost_and_the_ledger_only_grows(files):
    parsed = []
    for number, (kind, rows, encoding) in enumerate(files):
        try:
            _, frame = parse_label_file(_render(kind, rows, encoding))
        except LabelFileError:
            continue  # quarantined whole by the stage; see the next test
        parsed.append(frame.assign(source_file=f"f{number}", source_sha256=f"h{number}"))
    columns = [
        "source_row",
        "item_id",
        "label",
        "annotator",
        "labeled_at",
        "comment",
        "malformed",
        "source_file",
        "source_sha256",
    ]
    rows = pd.concat(parsed, ignore_index=True) if parsed else pd.DataFrame(columns=columns)
    rows = rows.astype({c: "string" for c in columns if c != "source_row"})
    result = validate_labels(
        rows,
        pool_ids=pd.Series(POOL, dtype="string"),
        issued_ids=pd.Series(ISSUED, dtype="string"),
        classes=CLASSES,
        as_of=AS_OF,
        params=ValidateParams(),
    )
    assert len(result.accepted) + len(result.quarantined) == len(rows)
    assert result.already_consumed.empty  # nothing is in the ledger yet
    # an accepted row without a label is a Label Studio skip, never anything else
    assert result.accepted["label"].dropna().isin(CLASSES).all()
    skips = rows["skipped"].fillna(False).sum() if "skipped" in rows else 0
    assert result.accepted["label"].isna().sum() <= skips
    assert result.accepted["item_id"].isin(ISSUED).all()
    assert result.quarantined["reason_code"].notna().all()
    assert result.quarantined["reason"].str.len().gt(0).all()

    before = schema.empty(schema.LEDGER)
    events = get_label_events(before, result.accepted, result.quarantined, round_id=2)
    ledger = append_round(
        before,
        schema.number_events(events, round_id=2),
        pd.DataFrame(columns=["round_id"]),
        round_id=2,
    )
    assert len(ledger) == len(rows)
    again = append_round(
        ledger, schema.empty(schema.LEDGER), pd.DataFrame(columns=["round_id"]), round_id=3
    )
    pd.testing.assert_frame_equal(again, ledger)  # the next round keeps every earlier event


unreadable = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\xff\xfe\xfa" + b),  # not UTF-8
    st.text(max_size=80).map(lambda t: ("[" + t).encode()),  # JSON cut short or not JSON
    st.just(b"item_id,label\n1,cat\n"),  # a CSV without the required columns
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unreadable)
def test_an_unreadable_file_changes_no_label(content):
    try:
        parse_label_file(content)
    except LabelFileError as exc:
        message = str(exc)
    else:
        return  # "[" + text can happen to be valid JSON: then it is not this test's case
    ledger = _ledger_with_votes()
    events = get_label_events(
        ledger,
        schema.empty(schema.ACCEPTED),
        get_file_rejection("bad.csv", "h", message),
        round_id=3,
    )
    after = append_round(
        ledger,
        schema.number_events(events, round_id=3),
        pd.DataFrame(columns=["round_id"]),
        round_id=3,
    )
    assert after["event"].iloc[len(ledger) :].tolist() == ["rejected"]
    assert message in after["detail"].iloc[-1]
    pd.testing.assert_frame_equal(
        get_majority_labels(get_votes(after)), get_majority_labels(get_votes(ledger))
    )


def _ledger_with_votes():
    accepted = schema.conform(
        pd.DataFrame(
            {
                "item_id": ["0", "1", "1"],
                "label": ["cat", "dog", "cat"],
                "annotator": ["ann", "ann", "bob"],
                "labeled_at": "t",
                "comment": pd.NA,
                "source_file": "f",
                "source_sha256": "h",
                "source_row": [1, 2, 3],
            }
        ),
        schema.ACCEPTED,
    )
    events = get_label_events(
        schema.empty(schema.LEDGER), accepted, schema.empty(schema.QUARANTINED), round_id=2
    )
    return append_round(
        schema.empty(schema.LEDGER),
        schema.number_events(events, round_id=2),
        pd.DataFrame(columns=["round_id"]),
        round_id=2,
    )


# the letters of Western European names that are not ASCII, without any of cp1252's bytes
# 0x80-0xBF: a cp1252 file of them can never be valid UTF-8 by chance
accented = "éèàüöçñßøæÉÜ"
field = st.text(alphabet=st.characters(codec="ascii") | st.sampled_from(accented), max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(field, min_size=4, max_size=4), max_size=8),
    st.sampled_from([";", "\t", "|"]),
    st.sampled_from(["utf-8-sig", "utf-16", "cp1252"]),
)
def test_a_file_reads_the_same_whatever_its_separator_and_encoding(records, sep, encoding):
    def render(separator: str) -> str:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=separator, lineterminator="\r\n")
        writer.writerow(["item_id", "label", "annotator", "labeled_at"])
        writer.writerows(records)
        return out.getvalue()

    try:
        plain_as, plain = parse_label_file(render(",").encode("utf-8"))
    except LabelFileError:
        return  # e.g. a first field that makes the rest one quoted blob: not this test's case
    read_as, rows = read_label_file(render(sep).encode(encoding))
    assert read_as.separator == sep
    if encoding != "cp1252" or any(ch in accented for r in records for ch in "".join(r)):
        assert read_as.encoding == encoding
    pd.testing.assert_frame_equal(rows, plain)
