"""How long annotators take: expected seconds per item and per batch. Pure functions.

An annotator sees each item with the model's suggestion (a pre-annotation). Confirming a
correct suggestion takes ``confirm_seconds``; a wrong suggestion, or none, means assigning
the class by hand, ``assign_seconds``. The defaults, 3 s and 7 s, are the medians a published
study of pre-annotation measured for these two cases. The model's confidence (its highest
predicted probability) is read as its probability of being right, so an item is expected to
take ``confidence * confirm + (1 - confidence) * assign`` seconds.

A batch is exported grouped by suggested class (:mod:`tasks.export`); each time the next item
has another suggestion than the one before, the annotator switches context, which costs
``switch_seconds``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.params import AnnotationParams


def get_item_seconds(confidence: np.ndarray, *, params: AnnotationParams) -> np.ndarray:
    """Expected annotation seconds per item.

    Parameters
    ----------
    confidence : np.ndarray of float, shape (n,)
        The model's probability that its suggestion is right, in [0, 1]; NaN = no suggestion
        (before the first model), which is an item assigned by hand.

    Returns
    -------
    np.ndarray of float, shape (n,)
        ``confidence * confirm_seconds + (1 - confidence) * assign_seconds``, between the two.
    """
    conf = np.asarray(confidence, dtype=float)
    _check_unit_interval(conf, "confidence")
    conf = np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0)
    return conf * params.confirm_seconds + (1.0 - conf) * params.assign_seconds


def get_batch_seconds(
    predicted_labels: pd.Series,
    confidence: np.ndarray,
    *,
    params: AnnotationParams,
    true_labels: pd.Series | None = None,
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
        ``confirm_seconds`` if its suggestion is right and ``assign_seconds`` otherwise,
        instead of the expectation from ``confidence``.

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
        items = get_item_seconds(conf, params=params)
    else:
        truth = pd.Series(true_labels).reset_index(drop=True)
        if len(truth) != len(predicted):
            raise ValueError(
                f"true_labels has {len(truth)} items, predicted_labels {len(predicted)}"
            )
        right = (predicted.astype("string") == truth.astype("string")).fillna(False)
        items = np.where(right.to_numpy(dtype=bool), params.confirm_seconds, params.assign_seconds)
    groups = predicted.astype("string").fillna("").to_numpy(dtype=object)
    switches = int((groups[1:] != groups[:-1]).sum())
    return float(items.sum() + params.switch_seconds * switches)


def _check_unit_interval(values: np.ndarray, name: str) -> None:
    known = values[~np.isnan(values)]
    # a probability computed in floating point may miss [0, 1] by a rounding error, no more
    slack = 1e-9
    if ((known < -slack) | (known > 1.0 + slack)).any():
        raise ValueError(
            f"{name} must be in [0, 1] (or NaN), got values from {known.min()} to {known.max()}"
        )
