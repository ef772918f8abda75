"""The tables that flow between stages and rounds: their columns, in one place.

Every table keys items by ``item_id`` as a string, whatever the pool's original id type, so
that ids read back from CSV, JSON or parquet always compare equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ITEM_ID = "item_id"

#: One row per label an annotator sent, as accepted by validate (the input of merge).
ACCEPTED = {
    "item_id": "string",
    "label": "string",  # empty for a skip: the annotator saw the item and sent no label
    "annotator": "string",  # as shown to people: a Label Studio user's email when known
    "labeled_at": "string",  # ISO 8601, UTC; for Label Studio, the annotation's updated_at
    "comment": "string",
    "source_file": "string",
    "source_sha256": "string",
    "source_row": "int64",
    # the labeling tool's own id of the answer (``labelstudio:<annotation id>``); empty for
    # formats without one. With labeled_at it tells an answer already consumed from an update
    "source_key": "string",
    # the tool's own id of the annotator (``labelstudio:<user id>``); empty otherwise. Who an
    # annotator is (relabel, duplicate, conflict, one vote per item) is this id when present
    "annotator_id": "string",
}

#: The append-only audit trail, one row per event:
#:
#: - ``label``: an annotator's first vote on an item; ``relabel``: the same annotator again
#:   (an answer updated in the labeling tool after it was consumed is one too);
#: - ``skip``: an annotator skipped the item (Label Studio's ``was_cancelled``); no label and
#:   never a vote: consensus, flags and label counts ignore it;
#: - ``rejected``: a row validate quarantined (``outcome`` = reason code, ``detail`` = why);
#: - ``flagged``: flag questioned a training label (``outcome`` = how it was handled);
#: - ``resolved``: a flagged item got a new vote (``outcome`` = confirmed or changed);
#: - ``consensus``: the resolved label of an item is new or changed (``detail``: from, to);
#: - ``rollback``: the workspace went back to an earlier round (see ``tasks/ledger.py``).
LEDGER = {
    "event_id": "string",
    "round_id": "int64",
    "event": "string",
    **ACCEPTED,
    "source_row": "Int64",  # none for events that no file row caused
    "outcome": "string",
    "detail": "string",
}

#: Annotator statistics after each round's consensus.
ANNOTATORS = {
    "round_id": "int64",
    "annotator": "string",
    "n_labels": "int64",
    "agreement": "float64",  # share of the annotator's votes that agree with the consensus
    "quality": "float64",  # CROWDLAB's annotator quality in [0, 1]; NaN under majority
    "method": "string",
}

#: Rows that validate refused, with a reason code and a sentence for humans.
QUARANTINED = {
    "source_file": "string",
    "source_sha256": "string",
    "source_row": "int64",
    "item_id": "string",
    "label": "string",
    "annotator": "string",
    "labeled_at": "string",
    "comment": "string",
    "reason_code": "string",
    "reason": "string",
}

#: Every item ever handed to annotators, with the split it was issued with.
ISSUED = {
    "item_id": "string",
    "round_id": "int64",
    "split": "string",  # "train" or "test"
    "reason": "string",  # seed | active | qc | test | relabel
    "utility": "float64",
}

#: The resolved label of every labeled item.
CURRENT = {
    "item_id": "string",
    "label": "string",
    "split": "string",
    "n_votes": "int64",
    "agreement": "float64",  # share of votes that agree with ``label``
    "last_round": "int64",
    "method": "string",  # majority or crowdlab
}

#: Likely mislabels found among the training labels, one row per item and round.
FLAGS = {
    "round_id": "int64",
    "item_id": "string",
    "given_label": "string",
    "suggested_label": "string",
    "label_quality": "float64",  # in [0, 1], lower = more likely wrong
    "handling": "string",  # exclude | downweight | keep
    "weight": "float64",  # sample weight used by train
}

#: Model output and utility for every pool item.
SCORES = {
    "item_id": "string",
    "predicted_label": "string",
    "confidence": "float64",
    "utility": "float64",  # higher = label first, NaN = not selectable
}

#: A batch-spreading strategy's picks (diversity): the utility each pick takes in place of its
#: uncertainty in :data:`SCORES`, ``(b - j) / b`` for the ``j``-th of ``b``.
PICKS = {
    "item_id": "string",
    "utility": "float64",
}

#: The batch chosen this round.
BATCH = {
    "item_id": "string",
    "split": "string",
    "reason": "string",
    "utility": "float64",
    "predicted_label": "string",
    "confidence": "float64",
}

#: One row per round: the trend a person wants to see (``dvc plots show reports/history.csv``).
HISTORY = {
    "round_id": "int64",
    "labeled_items": "int64",
    "train_items": "int64",
    "test_items": "int64",
    "rows_accepted": "int64",
    "rows_quarantined": "int64",
    "flagged": "int64",
    "test_macro_f1": "float64",  # the candidate's; empty before there are test labels
    "champion_macro_f1": "float64",
    "promoted": "boolean",
    "batch_size": "int64",
    "unlabeled_left": "int64",  # pool items never issued, after this round's batch
}


#: The stop set: pool items drawn at random once, on which every round's model predicts.
STOP_SET = {
    "item_id": "string",
    "round_id": "int64",  # the round that drew it
}

#: Each round's model's predictions on the stop set (the stop signal compares rounds).
STOP_PREDICTIONS = {
    "round_id": "int64",
    "item_id": "string",
    "predicted_label": "string",
    "confidence": "float64",
    "entropy": "float64",  # normalized to [0, 1] by log(n_classes)
}

#: One row per pool partition, from the round that first saw it: its size and its drift.
ARRIVALS = {
    "partition": "string",
    "round_id": "int64",
    "items": "int64",
    "checked": "boolean",  # compared with the pool it joined (false: the first, or too few)
    "drift_warning": "boolean",
    "auc": "float64",
    "p_value": "float64",
    "shifted_features": "string",  # comma-separated
}

#: One row per round: the rating, its factors and the stop signal over rounds.
HEALTH_HISTORY = {
    "round_id": "int64",
    "train_items": "int64",
    "rating": "float64",
    "balance": "float64",
    "coverage": "float64",
    "all_labels": "float64",
    "worst_labels": "float64",
    "balance_auc": "float64",
    "kappa": "float64",
    "kappa_mean": "float64",
    "changed_share": "float64",
    "mean_entropy": "float64",
    "noise_kappa": "float64",
    "drop_kappa": "float64",
    "class_kappa_min": "float64",
    "stop_advised": "boolean",
    "explore_fraction": "float64",
    "rebalance_fraction": "float64",
    "drift_warning": "boolean",
}


#: Columns a table gained after workspaces were made: a file written before lacks them and is
#: read with them empty (its rows are never rewritten to fill them). Any other missing column
#: is an error. source_key and annotator_id: ACCEPTED and LEDGER, with Label Studio intake;
#: noise_kappa, drop_kappa and class_kappa_min: HEALTH_HISTORY, with the stop signal's
#: plateau and class guard.
ADDED_LATER: frozenset[str] = frozenset(
    {"source_key", "annotator_id", "noise_kappa", "drop_kappa", "class_kappa_min"}
)


def get_annotator_key(frame: pd.DataFrame) -> pd.Series:
    """Who sent each row, as "the same annotator" is told: the tool's user id
    (``annotator_id``) when there is one, else the name (``annotator``). One Label Studio user
    is one annotator whether or not his email was known when his answers came in."""
    names = frame["annotator"].astype("string")
    if "annotator_id" not in frame.columns:
        return names
    return frame["annotator_id"].astype("string").fillna(names)


def empty(schema: dict[str, str]) -> pd.DataFrame:
    """An empty frame with the columns and dtypes of ``schema``."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in schema.items()})


