"""Stage 2, merge: append accepted labels to the ledger and resolve every item's label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks import schema
from tasks.catalog import write_json
from tasks.context import StageContext, StageSpec, stage_task
from tasks.params import MergeParams

STAGE = StageSpec(
    name="merge",
    deps=("tasks/merge.py", "data/interim/accepted.parquet"),
    params=("merge",),
    outs=("data/labels/current.parquet",),
    persist=("data/labels/ledger.parquet",),
    metrics=("reports/merge.json",),
)


def merge_labels(ledger: pd.DataFrame, accepted: pd.DataFrame, *, round_id: int) -> pd.DataFrame:
    """Append ``accepted`` rows to ``ledger`` as the events of round ``round_id``.

    Events of ``round_id`` or later already in ``ledger`` (a rerun of the same round) are
    replaced, so the result is the same however often the round runs; events of earlier
    rounds are never changed. An annotator's first vote on an item is a ``label`` event, a
    later one a ``relabel``.

    Returns
    -------
    pd.DataFrame
        The new ledger (schema :data:`tasks.schema.LEDGER`), earlier events first.
    """
    if round_id < 1:
        raise ValueError(f"round_id must be >= 1, got {round_id}")
    prior = schema.conform(ledger, schema.LEDGER)
    prior = prior[prior["round_id"] < round_id]
    events = schema.conform(accepted, schema.ACCEPTED)
    seen = set(zip(prior["item_id"], prior["annotator"], strict=True))
    pairs = list(zip(events["item_id"], events["annotator"], strict=True))
    # a pair labeled twice in one round was refused by validate, so only earlier rounds count
    kind = ["relabel" if pair in seen else "label" for pair in pairs]
    new = events.assign(
        event_id=[f"r{round_id:04d}-{seq:06d}" for seq in range(1, len(events) + 1)],
        round_id=round_id,
        event=kind,
    )
    return schema.conform(pd.concat([prior, schema.conform(new, schema.LEDGER)]), schema.LEDGER)


def get_current_labels(
    ledger: pd.DataFrame, issued: pd.DataFrame, *, params: MergeParams
) -> pd.DataFrame:
    """Resolve the label of every labeled item from its votes.

    Each annotator's latest vote counts once; the class with most votes wins, and a tie goes
    to the class whose latest vote is the most recent (``params.tie_rule == "latest"``). The
    split is the one the item was first issued with: an item issued as a test item stays one.

    Returns
    -------
    pd.DataFrame
        Schema :data:`tasks.schema.CURRENT`, sorted by ``item_id``; ``agreement`` in (0, 1].
    """
    if params.tie_rule != "latest":  # the only rule so far; the params type admits no other
        raise ValueError(f"unknown tie rule {params.tie_rule!r}")
    events = schema.conform(ledger, schema.LEDGER)
    if events.empty:
        return schema.empty(schema.CURRENT)
    # the ledger is in event order, so "last" is the latest vote
    events = events.assign(order=np.arange(len(events)))
    votes = events.groupby(["item_id", "annotator"], sort=False).tail(1)
    tally = (
        votes.groupby(["item_id", "label"])
        .agg(count=("order", "size"), latest=("order", "max"))
        .reset_index()
        .sort_values(["item_id", "count", "latest"], ascending=[True, False, False])
    )
    totals = votes.groupby("item_id").agg(n_votes=("order", "size"), last_round=("round_id", "max"))
    winners = tally.drop_duplicates("item_id").set_index("item_id")
    first_issue = (
        schema.conform(issued, schema.ISSUED)
        .sort_values(["round_id"], kind="stable")
        .drop_duplicates("item_id")
        .set_index("item_id")["split"]
    )
    current = totals.join(winners[["label", "count"]]).reset_index()
    split = current["item_id"].map(first_issue)
    if split.isna().any():
        missing = current.loc[split.isna(), "item_id"].head(5).tolist()
        raise ValueError(f"labeled items {missing} were never issued; validate must refuse them")
    current = current.assign(split=split, agreement=current["count"] / current["n_votes"])
    return schema.conform(current.sort_values("item_id"), schema.CURRENT)


@stage_task("merge")
def run(ctx: StageContext) -> dict[str, object]:
    """Read the accepted rows and the ledger, merge, and write ledger, labels and summary."""
    cat = ctx.catalog
    ledger_before = cat.read_table(cat.ledger, schema.LEDGER)
    accepted = cat.read_table(cat.accepted, schema.ACCEPTED)
    issued = cat.read_table(cat.issued, schema.ISSUED)
    issued = issued[issued["round_id"] < ctx.round_id]
    ledger = merge_labels(ledger_before, accepted, round_id=ctx.round_id)
    current = get_current_labels(ledger, issued, params=ctx.params.merge)
    cat.write_table(cat.ledger, ledger, schema.LEDGER)
    cat.write_table(cat.current, current, schema.CURRENT)
    new_events = ledger[ledger["round_id"] == ctx.round_id]
    summary: dict[str, object] = {
        "events_added": int(len(new_events)),
        "relabels": int((new_events["event"] == "relabel").sum()),
        "ledger_events": int(len(ledger)),
        "labeled_items": int(len(current)),
        "train_items": int((current["split"] == "train").sum()),
        "test_items": int((current["split"] == "test").sum()),
        "items_in_disagreement": int((current["agreement"] < 1.0).sum()),
    }
    write_json(cat.reports_dir / "merge.json", summary)
    return summary
