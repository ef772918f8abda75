"""Stage 3, flag: find likely mislabels among the training labels with cleanlab.

Out-of-fold predicted probabilities come from the same LightGBM model that train fits (without
its class weights), averaged with a random forest's on the same folds while the labels are few
(tabular spaces), so an item is judged by models that never saw its label; they are saved as
``label_probs`` for select's ActiveLab. A class with fewer labels than folds is left unchecked.
How many labels are flagged is cleanlab's own estimate of the number of label issues, bounded
by ``flag.max_fraction`` on small label sets. Test labels are never auto-cleaned: they are
the yardstick, and a yardstick corrected by the model being measured is worthless.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification import (
    get_label_quality_scores as get_multilabel_quality_scores,
)
from cleanlab.multilabel_classification.filter import (
    find_label_issues as find_multilabel_issues,
)
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import KFold

from tasks import schema
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import FeatureSpace, load_space, take_rows
from tasks.ledger import get_active_events
from tasks.model import (
    encode_labels,
    get_forest_out_of_fold_pred_probs,
    get_out_of_fold_pred_probs,
)
from tasks.multilabel import (
    LabelSets,
    fit_one_vs_rest,
    get_label_matrix,
    get_label_sets,
    get_predicted_sets,
)
from tasks.params import FlagParams, TrainParams
from tasks.summaries import FlagSummary, format_counts

STAGE = StageSpec(
    name="flag",
    module=__name__,
    code=("tasks/model.py", "tasks/features.py", "tasks/multilabel.py", "tasks/ledger.py"),
    reads=("current", "events", "pool", "feature_space"),
    writes=("flags", "ledger", "label_probs", "flag_report"),
    params=("project", "flag", "train"),
)


#: filters whose number of issues is cleanlab's own estimate (``cleanlab.count.num_label_issues``)
#: and whose order is a label quality score (the filter's name without ``low_``)
RANKED_FILTERS = ("low_self_confidence", "low_normalized_margin")

FOUND_COLUMNS = {
    "item_id": "string",
    "given_label": "string",
    "suggested_label": "string",
    "label_quality": "float64",
    "confirmed": "bool",
}


def _why_not_checked(labeled_rows: pd.DataFrame, labels: pd.Series, params: FlagParams) -> str:
    """Why the training labels are not checked this round ("" when they are)."""
    if len(labeled_rows) != len(labels):
        raise ValueError(f"labeled_rows has {len(labeled_rows)} rows but labels has {len(labels)}")
    if not params.enabled:
        return "flagging is disabled (flag.enabled: false)"
    if len(labels) < params.min_labels:
        return f"{len(labels)} training labels, fewer than flag.min_labels={params.min_labels}"
    return ""


def _pick_flags(
    issues: np.ndarray,
    quality: np.ndarray,
    item_ids: pd.Series,
    confirmed_ids: pd.Series | None,
    *,
    params: FlagParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows to flag: the issues not yet confirmed, the most doubtful first and at most
    ``flag.max_fraction`` of the labels below ``flag.estimate_from_labels``, then the
    confirmed issues (outside the bound); and which rows are confirmed."""
    n = issues.size
    confirmed = (
        schema.is_in(item_ids, confirmed_ids)
        if confirmed_ids is not None
        else np.zeros(n, dtype=bool)
    )
    doubted = np.flatnonzero(issues & ~confirmed)
    cap = n if n >= params.estimate_from_labels else int(params.max_fraction * n)
    # the most doubtful first; equal qualities in row order, so the cut is deterministic
    doubted = doubted[np.argsort(quality[doubted], kind="stable")][:cap]
    return np.concatenate([doubted, np.flatnonzero(issues & confirmed)]), confirmed


