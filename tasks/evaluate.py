"""Stage 5, evaluate: the candidate and the previous champion on the same, current test set.

The candidate becomes champion only if it passes the gate. The champion folder keeps the
champion from before this round in ``previous/`` whenever this round promoted, so rerunning
the stage compares against the same model and gives the same answer.

Beside each champion's ``model.txt`` lies ``test_probs.parquet``: its probabilities for the
test items it was evaluated on, each with a hash of the item's features. The next round
predicts only the test items that are new or changed: the test set grows by a slice per round,
and predicting the whole of it again with an unchanged champion was a third of a simulated
round's prediction time.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from tasks import schema
from tasks.catalog import write_bytes, write_csv, write_json, write_text
from tasks.context import StageContext, StageSpec, stage_task
from tasks.faults import crash_point
from tasks.model import encode_labels, get_feature_frame, predict_proba
from tasks.params import EvaluateParams

STAGE = StageSpec(
    name="evaluate",
    deps=("tasks/evaluate.py", "models/candidate", "data/labels/current.parquet", "data/pool"),
    params=("project", "evaluate"),
    persist=("models/champion",),
    metrics=("reports/metrics.json",),
    plots={
        "reports/test_predictions.csv": {"template": "confusion", "x": "actual", "y": "predicted"}
    },
)


def get_classification_metrics(
    labels: np.ndarray, pred_probs: np.ndarray, classes: tuple[str, ...]
) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class F1 (``f1_<class>``).

    Parameters
    ----------
    labels : np.ndarray of int, shape (n,)
        True class codes.
    pred_probs : np.ndarray of float, shape (n, len(classes))

    Macro-F1 averages over the classes that occur in ``labels``: a class with no test item
    has no defined recall, and counting it as 0 would punish the model for the test set.
    """
    if pred_probs.shape != (labels.size, len(classes)):
        raise ValueError(
            f"pred_probs must have shape ({labels.size}, {len(classes)}), got {pred_probs.shape}"
        )
    predicted = pred_probs.argmax(axis=1)
    present = np.unique(labels)
    per_class = f1_score(labels, predicted, labels=present, average=None, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(per_class)) if present.size else float("nan"),
    }
    metrics.update({f"f1_{classes[c]}": float(f) for c, f in zip(present, per_class, strict=True)})
    return metrics


PROBS_FILE = "test_probs.parquet"


@dataclass(frozen=True)
class Evaluation:
    candidate: dict[str, float] | None
    champion: dict[str, float] | None
    promote: bool
    reason: str
    predicted: pd.Series | None = None  # the candidate's class for each test item
    candidate_probs: pd.DataFrame | None = None  # see get_cached_probs
    champion_probs: pd.DataFrame | None = None


