"""Stage 6, health: the loop looks at itself before it chooses the next batch.

From what the workspace already records, each round computes:

- **the stop signal** (stabilizing predictions, Bloodgood and Vijay-Shanker 2009): a stop set of
  pool items drawn at random once; each round's model predicts it; Cohen's kappa between this
  round's predictions and the previous round's, its mean over the last ``stop.window`` rounds,
  the share of changed predictions and the mean normalized entropy. The advice "stop" comes
  when the mean reaches ``stop.kappa``, or when it has levelled off below it (the plateau:
  high enough and no longer rising, Laws and Schuetze 2008), unless a class is still unstable
  (the class guard: the smallest one-vs-rest kappa of a class between successive rounds).
  Each round also records the evidence other rules would need (a bootstrap-refit and a
  drop-a-batch-refit kappa, the classes first labeled or predicted within the window), so a
  benchmark replays any rule offline (:func:`get_stop_decision`).
- **the model rating**, four factors from 0 to 100, each with the action that would raise it:
  *balance* (a classifier telling the training items from the pool: 100 at AUC 0.5, 0 at
  1.0), *coverage* (the share of the pool whose top probability clears the threshold that
  gives ``health.coverage_precision`` on the test items), *all labels* (macro-F1 on the test
  items) and *worst labels* (the mean F1 of the worst ``health.worst_share`` of the classes
  with enough test items); the rating is their mean.
- **the plan** select follows: an explore slice when the random items (test, QC, seed) show
  the actively chosen labels are not paying (a class they keep finding that the model misses,
  or a model on the random labels alone as good as the one on every label), a rebalance
  slice when the balance factor is low. Each rule that fires is a sentence in the report.
- **drift** on the pool partitions that arrived since the last round (see
  :mod:`tasks.drift`).

Every signal is computed on the *candidate*, the model trained on every label this round: the
champion kept by a failed gate would agree with itself (kappa 1) whatever the labels said. The
stop set stands for the pool wherever a pool-wide share is estimated (coverage, entropy, the
predicted class balance): 2,000 random items estimate a share within about 0.02.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import binom
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from tasks import schema
from tasks.catalog import get_sample_positions
from tasks.context import StageContext, StageSpec
from tasks.drift import DriftResult, find_drift
from tasks.evaluate import SET_THRESHOLD, get_cached_probs
from tasks.faults import crash_point
from tasks.features import Features, FeatureSpace, model_space, take_rows
from tasks.model import (
    encode_labels,
    fit_booster,
    get_out_of_fold_pred_probs,
    predict_proba,
)
from tasks.multilabel import (
    get_label_matrix,
    get_label_sets,
    get_predicted_mask,
    get_predicted_sets,
    get_set_confidence,
    load_model,
)
from tasks.params import HealthParams, Params, StopParams, TrainParams
from tasks.summaries import HealthSummary

STAGE = StageSpec(
    name="health",
    module=__name__,
    code=(
        "tasks/model.py",
        "tasks/features.py",
        "tasks/multilabel.py",
        "tasks/drift.py",
        "tasks/evaluate.py",
    ),
    reads=("candidate", "champion", "current", "pool"),
    writes=(
        "stop_set",
        "stop_predictions",
        "arrivals",
        "health_models",
        "health_detail",
        "health_history",
        "health_report",
    ),
    params=("project", "health", "stop", "train"),
)

#: Reasons of ``issued`` whose items were drawn at random, free of the strategy's bias.
RANDOM_REASONS = ("seed", "qc", "test")
#: Reasons of ``issued`` whose items the strategy or the plan chose.
CHOSEN_REASONS = ("active", "explore", "rebalance")
BALANCE_MODEL = "balance.txt"
#: Per round in health_detail.json's ``stop_rounds``: the stop signal and its evidence.
STOP_ROUND_KEYS = (
    "round_id",
    "kappa",
    "kappa_mean",
    "changed_share",
    "mean_entropy",
    "noise_kappa",
    "drop_kappa",
    "class_kappa_min",
)
MODELS_LISTING = "models.json"


# -- the stop signal --------------------------------------------------------------------------
def get_stop_set(item_ids: pd.Series, *, round_id: int) -> pd.DataFrame:
    """The stop set of ``item_ids`` (drawn by :func:`tasks.catalog.get_sample_positions`), schema
    :data:`tasks.schema.STOP_SET`."""
    return schema.conform(
        pd.DataFrame({"item_id": item_ids.to_numpy(), "round_id": round_id}), schema.STOP_SET
    )


def get_normalized_entropy(pred_probs: np.ndarray) -> np.ndarray:
    """Entropy of each row divided by ``log(n_classes)``.

    Parameters
    ----------
    pred_probs : np.ndarray of float, shape (n, k), k >= 2

    Returns
    -------
    np.ndarray of float, shape (n,)
        In [0, 1]; 0 = certain, 1 = uniform.
    """
    probs = np.clip(np.asarray(pred_probs, dtype=float), 1e-12, 1.0)
    return -(probs * np.log(probs)).sum(axis=1) / math.log(probs.shape[1])


def get_cohen_kappa(first: np.ndarray, second: np.ndarray) -> float:
    """Cohen's kappa of two label arrays of the same items.

    Two identical arrays give 1, also when both hold one class only (where the textbook
    formula divides by zero: the predictions did not change, which is what the stop signal
    asks).
    """
    first, second = np.asarray(first, dtype=object), np.asarray(second, dtype=object)
    if first.shape != second.shape:
        raise ValueError(f"kappa needs arrays of one shape, got {first.shape} and {second.shape}")
    if first.size == 0:
        raise ValueError("kappa needs at least one item")
    observed = float(np.mean(first == second))
    labels = np.union1d(first.astype(str), second.astype(str))
    share_first = np.array([np.mean(first.astype(str) == c) for c in labels])
    share_second = np.array([np.mean(second.astype(str) == c) for c in labels])
    expected = float(share_first @ share_second)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def get_class_kappas(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """One-vs-rest Cohen's kappa of each class predicted in either array: the agreement of
    "is it this class?" between two predictions of the same items.

    A class newly predicted (absent from one array) gets 0; a class predicted identically
    gets 1, however few its items.

    Parameters
    ----------
    first, second : np.ndarray of str, shape (n,)

    Returns
    -------
    dict of str to float
        Class to kappa in [-1, 1] (higher: more stable), in sorted class order.
    """
    first, second = np.asarray(first).astype(str), np.asarray(second).astype(str)
    return {str(c): get_cohen_kappa(first == c, second == c) for c in np.union1d(first, second)}


@dataclass(frozen=True)
class StopEvidence:
    """What the stop advice is decided on, per round with a kappa, oldest first, this round
    last (rounds without a kappa left out).

    Attributes
    ----------
    kappas : tuple of float
        Cohen's kappa between successive rounds' predictions on the stop set.
    noise_kappas : tuple of float or None
        Kappa between each round's candidate and a model refit on a bootstrap resample of its
        labels (None where not computed).
    class_kappa_mins : tuple of float or None
        The smallest one-vs-rest kappa of a class between successive rounds.
    drop_kappas : tuple of float or None
        Kappa between each round's candidate and a model refit without a random batch of
        its labels as large as the round's new ones.
    weakest_class : str
        This round's class with the smallest one-vs-rest kappa (named in the reason).
    label_sets : bool
        The predictions are label sets (:func:`get_set_kappas`): a fired rule is held back,
        since the rules' thresholds were set on one class per item (:data:`LABEL_SET_HOLD`).
    new_classes : dict of str to str
        This round's classes still being found: class to why (first labeled, first
        predicted within the window).
    """

    kappas: tuple[float, ...]
    noise_kappas: tuple[float | None, ...] = ()
    class_kappa_mins: tuple[float | None, ...] = ()
    new_classes: dict[str, str] = field(default_factory=dict)
    drop_kappas: tuple[float | None, ...] = ()
    weakest_class: str = ""
    label_sets: bool = False


#: Why the stop advice is held back for label sets. Their pooled item-by-label kappa is on
#: another scale than one class's kappa (most decisions are a confident "no"): measured through
#: alloop's rounds on Reuters' top-20 topics (bench/README.md), the threshold and slope rules
#: fired at 750-900 labels while MAP was still 0.07-0.14 below the full-data model's and rising.
LABEL_SET_HOLD = (
    "the stop rules' thresholds were set on one class per item; on label sets (Reuters' "
    "topics, bench/README.md) they fired while MAP was still 0.07-0.14 below the full-data "
    "model's: the kappas are shown, the advice is not given"
)


@dataclass(frozen=True)
class StopDecision:
    """``criterion``: what fired ("threshold", "plateau") or "" when nothing did; ``held``:
    the guard that held a fired criterion back ("" when none)."""

    advised: bool
    criterion: str
    held: str
    kappa_mean: float | None
    kappa_rise: float | None
    noise_kappa_mean: float | None
    reason: str


def _window_mean(values: tuple[float | None, ...], window: int) -> float | None:
    recent = [v for v in values[-window:] if v is not None and not math.isnan(v)]
    return float(np.mean(recent)) if len(recent) == window else None


def get_stop_decision(evidence: StopEvidence, *, params: StopParams) -> StopDecision:
    """The stop advice from the rounds' evidence (:class:`StopEvidence`), by three rules:

    - *threshold* (Bloodgood and Vijay-Shanker, 2009): the mean kappa over the last
      ``params.window`` rounds reaches ``params.kappa``;
    - *plateau*, for kappas that level off below it: with ``params.plateau`` "noise", the
      mean kappa reaches the mean bootstrap-refit kappa over the same rounds minus
      ``params.noise_margin`` (successive models disagree no more than a model disagrees
      with itself refit on the same labels); with "slope" (Laws and Schuetze, 2008), the
      mean kappa is at least ``params.plateau_kappa`` and rose less than
      ``params.plateau_rise`` since the window before;
    - the class guard holds a fired rule back while a class is still being found
      (``params.guard_new_classes``) or the smallest per-class kappa averaged over the window
      is under ``params.class_kappa``;
    - label sets hold any fired rule back (:data:`LABEL_SET_HOLD`).

    Pure: the same evidence gives the same decision, so a benchmark replays it per round.
    """
    window = params.window
    kappas = evidence.kappas
    if len(kappas) < window:
        reason = f"{len(kappas)} of the {window} rounds the signal averages so far"
        return StopDecision(False, "", "", None, None, None, reason)
    mean = float(np.mean(kappas[-window:]))
    rise = (
        mean - float(np.mean(kappas[-2 * window : -window])) if len(kappas) >= 2 * window else None
    )
    noise = _window_mean(evidence.noise_kappas, window)
    dropped = _window_mean(evidence.drop_kappas, window)
    said = f"kappa averaged {mean:.4f} over the last {window} rounds"
    floor_kind, _, needs_flat = params.plateau.partition("_")
    floor = {"noise": noise, "drop": dropped}.get(floor_kind)
    flat = rise is not None and rise < params.plateau_rise
    criterion = ""
    if mean >= params.kappa:
        criterion = "threshold"
        why = (
            f"predictions have stabilized: {said} (>= {params.kappa}); more labels are "
            "unlikely to change the model"
        )
    elif floor is not None and mean >= floor - params.noise_margin and (flat or not needs_flat):
        criterion = "plateau"
        refit = (
            "a model refit on a bootstrap of the same labels"
            if floor_kind == "noise"
            else "a model refit without a random batch of the same size"
        )
        why = (
            f"predictions have levelled off at the noise floor: {said} (< {params.kappa}), at "
            f"least the {floor:.4f} {refit} agrees with the model"
            + (f" minus {params.noise_margin}" if params.noise_margin else "")
            + (f", up {rise:+.4f} on the window before" if needs_flat else "")
            + "; new labels move the model no more than that refit does"
        )
    elif params.plateau == "slope" and flat and mean >= params.plateau_kappa:
        criterion = "plateau"
        why = (
            f"predictions have levelled off: {said} (< {params.kappa}, >= "
            f"{params.plateau_kappa}), up {rise:+.4f} on the {window} rounds before (< "
            f"{params.plateau_rise})"
        )
    else:
        notes = [f"{said} (< {params.kappa})"]
        if floor is not None:
            notes.append(f"noise floor {floor:.4f}")
        if "slope" in params.plateau and rise is not None:
            notes.append(f"up {rise:+.4f} on the window before")
        if params.plateau == "slope":
            notes.append(
                f"the plateau needs >= {params.plateau_kappa} and a rise < {params.plateau_rise}"
            )
        return StopDecision(False, "", "", mean, rise, floor, "; ".join(notes))
    class_min = _window_mean(evidence.class_kappa_mins, window)
    held = ""
    if evidence.label_sets:
        held = "label sets"
        hold = LABEL_SET_HOLD
    elif params.guard_new_classes and evidence.new_classes:
        held = "new classes"
        hold = "the model is still finding classes: " + "; ".join(evidence.new_classes.values())
    elif params.class_kappa > 0 and class_min is not None and class_min < params.class_kappa:
        held = "class kappa"
        weakest = f" (this round {evidence.weakest_class!r})" if evidence.weakest_class else ""
        hold = (
            f"a class is still unstable: the smallest one-vs-rest kappa of a class{weakest} "
            f"averaged {class_min:.4f} over the window (< {params.class_kappa})"
        )
    if held:
        reason = f"{criterion} would advise stopping ({why}), held back: {hold}"
        return StopDecision(False, criterion, held, mean, rise, floor, reason)
    return StopDecision(True, criterion, "", mean, rise, floor, f"{criterion}: {why}")


@dataclass(frozen=True)
class StopSignal:
    kappa: float | None
    kappa_mean: float | None
    changed_share: float | None
    advised: bool
    reason: str
    criterion: str = ""
    held: str = ""
    kappa_rise: float | None = None
    noise_kappa_mean: float | None = None
    class_kappa_min: float | None = None
    class_kappa_mean: float | None = None


def get_new_classes(
    first_labeled: dict[str, int],
    first_predicted: dict[str, int],
    *,
    round_id: int,
    window: int,
) -> dict[str, str]:
    """Classes first labeled for training, or first predicted on the stop set, in the last
    ``window`` rounds (this one included): class to why.

    Parameters
    ----------
    first_labeled, first_predicted : dict of str to int
        Class to the round whose model first had a training label of it / first predicted
        it on the stop set.
    """
    since = round_id - window + 1
    new: dict[str, str] = {}
    for name, first in sorted(first_labeled.items()):
        if first >= since:
            new[name] = f"class {name!r} got its first training label in round {first}"
    for name, first in sorted(first_predicted.items()):
        if first >= since and name not in new:
            new[name] = f"class {name!r} was first predicted on the stop set in round {first}"
    return new


def get_stop_signal(
    current: pd.Series,
    previous: pd.Series | None,
    earlier_kappas: list[float],
    *,
    params: StopParams,
    noise_kappa: float | None = None,
    earlier_noise_kappas: list[float | None] | None = None,
    earlier_class_kappa_mins: list[float | None] | None = None,
    new_classes: dict[str, str] | None = None,
    drop_kappa: float | None = None,
    earlier_drop_kappas: list[float | None] | None = None,
    separator: str | None = None,
    classes: Sequence[str] = (),
) -> StopSignal:
    """The stop signal from this round's and the previous round's predictions on the stop set.

    Parameters
    ----------
    current, previous : pd.Series of str
        Predicted class per stop-set item, indexed by item_id; ``previous`` None in the first
        round with a model.
    earlier_kappas : list of float
        The kappas of the rounds before, oldest first (rounds without one left out).
    noise_kappa : float, optional
        This round's bootstrap-refit kappa (:func:`get_noise_kappa`).
    drop_kappa : float, optional
        This round's random-batch-refit kappa (:func:`get_noise_kappa` with ``drop``).
    earlier_noise_kappas, earlier_class_kappa_mins, earlier_drop_kappas : list, optional
        The same rounds' bootstrap-refit kappas, smallest per-class kappas and
        random-batch-refit kappas (float or None each).
    new_classes : dict of str to str, optional
        :func:`get_new_classes` of this round.
    separator, classes : optional
        The predictions are label sets joined by ``separator``, of ``classes``: the kappas are
        :func:`get_set_kappas`.
    """
    if previous is None or previous.empty:
        return StopSignal(None, None, None, False, "no earlier model to compare with yet")
    common = current.index.intersection(previous.index)
    now, before = current.loc[common].to_numpy(), previous.loc[common].to_numpy()
    if separator is None:
        kappa = get_cohen_kappa(now, before)
        by_class = get_class_kappas(now, before)
    else:
        kappa, by_class = get_set_kappas(now, before, classes, separator=separator)
    class_min = min(by_class.values())
    n_earlier = len(earlier_kappas)

    def padded(values: list[float | None] | None) -> tuple[float | None, ...]:
        values = list(values or [])
        return tuple([None] * (n_earlier - len(values)) + values[-n_earlier:] if n_earlier else [])

    evidence = StopEvidence(
        kappas=(*earlier_kappas, kappa),
        noise_kappas=(*padded(earlier_noise_kappas), noise_kappa),
        class_kappa_mins=(*padded(earlier_class_kappa_mins), class_min),
        new_classes=new_classes or {},
        drop_kappas=(*padded(earlier_drop_kappas), drop_kappa),
        weakest_class=min(by_class, key=lambda c: (by_class[c], c)),
        label_sets=separator is not None,
    )
    decision = get_stop_decision(evidence, params=params)
    return StopSignal(
        kappa,
        decision.kappa_mean,
        float(np.mean(now != before)),
        decision.advised,
        decision.reason,
        criterion=decision.criterion,
        held=decision.held,
        kappa_rise=decision.kappa_rise,
        noise_kappa_mean=decision.noise_kappa_mean,
        class_kappa_min=class_min,
        class_kappa_mean=float(np.mean(list(by_class.values()))),
    )


def get_noise_kappa(
    features: Features,
    codes: np.ndarray,
    stop_features: Features,
    predicted: np.ndarray,
    *,
    n_classes: int,
    train_params: TrainParams,
    random_state: int,
    drop: int | None = None,
    categorical: tuple[int, ...] = (),
) -> float:
    """Cohen's kappa between ``predicted`` (the candidate's classes on the stop set) and a
    model refit on a bootstrap resample of the candidate's training labels: how much two
    models disagree by fitting noise alone at this many labels. With ``drop``, the refit
    leaves ``drop`` random labels out instead (no resampling): how much a random batch of
    that size moves the model, the size of the last round's batch matching the perturbation
    between successive rounds.

    Parameters
    ----------
    features : pd.DataFrame or sparse matrix
        Training features (in the model's space), shape (n, d); ``codes`` its class codes,
        shape (n,); ``categorical`` the space's categorical positions.
    stop_features : pd.DataFrame or sparse matrix
        The stop set's features; ``predicted`` the candidate's class codes on it.

    Returns
    -------
    float
        In [-1, 1]; higher: the model is more stable under resampling of its labels.
    """
    rng = np.random.default_rng(random_state)
    take = (
        rng.integers(0, len(codes), size=len(codes))
        if drop is None
        else np.sort(rng.permutation(len(codes))[: max(len(codes) - drop, 1)])
    )
    booster = fit_booster(
        take_rows(features, take),
        np.asarray(codes)[take],
        params=train_params,
        n_classes=n_classes,
        random_state=random_state,
        categorical=categorical,
    )
    refit = predict_proba(booster, stop_features, n_classes).argmax(axis=1)
    return get_cohen_kappa(refit, np.asarray(predicted))


# -- the rating -------------------------------------------------------------------------------
def get_balance_auc(
    labeled: Features,
    pool_sample: Features,
    *,
    params: HealthParams,
    train_params: TrainParams,
    random_state: int,
    categorical: tuple[int, ...] = (),
) -> float:
    """Out-of-fold AUC of a classifier telling ``labeled`` rows from ``pool_sample`` rows.

    0.5: the labeled items look like a random sample of the pool; 1.0: they are told apart
    perfectly (a strategy's bias toward the boundary, or a region never labeled).

    Parameters
    ----------
    labeled, pool_sample : pd.DataFrame or sparse matrix
        Features in one space (:meth:`tasks.features.FeatureSpace.transform`), with the same
        columns; ``categorical``: the space's categorical positions.
    """
    features, target = _balance_data(labeled, pool_sample)
    probs = get_out_of_fold_pred_probs(
        features,
        target,
        n_classes=2,
        n_folds=params.balance_cv_folds,
        train_params=train_params,
        random_state=random_state,
        categorical=categorical,
    )
    return float(roc_auc_score(target, probs[:, 1]))


def fit_balance_model(
    labeled: Features,
    pool_sample: Features,
    *,
    train_params: TrainParams,
    random_state: int,
    categorical: tuple[int, ...] = (),
) -> lgb.Booster:
    """The balance classifier on every row: the probability that an item looks labeled.
    Select's rebalance slice takes the items it finds least like the labeled set."""
    features, target = _balance_data(labeled, pool_sample)
    return fit_booster(
        features,
        target,
        params=train_params,
        n_classes=2,
        random_state=random_state,
        categorical=categorical,
    )


def _balance_data(labeled: Features, pool_sample: Features) -> tuple[Features, np.ndarray]:
    target = np.r_[np.ones(labeled.shape[0], dtype=int), np.zeros(pool_sample.shape[0], dtype=int)]
    if not isinstance(labeled, pd.DataFrame):
        if labeled.shape[1] != pool_sample.shape[1]:
            raise ValueError(
                f"labeled and pool_sample need the same columns, got {labeled.shape[1]} and "
                f"{pool_sample.shape[1]}"
            )
        return sp.vstack([labeled, pool_sample], format="csr"), target
    if list(labeled.columns) != list(pool_sample.columns):
        raise ValueError(
            f"labeled and pool_sample need the same columns, got {list(labeled.columns)} and "
            f"{list(pool_sample.columns)}"
        )
    return pd.concat([labeled, pool_sample], ignore_index=True), target


def get_balance_rating(auc: float) -> float:
    """100 at AUC 0.5 (or below: no better than chance), 0 at AUC 1.0, linear between."""
    return float(np.clip(200.0 * (1.0 - auc), 0.0, 100.0))


def get_coverage(
    test_probs: np.ndarray,
    test_codes: np.ndarray,
    pool_probs: np.ndarray,
    *,
    precision: float,
    min_items: int = 1,
) -> tuple[float, float | None]:
    """The share of the pool predicted confidently enough to be trusted.

    The threshold is the lowest top probability ``t`` at which the test items with a top
    probability of at least ``t`` (at least ``min_items`` of them: one right item is no
    evidence of 95% precision) are predicted with at least ``precision``.

    Parameters
    ----------
    test_probs : np.ndarray of float, shape (n_test, k)
    test_codes : np.ndarray of int, shape (n_test,)
        True class codes of the test items.
    pool_probs : np.ndarray of float, shape (n_pool, k)
        Probabilities on the pool (or a random sample of it).

    Returns
    -------
    (float, float or None)
        Coverage in [0, 1] and the threshold; (0, None) when no threshold reaches the
        precision.
    """
    if len(test_codes) == 0 or len(pool_probs) == 0:
        return 0.0, None
    threshold = get_confidence_threshold(
        test_probs.max(axis=1),
        test_probs.argmax(axis=1) == test_codes,
        precision=precision,
        min_items=min_items,
    )
    if threshold is None:
        return 0.0, None
    return float(np.mean(pool_probs.max(axis=1) >= threshold)), threshold


def get_confidence_threshold(
    confidence: np.ndarray, right: np.ndarray, *, precision: float, min_items: int = 1
) -> float | None:
    """The lowest confidence ``t`` at which the items of confidence at least ``t`` (at least
    ``min_items`` of them) are ``right`` in at least ``precision`` of cases; None when none.

    Parameters
    ----------
    confidence : np.ndarray of float, shape (n,)
    right : np.ndarray of bool, shape (n,)
        Whether each item's prediction is right.
    """
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(right[order])
    running = hits / np.arange(1, order.size + 1)
    # a threshold is only as fine as the confidences: the top-k set is cut after a run of ties
    distinct = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    enough = np.arange(1, order.size + 1) >= min_items
    good = np.flatnonzero((running >= precision) & distinct & enough)
    return float(confidence[order][good[-1]]) if good.size else None


def get_per_class(
    test_codes: np.ndarray,
    test_probs: np.ndarray,
    *,
    classes: tuple[str, ...],
    label_counts: pd.Series,
    pool_predicted: np.ndarray,
) -> pd.DataFrame:
    """Per class: test items, F1, precision, recall, its share of the training labels and of
    the model's predictions on the pool sample (``pool_predicted``: class codes)."""
    codes = np.arange(len(classes))
    predicted = test_probs.argmax(axis=1) if len(test_codes) else np.array([], dtype=int)
    kwargs = {"labels": codes, "average": None, "zero_division": 0.0}
    has_test = len(test_codes) > 0
    f1 = f1_score(test_codes, predicted, **kwargs) if has_test else np.full(len(classes), np.nan)
    prec = (
        precision_score(test_codes, predicted, **kwargs)
        if has_test
        else np.full(len(classes), np.nan)
    )
    rec = (
        recall_score(test_codes, predicted, **kwargs) if has_test else np.full(len(classes), np.nan)
    )
    total_labels = max(int(label_counts.sum()), 1)
    return pd.DataFrame(
        {
            "class": list(classes),
            "test_items": np.bincount(test_codes, minlength=len(classes)) if has_test else 0,
            "f1": f1,
            "precision": prec,
            "recall": rec,
            "label_share": [float(label_counts.get(c, 0)) / total_labels for c in classes],
            "predicted_share": (
                np.bincount(pool_predicted, minlength=len(classes)) / max(pool_predicted.size, 1)
            ),
        }
    )


def get_worst_labels(per_class: pd.DataFrame, *, params: HealthParams) -> dict[str, float]:
    """The worst ``params.worst_share`` of the classes with enough test items (at least one
    class), worst first: ``{class: test F1}``."""
    rated = per_class[per_class["test_items"] >= params.min_class_test_items]
    if rated.empty:
        return {}
    n_worst = max(1, math.ceil(params.worst_share * len(rated)))
    worst = rated.sort_values(["f1", "class"]).head(n_worst)
    return {str(c): float(f) for c, f in zip(worst["class"], worst["f1"], strict=True)}


# -- label sets (project.task: multilabel) ---------------------------------------------------
# The measures above read one class per item. A label set is a row of yes/no decisions, one
# per label, and the label-set measures read it that way:
#
# - *agreement* between two rounds' predicted sets (the stop signal's kappa): Cohen's kappa of
#   the two indicator matrices read as one list of yes/no decisions, item by label; a label's
#   own kappa is that of its column (the one-vs-rest kappa a class has);
# - *uncertainty* of a prediction: the mean over labels of the binary entropy of ``p``;
# - *per label*: F1, precision and recall of the predicted sets on the test items, label by
#   label, beside the label's share of the training sets and of the sets predicted on the pool;
# - *coverage*: the share of the pool whose predicted set is trusted, the model's probability
#   that the whole set is right (:func:`tasks.multilabel.get_set_confidence`) clearing the
#   threshold at which exactly right sets make the wanted precision on the test items.


def get_set_kappas(
    first: Sequence[str], second: Sequence[str], classes: Sequence[str], *, separator: str
) -> tuple[float, dict[str, float]]:
    """Agreement of two predictions of label sets on the same items.

    Parameters
    ----------
    first, second : sequence of str, length n
        Sets written by :func:`tasks.multilabel.to_label_text`.

    Returns
    -------
    (float, dict of str to float)
        Cohen's kappa over every item-label decision, and each label's own kappa, for the
        labels that either prediction gives some item (:func:`get_cohen_kappa`'s semantics:
        two identical columns agree fully).
    """
    a = get_label_matrix(list(first), classes, separator=separator).astype(bool)
    b = get_label_matrix(list(second), classes, separator=separator).astype(bool)
    pooled = get_cohen_kappa(a.ravel(), b.ravel())
    by_label = {
        str(name): get_cohen_kappa(a[:, k], b[:, k])
        for k, name in enumerate(classes)
        if a[:, k].any() or b[:, k].any()
    }
    return pooled, dict(sorted(by_label.items()))


def get_set_entropy(pred_probs: np.ndarray) -> np.ndarray:
    """Mean over labels of each row's binary entropy, divided by ``log 2``: in [0, 1], 0 when
    every label is certain, 1 when every label is a coin toss.

    Parameters
    ----------
    pred_probs : np.ndarray of float, shape (n, n_labels)
    """
    p = np.clip(np.asarray(pred_probs, dtype=float), 1e-12, 1.0 - 1e-12)
    bits = -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p)) / math.log(2.0)
    return bits.mean(axis=1)


