"""A simulated annotator: answers a batch from the true labels, with a share of mistakes.

Used by the demo and by simulations, so that they run the product's own stages with no human.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def answer_batch(
    item_ids: pd.Series,
    truth: pd.DataFrame,
    *,
    classes: Sequence[str],
    noise: float,
    annotator: str,
    labeled_at: str,
    random_state: int,
) -> pd.DataFrame:
    """The label file an annotator would send back for ``item_ids``.

    Parameters
    ----------
    truth : pd.DataFrame
        ``item_id`` and true ``label`` of at least every item asked.
    noise : float in [0, 1]
        Share of answers replaced by a uniformly chosen *other* class.

    Returns
    -------
    pd.DataFrame
        Columns ``item_id, label, annotator, labeled_at``: the plain incoming CSV format.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    known = truth.set_index("item_id")["label"]
    missing = sorted(set(item_ids) - set(known.index))
    if missing:
        raise ValueError(f"no true label for items {missing[:5]}")
    answers = known.loc[item_ids.to_numpy()].astype(str).to_numpy().copy()
    rng = np.random.default_rng(random_state)
    wrong = np.flatnonzero(rng.random(answers.size) < noise)
    names = np.asarray(classes, dtype=object)
    for position in wrong:
        others = names[names != answers[position]]
        answers[position] = others[rng.integers(others.size)]
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "label": answers,
            "annotator": annotator,
            "labeled_at": labeled_at,
        }
    )


# -- learning-curve statistics ---------------------------------------------------------------


def get_aulc(labels: np.ndarray, scores: np.ndarray, *, start: int, stop: int) -> float:
    """Normalised area under a learning curve: the mean score over ``[start, stop]`` labels.

    Parameters
    ----------
    labels : np.ndarray of int, shape (n,)
        Training labels at each point, increasing.
    scores : np.ndarray of float, shape (n,)
        Test macro-F1 at each point, in [0, 1].
    start, stop : the label range compared (the same for every campaign of a comparison).

    Returns
    -------
    float in [0, 1]
        Trapezoidal area over ``[start, stop]`` divided by ``stop - start``; the curve is
        held flat before its first point and after its last.
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if labels.size == 0 or stop <= start:
        raise ValueError(f"a learning curve needs points and stop > start, got {start}..{stop}")
    grid = np.union1d(labels[(labels > start) & (labels < stop)], [start, stop])
    values = np.interp(grid, labels, scores)
    return float(np.trapezoid(values, grid) / (stop - start))


def get_labels_to_target(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The first label count at which the score reaches ``target``; ``inf`` when never."""
    reached = np.flatnonzero(np.asarray(scores, dtype=float) >= target)
    return float(np.asarray(labels)[reached[0]]) if reached.size else float("inf")


def get_paired_test(differences: np.ndarray) -> tuple[float, float]:
    """Mean of paired differences (strategy minus baseline, one per seed) and the two-sided
    p-value of the Wilcoxon signed-rank test (1.0 when every difference is zero)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(differences, dtype=float)
    if diff.size == 0:
        return float("nan"), float("nan")
    if np.allclose(diff, 0.0):
        return 0.0, 1.0
    return float(diff.mean()), float(wilcoxon(diff).pvalue)
