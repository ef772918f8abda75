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
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.ledger import get_active_events
from tasks.model import encode_labels, get_feature_frame, get_out_of_fold_pred_probs
from tasks.params import FlagParams, TrainParams
from tasks.summaries import FlagSummary

STAGE = StageSpec(
    name="flag",
    module=__name__,
    code=("tasks/model.py", "tasks/ledger.py"),
    reads=("current", "events", "pool"),
    writes=("flags", "ledger", "flag_report"),
    params=("project", "flag", "train"),
)


def find_mislabels(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    train_params: TrainParams,
    random_state: int,
    confirmed_ids: pd.Series | None = None,
) -> tuple[pd.DataFrame, str]:
    """Find training labels that are likely wrong.

    Parameters
    ----------
    labeled_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of the training items, shape (n, 1 + d).
    labels : pd.Series of str, shape (n,)
        The current label of each row, aligned with ``labeled_rows``.
    confirmed_ids : pd.Series of str, optional
        Items whose label a second opinion confirmed (see :func:`get_confirmed_ids`): they
        still train the out-of-fold models, but are not flagged again; the ones cleanlab
        doubts are returned with ``confirmed`` true, outside the ``max_fraction`` cap.

    Returns
    -------
    (pd.DataFrame, str)
        The items found (``item_id``, ``given_label``, ``suggested_label``,
        ``label_quality`` in [0, 1], lower = more likely wrong, ``confirmed``), worst first;
        and a sentence saying why nothing was checked when that is the case (empty
        otherwise).
    """
    columns = {
        "item_id": "string",
        "given_label": "string",
        "suggested_label": "string",
        "label_quality": "float64",
        "confirmed": "bool",
    }
    none = schema.empty(columns)
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
    confirmed = (
        schema.is_in(labeled_rows["item_id"].reset_index(drop=True), confirmed_ids)
        if confirmed_ids is not None
        else np.zeros(len(labels), dtype=bool)
    )
    doubted = np.flatnonzero(issues & ~confirmed)
    cap = int(params.max_fraction * labels.size)
    # the most doubtful first; equal qualities in row order, so the cut is deterministic
    doubted = doubted[np.argsort(quality[doubted], kind="stable")][:cap]
    flagged = np.concatenate([doubted, np.flatnonzero(issues & confirmed)])
    found = pd.DataFrame(
        {
            "item_id": labeled_rows["item_id"].to_numpy()[flagged],
            "given_label": labels.to_numpy()[flagged],
            "suggested_label": [classes[present[k]] for k in pred_probs[flagged].argmax(axis=1)],
            "label_quality": quality[flagged],
            "confirmed": confirmed[flagged],
        }
    ).astype(columns)
    return found.sort_values(["label_quality", "item_id"]).reset_index(drop=True), ""


def get_confirmed_ids(events: pd.DataFrame, current: pd.DataFrame) -> pd.Series:
    """Items whose current label a second opinion confirmed after a flag, with no vote since.

    Parameters
    ----------
    events : pd.DataFrame
        Active ledger events in order (earlier rounds' and this round's), schema LEDGER.
    current : pd.DataFrame
        Schema CURRENT: the resolved labels now.

    Returns
    -------
    pd.Series of str
        Items whose last ``resolved`` event is ``confirmed``, whose label is still the one
        confirmed, and that got no vote in a round after the confirmation. A new vote (or a
        changed label) ends the confirmation: the item can be flagged again.
    """
    resolved = events[events["event"] == "resolved"].drop_duplicates("item_id", keep="last")
    confirmed = resolved[resolved["outcome"] == "confirmed"]
    votes = events[events["event"].isin(["label", "relabel"])]
    last_vote = votes.groupby("item_id")["round_id"].max()
    label_now = current.set_index("item_id")["label"]
    ids = confirmed["item_id"].astype("string")
    voted = ids.map(last_vote).astype("float64").to_numpy()
    no_vote_since = ~(voted > confirmed["round_id"].to_numpy(dtype="float64"))  # NaN: none
    same_label = (ids.map(label_now).astype("string") == confirmed["label"]).fillna(False)
    still = no_vote_since & same_label.to_numpy(dtype=bool)
    return ids[still].reset_index(drop=True)


def get_flag_records(found: pd.DataFrame, *, round_id: int, params: FlagParams) -> pd.DataFrame:
    """Turn found issues into this round's flag records with the weight train applies.
    Confirmed labels (``confirmed`` true) get no record: they keep their full weight."""
    if "confirmed" in found.columns:
        found = found[~found["confirmed"].to_numpy(dtype=bool)]
    weight = {"exclude": 0.0, "downweight": params.downweight, "keep": 1.0}[params.handling]
    return schema.conform(
        found.assign(round_id=round_id, handling=params.handling, weight=weight), schema.FLAGS
    )


#: the outcome of a ``flagged`` event for a label cleanlab doubted but a second opinion had
#: confirmed: recorded for the auditor, and nothing else is done
CONFIRMED_KEPT = "kept_confirmed"


def get_flag_events(
    records: pd.DataFrame, *, round_id: int, kept: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The ledger's ``flagged`` events for this round's flag records, then one per confirmed
    label that cleanlab doubted again (``kept``: rows of :func:`find_mislabels` with
    ``confirmed`` true), whose outcome is :data:`CONFIRMED_KEPT`."""
    kept = kept if kept is not None else records.iloc[:0]

    def detail(frame: pd.DataFrame, suffix: str) -> list[str]:
        return [
            f"cleanlab suggests {s!r} (label quality {q:.3f}){suffix}"
            for s, q in zip(frame["suggested_label"], frame["label_quality"], strict=True)
        ]

    return pd.DataFrame(
        {
            "round_id": round_id,
            "event": "flagged",
            "item_id": [*records["item_id"], *kept["item_id"]],
            "label": [*records["given_label"], *kept["given_label"]],
            "outcome": [*records["handling"], *[CONFIRMED_KEPT] * len(kept)],
            "detail": [
                *detail(records, ""),
                *detail(kept, "; kept: a second opinion confirmed it, and no vote came since"),
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


def run(ctx: StageContext) -> FlagSummary:
    current = ctx.load("current")
    events = ctx.load("events")
    earlier = ctx.load_before("ledger")
    train_labels = current[current["split"] == "train"].reset_index(drop=True)
    found, skipped = find_mislabels(
        ctx.pool_rows(train_labels["item_id"]),
        train_labels["label"],
        classes=ctx.params.project.classes,
        params=ctx.params.flag,
        train_params=ctx.params.train,
        random_state=ctx.random_state("flag"),
        confirmed_ids=get_confirmed_ids(
            pd.concat([get_active_events(earlier), events], ignore_index=True), current
        ),
    )
    records = get_flag_records(found, round_id=ctx.round_id, params=ctx.params.flag)
    kept = found[found["confirmed"].to_numpy(dtype=bool)]
    ledger = append_round(
        earlier,
        events,
        get_flag_events(records, round_id=ctx.round_id, kept=kept),
        round_id=ctx.round_id,
    )
    ctx.save("flags", pd.concat([ctx.load_before("flags"), records], ignore_index=True))
    crash_point("during:flag")
    ctx.save("ledger", ledger)
    summary = FlagSummary(
        checked=0 if skipped else int(len(train_labels)),
        flagged=int(len(records)),
        handling=ctx.params.flag.handling,
        skipped_because=skipped,
        ledger_events=int(len(ledger)),
        ledger_events_added=int((ledger["round_id"] == ctx.round_id).sum()),
        confirmed_kept=int(len(kept)),
    )
    ctx.save("flag_report", summary.to_dict())
    return summary