def get_per_label(
    test_matrix: np.ndarray,
    test_probs: np.ndarray,
    *,
    classes: Sequence[str],
    label_counts: pd.Series,
    pool_probs: np.ndarray,
    threshold: float,
) -> pd.DataFrame:
    """Per label, the columns :func:`get_per_class` gives a class: test items
    that have it, F1, precision and recall of the predicted sets (``threshold``, at least one
    label per set as :func:`tasks.multilabel.get_predicted_sets`), its share of the training
    labels (``label_counts``: sets holding it) and the share of pool items whose predicted set
    holds it."""
    k = len(classes)
    has_test = len(test_matrix) > 0
    predicted = get_predicted_mask(test_probs, threshold).astype(int) if has_test else None
    on_pool = get_predicted_mask(pool_probs, threshold)

    def score(metric) -> np.ndarray:
        if not has_test:
            return np.full(k, np.nan)
        return metric(test_matrix, predicted, average=None, zero_division=0.0)

    total_labels = max(int(label_counts.sum()), 1)
    return pd.DataFrame(
        {
            "class": list(classes),
            "test_items": test_matrix.sum(axis=0).astype(int) if has_test else 0,
            "f1": score(f1_score),
            "precision": score(precision_score),
            "recall": score(recall_score),
            "label_share": [float(label_counts.get(c, 0)) / total_labels for c in classes],
            "predicted_share": on_pool.mean(axis=0) if len(on_pool) else np.zeros(k),
        }
    )


