"""LightGBM as alloop uses it: parameters that work from a few dozen labels up to
millions, class weights, fitting and predicting. Pure functions; no files.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold

from tasks.features import Features, count_rows, take_rows
from tasks.params import TrainParams


def get_min_child_samples(params: TrainParams, n_labels: int) -> int:
    """Leaf size: a fixed value, or ``"auto"``: a fraction of the labels, clipped.

    With 40 labels "auto" gives 2 (splits are possible); with 2,000 it gives 20, LightGBM's
    default, which it never exceeds.
    """
    if params.min_child_samples != "auto":
        return int(params.min_child_samples)
    scaled = int(n_labels * params.min_child_samples_fraction)
    return int(np.clip(scaled, params.min_child_samples_min, params.min_child_samples_max))


def get_lgb_params(
    params: TrainParams,
    *,
    n_labels: int,
    n_classes: int,
    random_state: int,
    bagging_fraction: float | None = None,
    bagging_freq: int | None = None,
) -> dict[str, object]:
    """The full LightGBM parameter dict; deterministic for a given ``random_state``.

    With ``bagging_fraction`` (and ``bagging_freq``, both from ``params.score``) every
    ``bagging_freq`` trees are fitted on a fresh draw of that share of the rows, seeded by
    ``random_state``: how the members of a query-by-committee differ. Without, no bagging.
    """
    if (bagging_fraction is None) != (bagging_freq is None):
        raise ValueError(
            "bagging_fraction and bagging_freq go together, got "
            f"bagging_fraction={bagging_fraction}, bagging_freq={bagging_freq}"
        )
    bagging: dict[str, object] = (
        {}
        if bagging_fraction is None
        else {"bagging_fraction": bagging_fraction, "bagging_freq": bagging_freq}
    )
    objective: dict[str, object] = (
        {"objective": "binary"}
        if n_classes == 2
        else {"objective": "multiclass", "num_class": n_classes}
    )
    min_child = get_min_child_samples(params, n_labels)
    return {
        **objective,
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_child_samples": min_child,
        # with few rows the default min_data_in_bin=3 can still block splits
        "min_data_in_bin": min(3, min_child),
        "feature_fraction": params.feature_fraction,
        "lambda_l2": params.lambda_l2,
        **bagging,
        "num_threads": params.num_threads,
        "seed": random_state,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


def get_class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-sample weights ``n / (k * n_c)`` for ``mode="balanced"`` (k = classes present).

    Parameters
    ----------
    labels : np.ndarray of int, shape (n,)
        Class codes in ``[0, n_classes)``.
    """
    if mode == "none" or labels.size == 0:
        return np.ones(labels.shape[0], dtype=float)
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = np.count_nonzero(counts)
    per_class = np.divide(
        labels.size, present * counts, out=np.zeros_like(counts), where=counts > 0
    )
    return per_class[labels]


def fit_booster(
    features: Features,
    labels: np.ndarray,
    *,
    params: TrainParams,
    n_classes: int,
    random_state: int,
    sample_weight: np.ndarray | None = None,
    bagging_fraction: float | None = None,
    bagging_freq: int | None = None,
    categorical: Sequence[int] = (),
) -> lgb.Booster:
    """Fit a LightGBM booster on ``features`` and class codes ``labels`` (shape ``(n,)``).

    ``features``: a frame (:func:`tasks.features.get_feature_frame`, whose ``category`` columns
    LightGBM splits as categories) or a text space's sparse matrix, whose categorical columns
    are the positions ``categorical`` (:attr:`tasks.features.FeatureSpace.categorical`).
    ``bagging_fraction`` and ``bagging_freq``: see :func:`get_lgb_params`.
    """
    labels = np.asarray(labels, dtype=int)
    lgb_params = get_lgb_params(
        params,
        n_labels=labels.size,
        n_classes=n_classes,
        random_state=random_state,
        bagging_fraction=bagging_fraction,
        bagging_freq=bagging_freq,
    )
    dataset = lgb.Dataset(
        features,
        label=labels,
        weight=get_item_weights(labels, n_classes, params, sample_weight),
        params={"verbosity": -1},
        free_raw_data=True,
        categorical_feature=list(categorical) if categorical else "auto",
    )
    return train_booster(lgb_params, dataset, params)


def get_item_weights(
    labels: np.ndarray, n_classes: int, params: TrainParams, sample_weight: np.ndarray | None
) -> np.ndarray:
    """Each item's training weight: its class weight (``params.class_weight``) times its own
    ``sample_weight`` (a flagged label, down-weighted)."""
    weight = get_class_weights(labels, n_classes, params.class_weight)
    if sample_weight is not None:
        weight = weight * np.asarray(sample_weight, dtype=float)
    return weight