def get_label_probs(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    train_params: TrainParams,
    random_state: int,
    space: FeatureSpace | None = None,
) -> tuple[pd.DataFrame, str]:
    """Out-of-fold class probabilities of the training labels.

    Each row is predicted by a model fitted on the other folds, without class weights: cleanlab
    (and ActiveLab after it) reads the probabilities as P(label | x), which class weights would
    tilt to the rare classes (flag F1 at 10% wrong labels 0.72 -> 0.78 on average over six
    sets, 0.48 -> 0.59 on adult; bench/README, "Crowd, flags and ActiveLab"). In a tabular
    space, below ``flag.forest_below_labels`` labels, they are the mean of LightGBM's and a
    random forest's of ``flag.forest_trees`` trees on the same folds: while the out-of-fold
    model is weak, cleanlab's count on LightGBM's alone overshoots, and the forest's less
    confident probabilities bring it down (:func:`tasks.model.get_forest_out_of_fold_pred_probs`).
    A text space keeps LightGBM's alone (the forest was measured on tabular sets only).

    Parameters
    ----------
    labeled_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of the training items, shape (n, 1 + d).
    labels : pd.Series of str, shape (n,)
        The current label of each row, aligned with ``labeled_rows``.
    space : FeatureSpace, optional
        The round's feature space (default: tabular).

    Returns
    -------
    (pd.DataFrame, str)
        ``item_id`` and one float column per class of ``classes``, in that order, one row per
        training item in the order given, rows summing to 1 (0 for a class no training label
        has); and a sentence saying why nothing was computed, with an empty frame of those
        columns, when that is the case (empty otherwise). The labels of a class with fewer
        than ``flag.cv_folds`` training labels are not checked: their rows are NaN, and the
        models are fitted without them (a class needs a label in every fold to be learned
        out of fold; one rare class no longer stops the check of all the others).
    """
    columns = {"item_id": "string", **dict.fromkeys(classes, "float64")}
    skipped = _why_not_checked(labeled_rows, labels, params)
    if skipped:
        return schema.empty(columns), skipped
    codes = encode_labels(labels.reset_index(drop=True), classes)
    counts = np.bincount(codes, minlength=len(classes))
    # the model learns the classes with a label in every fold, coded 0..k-1
    present = np.flatnonzero(counts >= params.cv_folds)
    if present.size < 2:
        held = "a single class has" if present.size else "no class has"
        return (
            schema.empty(columns),
            f"{held} flag.cv_folds={params.cv_folds} training labels or more",
        )
    checked = np.isin(codes, present)
    compact = np.searchsorted(present, codes[checked])
    space = space or FeatureSpace()
    features = take_rows(
        space.transform(labeled_rows.reset_index(drop=True)), np.flatnonzero(checked)
    )
    pred_probs = get_out_of_fold_pred_probs(
        features,
        compact,
        n_classes=present.size,
        n_folds=params.cv_folds,
        train_params=train_params.model_copy(update={"class_weight": "none"}),
        random_state=random_state,
        categorical=space.categorical,
    )
    if params.forest_trees and len(labels) < params.forest_below_labels and not space.has_text:
        forest_probs = get_forest_out_of_fold_pred_probs(
            features,
            compact,
            n_classes=present.size,
            n_folds=params.cv_folds,
            n_trees=params.forest_trees,
            n_jobs=train_params.num_threads,
            random_state=random_state,
        )
        pred_probs = (pred_probs + forest_probs) / 2
    probs = np.full((len(labels), len(classes)), np.nan)
    probs[checked] = 0.0
    probs[np.ix_(np.flatnonzero(checked), present)] = pred_probs
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "item_id", labeled_rows["item_id"].astype("string").to_numpy())
    return schema.conform(frame, columns), ""


def get_checked_rows(label_probs: pd.DataFrame, classes: tuple[str, ...]) -> np.ndarray:
    """Which rows of :func:`get_label_probs` were checked (the others are NaN: a class with
    too few labels).

    Returns
    -------
    np.ndarray of bool, shape (len(label_probs),)
    """
    return label_probs[list(classes)].notna().all(axis=1).to_numpy()