def get_set_coverage(
    test_probs: np.ndarray,
    test_matrix: np.ndarray,
    pool_probs: np.ndarray,
    *,
    threshold: float,
    precision: float,
    min_items: int = 1,
) -> tuple[float, float | None]:
    """The share of the pool whose predicted set is trusted, and the set confidence it takes
    (:func:`get_confidence_threshold` with "right" meaning the whole set is).

    Returns
    -------
    (float, float or None)
        Coverage in [0, 1] and the threshold; (0, None) when no threshold reaches the
        precision.
    """
    if len(test_matrix) == 0 or len(pool_probs) == 0:
        return 0.0, None
    right = (get_predicted_mask(test_probs, threshold) == test_matrix.astype(bool)).all(axis=1)
    cut = get_confidence_threshold(
        get_set_confidence(test_probs, threshold=threshold),
        right,
        precision=precision,
        min_items=min_items,
    )
    if cut is None:
        return 0.0, None
    return float(np.mean(get_set_confidence(pool_probs, threshold=threshold) >= cut)), cut


# -- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    explore_fraction: float
    explore_classes: tuple[str, ...]
    rebalance_fraction: float
    reasons: tuple[str, ...]


def get_missed_classes(
    per_class: pd.DataFrame,
    random_counts: pd.Series,
    active_counts: pd.Series,
    *,
    params: HealthParams,
) -> dict[str, str]:
    """Classes the random items keep finding that the model misses and the actively chosen
    labels do not find: ``{class: why}``.

    A class is missed when all three hold:

    - the random items (test, QC, seed) have at least ``params.min_class_test_items`` of it;
    - the model misses it: recall under ``params.missed_recall_below`` on its test items, or
      it never predicts it on the pool sample;
    - the actively chosen training labels hold significantly fewer of it than its share of
      the random items predicts: a one-sided binomial test at ``params.missed_alpha``,
      Bonferroni over the classes tested. A class that is merely hard (letter's "H") is
      over-represented by uncertainty sampling already, and a seed batch smaller than the
      classes leaves classes unlabeled by chance, which a round of active labels then finds:
      neither is a class the strategy cannot see.

    With ``params.missed_unlabeled``, a class the random items hold enough of (the first
    condition) and the training labels hold none of (``label_share`` 0), once the strategy has
    chosen labels, is missed without the test: the model cannot predict a class it has never
    seen, and the strategy has had a round to find it. The test needs 0 of about 230-280
    active labels for a class of 2.5% (Bonferroni over 3-7 classes), two to three rounds of
    100 later (bench/README.md, "A class with no training label is explored at once").

    Parameters
    ----------
    random_counts, active_counts : pd.Series of int
        Labeled items per class: drawn at random (any split), and chosen by the strategy or
        the plan (training items).
    """
    total_random = int(random_counts.sum())
    n_active = int(active_counts.sum())
    if total_random == 0 or n_active == 0:
        return {}
    tested = [
        str(c) for c in per_class["class"] if random_counts.get(c, 0) >= params.min_class_test_items
    ]
    missed: dict[str, str] = {}
    for row in per_class.itertuples(index=False):
        name = str(row[0])
        if name not in tested:
            continue
        random_share = int(random_counts.get(name, 0)) / total_random
        found = int(active_counts.get(name, 0))
        if params.missed_unlabeled and row.label_share == 0:
            missed[name] = (
                f"class {name!r}: no training label of it after {n_active} actively chosen "
                f"labels, where the random items hold {int(random_counts.get(name, 0))}"
            )
            continue
        p_value = float(binom.cdf(found, n_active, random_share))
        if p_value >= params.missed_alpha / len(tested):
            continue
        labels = (
            f"{found} of {n_active} actively chosen labels where its {random_share:.1%} of the "
            f"random items predicts {random_share * n_active:.0f} (p = {p_value:.2g})"
        )
        if (
            row.test_items >= params.min_class_test_items
            and row.recall < params.missed_recall_below
        ):
            missed[name] = (
                f"class {name!r}: recall {row.recall:.2f} on its {row.test_items} test items "
                f"(< {params.missed_recall_below}); {labels}"
            )
        elif row.predicted_share == 0:
            missed[name] = f"class {name!r}: never predicted on the pool sample; {labels}"
    return missed


