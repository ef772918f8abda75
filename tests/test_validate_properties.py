"""Property: whatever annotators send, every row is accepted or quarantined, never lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.params import ValidateParams
from tasks.parsing import LabelFileError, parse_label_file
from tasks.validate import validate_labels

IDS = ["1", "2", "3", "x"]
hostile = st.one_of(
    st.sampled_from(
        IDS
        + [
            "a",
            "b",
            "",
            " ",
            "NaN",
            '=HYPERLINK("http://x")',
            "\x00\x1b",
            "2026-01-01T00:00:00Z",
            "2999-01-01",
            "é" * 50,
        ]
    ),
    st.text(max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(hostile, hostile, hostile, hostile), max_size=25))
def test_rows_in_equal_accepted_plus_quarantined(records):
    def cell(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'

    text = "item_id,label,annotator,labeled_at\n" + "".join(
        ",".join(cell(v) for v in r) + "\n" for r in records
    )
    try:
        _, rows = parse_label_file(text.encode("utf-8"))
    except LabelFileError:
        return  # quarantined whole, tested in the flow test
    rows = rows.assign(source_file="f.csv", source_sha256="h")
    result = validate_labels(
        rows.astype({c: "string" for c in rows.columns if c != "source_row"}),
        pool_ids=pd.Series(IDS[:3], dtype="string"),
        issued_ids=pd.Series(IDS[:2], dtype="string"),
        classes=("a", "b"),
        as_of=pd.Timestamp("2026-06-01T00:00:00Z"),
        params=ValidateParams(),
    )
    assert len(result.accepted) + len(result.quarantined) == len(rows)
    seen = np.sort(
        np.concatenate([result.accepted["source_row"], result.quarantined["source_row"]])
    )
    np.testing.assert_array_equal(seen, np.sort(rows["source_row"].to_numpy()))
    assert result.accepted["label"].isin(["a", "b"]).all()
    assert result.accepted["item_id"].isin(IDS[:2]).all()
    assert result.quarantined["reason"].str.len().gt(0).all()
