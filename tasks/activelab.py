"""ActiveLab: within a batch, is another vote on a labeled item worth more than a new item?

cleanlab's ActiveLab (``cleanlab.multiannotator.get_active_learning_scores``; Goh and Mueller,
2023) scores labeled items by how sure the votes and the model together are of the consensus,
and unlabeled items by how sure the model is, on one scale: lower means a label is worth more
there. The batch's places for training items go to the lowest scores of both kinds; the
labeled items among them go back for another vote (at most ``max_relabel`` of them).

A pure function: votes, probabilities and ids in, a :class:`RelabelPlan` out. The select stage
decides which new items fill the ``n_new`` places (its strategy's order); this module decides
only how many places go to new items and which labeled items go back.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from cleanlab.multiannotator import get_active_learning_scores

from tasks import schema

#: the smallest probability a class gets before ActiveLab sees the probabilities: CROWDLAB
#: takes logs (temperature scaling) and weighs votes by the probability of their class, so a
#: vote for a class the model gave exactly 0 would make the scores NaN
MIN_PROB = 1e-6

VOTE_COLUMNS = ("item_id", "annotator", "label")


@dataclass(frozen=True)
class RelabelPlan:
    """How a batch's places for training items are shared between relabels and new items."""

    #: labeled items to send back, most worth a vote first (lowest score first)
    relabel_ids: pd.Series
    #: how many of the places go to new items (``n_places - len(relabel_ids)``)
    n_new: int
    #: ActiveLab score of every labeled item that could be scored (index ``item_id``), in
    #: [0, 1], lower = another vote is worth more; excluded items are scored too
    scores_labeled: pd.Series
    #: the score the batch was cut at: the highest score among the ``n_places`` lowest of the
    #: labeled items and candidates together; None when nothing was scored or no place is open
    threshold: float | None


def get_relabel_plan(
    votes: pd.DataFrame,
    label_probs: pd.DataFrame,
    candidate_probs: np.ndarray,
    *,
    classes: tuple[str, ...],
    n_places: int,
    max_relabel: int,
    exclude: pd.Series,
) -> RelabelPlan:
    """Share ``n_places`` places between another vote on labeled items and new items.

    Parameters
    ----------
    votes : pd.DataFrame
        One row per current vote of a training item: ``item_id``, ``annotator``, ``label``
        (a class name; votes for a class not in ``classes`` are ignored). At most one row per
        (item, annotator): an annotator's latest vote (see :func:`tasks.merge.get_votes`).
    label_probs : pd.DataFrame
        Out-of-fold probabilities of the training items (what flag saves): ``item_id`` and
        one float column per class name of ``classes``, rows summing to 1. Items with a vote
        but no row here, or a row with a NaN, get no score and are never sent back.
    candidate_probs : np.ndarray of float, shape (n_candidates, len(classes))
        The champion's probabilities on the new items the strategy would pick. Rows with a
        NaN take no part.
    classes : tuple of str
        The project's classes, in the order of the probability columns.
    n_places : int, >= 0
        The places of the batch for training items (active and relabel).
    max_relabel : int, >= 0
        At most this many labeled items go back.
    exclude : pd.Series of str
        Items that must not go back (sent back before, or in the open batch). They are still
        scored and still inform the annotators' and model's weights.

    Returns
    -------
    RelabelPlan
        The ``n_places`` lowest ActiveLab scores among scored labeled items (not excluded)
        and valid candidates: the labeled ones among them, lowest first and at most
        ``max_relabel``, are ``relabel_ids``; the other places are ``n_new``. Equal scores:
        a new item before a labeled one, then labeled items by ``item_id``.

    Raises
    ------
    ValueError
        When an argument is not of the shape or range described, naming it.
    """
    _check_inputs(votes, label_probs, candidate_probs, classes, n_places, max_relabel)
    codes, probs = _get_labeled_inputs(votes, label_probs, classes)
    candidates = np.asarray(candidate_probs, dtype=float)
    candidates = candidates[~np.isnan(candidates).any(axis=1)]
    scores_labeled, scores_new = _get_scores(codes, probs, candidates)
    eligible = scores_labeled[~schema.is_in(scores_labeled.index.to_series(), exclude)]
    return _cut(eligible, scores_new, scores_labeled, n_places, max_relabel)