def train_booster(lgb_params: dict, dataset: lgb.Dataset, params: TrainParams) -> lgb.Booster:
    """LightGBM's training on ``dataset`` (built, or to build with ``lgb_params``)."""
    # keep_training_booster: lgb.train otherwise copies the model through its text form
    # (serialise, parse) to free the dataset, a cost that grows with trees x classes
    return lgb.train(
        lgb_params, dataset, num_boost_round=params.num_boost_round, keep_training_booster=True
    )


def predict_proba(booster: lgb.Booster, features: Features, n_classes: int) -> np.ndarray:
    """Predicted class probabilities.

    Returns
    -------
    np.ndarray of float, shape (n, n_classes)
        Rows sum to 1.
    """
    raw = np.asarray(booster.predict(features), dtype=float)
    if n_classes == 2 and raw.ndim == 1:
        return np.column_stack([1.0 - raw, raw])
    return raw.reshape(count_rows(features), n_classes)


def encode_labels(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Class names to codes ``0..K-1`` in the order of ``classes``.

    Raises
    ------
    ValueError
        If a label is not one of ``classes``.
    """
    index = {name: code for code, name in enumerate(classes)}
    unknown = sorted(set(labels.astype(str)) - index.keys())
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {list(classes)}")
    return labels.astype(str).map(index).to_numpy(dtype=int)


def get_folds(labels: np.ndarray, n_folds: int, random_state: int) -> list[tuple]:
    """Stratified folds, shuffled by ``random_state``: ``(fit_rows, held_rows)`` pairs."""
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state % 2**32)
    return list(folds.split(np.zeros(labels.size), labels))


def get_out_of_fold_pred_probs(
    features: Features,
    labels: np.ndarray,
    *,
    n_classes: int,
    n_folds: int,
    train_params: TrainParams,
    random_state: int,
    categorical: Sequence[int] = (),
) -> np.ndarray:
    """Predicted probabilities of each row from a model fitted on the other folds.

    Parameters
    ----------
    labels : np.ndarray of int, shape (n,)
        Class codes in ``[0, n_classes)``; every class present has at least ``n_folds`` rows.

    Returns
    -------
    np.ndarray of float, shape (n, n_classes)
    """
    pred_probs = np.zeros((labels.size, n_classes), dtype=float)
    for fold, (fit_idx, held_idx) in enumerate(get_folds(labels, n_folds, random_state)):
        booster = fit_booster(
            take_rows(features, fit_idx),
            labels[fit_idx],
            params=train_params,
            n_classes=n_classes,
            random_state=random_state + fold,
            categorical=categorical,
        )
        pred_probs[held_idx] = predict_proba(booster, take_rows(features, held_idx), n_classes)
    return pred_probs


def get_forest_matrix(features: pd.DataFrame) -> np.ndarray:
    """A tabular feature frame as scikit-learn's forests take it: numbers and booleans as
    floats, a categorical column as its category codes, a missing value as NaN.

    The codes are comparable between rows of one frame only (enough for out-of-fold
    probabilities, where every fold comes from the same frame).

    Returns
    -------
    np.ndarray of float, shape (n, d)
    """
    columns = []
    for name in features.columns:
        column = features[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = column.cat.codes.to_numpy()
            columns.append(np.where(codes < 0, np.nan, codes).astype(float))
        else:
            columns.append(pd.to_numeric(column, errors="coerce").astype(float).to_numpy())
    if not columns:
        return np.zeros((len(features), 0))
    return np.column_stack(columns)


def get_forest_out_of_fold_pred_probs(
    features: pd.DataFrame,
    labels: np.ndarray,
    *,
    n_classes: int,
    n_folds: int,
    n_trees: int,
    n_jobs: int,
    random_state: int,
) -> np.ndarray:
    """:func:`get_out_of_fold_pred_probs` from a random forest of ``n_trees`` trees instead of
    LightGBM, on the same folds for the same ``random_state``.

    Averaged with LightGBM's, the forest's probabilities ranked wrong labels better on every
    set measured, and, less confident, they lower cleanlab's count of label issues (bench/README,
    "Flags: a forest beside LightGBM").

    Returns
    -------
    np.ndarray of float, shape (n, n_classes)
    """
    matrix = get_forest_matrix(features)
    pred_probs = np.zeros((labels.size, n_classes), dtype=float)
    for fold, (fit_idx, held_idx) in enumerate(get_folds(labels, n_folds, random_state)):
        forest = RandomForestClassifier(
            n_estimators=n_trees, n_jobs=n_jobs, random_state=(random_state + fold) % 2**32
        ).fit(matrix[fit_idx], labels[fit_idx])
        pred_probs[np.ix_(held_idx, forest.classes_)] = forest.predict_proba(matrix[held_idx])
    return pred_probs