def get_unchecked_reason(
    label_probs: pd.DataFrame, labels: pd.Series, *, classes: tuple[str, ...], params: FlagParams
) -> str:
    """Which training labels :func:`get_label_probs` left unchecked, as a sentence ("" when
    none): the labels of each class with fewer than ``flag.cv_folds`` of them."""
    if label_probs.empty:
        return ""
    unchecked = ~get_checked_rows(label_probs, classes)
    if not unchecked.any():
        return ""
    counts = labels[unchecked].value_counts().sort_index()
    n = int(unchecked.sum())
    which = "a class" if len(counts) == 1 else "classes"
    return (
        f"{n} label{'s' if n != 1 else ''} of {which} with fewer than "
        f"flag.cv_folds={params.cv_folds} training labels ("
        + format_counts({repr(str(name)): int(k) for name, k in counts.items()})
        + ")"
    )


def find_mislabels_from_probs(
    label_probs: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    confirmed_ids: pd.Series | None = None,
) -> pd.DataFrame:
    """The training labels cleanlab finds likely wrong, given out-of-fold probabilities.

    How many: with ``flag.filter_by`` ``low_self_confidence`` (the default) or
    ``low_normalized_margin``, cleanlab's own estimate of the number of label issues
    (``cleanlab.count.num_label_issues``), the lowest label quality scores first; with the
    other filters, the items ``cleanlab.filter.find_label_issues`` returns. Below
    ``flag.estimate_from_labels`` labels, at most ``flag.max_fraction`` of them, the most
    doubtful: the safety bound for small label sets, where the estimate counts the weak
    out-of-fold model's own errors.

    Parameters
    ----------
    label_probs : pd.DataFrame
        From :func:`get_label_probs`: ``item_id`` and one column per class, shape (n, 1 + k).
    labels : pd.Series of str, shape (n,)
        The current label of each row, aligned with ``label_probs``.
    confirmed_ids : pd.Series of str, optional
        Items whose label a second opinion confirmed (see :func:`get_confirmed_ids`): the
        ones cleanlab doubts are returned with ``confirmed`` true, outside the cap.

    Returns
    -------
    pd.DataFrame
        The items found (``item_id``, ``given_label``, ``suggested_label``,
        ``label_quality`` in [0, 1], lower = more likely wrong, ``confirmed``), worst first.
    """
    if len(label_probs) != len(labels):
        raise ValueError(f"label_probs has {len(label_probs)} rows but labels has {len(labels)}")
    checked = get_checked_rows(label_probs, classes)
    label_probs = label_probs[checked]
    labels = labels[checked]
    if label_probs.empty:
        return schema.empty(FOUND_COLUMNS)
    codes = encode_labels(labels.reset_index(drop=True), classes)
    present = np.unique(codes)
    # cleanlab wants classes 0..k-1 with every one present: compress to the classes seen
    compact = np.searchsorted(present, codes)
    pred_probs = label_probs[[classes[k] for k in present]].to_numpy(dtype=float)
    pred_probs = pred_probs / pred_probs.sum(axis=1, keepdims=True)
    if params.filter_by in RANKED_FILTERS:
        method = params.filter_by.removeprefix("low_")
        quality = get_label_quality_scores(compact, pred_probs, method=method)
        issues = np.zeros(compact.size, dtype=bool)
        estimate = int(num_label_issues(compact, pred_probs))
        issues[np.argsort(quality, kind="stable")[:estimate]] = True
    else:
        quality = get_label_quality_scores(compact, pred_probs)
        issues = find_label_issues(
            labels=compact, pred_probs=pred_probs, filter_by=params.filter_by, n_jobs=1
        )
    item_ids = label_probs["item_id"].reset_index(drop=True)
    flagged, confirmed = _pick_flags(issues, quality, item_ids, confirmed_ids, params=params)
    found = pd.DataFrame(
        {
            "item_id": item_ids.to_numpy()[flagged],
            "given_label": labels.to_numpy()[flagged],
            "suggested_label": [classes[present[k]] for k in pred_probs[flagged].argmax(axis=1)],
            "label_quality": quality[flagged],
            "confirmed": confirmed[flagged],
        }
    ).astype(FOUND_COLUMNS)
    return found.sort_values(["label_quality", "item_id"]).reset_index(drop=True)