def get_plan(
    *,
    missed: dict[str, str],
    random_only_f1: float | None,
    candidate_f1: float | None,
    n_random_labels: int,
    balance: float | None,
    params: HealthParams,
) -> Plan:
    """What select adds to its next batch, by the stated rules:

    - a class missed (:func:`get_missed_classes`): an explore slice of
      ``params.explore_fraction`` of the batch, items the model finds most likely of it (or
      nearest its labeled items, while the model has under
      ``params.explore_model_min_labels`` training labels of it);
    - a model on the random training labels alone scores at least the candidate's macro-F1
      minus ``params.behind_random_tolerance``: the actively chosen labels add nothing, an
      explore slice of uniformly random items;
    - balance under ``params.rebalance_below``: a rebalance slice of
      ``params.rebalance_fraction``, the items least like the labeled set.
    """
    reasons: list[str] = []
    explore = 0.0
    if missed:
        explore = params.explore_fraction
        reasons.append(
            f"explore {params.explore_fraction:.0%} of the batch, the items most likely of the "
            "missed classes (by the model's probability once it has "
            f"{params.explore_model_min_labels} training labels of a class, before that the "
            "items nearest its labeled ones): " + "; ".join(missed.values())
        )
    elif (
        random_only_f1 is not None
        and candidate_f1 is not None
        and random_only_f1 >= candidate_f1 - params.behind_random_tolerance
    ):
        explore = params.explore_fraction
        reasons.append(
            f"explore {params.explore_fraction:.0%} of the batch at random: a model on the "
            f"{n_random_labels} randomly chosen labels alone scores macro-F1 "
            f"{random_only_f1:.4f}, the model on every label {candidate_f1:.4f}; the actively "
            "chosen labels are not paying"
        )
    rebalance = 0.0
    if balance is not None and balance < params.rebalance_below and params.rebalance_fraction:
        rebalance = params.rebalance_fraction
        reasons.append(
            f"rebalance {params.rebalance_fraction:.0%} of the batch: balance {balance:.0f} < "
            f"{params.rebalance_below:.0f}, the labeled items are told apart from the pool"
        )
    return Plan(explore, tuple(missed), rebalance, tuple(reasons))