def conform(frame: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """Return ``frame`` with exactly the columns of ``schema``, in order, with its dtypes.

    A missing column of :data:`ADDED_LATER` (a table written before it existed) is added,
    empty.

    Raises
    ------
    ValueError
        If any other column of ``schema`` is missing from ``frame``.
    """
    missing = [name for name in schema if name not in frame.columns]
    if missing and set(missing) <= ADDED_LATER:
        frame = frame.assign(**{name: pd.Series(pd.NA, index=frame.index) for name in missing})
        missing = []
    if missing:
        raise ValueError(f"table is missing columns {missing}; has {list(frame.columns)}")
    if list(frame.columns) == list(schema) and all(
        frame[name].dtype == pd.api.types.pandas_dtype(dtype) for name, dtype in schema.items()
    ):  # already conformant (e.g. a frame conform made): skip the column copy and the casts
        return frame.reset_index(drop=True)
    return frame.loc[:, list(schema)].astype(schema).reset_index(drop=True)


def is_in(values: pd.Series, universe: pd.Series) -> np.ndarray:
    """Whether each of ``values`` occurs in ``universe`` (ids as text; missing is never in).

    pandas 3's ``Series.isin`` on string columns loops over ``universe`` in Python: 1.9 s for
    20 ids against a pool of 200,000. Arrow's hash lookup takes milliseconds.

    Returns
    -------
    np.ndarray of bool, shape (len(values),)
    """
    found = pc.is_in(
        pa.array(values.astype("string")), value_set=pa.array(universe.astype("string"))
    )
    return found.fill_null(False).to_numpy(zero_copy_only=False)


def number_events(events: pd.DataFrame, *, round_id: int, start: int = 1) -> pd.DataFrame:
    """The round's events as ledger rows with ids ``rNNNN-SSSSSS``, in order, from ``start``;
    fields an event does not have are empty."""
    ids = [f"r{round_id:04d}-{seq:06d}" for seq in range(start, start + len(events))]
    numbered = events.assign(event_id=ids, round_id=round_id).reindex(columns=list(LEDGER))
    return conform(numbered, LEDGER)
