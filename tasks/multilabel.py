"""Items that carry several labels (issue 19): label sets, one booster per label, and the
metrics of a multi-label model. Pure functions; no files.

A label set is written, wherever alloop writes one (the ledger, exports), as its classes in
the order of ``project.classes`` joined by the set separator (``earn|grain``): one set has one
spelling, so equal sets compare equal as text. :func:`check_label_set` says what is wrong with
a set an annotator sent (a class outside the declared set, no class, a class twice).

The model is one LightGBM booster per label (:class:`OneVsRestModel`), each a binary model on
the same features; a label that no training item has, or that every training item has, is a
constant. Its predictions are independent probabilities per label, ``(n, n_labels)``, rows
not summing to 1. The metrics are those of the mission's benchmark (mean average precision
over labels) beside micro- and macro-F1 at a threshold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score

from tasks.features import Features, count_rows
from tasks.model import get_item_weights, get_lgb_params, train_booster
from tasks.params import Params, TrainParams

#: Reasons a label set is refused (validate's reason codes).
UNKNOWN_LABEL = "unknown_class"
EMPTY_SET = "empty_label_set"
DUPLICATE_LABEL = "duplicate_label"
#: The format tag of a serialized :class:`OneVsRestModel` (a booster's text never starts so).
FORMAT = "alloop-one-vs-rest"


@dataclass(frozen=True)
class LabelSets:
    """A multilabel project's way of writing a set (``project.label_separator``); the stages
    take one (None: one class per item)."""

    separator: str


def get_label_sets(params: Params) -> LabelSets | None:
    """The project's :class:`LabelSets`, or None when its items carry one class."""
    if params.project.task != "multilabel":
        return None
    return LabelSets(params.project.label_separator)


def split_label_set(value: object, *, separator: str) -> list[str]:
    """The labels of one answer as sent: a list (JSONL, Label Studio's multi-choice) or a text
    of labels joined by ``separator`` (CSV); each label stripped, empty pieces kept out, order
    and repeats kept (:func:`check_label_set` judges them)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        pieces = value.split(separator) if separator else [value]
    elif isinstance(value, Sequence | np.ndarray | pd.Series):
        pieces = [str(v) for v in value if v is not None]
    else:
        pieces = [str(value)]
    return [p.strip() for p in pieces if p.strip()]


def check_label_set(labels: Sequence[str], classes: Sequence[str]) -> tuple[str, str] | None:
    """What is wrong with a label set: ``(reason code, sentence)``, or None when it is good.

    Checked in this order: no label at all, a label outside ``classes`` (each named), a label
    twice.
    """
    if not labels:
        return EMPTY_SET, "the label set is empty: an item carries at least one label"
    unknown = [label for label in labels if label not in classes]
    if unknown:
        return UNKNOWN_LABEL, (
            f"label set {list(labels)} holds {sorted(set(unknown))}, not among the classes "
            f"{list(classes)}"
        )
    seen = pd.Series(list(labels))
    twice = sorted(set(seen[seen.duplicated()]))
    if twice:
        return DUPLICATE_LABEL, f"label set {list(labels)} holds {twice} more than once"
    return None


def to_label_text(labels: Sequence[str], classes: Sequence[str], *, separator: str) -> str:
    """The one spelling of a good label set: its classes in the order of ``classes``."""
    chosen = set(labels)
    return separator.join(c for c in classes if c in chosen)


def read_label_sets(
    labels: pd.Series,
    classes: Sequence[str],
    *,
    separator: str,
    allow_new_classes: bool = False,
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Label sets as annotators sent them, checked and spelled one way.

    Each value is a text of labels joined by ``separator`` (CSV), or a JSON list (JSONL, a
    Label Studio multi-choice: :func:`tasks.parsing.read_label_file` writes lists so); each
    label is matched to its class's declared spelling as a single label is
    (:func:`tasks.parsing.match_classes`). With ``allow_new_classes`` a label outside
    ``classes`` is kept (after the declared ones, in name order) instead of refused.

    Returns
    -------
    (pd.Series, pd.Series, pd.Series) of str, aligned with ``labels``
        The set as :func:`to_label_text` writes it (NA when missing or refused), the reason
        code of a refused set (NA otherwise) and its sentence.
    """
    from tasks.parsing import match_classes  # parsing is intake's; this module is the model's

    def read(value: object) -> tuple[object, object, object]:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return pd.NA, pd.NA, pd.NA
        raw = _as_list(str(value), separator=separator)
        pieces = match_classes(pd.Series(raw, dtype="string"), classes).tolist()
        known = list(classes) + (sorted(set(pieces) - set(classes)) if allow_new_classes else [])
        problem = check_label_set(pieces, known)
        if problem is not None:
            return pd.NA, *problem
        return to_label_text(pieces, known, separator=separator), pd.NA, pd.NA

    read_rows = [read(value) for value in labels.astype("object")]
    texts, codes, sentences = zip(*read_rows, strict=True) if read_rows else ((), (), ())
    return tuple(
        pd.Series(list(column), index=labels.index, dtype="string")
        for column in (texts, codes, sentences)
    )


