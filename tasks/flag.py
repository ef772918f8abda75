"""Stage 3, flag: find likely mislabels among the training labels with cleanlab.

Out-of-fold predicted probabilities come from the same LightGBM model that train fits, so an
item is judged by a model that never saw its label. Test labels are never auto-cleaned: they
are the yardstick, and a yardstick corrected by the model being measured is worthless.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from tasks import schema
from tasks.catalog import write_json
from tasks.context import StageContext, StageSpec, stage_task
from tasks.faults import crash_point
from tasks.model import encode_labels, get_feature_frame, get_out_of_fold_pred_probs
from tasks.params import FlagParams, TrainParams

STAGE = StageSpec(
    name="flag",
    deps=(
        "tasks/flag.py",
        "tasks/model.py",
        "data/labels/current.parquet",
        "data/interim/events.parquet",
        "data/pool",
    ),
    params=("project", "flag", "train"),
    persist=("data/labels/flags.parquet", "data/labels/ledger.parquet"),
    metrics=("reports/flag.json",),
)


def find_mislabels(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    train_params: TrainParams,
    random_state: int,
) -> tuple[pd.DataFrame, str]:
    """Find training labels that are likely wrong.

    Parameters
    ----------
    labeled_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of the training items, shape (n, 1 + d).
    labels : pd.Series of str, shape (n,)
        The current label of each row, aligned with ``labeled_rows``.

    Returns
    -------
    (pd.DataFrame, str)
        The flagged items (``item_id``, ``given_label``, ``suggested_label``,
        ``label_quality`` in [0, 1], lower = more likely wrong), worst first; and a sentence
        saying why nothing was checked when that is the case (empty otherwise).
    """
    columns = ["item_id", "given_label", "suggested_label", "label_quality"]
    none = pd.DataFrame(
        {c: pd.Series(dtype="float64" if c == "label_quality" else "string") for c in columns}
    )
    if len(labeled_rows) != len(labels):
        raise ValueError(f"labeled_rows has {len(labeled_rows)} rows but labels has {len(labels)}")
    if not params.enabled:
        return none, "flagging is disabled (flag.enabled: false)"
    if len(labels) < params.min_labels:
        return (
            none,
            f"{len(labels)} training labels, fewer than flag.min_labels={params.min_labels}",
        )
    codes = encode_labels(labels.reset_index(drop=True), classes)
    present = np.unique(codes)
    if present.size < 2:
        return none, "the training labels hold a single class"
    # cleanlab wants classes 0..k-1 with every one present: compress to the classes seen
    compact = np.searchsorted(present, codes)
    n_folds = int(min(params.cv_folds, np.bincount(compact).min()))
    if n_folds < 2:
        return none, "a class has a single training label: no out-of-fold estimate possible"
    features = get_feature_frame(labeled_rows.reset_index(drop=True))
    pred_probs = get_out_of_fold_pred_probs(
        features,
        compact,
        n_classes=present.size,
        n_folds=n_folds,
        train_params=train_params,
        random_state=random_state,
    )
    issues = find_label_issues(
        labels=compact, pred_probs=pred_probs, filter_by=params.filter_by, n_jobs=1
    )
    quality = get_label_quality_scores(compact, pred_probs)
    flagged = np.flatnonzero(issues)
    cap = int(params.max_fraction * labels.size)
    # the most doubtful first; equal qualities in row order, so the cut is deterministic
    flagged = flagged[np.argsort(quality[flagged], kind="stable")][:cap]
    found = pd.DataFrame(
        {
            "item_id": labeled_rows["item_id"].to_numpy()[flagged],
            "given_label": labels.to_numpy()[flagged],
            "suggested_label": [classes[present[k]] for k in pred_probs[flagged].argmax(axis=1)],
            "label_quality": quality[flagged],
        }
    ).astype({"item_id": "string", "given_label": "string", "suggested_label": "string"})
    return found.sort_values(["label_quality", "item_id"]).reset_index(drop=True), ""


def get_flag_records(found: pd.DataFrame, *, round_id: int, params: FlagParams) -> pd.DataFrame:
    """Turn found issues into this round's flag records with the weight train applies."""
    weight = {"exclude": 0.0, "downweight": params.downweight, "keep": 1.0}[params.handling]
    return schema.conform(
        found.assign(round_id=round_id, handling=params.handling, weight=weight), schema.FLAGS
    )


def get_flag_events(records: pd.DataFrame, *, round_id: int) -> pd.DataFrame:
    """The ledger's ``flagged`` events for this round's flag records."""
    return pd.DataFrame(
        {
            "round_id": round_id,
            "event": "flagged",
            "item_id": records["item_id"].to_numpy(),
            "label": records["given_label"].to_numpy(),
            "outcome": records["handling"].to_numpy(),
            "detail": [
                f"cleanlab suggests {s!r} (label quality {q:.3f})"
                for s, q in zip(records["suggested_label"], records["label_quality"], strict=True)
            ],
        }
    )


def append_round(
    ledger: pd.DataFrame, events: pd.DataFrame, flagged: pd.DataFrame, *, round_id: int
) -> pd.DataFrame:
    """The ledger with this round's events appended after every earlier round's, unchanged.

    Events of this round already in ``ledger`` (the round ran before) are replaced, so the
    ledger gets exactly one copy of each round.
    """
    prior = schema.conform(ledger, schema.LEDGER)
    prior = prior[prior["round_id"] < round_id]
    mine = schema.conform(events, schema.LEDGER)
    if (mine["round_id"] != round_id).any():
        raise ValueError(f"events of another round than {round_id} in this round's events")
    flagged = schema.number_events(flagged, round_id=round_id, start=len(mine) + 1)
    return schema.conform(pd.concat([prior, mine, flagged], ignore_index=True), schema.LEDGER)


@stage_task("flag")
def run(ctx: StageContext) -> dict[str, object]:
    cat = ctx.catalog
    current = cat.read_table(cat.current, schema.CURRENT)
    train_labels = current[current["split"] == "train"]
    rows = cat.read_pool(train_labels["item_id"])
    rows = rows.set_index("item_id").loc[train_labels["item_id"]].reset_index()
    found, skipped = find_mislabels(
        rows,
        train_labels["label"].reset_index(drop=True),
        classes=ctx.params.project.classes,
        params=ctx.params.flag,
        train_params=ctx.params.train,
        random_state=ctx.random_state("flag"),
    )
    records = get_flag_records(found, round_id=ctx.round_id, params=ctx.params.flag)
    history = cat.read_table(cat.flags, schema.FLAGS)
    history = pd.concat([history[history["round_id"] < ctx.round_id], records])
    ledger = append_round(
        cat.read_table(cat.ledger, schema.LEDGER),
        cat.read_table(cat.events, schema.LEDGER),
        get_flag_events(records, round_id=ctx.round_id),
        round_id=ctx.round_id,
    )
    cat.write_table(cat.flags, history, schema.FLAGS)
    crash_point("during:flag")
    cat.write_table(cat.ledger, ledger, schema.LEDGER)
    summary: dict[str, object] = {
        "checked": 0 if skipped else int(len(train_labels)),
        "flagged": int(len(records)),
        "handling": ctx.params.flag.handling,
        "skipped_because": skipped,
        "ledger_events": int(len(ledger)),
        "ledger_events_added": int((ledger["round_id"] == ctx.round_id).sum()),
    }
    write_json(cat.reports_dir / "flag.json", summary)
    return summary