ACTIONS = {
    "balance": "add a rebalance slice: items the balance classifier finds least like the "
    "labeled set (select does when balance is under health.rebalance_below)",
    "coverage": "label the items the model is least sure of (the active slice)",
    "all_labels": "label more items, and settle the flagged labels",
}


def get_actions(worst: dict[str, float]) -> dict[str, str]:
    actions = dict(ACTIONS)
    if worst:
        names = ", ".join(repr(c) for c in worst)
        actions["worst_labels"] = f"explore {names}: label items the model predicts as them"
    return actions


# -- the stage --------------------------------------------------------------------------------
def _random_training_ids(current: pd.DataFrame, issued: pd.DataFrame) -> pd.Series:
    train = current[current["split"] == "train"]
    first_reason = issued.drop_duplicates("item_id").set_index("item_id")["reason"]
    reason = train["item_id"].map(first_reason)
    return train.loc[reason.isin(RANDOM_REASONS).to_numpy(), "item_id"]


def _class_counts_by_origin(
    current: pd.DataFrame, issued: pd.DataFrame
) -> tuple[pd.Series, pd.Series]:
    """Labeled items per class drawn at random (any split), and training items chosen by the
    strategy or the plan (first issued as active, explore or rebalance)."""
    first_reason = issued.drop_duplicates("item_id").set_index("item_id")["reason"]
    reason = current["item_id"].map(first_reason)
    random = current.loc[reason.isin(RANDOM_REASONS).to_numpy(), "label"].value_counts()
    chosen = reason.isin(CHOSEN_REASONS).to_numpy() & (current["split"] == "train").to_numpy()
    return random, current.loc[chosen, "label"].value_counts()