def _as_list(text: str, *, separator: str) -> list[str]:
    """A JSON list's items, or ``text`` split by ``separator``."""
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list):
            return split_label_set(value, separator=separator)
    return split_label_set(text, separator=separator)


def get_label_matrix(
    label_texts: Sequence[str] | pd.Series, classes: Sequence[str], *, separator: str
) -> np.ndarray:
    """The 0/1 indicator matrix of label sets written by :func:`to_label_text`.

    Returns
    -------
    np.ndarray of int, shape (n, len(classes))

    Raises
    ------
    ValueError
        If a set holds a label outside ``classes``.
    """
    index = {name: k for k, name in enumerate(classes)}
    matrix = np.zeros((len(label_texts), len(classes)), dtype=int)
    for row, text in enumerate(label_texts):
        for label in split_label_set(text, separator=separator):
            if label not in index:
                raise ValueError(f"label {label!r} of set {text!r} is not among {list(classes)}")
            matrix[row, index[label]] = 1
    return matrix


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OneVsRestModel:
    """One binary booster per label; a label without both outcomes in training is the
    constant share of items that have it (0 or 1).

    Attributes
    ----------
    boosters : tuple of (lgb.Booster or float)
        Per label, in the order of the classes.
    """

    boosters: tuple[lgb.Booster | float, ...]

    def predict(self, features: Features) -> np.ndarray:
        """Per label, the probability that an item has it.

        Returns
        -------
        np.ndarray of float, shape (n, n_labels), values in [0, 1]
        """
        n = count_rows(features)
        columns = [
            np.full(n, float(b)) if isinstance(b, float) else np.asarray(b.predict(features))
            for b in self.boosters
        ]
        return np.column_stack(columns) if columns else np.zeros((n, 0))

    def model_to_string(self) -> str:
        """The model as text (a JSON object holding each booster's own text)."""
        return json.dumps(
            {
                "format": FORMAT,
                "labels": [
                    {"constant": b} if isinstance(b, float) else {"booster": b.model_to_string()}
                    for b in self.boosters
                ],
            }
        )

    @classmethod
    def from_string(cls, text: str) -> OneVsRestModel:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model")
        return cls(
            tuple(
                float(label["constant"])
                if "constant" in label
                else lgb.Booster(model_str=label["booster"])
                for label in data["labels"]
            )
        )


