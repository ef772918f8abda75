"""Stage 4, train: fit LightGBM on the training labels, minus or down-weighting flagged ones."""

from __future__ import annotations

import shutil

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks import schema
from tasks.catalog import Catalog, write_json, write_text
from tasks.context import StageContext, StageSpec, stage_task
from tasks.faults import crash_point
from tasks.model import encode_labels, fit_booster, get_feature_frame, get_lgb_params
from tasks.params import TrainParams

STAGE = StageSpec(
    name="train",
    deps=(
        "tasks/train.py",
        "tasks/model.py",
        "data/labels/current.parquet",
        "data/labels/flags.parquet",
        "data/pool",
    ),
    params=("project", "train"),
    outs=("models/candidate",),
    metrics=("reports/train.json",),
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
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """What a booster is fitted on: the features, class codes and weights of the items whose
    weight is above 0.

    Parameters
    ----------
    labeled_rows : pd.DataFrame, shape (n, 1 + d)
        Pool rows of the training items.
    labels : pd.Series of str, shape (n,)
    weights : np.ndarray of float, shape (n,)
        Per-item weight; 0 drops the item.

    Returns
    -------
    (pd.DataFrame, np.ndarray of int, np.ndarray of float)
        Features (shape (m, d)), class codes in ``[0, len(classes))`` and weights (shape (m,)).
    """
    if not (len(labeled_rows) == len(labels) == len(weights)):
        raise ValueError(
            f"labeled_rows ({len(labeled_rows)}), labels ({len(labels)}) and weights "
            f"({len(weights)}) must have the same length"
        )
    keep = np.asarray(weights) > 0
    codes = encode_labels(labels.reset_index(drop=True), classes)[keep]
    features = get_feature_frame(labeled_rows.reset_index(drop=True)).loc[keep]
    return features, codes, np.asarray(weights, dtype=float)[keep]


def read_training_set(
    catalog: Catalog, *, round_id: int
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The training labels (split train of ``current.parquet``), their pool rows in the same
    order, and their weights after this round's flags. Reads files: for stage wrappers."""
    current = catalog.read_table(catalog.current, schema.CURRENT)
    train_labels = current[current["split"] == "train"].reset_index(drop=True)
    flags = catalog.read_table(catalog.flags, schema.FLAGS)
    rows = catalog.read_pool(train_labels["item_id"]).set_index("item_id")
    rows = rows.loc[train_labels["item_id"]].reset_index()
    weights = get_training_weights(train_labels, flags, round_id=round_id)
    return train_labels, rows, weights


def train_model(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    weights: np.ndarray,
    *,
    classes: tuple[str, ...],
    params: TrainParams,
    random_state: int,
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
    features, codes, used_weights = get_training_data(
        labeled_rows, labels, weights, classes=classes
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
    )
    return booster, ""


@stage_task("train")
def run(ctx: StageContext) -> dict[str, object]:
    cat = ctx.catalog
    train_labels, rows, weights = read_training_set(cat, round_id=ctx.round_id)
    seed = ctx.random_state("train")
    booster, skipped = train_model(
        rows,
        train_labels["label"],
        weights,
        classes=ctx.params.project.classes,
        params=ctx.params.train,
        random_state=seed,
    )
    # the folder is an out that dvc repro empties: rewrite it whole
    shutil.rmtree(cat.candidate_dir, ignore_errors=True)
    crash_point("during:train")
    n_used = int((weights > 0).sum())
    meta: dict[str, object] = {
        "round_id": ctx.round_id,
        "trained": booster is not None,
        "skipped_because": skipped,
        "classes": list(ctx.params.project.classes),
        "n_train_labels": int(len(train_labels)),
        "n_used": n_used,
        "n_excluded": int(len(train_labels) - n_used),
        "lightgbm_params": get_lgb_params(
            ctx.params.train,
            n_labels=n_used,
            n_classes=len(ctx.params.project.classes),
            random_state=seed,
        ),
        "lightgbm_version": lgb.__version__,
    }
    if booster is not None:
        write_text(cat.candidate_dir / "model.txt", booster.model_to_string())
    write_json(cat.candidate_dir / "meta.json", meta)
    summary = {k: meta[k] for k in ("trained", "n_train_labels", "n_used", "n_excluded")}
    write_json(cat.reports_dir / "train.json", summary)
    return summary