def get_random_only_f1(
    rows: pd.DataFrame,
    labels: pd.Series,
    test_features: Features,
    test_codes: np.ndarray,
    *,
    params: Params,
    random_state: int,
    space: FeatureSpace | None = None,
) -> float | None:
    """Test macro-F1 of a model fitted on the randomly chosen training labels alone (in
    ``space``, the test features' space; default tabular)."""
    space = space or FeatureSpace()
    classes = params.project.classes
    codes = encode_labels(labels.reset_index(drop=True), classes)
    if len(codes) < params.health.min_labels or np.unique(codes).size < 2 or not len(test_codes):
        return None
    booster = fit_booster(
        space.transform(rows),
        codes,
        params=params.train,
        n_classes=len(classes),
        random_state=random_state,
        categorical=space.categorical,
    )
    probs = predict_proba(booster, test_features, len(classes))
    return float(
        f1_score(
            test_codes,
            probs.argmax(axis=1),
            labels=np.unique(test_codes),  # the classes the test items have, as evaluate
            average="macro",
            zero_division=0.0,
        )
    )


# -- drift on arriving items ------------------------------------------------------------------
def check_arrivals(
    ctx: StageContext,
    arrivals: pd.DataFrame,
    booster: lgb.Booster | None,
    space: FeatureSpace | None = None,
) -> tuple[DriftResult | None, pd.DataFrame]:
    """Compare the pool partitions no earlier round saw with the pool they join.

    The first round's partitions are the pool itself: recorded, not compared. Later ones are
    compared (:func:`tasks.drift.find_drift`) when they hold at least
    ``health.drift_min_items`` items, each side a random sample of at most
    ``health.drift_reference_sample``; with a model, its predicted probabilities too. The
    features compared are ``space``'s :meth:`~tasks.features.FeatureSpace.drift_frame`.

    Returns
    -------
    (DriftResult or None, pd.DataFrame)
        The comparison (None when nothing was compared) and ``arrivals`` with a row per new
        partition (schema :data:`tasks.schema.ARRIVALS`).
    """
    params = ctx.params.health
    sizes = ctx.pool_partitions()
    seen = set(arrivals["partition"].astype(str))
    new = [name for name in sizes if name not in seen]
    old = [name for name in sizes if name in seen]
    if not new:
        return None, arrivals
    n_new = sum(sizes[name] for name in new)
    result = None
    if params.enabled and old and n_new >= params.drift_min_items:
        space = space or FeatureSpace()
        rng = np.random.default_rng(ctx.random_state("health-drift"))
        samples = []
        for names in (old, new):
            size = sum(sizes[name] for name in names)
            take = get_sample_positions(size, size=params.drift_reference_sample, random_state=rng)
            ids = ctx.pool_ids_at(take, partitions=names)
            samples.append(ctx.pool_rows(ids, ordered=False))
        reference, arriving = (space.drift_frame(rows) for rows in samples)
        n_classes = len(ctx.params.project.classes)
        probs = (
            {
                f"{side}_probs": predict_proba(booster, space.transform(rows), n_classes)
                for side, rows in zip(("reference", "arriving"), samples, strict=True)
            }
            if booster is not None
            else {}
        )
        result = find_drift(
            reference,
            arriving,
            params=params,
            random_state=ctx.random_state("health-drift-test"),
            **probs,
        )
    rows = pd.DataFrame(
        {
            "partition": new,
            "round_id": ctx.round_id,
            "items": [sizes[name] for name in new],
            "checked": result is not None,
            "drift_warning": result.warning if result is not None else pd.NA,
            "auc": result.auc if result is not None else np.nan,
            "p_value": result.p_value if result is not None else np.nan,
            "shifted_features": ",".join(result.shifted_features) if result is not None else "",
        }
    )
    return result, pd.concat([arrivals, schema.conform(rows, schema.ARRIVALS)], ignore_index=True)


def get_drift_fields(
    result: DriftResult | None, arrivals: pd.DataFrame, *, round_id: int
) -> dict[str, object]:
    """The summary's drift fields for this round's arrivals."""
    arrived = int(arrivals.loc[arrivals["round_id"] == round_id, "items"].sum())
    if result is None:
        return {"drift_new_items": arrived}
    return {
        "drift_new_items": arrived,
        "drift_checked": True,
        "drift_warning": bool(result.warning),
        "drift_auc": float(result.auc),
        "drift_p_value": float(result.p_value),
        "drift_features": tuple(
            dict.fromkeys((*result.shifted_features, *result.classifier_features))
        ),
        "drift_prediction_shift": result.prediction_shift,
    }


def get_labels_key(*tables: pd.DataFrame) -> str:
    """A digest of the ``item_id`` and ``label`` of each table's rows (order does not count)."""
    digest = hashlib.sha256()
    for table in tables:
        pairs = table[["item_id", "label"]].astype("string").sort_values(["item_id", "label"])
        hashed = pd.util.hash_pandas_object(pairs, index=False).to_numpy()
        digest.update(len(pairs).to_bytes(8, "little") + hashed.tobytes())
    return digest.hexdigest()


def _stop_series(predictions: pd.DataFrame, round_id: int) -> pd.Series:
    rows = predictions[predictions["round_id"] == round_id]
    return rows.set_index("item_id")["predicted_label"]


@dataclass(frozen=True)
class HealthInputs:
    """What the health core reads: this round's labels and model, what earlier rounds left,
    and the pool rows it needs, read from the pool in one pass.

    Attributes
    ----------
    rows : pd.DataFrame
        Pool rows indexed by ``item_id``: the stop set, every labeled item and
        ``balance_sample``.
    balance_sample : pd.Series
        Item ids of the random pool sample the balance classifier compares the training items
        with (empty: too few training labels to fit it).
    space : FeatureSpace
        The model's feature space (its folder's); the health stage's own models use it too.
    test_cache : object
        Evaluate's probabilities of this model on the test items, when it promoted it.
    """

    current: pd.DataFrame
    issued: pd.DataFrame
    stop_set: pd.DataFrame
    stop_predictions: pd.DataFrame
    history: pd.DataFrame
    detail_before: dict[str, object]
    booster: lgb.Booster
    test_cache: object
    rows: pd.DataFrame
    balance_sample: pd.Series
    space: FeatureSpace = field(default_factory=FeatureSpace)


@dataclass(frozen=True)
class HealthSeeds:
    """The seeds of the health stage's own models (:meth:`StageContext.random_state`)."""

    balance_cv: int
    balance_fit: int
    random_only: int
    noise: int = 0


@dataclass(frozen=True)
class HealthResult:
    """The stop signal, rating and plan of one round (``summary``), this round's predictions on
    the stop set (``stop_predictions``, schema :data:`tasks.schema.STOP_PREDICTIONS`), the
    models select uses (``models``: file name to text) and the detail behind the report."""

    summary: HealthSummary
    stop_predictions: pd.DataFrame
    models: dict[str, str]
    detail: dict[str, object]