def fit_one_vs_rest(
    features: Features,
    label_matrix: np.ndarray,
    *,
    params: TrainParams,
    random_state: int,
    categorical: Sequence[int] = (),
    sample_weight: np.ndarray | None = None,
) -> OneVsRestModel:
    """Fit one binary booster per column of ``label_matrix`` (shape ``(n, n_labels)``, 0/1),
    each seeded ``random_state + k`` and class-weighted as ``params.class_weight`` says (a
    rare label is a rare positive class); ``sample_weight`` weighs the items (a flagged
    label, down-weighted).

    The features are binned once and the binned dataset serves every label, its labels and
    weights replaced: LightGBM's bins depend on the features alone, so each booster is the one
    :func:`tasks.model.fit_booster` would fit on its own (a test compares them), and 20
    labels of TF-IDF stories fit in about two thirds of the time (bench/README.md)."""
    matrix = np.asarray(label_matrix, dtype=int)
    if matrix.ndim != 2 or matrix.shape[0] != count_rows(features):
        raise ValueError(
            f"label_matrix must have shape (n_items, n_labels) with n_items "
            f"{count_rows(features)}, got {matrix.shape}"
        )
    boosters: list[lgb.Booster | float] = []
    dataset: lgb.Dataset | None = None
    for k in range(matrix.shape[1]):
        column = matrix[:, k]
        if column.min(initial=0) == column.max(initial=0):
            boosters.append(float(column.max(initial=0)))
            continue
        lgb_params = get_lgb_params(
            params, n_labels=column.size, n_classes=2, random_state=random_state + k
        )
        weight = get_item_weights(column, 2, params, sample_weight)
        if dataset is None:
            dataset = lgb.Dataset(
                features,
                label=column,
                weight=weight,
                params={**lgb_params, "verbosity": -1},
                free_raw_data=False,
                categorical_feature=list(categorical) if categorical else "auto",
            ).construct()
        else:
            dataset.set_label(column)
            dataset.set_weight(weight)
        boosters.append(train_booster(lgb_params, dataset, params))
    return OneVsRestModel(tuple(boosters))


# -- metrics -----------------------------------------------------------------------------------
def get_multilabel_metrics(
    label_matrix: np.ndarray, pred_probs: np.ndarray, classes: Sequence[str], *, threshold: float
) -> dict[str, float]:
    """Mean average precision over the labels some test item has (``map``), micro- and
    macro-F1 of the sets predicted at ``threshold`` (macro over the same labels), and each
    such label's average precision (``ap_<label>``).

    A label no test item has has no average precision; it is left out of ``map`` and
    ``macro_f1``, as the benchmark's mean average precision leaves it out.
    """
    truth = np.asarray(label_matrix, dtype=int)
    probs = np.asarray(pred_probs, dtype=float)
    if truth.shape != probs.shape or truth.shape[1] != len(classes):
        raise ValueError(
            f"label_matrix {truth.shape} and pred_probs {probs.shape} must both be "
            f"(n_items, {len(classes)})"
        )
    present = np.flatnonzero(truth.sum(axis=0) > 0)
    predicted = (probs >= threshold).astype(int)
    metrics: dict[str, float] = {}
    for k in present:
        metrics[f"ap_{classes[k]}"] = float(average_precision_score(truth[:, k], probs[:, k]))
    metrics["map"] = (
        float(np.mean([metrics[f"ap_{classes[k]}"] for k in present])) if present.size else 0.0
    )
    metrics["micro_f1"] = float(f1_score(truth, predicted, average="micro", zero_division=0.0))
    metrics["macro_f1"] = (
        float(
            f1_score(truth[:, present], predicted[:, present], average="macro", zero_division=0.0)
        )
        if present.size
        else 0.0
    )
    return metrics


def load_model(text: str) -> lgb.Booster | OneVsRestModel:
    """A model folder's model text: a LightGBM booster, or a :class:`OneVsRestModel`
    (its JSON starts with its format tag). Both predict with
    :func:`tasks.model.predict_proba`."""
    if text.startswith('{"format": "' + FORMAT + '"'):
        return OneVsRestModel.from_string(text)
    return lgb.Booster(model_str=text)


# -- predicted sets ----------------------------------------------------------------------------
def get_predicted_sets(
    pred_probs: np.ndarray, classes: Sequence[str], *, separator: str, threshold: float = 0.5
) -> np.ndarray:
    """Each row's predicted set: the labels at or above ``threshold``, or the single most
    probable label when none is (an item carries at least one label); NaN rows give NA.

    Returns
    -------
    np.ndarray of object, shape (n,)
    """
    probs = np.asarray(pred_probs, dtype=float)
    chosen = get_predicted_mask(probs, threshold)
    out = np.full(probs.shape[0], pd.NA, dtype=object)
    for row in np.flatnonzero(~np.isnan(probs).any(axis=1)):
        out[row] = separator.join(classes[k] for k in np.flatnonzero(chosen[row]))
    return out


