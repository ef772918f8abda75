"""Stage 4, train: fit LightGBM on the training labels, minus or down-weighting flagged ones."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks.catalog import SavedModel
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import Features, FeatureSpace, load_space, take_rows
from tasks.model import encode_labels, fit_booster, get_lgb_params
from tasks.multilabel import (
    LabelSets,
    OneVsRestModel,
    fit_one_vs_rest,
    get_label_matrix,
    get_label_sets,
)
from tasks.params import TrainParams
from tasks.summaries import TrainSummary

STAGE = StageSpec(
    name="train",
    module=__name__,
    code=("tasks/model.py", "tasks/features.py", "tasks/multilabel.py"),
    reads=("current", "flags", "pool", "feature_space"),
    writes=("candidate", "train_report"),
    params=("project", "train"),
)


def get_training_weights(
    train_labels: pd.DataFrame, flags: pd.DataFrame, *, round_id: int
) -> np.ndarray:
    """Sample weight of each training item: the weight of this round's flag, else 1.

    Returns
    -------
    np.ndarray of float, shape (len(train_labels),), values in [0, 1]
    """
    this_round = flags[flags["round_id"] == round_id].set_index("item_id")["weight"]
    return train_labels["item_id"].map(this_round).fillna(1.0).to_numpy(dtype=float)


def get_training_data(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    weights: np.ndarray,
    *,
    classes: tuple[str, ...],
    space: FeatureSpace | None = None,
) -> tuple[Features, np.ndarray, np.ndarray]:
    """What a booster is fitted on: the features (in ``space``), class codes and weights of
    the items whose weight is above 0.

    Parameters
    ----------
    labeled_rows : pd.DataFrame, shape (n, 1 + d)
        Pool rows of the training items.
    labels : pd.Series of str, shape (n,)
    weights : np.ndarray of float, shape (n,)
        Per-item weight; 0 drops the item.

    Returns
    -------
    (pd.DataFrame or sparse matrix, np.ndarray of int, np.ndarray of float)
        Features (shape (m, d)), class codes in ``[0, len(classes))`` and weights (shape (m,)).
    """
    if not (len(labeled_rows) == len(labels) == len(weights)):
        raise ValueError(
            f"labeled_rows ({len(labeled_rows)}), labels ({len(labels)}) and weights "
            f"({len(weights)}) must have the same length"
        )
    keep = np.asarray(weights) > 0
    codes = encode_labels(labels.reset_index(drop=True), classes)[keep]
    features = take_rows(
        (space or FeatureSpace()).transform(labeled_rows.reset_index(drop=True)), keep
    )
    return features, codes, np.asarray(weights, dtype=float)[keep]


def load_training_set(ctx: StageContext) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The training labels (split train of ``current``), their pool rows in the same order,
    and their weights after this round's flags: loaded by name, for the stages that train."""
    current = ctx.load("current")
    train_labels = current[current["split"] == "train"].reset_index(drop=True)
    rows = ctx.pool_rows(train_labels["item_id"])
    weights = get_training_weights(train_labels, ctx.load("flags"), round_id=ctx.round_id)
    return train_labels, rows, weights


def train_model(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    weights: np.ndarray,
    *,
    classes: tuple[str, ...],
    params: TrainParams,
    random_state: int,
    space: FeatureSpace | None = None,
) -> tuple[lgb.Booster | None, str]:
    """Fit the model, or say why there is nothing to fit.

    Parameters
    ----------
    labeled_rows : pd.DataFrame, shape (n, 1 + d)
        Pool rows of the training items.
    labels : pd.Series of str, shape (n,)
    weights : np.ndarray of float, shape (n,)
        Per-item weight; 0 drops the item.

    Returns
    -------
    (lgb.Booster or None, str)
        The booster, and an empty string; or None and the reason no model was fitted.
    """
    space = space or FeatureSpace()
    features, codes, used_weights = get_training_data(
        labeled_rows, labels, weights, classes=classes, space=space
    )
    if np.unique(codes).size < 2:
        return None, f"{codes.size} usable training labels cover fewer than two classes"
    booster = fit_booster(
        features,
        codes,
        params=params,
        n_classes=len(classes),
        random_state=random_state,
        sample_weight=used_weights,
        categorical=space.categorical,
    )
    return booster, ""


def train_label_set_model(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    weights: np.ndarray,
    *,
    classes: tuple[str, ...],
    params: TrainParams,
    random_state: int,
    label_sets: LabelSets,
    space: FeatureSpace | None = None,
) -> tuple[OneVsRestModel | None, str]:
    """:func:`train_model` for label sets: one booster per label
    (:func:`tasks.multilabel.fit_one_vs_rest`) on the items whose weight is above 0."""
    space = space or FeatureSpace()
    keep = np.asarray(weights) > 0
    matrix = get_label_matrix(
        labels.reset_index(drop=True).astype(str), classes, separator=label_sets.separator
    )[keep]
    if matrix.shape[0] < 2 or not (matrix.min(axis=0) != matrix.max(axis=0)).any():
        return None, f"{matrix.shape[0]} usable training label sets: no label to learn yet"
    features = take_rows(space.transform(labeled_rows.reset_index(drop=True)), keep)
    model = fit_one_vs_rest(
        features,
        matrix,
        params=params,
        random_state=random_state,
        categorical=space.categorical,
        sample_weight=np.asarray(weights, dtype=float)[keep],
    )
    return model, ""


def get_candidate(
    booster: lgb.Booster | OneVsRestModel | None,
    skipped: str,
    weights: np.ndarray,
    *,
    round_id: int,
    classes: tuple[str, ...],
    params: TrainParams,
    random_state: int,
    space: FeatureSpace | None = None,
) -> tuple[SavedModel, TrainSummary]:
    """The candidate model folder (the booster, if any, and what it was trained with)."""
    n_used = int((weights > 0).sum())
    meta: dict[str, object] = {
        "round_id": round_id,
        "trained": booster is not None,
        "skipped_because": skipped,
        "classes": list(classes),
        "n_train_labels": int(len(weights)),
        "n_used": n_used,
        "n_excluded": int(len(weights) - n_used),
        "lightgbm_params": get_lgb_params(
            params, n_labels=n_used, n_classes=len(classes), random_state=random_state
        ),
        "lightgbm_version": lgb.__version__,
    }
    text = booster.model_to_string() if booster is not None else None
    summary = TrainSummary(
        trained=booster is not None,
        n_train_labels=int(len(weights)),
        n_used=n_used,
        n_excluded=int(len(weights) - n_used),
    )
    return SavedModel(text=text, meta=meta, features=(space or FeatureSpace()).to_files()), summary


def run(ctx: StageContext) -> TrainSummary:
    train_labels, rows, weights = load_training_set(ctx)
    seed = ctx.random_state("train")
    settings = {
        "classes": ctx.params.project.classes,
        "params": ctx.params.train,
        "space": load_space(ctx),
    }
    label_sets = get_label_sets(ctx.params)
    booster, skipped = (
        train_label_set_model(
            rows,
            train_labels["label"],
            weights,
            **settings,
            random_state=seed,
            label_sets=label_sets,
        )
        if label_sets is not None
        else train_model(rows, train_labels["label"], weights, **settings, random_state=seed)
    )
    candidate, summary = get_candidate(
        booster, skipped, weights, round_id=ctx.round_id, **settings, random_state=seed
    )
    ctx.save("candidate", candidate)
    crash_point("during:train")
    ctx.save("train_report", summary.to_dict())
    return summary