def run(ctx: StageContext) -> HealthSummary:
    params, round_id = ctx.params, ctx.round_id
    history = ctx.load_before("health_history")
    stop_predictions = ctx.load_before("stop_predictions")
    stop_set = ctx.load_before("stop_set")
    current = ctx.load("current")
    candidate = ctx.load("candidate")
    n_train = int((current["split"] == "train").sum())
    rated = params.health.enabled and candidate.text is not None
    balanced = rated and n_train >= params.health.min_labels
    n_pool = sum(ctx.pool_partitions().values()) if stop_set.empty or balanced else 0
    if stop_set.empty:
        picked = get_sample_positions(
            n_pool, size=params.stop.set_size, random_state=ctx.random_state("health-stop-set")
        )
        stop_set = get_stop_set(ctx.pool_ids_at(picked), round_id=round_id)
    ctx.save("stop_set", stop_set)
    booster = load_model(candidate.text) if candidate.text is not None else None
    space = model_space(candidate)
    drift, arrived = check_arrivals(ctx, ctx.load_before("arrivals"), booster, space)
    ctx.save("arrivals", arrived)
    fields: dict[str, object] = {
        "round_id": round_id,
        "stop_set_size": len(stop_set),
        **get_drift_fields(drift, arrived, round_id=round_id),
    }
    detail: dict[str, object] = {"drift": drift.to_dict() if drift is not None else None}
    if not rated:
        why = (
            "health.enabled is false"
            if not params.health.enabled
            else "no model trained this round"
        )
        summary = HealthSummary(**fields, not_rated_because=why)
        return _save(ctx, summary, stop_predictions, {}, detail, history, train_items=n_train)

    balance_sample = (
        ctx.pool_ids_at(
            get_sample_positions(
                n_pool,
                size=params.health.balance_pool_sample,
                random_state=ctx.random_state("health-balance"),
            )
        )
        if balanced
        else pd.Series([], dtype="string", name="item_id")
    )
    wanted = pd.concat([stop_set["item_id"], current["item_id"], balance_sample]).drop_duplicates()
    champion = ctx.load("champion")
    inputs = HealthInputs(
        current=current,
        issued=ctx.load_before("issued"),
        stop_set=stop_set,
        stop_predictions=stop_predictions,
        history=history,
        detail_before=ctx.load_before("health_detail") or {},
        booster=booster,
        test_cache=champion.test_probs if champion.text == candidate.text else None,
        rows=ctx.pool_rows(wanted, ordered=False).set_index("item_id"),
        balance_sample=balance_sample,
        space=space,
    )
    seeds = HealthSeeds(
        balance_cv=ctx.random_state("health-balance-cv"),
        balance_fit=ctx.random_state("health-balance-fit"),
        random_only=ctx.random_state("health-random-only"),
        noise=ctx.random_state("health-noise"),
    )
    result = get_health(inputs, fields, params=params, round_id=round_id, seeds=seeds)
    return _save(
        ctx,
        result.summary,
        result.stop_predictions,
        result.models,
        {**detail, **result.detail},
        history,
        train_items=n_train,
    )