def get_set_confidence(pred_probs: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """The model's probability that its predicted set (:func:`get_predicted_sets`) is exactly
    right, reading the labels as independent: the product over labels of ``p`` for a label in
    the set and ``1 - p`` for one outside it. NaN rows give NaN.

    Returns
    -------
    np.ndarray of float, shape (n,), values in [0, 1]
    """
    probs = np.asarray(pred_probs, dtype=float)
    chosen = get_predicted_mask(probs, threshold)
    return np.where(chosen, probs, 1.0 - probs).prod(axis=1)


def get_predicted_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Which labels each row's predicted set (:func:`get_predicted_sets`) holds: shape of
    ``probs``, bool; a NaN row holds none."""
    chosen = probs >= threshold
    unset = ~chosen.any(axis=1) & ~np.isnan(probs).any(axis=1)
    if unset.any():
        chosen[np.flatnonzero(unset), probs[unset].argmax(axis=1)] = True
    return chosen


# -- consensus ---------------------------------------------------------------------------------
def is_known_set(label_texts: pd.Series, classes: Sequence[str], *, separator: str) -> np.ndarray:
    """Whether every label of each set is one of ``classes`` (a vote naming a class not
    declared yet waits, as a single label does)."""
    known = set(classes)
    return np.array(
        [
            bool(pieces) and set(pieces) <= known
            for pieces in (split_label_set(t, separator=separator) for t in label_texts)
        ],
        dtype=bool,
    )


def get_label_set_majority(
    votes: pd.DataFrame, classes: Sequence[str], *, separator: str
) -> pd.DataFrame:
    """``item_id, label``: label by label, a label is in the item's set when more than half
    of its votes hold it; a tie follows the most recent vote (as the single-class majority's
    tie does). An item whose votes leave no label takes the most recent vote's set.

    Parameters
    ----------
    votes : pd.DataFrame
        ``item_id, label, order``: one row per counted vote, labels written by
        :func:`to_label_text`.
    """
    if votes.empty:
        return pd.DataFrame(
            {"item_id": pd.Series(dtype="string"), "label": pd.Series(dtype="string")}
        )
    ordered = votes.sort_values(["item_id", "order"])
    matrix = get_label_matrix(ordered["label"].astype(str), classes, separator=separator)
    items = ordered["item_id"].to_numpy()
    starts = np.r_[0, np.flatnonzero(items[1:] != items[:-1]) + 1]
    ends = np.r_[starts[1:], len(items)]
    labels = []
    for start, end in zip(starts, ends, strict=True):
        block = matrix[start:end]
        share = block.mean(axis=0)
        chosen = (share > 0.5) | ((share == 0.5) & (block[-1] == 1))
        if not chosen.any():
            chosen = block[-1] == 1
        labels.append(separator.join(c for c, keep in zip(classes, chosen, strict=True) if keep))
    return pd.DataFrame(
        {
            "item_id": pd.Series(items[starts], dtype="string"),
            "label": pd.Series(labels, dtype="string"),
        }
    )


def get_rarest_labels(
    label_texts: pd.Series, *, separator: str, weights: Sequence[int] | None = None
) -> pd.Series:
    """Each set's rarest label, rarity counted over the sets given, each set ``weights``
    times if given (the items predicted that set; ties: the label that comes first in the
    set); a text without a separator is its own label.

    Returns
    -------
    pd.Series of str, aligned with ``label_texts``
    """
    pieces = [split_label_set(t, separator=separator) or [str(t)] for t in label_texts]
    weights = [1] * len(pieces) if weights is None else list(weights)
    counts = pd.Series(
        [w for set_, w in zip(pieces, weights, strict=True) for _ in set_],
        index=[p for set_ in pieces for p in set_],
        dtype="int64",
    )
    counts = counts.groupby(level=0).sum()
    return pd.Series(
        [min(set_, key=lambda label: counts[label]) for set_ in pieces],
        index=label_texts.index,
        dtype="string",
    )
