"""The rules that used to hide in the stage wrappers, now pure functions: which batches are
open, which split an item keeps, which champion a candidate is judged against, which labels a
second opinion confirmed, what a second opinion is shown, what the round reports."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tasks import schema
from tasks.catalog import SavedModel
from tasks.evaluate import Evaluation, get_champion_before, get_new_champion
from tasks.export import export_batch, get_history_row, get_round_report
from tasks.flag import CONFIRMED_KEPT, get_confirmed_ids, get_flag_events, get_flag_records
from tasks.merge import get_first_split, get_round_votes
from tasks.params import ExportParams, FlagParams
from tasks.selection import get_select_summary
from tasks.summaries import (
    EvaluateSummary,
    FlagSummary,
    MergeSummary,
    RoundSummaries,
    SelectSummary,
    ValidateSummary,
)
from tasks.validate import get_consumed_hashes, get_open_batches, read_label_files


def _issued(rows):
    frame = pd.DataFrame(rows, columns=["item_id", "round_id", "split"])
    return schema.conform(frame.assign(reason="active", utility=0.5), schema.ISSUED)


# -- validate ------------------------------------------------------------------------------
def test_open_batches_close_after_their_ttl_and_never_include_this_round():
    issued = _issued([("a", 1, "train"), ("b", 2, "train"), ("c", 3, "test"), ("d", 4, "train")])
    assert get_open_batches(issued, round_id=4, ttl=None)["item_id"].tolist() == ["a", "b", "c"]
    assert get_open_batches(issued, round_id=4, ttl=2)["item_id"].tolist() == ["b", "c"]
    assert get_open_batches(issued, round_id=4, ttl=1)["item_id"].tolist() == ["c"]


def test_a_file_consumed_by_an_earlier_round_or_twice_in_one_is_read_once():
    good = b"item_id,label,annotator,labeled_at\n1,a,ann,2026-01-01T00:00:00Z\n"
    manifests = {2: [{"file": "old.csv", "sha256": schema_hash(good), "status": "read"}]}
    consumed = get_consumed_hashes(manifests)
    assert consumed == {schema_hash(good): "round-0002/old.csv"}
    other = good.replace(b",ann,", b",bob,")
    intake = read_label_files(
        {"again.csv": good, "new.csv": other, "z-copy.csv": other},
        consumed=consumed,
        archive_name="round-0003",
    )
    status = {e["file"]: e["status"] for e in intake.manifest}
    assert status == {
        "again.csv": "already_consumed",
        "new.csv": "read",
        "z-copy.csv": "already_consumed",
    }
    assert intake.manifest[2]["same_as"] == "round-0003/new.csv"
    assert len(intake.rows) == 1 and intake.file_rejections.empty


def schema_hash(data: bytes) -> str:
    from tasks.catalog import sha256_bytes

    return sha256_bytes(data)


# -- merge ---------------------------------------------------------------------------------
def test_an_item_keeps_the_split_it_was_first_issued_with():
    issued = _issued([("a", 2, "train"), ("a", 1, "test"), ("b", 3, "train")])
    assert get_first_split(issued).to_dict() == {"a": "test", "b": "train"}


def test_votes_for_an_unknown_class_wait_and_do_not_count():
    accepted = schema.conform(
        pd.DataFrame(
            {
                "item_id": ["a", "b"],
                "label": ["cat", "llama"],
                "annotator": "ann",
                "labeled_at": "2026-01-01T00:00:00.000000Z",
                "comment": pd.NA,
                "source_file": "f.csv",
                "source_sha256": "x",
                "source_row": [1, 2],
            }
        ),
        schema.ACCEPTED,
    )
    votes = get_round_votes(
        schema.empty(schema.LEDGER),
        accepted,
        schema.empty(schema.QUARANTINED),
        _issued([("a", 1, "train"), ("b", 1, "train")]),
        round_id=2,
        classes=("cat", "dog"),
    )
    assert votes.votes["item_id"].tolist() == ["a"]
    assert votes.pending.to_dict() == {"llama": 1}
    assert votes.train_ids.tolist() == ["a"]
    assert votes.events["event"].tolist() == ["label", "label"]  # both are in the ledger


# -- flag ----------------------------------------------------------------------------------
def _events(rows):
    frame = pd.DataFrame(rows, columns=["round_id", "event", "item_id", "label", "outcome"])
    return schema.conform(frame.reindex(columns=list(schema.LEDGER)), schema.LEDGER)


def test_a_confirmed_label_stays_confirmed_until_a_new_vote_or_label_change():
    events = _events(
        [
            (1, "label", "x", "cat", "accepted"),
            (2, "flagged", "x", "cat", "exclude"),
            (3, "relabel", "x", "cat", "accepted"),
            (3, "resolved", "x", "cat", "confirmed"),
            (1, "label", "y", "cat", "accepted"),
            (3, "resolved", "y", "dog", "changed"),
            (1, "label", "z", "cat", "accepted"),
            (3, "resolved", "z", "cat", "confirmed"),
            (5, "relabel", "z", "dog", "accepted"),
        ]
    )
    current = pd.DataFrame({"item_id": ["x", "y", "z"], "label": ["cat", "dog", "cat"]})
    assert get_confirmed_ids(events, current).tolist() == ["x"]
    # x's label changed since (e.g. by consensus with other votes): no longer confirmed
    changed = current.assign(label=["dog", "dog", "cat"])
    assert get_confirmed_ids(events, changed).tolist() == []
    assert get_confirmed_ids(events.iloc[:0], current).tolist() == []
    assert get_confirmed_ids(events, current.iloc[:0]).tolist() == []


def test_a_doubted_confirmed_label_gets_no_flag_record_but_a_ledger_event():
    found = pd.DataFrame(
        {
            "item_id": ["x", "w"],
            "given_label": ["cat", "dog"],
            "suggested_label": ["dog", "cat"],
            "label_quality": [0.1, 0.2],
            "confirmed": [True, False],
        }
    )
    records = get_flag_records(found, round_id=6, params=FlagParams())
    assert records["item_id"].tolist() == ["w"]
    kept = found[found["confirmed"]]
    events = get_flag_events(records, round_id=6, kept=kept)
    assert events["outcome"].tolist() == ["exclude", CONFIRMED_KEPT]
    assert "second opinion confirmed" in events["detail"].iloc[1]


# -- evaluate ------------------------------------------------------------------------------
def test_the_candidate_is_judged_against_the_champion_from_before_this_round():
    old = SavedModel("old-model", {"promoted_in_round": 2})
    promoted_now = SavedModel("new-model", {"promoted_in_round": 5}, previous=old)
    assert get_champion_before(promoted_now, round_id=5) is old  # a rerun of round 5
    assert get_champion_before(promoted_now, round_id=6) is promoted_now
    first = SavedModel("m", {"promoted_in_round": 5})
    assert get_champion_before(first, round_id=5).text is None  # there was none before


def test_the_new_champion_keeps_the_one_it_replaced():
    candidate = SavedModel("cand", {"round_id": 5})
    before = SavedModel("champ", {"promoted_in_round": 2})
    won = Evaluation({"macro_f1": 0.9}, {"macro_f1": 0.8}, True, "passes")
    new = get_new_champion(won, candidate, before, round_id=5)
    assert new.text == "cand" and new.meta == {"promoted_in_round": 5, "macro_f1": 0.9}
    assert new.previous.text == "champ"
    lost = Evaluation({"macro_f1": 0.7}, {"macro_f1": 0.8}, False, "fails")
    kept = get_new_champion(lost, candidate, before, round_id=5)
    assert kept.text == "champ" and kept.previous is None
    none = get_new_champion(lost, SavedModel(), SavedModel(), round_id=1)
    assert none.text is None and none.meta == {"promoted_in_round": None}


# -- select and export ---------------------------------------------------------------------
def test_the_select_summary_counts_the_items_never_issued():
    # a pool of a, b, c, d with a issued: 3 never issued before the batch
    batch = pd.DataFrame({"item_id": ["c"], "reason": ["active"]})
    summary = get_select_summary(batch, _issued([("a", 1, "train")]), 3)
    assert (summary.unlabeled_left, summary.n_active, summary.issued_total) == (2, 1, 2)
    assert summary.parts == {"active": 1}


def test_a_second_opinion_goes_out_blind_unless_asked(tmp_path):
    batch = schema.conform(
        pd.DataFrame(
            {
                "item_id": ["1", "2"],
                "split": "train",
                "reason": ["relabel", "active"],
                "utility": [np.nan, 0.4],
                "predicted_label": ["b", "a"],
                "confidence": [0.9, 0.6],
            }
        ),
        schema.BATCH,
    )
    rows = pd.DataFrame({"item_id": ["1", "2"], "x": [1.0, 2.0]}).astype({"item_id": "string"})
    table, records, tasks = export_batch(batch, rows, round_id=3, params=ExportParams())
    blind = {r["item_id"]: r for r in records}["1"]
    assert blind["predicted_label"] is None and blind["confidence"] is None
    assert "predictions" not in next(t for t in tasks if t["data"]["item_id"] == "1")
    assert table.set_index("item_id").loc["1", "predicted_label"] is pd.NA
    shown = ExportParams(blind_second_opinion=False)
    _, records, _ = export_batch(batch, rows, round_id=3, params=shown)
    assert {r["item_id"]: r for r in records}["1"]["predicted_label"] == "b"


def _summaries(unlabeled_left=40):
    return RoundSummaries(
        validate=ValidateSummary(2, 0, 0, 10, 9, 1, {"unknown_item": 1}),
        merge=MergeSummary(9, 0, 1, 0, 9, "majority", "", 9, 7, 2, 0, 1),
        evaluate=EvaluateSummary(3, 2, 7, {"macro_f1": 0.75}, None, True, "first model", 3),
        select=SelectSummary(5, 0, 3, 1, 1, 0, 14, unlabeled_left),
    )


def test_the_report_says_when_the_pool_is_exhausted():
    assert "exhausted" not in get_round_report(3, _summaries(), [])
    report = get_round_report(3, _summaries(unlabeled_left=0), [])
    assert "the pool is exhausted" in report and "alloop pool add" in report


def test_the_report_counts_every_ledger_event_of_the_round_and_says_why_flags_were_not_checked():
    # merge: 9 labels, 1 rejected, 2 resolved, 4 consensus, 1 skip; flag: 3 flagged, 1 kept
    merge = MergeSummary(9, 0, 1, 2, 4, "majority", "", 9, 7, 2, 0, 1, events_skip=1)
    flag = FlagSummary(7, 3, "exclude", "", 50, 21, confirmed_kept=1)
    report = get_round_report(3, replace(_summaries(), merge=merge, flag=flag), [])
    line = next(line for line in report.splitlines() if line.startswith("- ledger: "))
    added, parts = re.fullmatch(r"- ledger: 50 events \(\+(\d+): (.*)\)", line).groups()
    assert sum(int(part.split()[0]) for part in parts.split(", ")) == int(added) == 21, line
    assert "4 consensus labels set or changed, 4 flags" in line

    why = "12 training labels, fewer than flag.min_labels=50"
    skipped = FlagSummary(0, 0, "exclude", why, 9, 9)
    report = get_round_report(3, replace(_summaries(), flag=skipped), [])
    assert (
        "- flagged: 0 of 0 checked (handling: exclude); not checked: 12 training labels, "
        "fewer than flag.min_labels=50" in report
    )
    assert "(handling: exclude)\n" in get_round_report(3, replace(_summaries(), flag=flag), [])


def test_the_history_row_carries_the_trend():
    row = get_history_row(3, _summaries()).iloc[0]
    assert (row["round_id"], row["labeled_items"], row["batch_size"]) == (3, 9, 5)
    assert row["test_macro_f1"] == row["champion_macro_f1"] == pytest.approx(0.75)
    assert pd.isna(get_history_row(1, RoundSummaries()).iloc[0]["test_macro_f1"])


def test_a_summary_missing_a_field_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="select"):
        SelectSummary.from_dict({"batch_size": 3})
    summary = SelectSummary.from_dict({**_summaries().select.to_dict(), "from_a_newer": 1})
    assert summary == _summaries().select