def get_health(
    inputs: HealthInputs,
    fields: dict[str, object],
    *,
    params: Params,
    round_id: int,
    seeds: HealthSeeds,
) -> HealthResult:
    """The stop signal, the model rating and the plan of round ``round_id`` (the module's
    docstring says what each is); ``fields`` are summary fields computed before (drift, the
    stop set's size). Pure: nothing is read or written.

    The health stage's own classifiers (balance, the random-only model) fit a few thousand
    rows with ``health.num_threads`` threads, not ``train.num_threads``.

    Label sets (``project.task: multilabel``) are read with the label-set measures (the
    section "label sets" above); the refits of the noise-floor plateau rules, the random-only
    model and the explore slice read one class per item and are left out for them.
    """
    classes = params.project.classes
    sets = get_label_sets(params)
    separator = sets.separator if sets is not None else None
    aux_train = params.train.model_copy(update={"num_threads": params.health.num_threads})
    booster, rows, current = inputs.booster, inputs.rows, inputs.current

    def features(item_ids: pd.Series) -> Features:
        return inputs.space.transform(rows.loc[item_ids.to_numpy()].reset_index())

    stop_set = inputs.stop_set
    # one class: probabilities over the classes; label sets: each label's probability
    stop_probs = predict_proba(booster, features(stop_set["item_id"]), len(classes))
    this_round = schema.conform(
        pd.DataFrame(
            {
                "round_id": round_id,
                "item_id": stop_set["item_id"].to_numpy(),
                **_predicted_columns(stop_probs, classes, separator),
            }
        ),
        schema.STOP_PREDICTIONS,
    )
    # the previous round is the last one the history (git: restored by a rollback) knows
    history = inputs.history
    earlier = history[history["kappa"].notna()] if not history.empty else history
    previous_round = int(history["round_id"].max()) if not history.empty else None
    previous = (
        _stop_series(inputs.stop_predictions, previous_round)
        if previous_round is not None
        else None
    )
    test = current[current["split"] == "test"].reset_index(drop=True)
    train = current[current["split"] == "train"].reset_index(drop=True)
    # the refits cost two fits a round: made only for a plateau rule that reads them (the
    # default, slope, does not: a 200,000-item round's health share went from 7.7% to 10.1%)
    plateau = params.stop.plateau
    added = (
        len(train) - int(history["train_items"].iloc[-1])
        if not history.empty and pd.notna(history["train_items"].iloc[-1])
        else 0
    )

    def refit_kappa(drop: int | None) -> float:
        return get_noise_kappa(
            features(train["item_id"]),
            encode_labels(train["label"], classes),
            features(stop_set["item_id"]),
            stop_probs.argmax(axis=1),
            n_classes=len(classes),
            train_params=aux_train,
            random_state=seeds.noise,
            drop=drop,
            categorical=inputs.space.categorical,
        )

    refit = len(train) and previous is not None and separator is None
    noise_kappa = refit_kappa(None) if refit and plateau in ("noise", "noise_slope") else None
    drop_kappa = (
        refit_kappa(added)
        if refit and plateau in ("drop", "drop_slope") and 0 < added < len(train)
        else None
    )
    known_rounds = {*history["round_id"].astype(int), round_id} if not history.empty else {round_id}
    shown = pd.concat([inputs.stop_predictions, this_round], ignore_index=True)
    shown = shown[shown["round_id"].isin(known_rounds)]
    labeled_rounds = _by_label(train, "label", separator).groupby("label")["last_round"].min()
    predicted_rounds = (
        _by_label(shown, "predicted_label", separator).groupby("predicted_label")["round_id"].min()
    )
    new_classes = get_new_classes(
        {str(c): int(r) for c, r in labeled_rounds.items()},
        {str(c): int(r) for c, r in predicted_rounds.items()},
        round_id=round_id,
        window=params.stop.window,
    )
    signal = get_stop_signal(
        _stop_series(this_round, round_id),
        previous,
        [float(k) for k in earlier["kappa"]] if not earlier.empty else [],
        params=params.stop,
        noise_kappa=noise_kappa,
        earlier_noise_kappas=_column(earlier, "noise_kappa"),
        earlier_class_kappa_mins=_column(earlier, "class_kappa_min"),
        new_classes=new_classes,
        drop_kappa=drop_kappa,
        earlier_drop_kappas=_column(earlier, "drop_kappa"),
        separator=separator,
        classes=classes,
    )
    test_features = features(test["item_id"]) if len(test) else None
    # one class: class codes; label sets: the 0/1 matrix of the test items' sets
    if separator is not None:
        test_codes = get_label_matrix(test["label"].astype(str), classes, separator=separator)
    elif len(test):
        test_codes = encode_labels(test["label"], classes)
    else:
        test_codes = np.array([], dtype=int)
    label_counts = _by_label(train, "label", separator)["label"].value_counts()
    # evaluate predicted the test items with this model when it promoted it: reuse them
    test_probs = (
        get_cached_probs(booster, test["item_id"], test_features, len(classes), inputs.test_cache)[
            0
        ]
        if test_features is not None
        else np.zeros((0, len(classes)))
    )
    if separator is None:
        per_class = get_per_class(
            test_codes,
            test_probs,
            classes=classes,
            label_counts=label_counts,
            pool_predicted=stop_probs.argmax(axis=1),
        )
        coverage, threshold = get_coverage(
            test_probs,
            test_codes,
            stop_probs,
            precision=params.health.coverage_precision,
            min_items=params.health.coverage_min_test_items,
        )
    else:
        per_class = get_per_label(
            test_codes,
            test_probs,
            classes=classes,
            label_counts=label_counts,
            pool_probs=stop_probs,
            threshold=SET_THRESHOLD,
        )
        coverage, threshold = get_set_coverage(
            test_probs,
            test_codes,
            stop_probs,
            threshold=SET_THRESHOLD,
            precision=params.health.coverage_precision,
            min_items=params.health.coverage_min_test_items,
        )
    # over the classes the test items have, as evaluate's macro-F1 (history, the gate)
    macro_f1 = float(per_class.loc[per_class["test_items"] > 0, "f1"].mean()) if len(test) else None
    worst = get_worst_labels(per_class, params=params.health)

    random_ids = _random_training_ids(current, inputs.issued)
    balance_auc = balance = None
    models: dict[str, str] = {}
    if len(inputs.balance_sample):
        labeled = features(train["item_id"])
        pool_sample = features(inputs.balance_sample)
        balance_auc = get_balance_auc(
            labeled,
            pool_sample,
            params=params.health,
            train_params=aux_train,
            random_state=seeds.balance_cv,
            categorical=inputs.space.categorical,
        )
        balance = get_balance_rating(balance_auc)
        if balance < params.health.rebalance_below:
            models[BALANCE_MODEL] = fit_balance_model(
                labeled,
                pool_sample,
                train_params=aux_train,
                random_state=seeds.balance_fit,
                categorical=inputs.space.categorical,
            ).model_to_string()

    random_train = train[schema.is_in(train["item_id"], random_ids)]
    # the same random labels and test labels give the same answer: a simulation's seed batch
    # and fixed test split would otherwise refit and repredict it every round
    random_key = get_labels_key(random_train, test)
    before = inputs.detail_before
    random_only_f1 = (
        before.get("random_only_macro_f1")
        if before.get("random_only_key") == random_key
        else get_random_only_f1(
            rows.loc[random_train["item_id"].to_numpy()].reset_index(),
            random_train["label"],
            test_features,
            test_codes,
            params=params.model_copy(update={"train": aux_train}),
            random_state=seeds.random_only,
            space=inputs.space,
        )
        if test_features is not None and len(random_train) < len(train) and separator is None
        else None
    )
    missed = (
        get_missed_classes(
            per_class, *_class_counts_by_origin(current, inputs.issued), params=params.health
        )
        if separator is None
        else {}
    )
    plan = get_plan(
        missed=missed,
        random_only_f1=random_only_f1,
        candidate_f1=macro_f1,
        n_random_labels=len(random_train),
        balance=balance,
        params=params.health,
    )
    factors = {
        "balance": balance,
        "coverage": 100.0 * coverage if len(test) else None,
        "all_labels": 100.0 * macro_f1 if macro_f1 is not None else None,
        "worst_labels": 100.0 * float(np.mean(list(worst.values()))) if worst else None,
    }
    known = [v for v in factors.values() if v is not None]
    summary = HealthSummary(
        **fields,
        model_round=round_id,
        rating=float(np.mean(known)) if known else None,
        **factors,
        balance_auc=balance_auc,
        random_share=len(random_ids) / len(train) if len(train) else None,
        coverage_threshold=threshold,
        worst_classes=worst,
        actions=get_actions(worst),
        kappa=signal.kappa,
        kappa_mean=signal.kappa_mean,
        changed_share=signal.changed_share,
        mean_entropy=float(this_round["entropy"].mean()),
        stop_advised=signal.advised,
        stop_reason=signal.reason,
        stop_criterion=signal.criterion,
        stop_held=signal.held,
        kappa_rise=signal.kappa_rise,
        noise_kappa=noise_kappa,
        drop_kappa=drop_kappa,
        noise_kappa_mean=signal.noise_kappa_mean,
        class_kappa_min=signal.class_kappa_min,
        class_kappa_mean=signal.class_kappa_mean,
        new_classes=tuple(new_classes),
        explore_fraction=plan.explore_fraction,
        explore_classes=plan.explore_classes,
        rebalance_fraction=plan.rebalance_fraction,
        plan_reasons=plan.reasons,
    )
    detail = {
        "per_class": per_class.replace({np.nan: None}).to_dict(orient="records"),
        "class_balance": {
            "labels": {str(k): int(v) for k, v in label_counts.items()},
            "predicted": dict(
                zip(classes, per_class["predicted_share"].astype(float), strict=True)
            ),
        },
        "random_only_macro_f1": random_only_f1,
        "random_only_key": random_key,
        "random_training_labels": len(random_train),
    }
    return HealthResult(
        summary=summary,
        stop_predictions=pd.concat([inputs.stop_predictions, this_round], ignore_index=True),
        models=models,
        detail=detail,
    )


def _save(
    ctx: StageContext,
    summary: HealthSummary,
    stop_predictions: pd.DataFrame,
    models: dict[str, str],
    detail: dict[str, object],
    history: pd.DataFrame,
    *,
    train_items: int,
) -> HealthSummary:
    ctx.save("stop_predictions", stop_predictions)
    # a listing always: DVC warns of an empty output folder every round
    listing = {"round_id": summary.round_id, "models": sorted(models)}
    ctx.save("health_models", {**models, MODELS_LISTING: json.dumps(listing) + "\n"})
    crash_point("during:health")
    row = {"round_id": summary.round_id, "train_items": train_items}
    row |= {k: getattr(summary, k) for k in schema.HEALTH_HISTORY if k not in row}
    rounds = [*history.to_dict(orient="records"), row]
    ctx.save("health_history", pd.DataFrame(rounds, columns=list(schema.HEALTH_HISTORY)))
    ctx.save(
        "health_detail",
        {
            **detail,
            "stop_rounds": [{k: _plain(r.get(k)) for k in STOP_ROUND_KEYS} for r in rounds],
        },
    )
    ctx.save("health_report", summary.to_dict())
    return summary


def _predicted_columns(
    probs: np.ndarray, classes: Sequence[str], separator: str | None
) -> dict[str, np.ndarray]:
    """A stop-set prediction's ``predicted_label``, ``confidence`` and ``entropy``: of one class
    (``separator`` None) or of a label set."""
    if separator is None:
        return {
            "predicted_label": np.asarray(classes, dtype=object)[probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
            "entropy": get_normalized_entropy(probs),
        }
    return {
        "predicted_label": get_predicted_sets(
            probs, classes, separator=separator, threshold=SET_THRESHOLD
        ),
        "confidence": get_set_confidence(probs, threshold=SET_THRESHOLD),
        "entropy": get_set_entropy(probs),
    }


def _by_label(frame: pd.DataFrame, column: str, separator: str | None) -> pd.DataFrame:
    """``frame`` with one row per label of ``column``'s sets (as it is for one class)."""
    if separator is None or frame.empty:
        return frame
    return frame.assign(**{column: frame[column].astype(str).str.split(separator)}).explode(column)


def _column(history: pd.DataFrame, name: str) -> list[float | None]:
    """A history column as a list, None where empty (also a history written before it)."""
    if history.empty or name not in history:
        return [None] * len(history)
    return [None if pd.isna(v) else float(v) for v in history[name]]


def _plain(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value