def get_row_hashes(features: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's feature values (column names and order included)."""
    salt = np.uint64(
        int(hashlib.sha256("\x1f".join(features.columns).encode()).hexdigest()[:15], 16)
    )
    return pd.util.hash_pandas_object(features, index=False).to_numpy(dtype=np.uint64) ^ salt


def get_cached_probs(
    booster: lgb.Booster,
    item_ids: pd.Series,
    features: pd.DataFrame,
    n_classes: int,
    cache: pd.DataFrame | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``booster``'s probabilities for the rows of ``features``, predicting only the rows that
    ``cache`` (an earlier result of this function for the same model) lacks.

    A cached row is used only if its item id and its feature hash both match; a cache with
    another number of classes is ignored.

    Returns
    -------
    (np.ndarray of shape (n, n_classes), pd.DataFrame)
        The probabilities, and the cache for these rows (``item_id``, ``row_hash``,
        ``p0`` ... ``p{n_classes-1}``).
    """
    columns = [f"p{k}" for k in range(n_classes)]
    hashes = get_row_hashes(features)
    probs = np.full((len(features), n_classes), np.nan)
    if cache is not None and list(cache.columns) == ["item_id", "row_hash", *columns]:
        known = cache.drop_duplicates("item_id").set_index("item_id")
        ids = item_ids.astype("string").to_numpy()
        found = schema.is_in(pd.Series(ids), known.index.to_series())
        if found.any():
            hit = known.loc[ids[found]]
            same = hit["row_hash"].to_numpy(dtype=np.uint64) == hashes[found]
            rows = np.flatnonzero(found)[same]
            probs[rows] = hit[columns].to_numpy(dtype=float)[same]
    missing = np.isnan(probs).any(axis=1)
    if missing.any():
        probs[missing] = predict_proba(booster, features[missing].reset_index(drop=True), n_classes)
    table = pd.DataFrame(probs, columns=columns)
    table.insert(0, "row_hash", hashes)
    table.insert(0, "item_id", item_ids.astype("string").to_numpy())
    return probs, table


def evaluate_models(
    test_rows: pd.DataFrame,
    test_labels: pd.Series,
    *,
    candidate: lgb.Booster | None,
    champion: lgb.Booster | None,
    classes: tuple[str, ...],
    params: EvaluateParams,
    champion_cache: pd.DataFrame | None = None,
) -> Evaluation:
    """Score both models on the test items and apply the promotion gate.

    The candidate is promoted when there is no champion, or when its ``params.gate_metric``
    is at least the champion's plus ``params.gate_min_delta``. Without test labels there is
    no evidence either way: a first model is promoted, a later one is not.

    ``champion_cache`` holds the champion's probabilities from earlier rounds (see
    :func:`get_cached_probs`); the result carries both models' probabilities to cache.
    """
    if candidate is None:
        return Evaluation(None, None, False, "no candidate model this round")
    if test_labels.empty:
        if champion is None:
            return Evaluation(None, None, True, "first model; no test labels yet")
        return Evaluation(None, None, False, "no test labels to compare against the champion")
    rows = test_rows.reset_index(drop=True)
    features = get_feature_frame(rows)
    codes = encode_labels(test_labels.reset_index(drop=True), classes)
    probs, candidate_probs = get_cached_probs(candidate, rows["item_id"], features, len(classes))
    ours = get_classification_metrics(codes, probs, classes)
    predicted = pd.Series(np.asarray(classes, dtype=object)[probs.argmax(axis=1)], dtype="string")
    if champion is None:
        return Evaluation(ours, None, True, "first model", predicted, candidate_probs)
    champion_probs, champion_table = get_cached_probs(
        champion, rows["item_id"], features, len(classes), champion_cache
    )
    theirs = get_classification_metrics(codes, champion_probs, classes)
    metric = params.gate_metric
    bar = theirs[metric] + params.gate_min_delta
    promote = ours[metric] >= bar
    verdict = "passes" if promote else "fails"
    reason = f"candidate {metric} {ours[metric]:.4f} {verdict} the gate {bar:.4f}"
    return Evaluation(ours, theirs, promote, reason, predicted, candidate_probs, champion_table)


def _load(model_text: str | None) -> lgb.Booster | None:
    return None if model_text is None else lgb.Booster(model_str=model_text)


def _read_cache(folder: Path, model_text: str | None, meta: dict) -> pd.DataFrame | None:
    """The champion's cached test probabilities, if they are this model's."""
    path = folder / PROBS_FILE
    if model_text is None or not path.exists():
        return None
    if meta.get("test_probs_of") != _digest(model_text):
        return None
    return pd.read_parquet(path)


def _write_model(folder: Path, model_text: str, meta: dict, probs: pd.DataFrame | None) -> None:
    """``model.txt``, ``meta.json`` and, when given, the model's cached test probabilities."""
    write_text(folder / "model.txt", model_text)
    if probs is not None:
        buffer = io.BytesIO()
        probs.to_parquet(buffer, index=False)
        write_bytes(folder / PROBS_FILE, buffer.getvalue())
        meta = {**meta, "test_probs_of": _digest(model_text)}
    write_json(folder / "meta.json", meta)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@stage_task("evaluate")
def run(ctx: StageContext) -> dict[str, object]:
    cat = ctx.catalog
    retired = cat.champion_dir.with_name(".champion.old")
    if retired.exists() and not cat.champion_dir.exists():
        retired.rename(cat.champion_dir)  # a crash came mid-swap: the old champion stands
    champion_meta = cat.read_json(cat.champion_dir / "meta.json", default={})
    # on a rerun of a round that promoted, the champion from before the round is in previous/
    before = (
        cat.champion_dir / "previous"
        if champion_meta.get("promoted_in_round") == ctx.round_id
        else cat.champion_dir
    )
    before_meta = cat.read_json(before / "meta.json", default={})
    before_text = cat.read_model_text(before)
    candidate_text = cat.read_model_text(cat.candidate_dir)
    current = cat.read_table(cat.current, schema.CURRENT)
    test = current[current["split"] == "test"].reset_index(drop=True)
    rows = cat.read_pool(test["item_id"]).set_index("item_id").loc[test["item_id"]].reset_index()
    result = evaluate_models(
        rows,
        test["label"],
        candidate=_load(candidate_text),
        champion=_load(before_text),
        classes=ctx.params.project.classes,
        params=ctx.params.evaluate,
        champion_cache=_read_cache(before, before_text, before_meta),
    )
    staged = cat.champion_dir.with_name(".champion.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    before_meta = {k: v for k, v in before_meta.items() if k != "test_probs_of"}
    if result.promote and candidate_text is not None:
        _write_model(
            staged,
            candidate_text,
            {"promoted_in_round": ctx.round_id, **(result.candidate or {})},
            result.candidate_probs,
        )
        if before_text is not None:
            _write_model(staged / "previous", before_text, before_meta, result.champion_probs)
    elif before_text is not None:
        _write_model(staged, before_text, before_meta, result.champion_probs)
    else:
        write_json(staged / "meta.json", {"promoted_in_round": None})
    # swap by renames, so a crash at any point leaves a whole champion folder to resume from
    shutil.rmtree(retired, ignore_errors=True)
    if cat.champion_dir.exists():
        cat.champion_dir.rename(retired)
    crash_point("during:evaluate")
    staged.rename(cat.champion_dir)
    shutil.rmtree(retired, ignore_errors=True)
    metrics: dict[str, object] = {
        "round_id": ctx.round_id,
        "n_test": int(len(test)),
        "n_train": int((current["split"] == "train").sum()),
        "candidate": result.candidate,
        "champion": result.champion,
        "promoted": result.promote,
        "gate": result.reason,
        "champion_round": (
            ctx.round_id if result.promote else before_meta.get("promoted_in_round")
        ),
    }
    write_json(cat.metrics_file, metrics)
    predictions = pd.DataFrame(
        {
            "item_id": test["item_id"],
            "actual": test["label"],
            "predicted": result.predicted if result.predicted is not None else pd.NA,
        }
    )
    write_csv(cat.reports_dir / "test_predictions.csv", predictions)
    return metrics