def _check_inputs(
    votes: pd.DataFrame,
    label_probs: pd.DataFrame,
    candidate_probs: np.ndarray,
    classes: tuple[str, ...],
    n_places: int,
    max_relabel: int,
) -> None:
    if len(classes) < 2:
        raise ValueError(f"classes must name at least two classes, got {list(classes)}")
    missing = [c for c in VOTE_COLUMNS if c not in votes.columns]
    if missing:
        raise ValueError(f"votes lacks columns {missing}; has {list(votes.columns)}")
    twice = votes.duplicated(["item_id", "annotator"])
    if twice.any():
        pairs = votes.loc[twice, ["item_id", "annotator"]].head(3).to_numpy().tolist()
        raise ValueError(
            f"votes has several rows for one (item_id, annotator), e.g. {pairs}; expected "
            "each annotator's latest vote only"
        )
    missing = [c for c in ("item_id", *classes) if c not in label_probs.columns]
    if missing:
        raise ValueError(
            f"label_probs lacks columns {missing}; expected item_id and one column per class"
        )
    if label_probs["item_id"].duplicated().any():
        raise ValueError("label_probs has several rows for one item_id")
    shape = np.shape(candidate_probs)
    if len(shape) != 2 or shape[1] != len(classes):
        raise ValueError(
            f"candidate_probs has shape {shape}; expected (n_candidates, {len(classes)})"
        )
    for name, value in (("n_places", n_places), ("max_relabel", max_relabel)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _get_labeled_inputs(
    votes: pd.DataFrame, label_probs: pd.DataFrame, classes: tuple[str, ...]
) -> tuple[pd.DataFrame, np.ndarray]:
    """The vote matrix (items x annotators, class codes, NaN = no vote) of the items that have
    a vote for a known class and a full row of probabilities, and those probabilities."""
    index = {name: code for code, name in enumerate(classes)}
    known = votes[votes["label"].astype("string").isin(list(classes))]
    probs = label_probs.set_index(label_probs["item_id"].astype("string"))[list(classes)]
    probs = probs.astype(float)
    probs = probs[probs.notna().all(axis=1)]
    known = known[schema.is_in(known["item_id"], probs.index.to_series())]
    if known.empty:
        return pd.DataFrame(), np.empty((0, len(classes)))
    codes = known.assign(
        item_id=known["item_id"].astype("string"),
        annotator=known["annotator"].astype("string"),
        code=known["label"].astype("string").map(index).astype(float),
    ).pivot(index="item_id", columns="annotator", values="code")
    codes = codes.sort_index()
    matrix = probs.loc[codes.index].to_numpy()
    return codes, _floor(matrix)


def _floor(probs: np.ndarray) -> np.ndarray:
    """Probabilities with every class at least :data:`MIN_PROB`, rows summing to 1."""
    floored = np.maximum(probs, MIN_PROB)
    return floored / floored.sum(axis=1, keepdims=True)


def _get_scores(
    codes: pd.DataFrame, probs: np.ndarray, candidates: np.ndarray
) -> tuple[pd.Series, np.ndarray]:
    """ActiveLab scores of the labeled items (by ``item_id``) and of the candidates."""
    has_labeled = len(codes) > 0
    if not has_labeled and candidates.shape[0] == 0:
        return pd.Series(dtype=float), np.empty(0)
    # cleanlab prints (annotators who share no item with another) and warns (no agreement on
    # any item) about facts the scores already account for
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        labeled, new = get_active_learning_scores(
            codes.to_numpy(dtype=float) if has_labeled else None,
            probs if has_labeled else None,
            _floor(candidates) if candidates.shape[0] else None,
        )
    scores = pd.Series(np.asarray(labeled, dtype=float), index=codes.index, dtype=float)
    scores.index.name = "item_id"
    return scores, np.asarray(new, dtype=float)


def _cut(
    eligible: pd.Series,
    scores_new: np.ndarray,
    scores_labeled: pd.Series,
    n_places: int,
    max_relabel: int,
) -> RelabelPlan:
    """The ``n_places`` lowest scores of both kinds; the labeled ones among them go back."""
    kinds = np.concatenate([np.zeros(scores_new.size, dtype=int), np.ones(len(eligible), int)])
    values = np.concatenate([scores_new, eligible.to_numpy(dtype=float)])
    ids = np.concatenate([np.full(scores_new.size, ""), eligible.index.to_numpy(dtype=str)])
    # lowest score first; on a tie a new item first, then labeled items by id
    order = np.lexsort((ids, kinds, values))[: int(n_places)]
    threshold = float(values[order].max()) if order.size else None
    chosen = order[kinds[order] == 1][: int(max_relabel)]
    relabel = pd.Series(ids[chosen], dtype="string", name="item_id")
    return RelabelPlan(
        relabel_ids=relabel,
        n_new=int(n_places) - len(relabel),
        scores_labeled=scores_labeled,
        threshold=threshold,
    )