def get_set_label_probs(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    train_params: TrainParams,
    random_state: int,
    label_sets: LabelSets,
    space: FeatureSpace | None = None,
) -> tuple[pd.DataFrame, str]:
    """:func:`get_label_probs` for label sets: each row's per-label probabilities from one
    booster per label fitted on the other folds (:func:`tasks.multilabel.fit_one_vs_rest`),
    without class weights. Same columns; rows do not sum to 1."""
    columns = {"item_id": "string", **dict.fromkeys(classes, "float64")}
    skipped = _why_not_checked(labeled_rows, labels, params)
    if skipped:
        return schema.empty(columns), skipped
    space = space or FeatureSpace()
    matrix = get_label_matrix(labels.astype(str), classes, separator=label_sets.separator)
    features = space.transform(labeled_rows.reset_index(drop=True))
    folds = KFold(n_splits=params.cv_folds, shuffle=True, random_state=random_state % 2**32)
    probs = np.zeros(matrix.shape, dtype=float)
    unweighted = train_params.model_copy(update={"class_weight": "none"})
    for fold, (fit_idx, held_idx) in enumerate(folds.split(matrix)):
        model = fit_one_vs_rest(
            take_rows(features, fit_idx),
            matrix[fit_idx],
            params=unweighted,
            random_state=random_state + 100 * fold,
            categorical=space.categorical,
        )
        probs[held_idx] = model.predict(take_rows(features, held_idx))
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "item_id", labeled_rows["item_id"].astype("string").to_numpy())
    return schema.conform(frame, columns), ""


def find_set_mislabels_from_probs(
    label_probs: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    label_sets: LabelSets,
    confirmed_ids: pd.Series | None = None,
) -> pd.DataFrame:
    """:func:`find_mislabels_from_probs` for label sets: cleanlab's multi-label issue finder
    (``cleanlab.multilabel_classification.filter.find_label_issues``), ranked by its
    multi-label quality score; the same bound below ``flag.estimate_from_labels`` labels; the
    suggestion is the out-of-fold models' predicted set."""
    if len(label_probs) != len(labels):
        raise ValueError(f"label_probs has {len(label_probs)} rows but labels has {len(labels)}")
    if label_probs.empty:
        return schema.empty(FOUND_COLUMNS)
    matrix = get_label_matrix(labels.astype(str), classes, separator=label_sets.separator)
    given = [list(np.flatnonzero(row)) for row in matrix]
    pred_probs = label_probs[list(classes)].to_numpy(dtype=float)
    issues = find_multilabel_issues(labels=given, pred_probs=pred_probs, n_jobs=1)
    quality = get_multilabel_quality_scores(given, pred_probs)
    item_ids = label_probs["item_id"].reset_index(drop=True)
    flagged, confirmed = _pick_flags(issues, quality, item_ids, confirmed_ids, params=params)
    suggested = get_predicted_sets(pred_probs[flagged], classes, separator=label_sets.separator)
    found = pd.DataFrame(
        {
            "item_id": item_ids.to_numpy()[flagged],
            "given_label": labels.to_numpy()[flagged],
            "suggested_label": suggested,
            "label_quality": quality[flagged],
            "confirmed": confirmed[flagged],
        }
    ).astype(FOUND_COLUMNS)
    return found.sort_values(["label_quality", "item_id"]).reset_index(drop=True)


