"""How long annotators take: expected seconds per item and per batch. Pure functions.

An annotator sees each item with the model's suggestion (a pre-annotation). Confirming a
correct suggestion takes ``confirm_seconds``; a wrong suggestion, or none, means assigning
the class by hand, ``assign_seconds``. The defaults, 3 s and 7 s, are the medians a published
study of pre-annotation measured for these two cases. The model's confidence (its highest
predicted probability) is read as its probability of being right, so an item is expected to
take ``confidence * confirm + (1 - confidence) * assign`` seconds.

A label set (``project.task: multilabel``) counts its labels: a suggested set that is right is
confirmed in ``confirm_seconds``, as one class is; a wrong one is labeled by hand, its first
label in ``assign_seconds`` and each further label in ``label_seconds`` (the item is read once,
then each label is one more choice). The number of labels is the answer's when it is known
(simulation) and the suggested set's otherwise; the confidence of a set is the model's
probability that the whole set is right (:func:`tasks.multilabel.get_set_confidence`).

A batch is exported grouped by suggested class (:mod:`tasks.export`); each time the next item
has another suggestion than the one before, the annotator switches context, which costs
``switch_seconds``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.params import AnnotationParams


def get_item_seconds(
    confidence: np.ndarray, *, params: AnnotationParams, n_labels: np.ndarray | None = None
) -> np.ndarray:
    """Expected annotation seconds per item.

    Parameters
    ----------
    confidence : np.ndarray of float, shape (n,)
        The model's probability that its suggestion is right, in [0, 1]; NaN = no suggestion
        (before the first model), which is an item assigned by hand.
    n_labels : np.ndarray of int, shape (n,), optional
        Labels per item (label sets); default one each.

    Returns
    -------
    np.ndarray of float, shape (n,)
        ``confidence * confirm_seconds + (1 - confidence) * hand``, ``hand`` the seconds of
        labeling by hand (:func:`get_hand_seconds`).
    """
    conf = np.asarray(confidence, dtype=float)
    _check_unit_interval(conf, "confidence")
    conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
    hand = get_hand_seconds(np.ones(conf.size) if n_labels is None else n_labels, params=params)
    return conf * params.confirm_seconds + (1.0 - conf) * hand


def get_hand_seconds(n_labels: np.ndarray, *, params: AnnotationParams) -> np.ndarray:
    """Seconds to label an item of ``n_labels`` labels by hand: ``assign_seconds`` for the
    first, ``label_seconds`` for each further one (an item has at least one)."""
    count = np.maximum(np.asarray(n_labels, dtype=float), 1.0)
    return params.assign_seconds + (count - 1.0) * params.label_seconds


def get_batch_seconds(
    predicted_labels: pd.Series,
    confidence: np.ndarray,
    *,
    params: AnnotationParams,
    true_labels: pd.Series | None = None,
    separator: str | None = None,
) -> float:
    """Expected annotation seconds of a whole batch, in the order it is exported.

    Parameters
    ----------
    predicted_labels : pd.Series of str, shape (n,)
        The suggestion of each item, in export order; NA = no suggestion.
    confidence : np.ndarray of float, shape (n,)
        The model's probability that each suggestion is right (see :func:`get_item_seconds`).
    true_labels : pd.Series of str, shape (n,), optional
        The right answers, when they are known (simulation): then an item takes
        ``confirm_seconds`` if its suggestion is right and the seconds of labeling it by hand
        (:func:`get_hand_seconds`) otherwise, instead of the expectation from ``confidence``.
    separator : str, optional
        Label sets (``project.label_separator``): the labels of each item are counted, those of
        the answer when ``true_labels`` are given, else those of the suggestion; sets are
        compared as sets, whatever their order.

    Returns
    -------
    float
        ``sum(item seconds) + switch_seconds * s``, ``s`` the number of neighbours in export
        order with different suggestions (items without one count as one group, as export
        groups them).
    """
    predicted = pd.Series(predicted_labels).reset_index(drop=True)
    conf = np.asarray(confidence, dtype=float)
    if conf.shape != (len(predicted),):
        raise ValueError(
            f"confidence must have shape ({len(predicted)},) like predicted_labels, "
            f"got {conf.shape}"
        )
    if true_labels is None:
        counts = None if separator is None else _count_labels(predicted, separator)
        items = get_item_seconds(conf, params=params, n_labels=counts)
    else:
        truth = pd.Series(true_labels).reset_index(drop=True)
        if len(truth) != len(predicted):
            raise ValueError(
                f"true_labels has {len(truth)} items, predicted_labels {len(predicted)}"
            )
        if separator is None:
            right = (predicted.astype("string") == truth.astype("string")).fillna(False)
            hand = get_hand_seconds(np.ones(len(truth)), params=params)
        else:
            right = pd.Series(
                [
                    _as_set(p, separator) == _as_set(t, separator)
                    for p, t in zip(predicted, truth, strict=True)
                ]
            )
            hand = get_hand_seconds(_count_labels(truth, separator), params=params)
        items = np.where(right.to_numpy(dtype=bool), params.confirm_seconds, hand)
    groups = predicted.astype("string").fillna("").to_numpy(dtype=object)
    switches = int((groups[1:] != groups[:-1]).sum())
    return float(items.sum() + params.switch_seconds * switches)


def _as_set(value: object, separator: str) -> frozenset[str]:
    """The labels of one set text (empty for a missing value)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return frozenset()
    return frozenset(piece for piece in str(value).split(separator) if piece)


def _count_labels(texts: pd.Series, separator: str) -> np.ndarray:
    """Labels per set text (a missing one counts as one label, labeled by hand)."""
    return np.array([max(len(_as_set(t, separator)), 1) for t in texts], dtype=float)


def _check_unit_interval(values: np.ndarray, name: str) -> None:
    known = values[~np.isnan(values)]
    # a probability computed in floating point may miss [0, 1] by a rounding error, no more
    slack = 1e-9
    if ((known < -slack) | (known > 1.0 + slack)).any():
        raise ValueError(
            f"{name} must be in [0, 1] (or NaN), got values from {known.min()} to {known.max()}"
        )
