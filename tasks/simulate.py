"""Simulated annotators: answer a batch from the true labels, with a share of mistakes.

Used by the demo and by simulations, so that they run the product's own stages with no human.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    separator: str | None = None,
) -> pd.DataFrame:
    """The label file an annotator would send back for ``item_ids``.

    Parameters
    ----------
    truth : pd.DataFrame
        ``item_id`` and true ``label`` of at least every item asked.
    noise : float in [0, 1]
        Share of answers replaced by a uniformly chosen *other* class.
    separator : str, optional
        Labels are sets joined by it: a wrong answer swaps one label of the set, chosen
        uniformly, for a class outside the set (:func:`_corrupt`).

    Returns
    -------
    pd.DataFrame
        Columns ``item_id, label, annotator, labeled_at``: the plain incoming CSV format.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    answers = _true_answers(item_ids, truth)
    rng = np.random.default_rng(random_state)
    _corrupt(answers, np.full(answers.size, noise), classes, rng, separator)
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "label": answers,
            "annotator": annotator,
            "labeled_at": labeled_at,
        }
    )


def get_annotator_noise(noise: float, n_annotators: int) -> dict[str, float]:
    """Simulated annotators ``sim-annotator-1`` .. ``-N``, each with its own share of wrong
    answers: spread evenly over [0.5, 1.5] x ``noise`` (so their mean is ``noise``), each
    clipped to [0, 1]; a single annotator has ``noise``.

    Returns
    -------
    dict of str to float
        Annotator name to its noise, least noisy first.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if n_annotators < 1:
        raise ValueError(f"n_annotators must be at least 1, got {n_annotators}")
    factors = np.linspace(0.5, 1.5, n_annotators) if n_annotators > 1 else np.ones(1)
    rates = np.clip(factors * noise, 0.0, 1.0)
    return {f"sim-annotator-{k + 1}": round(float(r), 9) for k, r in enumerate(rates)}


def answer_batch_by_annotators(
    item_ids: pd.Series,
    truth: pd.DataFrame,
    *,
    classes: Sequence[str],
    annotators: Mapping[str, float],
    labeled_at: str,
    random_state: int,
    voted: pd.DataFrame | None = None,
    separator: str | None = None,
) -> pd.DataFrame:
    """The label files several annotators would send back for ``item_ids``, as one table.

    Each item is answered by one annotator, in turn (round-robin from a seeded start), each
    annotator with its own share of wrong answers. An item someone already voted on (a
    relabel) goes to the next annotator in turn who has not voted on it, when there is one.

    Parameters
    ----------
    truth : pd.DataFrame
        ``item_id`` and true ``label`` of at least every item asked.
    annotators : mapping of str to float in [0, 1]
        Annotator name to its share of answers replaced by a uniformly chosen other class
        (see :func:`get_annotator_noise`).
    voted : pd.DataFrame, optional
        ``item_id, annotator`` of the votes given before.
    separator : str, optional
        Labels are sets joined by it (see :func:`answer_batch`).

    Returns
    -------
    pd.DataFrame
        Columns ``item_id, label, annotator, labeled_at``, in the order of ``item_ids``.
    """
    names = list(annotators)
    if not names:
        raise ValueError("annotators must name at least one annotator")
    bad = {name: rate for name, rate in annotators.items() if not 0.0 <= rate <= 1.0}
    if bad:
        raise ValueError(f"annotators' noise must be in [0, 1], got {bad}")
    answers = _true_answers(item_ids, truth)
    assign_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(random_state).spawn(2)
    )
    before: dict[str, set[str]] = {}
    if voted is not None:
        for item, who in zip(voted["item_id"].astype(str), voted["annotator"], strict=True):
            before.setdefault(item, set()).add(str(who))
    start = int(assign_rng.integers(len(names)))
    chosen = []
    for position, item in enumerate(item_ids.astype(str)):
        turn = (start + position) % len(names)
        done = before.get(item, set())
        fresh = [names[(turn + k) % len(names)] for k in range(len(names))]
        fresh = [name for name in fresh if name not in done]
        chosen.append(fresh[0] if fresh else names[turn])
    rates = np.array([annotators[name] for name in chosen], dtype=float)
    _corrupt(answers, rates, classes, noise_rng, separator)
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "label": answers,
            "annotator": chosen,
            "labeled_at": labeled_at,
        }
    )


def _true_answers(item_ids: pd.Series, truth: pd.DataFrame) -> np.ndarray:
    known = truth.set_index("item_id")["label"]
    missing = sorted(set(item_ids) - set(known.index))
    if missing:
        raise ValueError(f"no true label for items {missing[:5]}")
    return known.loc[item_ids.to_numpy()].astype(str).to_numpy().copy()


def _corrupt(
    answers: np.ndarray,
    rates: np.ndarray,
    classes: Sequence[str],
    rng: np.random.Generator,
    separator: str | None = None,
) -> None:
    """Make each answer wrong with its probability in ``rates`` (in place): a class becomes a
    uniformly chosen other class; a label set (``separator`` given) has one of its labels,
    chosen uniformly, swapped for a uniformly chosen class outside the set, so that it keeps
    its size (a set holding every class stays right)."""
    wrong = np.flatnonzero(rng.random(answers.size) < rates)
    names = np.asarray(classes, dtype=object)
    order = {name: k for k, name in enumerate(classes)}
    for position in wrong:
        if separator is None:
            others = names[names != answers[position]]
            answers[position] = others[rng.integers(others.size)]
            continue
        labels = answers[position].split(separator)
        others = names[~np.isin(names, labels)]
        if others.size == 0:
            continue
        labels[rng.integers(len(labels))] = others[rng.integers(others.size)]
        answers[position] = separator.join(sorted(labels, key=order.__getitem__))


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