def find_mislabels(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    *,
    classes: tuple[str, ...],
    params: FlagParams,
    train_params: TrainParams,
    random_state: int,
    confirmed_ids: pd.Series | None = None,
    space: FeatureSpace | None = None,
) -> tuple[pd.DataFrame, str]:
    """Find training labels that are likely wrong: :func:`get_label_probs`, then
    :func:`find_mislabels_from_probs`.

    Parameters
    ----------
    labeled_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of the training items, shape (n, 1 + d).
    labels : pd.Series of str, shape (n,)
        The current label of each row, aligned with ``labeled_rows``.
    confirmed_ids : pd.Series of str, optional
        Items whose label a second opinion confirmed (see :func:`get_confirmed_ids`): they
        still train the out-of-fold models, but are not flagged again; the ones cleanlab
        doubts are returned with ``confirmed`` true, outside the bound.

    Returns
    -------
    (pd.DataFrame, str)
        The items found (see :func:`find_mislabels_from_probs`), worst first; and a sentence
        saying why nothing was checked when that is the case (empty otherwise).
    """
    label_probs, skipped = get_label_probs(
        labeled_rows,
        labels,
        classes=classes,
        params=params,
        train_params=train_params,
        random_state=random_state,
        space=space,
    )
    if skipped:
        return schema.empty(FOUND_COLUMNS), skipped
    found = find_mislabels_from_probs(
        label_probs, labels, classes=classes, params=params, confirmed_ids=confirmed_ids
    )
    return found, ""


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
    classes = ctx.params.project.classes
    label_sets = get_label_sets(ctx.params)
    settings = {
        "classes": classes,
        "params": ctx.params.flag,
        "train_params": ctx.params.train,
        "random_state": ctx.random_state("flag"),
        "space": load_space(ctx),
    }
    rows = ctx.pool_rows(train_labels["item_id"])
    label_probs, skipped = (
        get_set_label_probs(rows, train_labels["label"], label_sets=label_sets, **settings)
        if label_sets is not None
        else get_label_probs(rows, train_labels["label"], **settings)
    )
    confirmed_ids = get_confirmed_ids(
        pd.concat([get_active_events(earlier), events], ignore_index=True), current
    )
    found = (
        schema.empty(FOUND_COLUMNS)
        if skipped
        else find_set_mislabels_from_probs(
            label_probs,
            train_labels["label"],
            classes=classes,
            params=ctx.params.flag,
            label_sets=label_sets,
            confirmed_ids=confirmed_ids,
        )
        if label_sets is not None
        else find_mislabels_from_probs(
            label_probs,
            train_labels["label"],
            classes=classes,
            params=ctx.params.flag,
            confirmed_ids=confirmed_ids,
        )
    )
    records = get_flag_records(found, round_id=ctx.round_id, params=ctx.params.flag)
    kept = found[found["confirmed"].to_numpy(dtype=bool)]
    ledger = append_round(
        earlier,
        events,
        get_flag_events(records, round_id=ctx.round_id, kept=kept),
        round_id=ctx.round_id,
    )
    ctx.save("label_probs", label_probs)
    ctx.save("flags", pd.concat([ctx.load_before("flags"), records], ignore_index=True))
    crash_point("during:flag")
    ctx.save("ledger", ledger)
    unchecked = (
        ""
        if skipped or label_sets is not None
        else get_unchecked_reason(
            label_probs, train_labels["label"], classes=classes, params=ctx.params.flag
        )
    )
    summary = FlagSummary(
        checked=0 if skipped else int(get_checked_rows(label_probs, classes).sum()),
        flagged=int(len(records)),
        handling=ctx.params.flag.handling,
        skipped_because=skipped or unchecked,
        ledger_events=int(len(ledger)),
        ledger_events_added=int((ledger["round_id"] == ctx.round_id).sum()),
        confirmed_kept=int(len(kept)),
    )
    ctx.save("flag_report", summary.to_dict())
    return summary
