"""Stage 5, evaluate: the candidate and the previous champion on the same, current test set.

The candidate becomes champion only if it passes the gate. The champion folder keeps the
champion from before this round in ``previous/`` whenever this round promoted, so rerunning
the stage compares against the same model and gives the same answer
(:func:`get_champion_before`).

Beside each champion's model lie its probabilities for the test items it was evaluated on,
each with a hash of the item's features (:class:`tasks.catalog.SavedModel`). The next round
predicts only the test items that are new or changed: the test set grows by a slice per round,
and predicting the whole of it again with an unchanged champion was a third of a simulated
round's prediction time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from tasks import schema
from tasks.catalog import SavedModel
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import Features, FeatureSpace, count_rows, model_space, take_rows
from tasks.model import encode_labels, predict_proba
from tasks.multilabel import (
    LabelSets,
    OneVsRestModel,
    get_label_matrix,
    get_label_sets,
    get_multilabel_metrics,
    get_predicted_sets,
    load_model,
)
from tasks.params import EvaluateParams
from tasks.summaries import EvaluateSummary

STAGE = StageSpec(
    name="evaluate",
    module=__name__,
    code=("tasks/model.py", "tasks/features.py", "tasks/multilabel.py"),
    reads=("candidate", "current", "pool"),
    writes=("champion", "metrics", "test_predictions"),
    params=("project", "evaluate"),
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


#: A label is in a predicted set when its probability reaches this.
SET_THRESHOLD = 0.5


@dataclass(frozen=True)
class Evaluation:
    candidate: dict[str, float] | None
    champion: dict[str, float] | None
    promote: bool
    reason: str
    predicted: pd.Series | None = None  # the candidate's class for each test item
    candidate_probs: pd.DataFrame | None = None  # see get_cached_probs
    champion_probs: pd.DataFrame | None = None


def get_row_hashes(features: Features) -> np.ndarray:
    """A 64-bit hash of each row's feature values (column names and order included; for a
    sparse matrix, each row's column positions and values)."""
    if not isinstance(features, pd.DataFrame):
        matrix = features.tocsr()
        return np.array(
            [
                int.from_bytes(
                    hashlib.blake2b(
                        matrix.indices[start:end].tobytes() + matrix.data[start:end].tobytes(),
                        digest_size=8,
                    ).digest(),
                    "little",
                )
                for start, end in zip(matrix.indptr[:-1], matrix.indptr[1:], strict=True)
            ],
            dtype=np.uint64,
        )
    salt = np.uint64(
        int(hashlib.sha256("\x1f".join(features.columns).encode()).hexdigest()[:15], 16)
    )
    return pd.util.hash_pandas_object(features, index=False).to_numpy(dtype=np.uint64) ^ salt


def get_cached_probs(
    booster: lgb.Booster,
    item_ids: pd.Series,
    features: Features,
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
    probs = np.full((count_rows(features), n_classes), np.nan)
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
        probs[missing] = predict_proba(booster, _rows_anew(take_rows(features, missing)), n_classes)
    table = pd.DataFrame(probs, columns=columns)
    table.insert(0, "row_hash", hashes)
    table.insert(0, "item_id", item_ids.astype("string").to_numpy())
    return probs, table


def _rows_anew(features: Features) -> Features:
    return features.reset_index(drop=True) if isinstance(features, pd.DataFrame) else features


def evaluate_models(
    test_rows: pd.DataFrame,
    test_labels: pd.Series,
    *,
    candidate: lgb.Booster | None,
    champion: lgb.Booster | None,
    classes: tuple[str, ...],
    params: EvaluateParams,
    champion_cache: pd.DataFrame | None = None,
    candidate_space: FeatureSpace | None = None,
    champion_space: FeatureSpace | None = None,
    label_sets: LabelSets | None = None,
) -> Evaluation:
    """Score both models on the test items and apply the promotion gate.

    The candidate is promoted when there is no champion, or when its ``params.gate_metric``
    is at least the champion's plus ``params.gate_min_delta``. Without test labels there is
    no evidence either way: a first model is promoted, a later one is not.

    ``champion_cache`` holds the champion's probabilities from earlier rounds (see
    :func:`get_cached_probs`); the result carries both models' probabilities to cache. Each
    model sees the test items in the feature space it was trained in (default: tabular).
    With ``label_sets`` the test labels are sets and the metrics those of
    :func:`tasks.multilabel.get_multilabel_metrics` (MAP, micro- and macro-F1, per-label AP).
    """
    candidate_space = candidate_space or FeatureSpace()
    champion_space = champion_space or FeatureSpace()
    if candidate is None:
        return Evaluation(None, None, False, "no candidate model this round")
    if test_labels.empty:
        if champion is None:
            return Evaluation(None, None, True, "first model; no test labels yet")
        return Evaluation(None, None, False, "no test labels to compare against the champion")
    rows = test_rows.reset_index(drop=True)
    features = candidate_space.transform(rows)
    labels = test_labels.reset_index(drop=True)
    if label_sets is not None:
        truth = get_label_matrix(labels.astype(str), classes, separator=label_sets.separator)

        def metrics_of(probs: np.ndarray) -> dict[str, float]:
            return get_multilabel_metrics(truth, probs, classes, threshold=SET_THRESHOLD)

        def predicted_of(probs: np.ndarray) -> pd.Series:
            sets = get_predicted_sets(probs, classes, separator=label_sets.separator)
            return pd.Series(sets, dtype="string")
    else:
        codes = encode_labels(labels, classes)

        def metrics_of(probs: np.ndarray) -> dict[str, float]:
            return get_classification_metrics(codes, probs, classes)

        def predicted_of(probs: np.ndarray) -> pd.Series:
            return pd.Series(
                np.asarray(classes, dtype=object)[probs.argmax(axis=1)], dtype="string"
            )

    probs, candidate_probs = get_cached_probs(candidate, rows["item_id"], features, len(classes))
    ours = metrics_of(probs)
    predicted = predicted_of(probs)
    if champion is None:
        return Evaluation(ours, None, True, "first model", predicted, candidate_probs)
    champion_features = (
        features if champion_space.same_as(candidate_space) else champion_space.transform(rows)
    )
    champion_probs, champion_table = get_cached_probs(
        champion, rows["item_id"], champion_features, len(classes), champion_cache
    )
    theirs = metrics_of(champion_probs)
    metric = params.gate_metric
    bar = theirs[metric] + params.gate_min_delta
    promote = ours[metric] >= bar
    verdict = "passes" if promote else "fails"
    reason = f"candidate {metric} {ours[metric]:.4f} {verdict} the gate {bar:.4f}"
    return Evaluation(ours, theirs, promote, reason, predicted, candidate_probs, champion_table)


def _booster(model: SavedModel | None) -> lgb.Booster | OneVsRestModel | None:
    if model is None or model.text is None:
        return None
    return load_model(model.text)


def get_champion_before(champion: SavedModel, *, round_id: int) -> SavedModel:
    """The champion this round's candidate is judged against.

    When this round already promoted its candidate (the round runs again: a rerun, or a
    resume after a crash), that is the model the promotion replaced, kept in ``previous``;
    otherwise it is the champion as it stands.
    """
    if champion.meta.get("promoted_in_round") == round_id:
        return champion.previous if champion.previous is not None else SavedModel()
    return champion


def get_new_champion(
    result: Evaluation, candidate: SavedModel, before: SavedModel, *, round_id: int
) -> SavedModel:
    """The champion after this round's gate: the candidate, with the model it replaced in
    ``previous``; or the champion from before, unchanged; each with its test probabilities."""
    if result.promote and candidate.text is not None:
        previous = (
            SavedModel(before.text, before.meta, result.champion_probs, features=before.features)
            if before.text is not None
            else None
        )
        return SavedModel(
            candidate.text,
            {"promoted_in_round": round_id, **(result.candidate or {})},
            result.candidate_probs,
            previous,
            features=candidate.features,
        )
    if before.text is not None:
        return SavedModel(before.text, before.meta, result.champion_probs, features=before.features)
    return SavedModel(meta={"promoted_in_round": None})


def get_evaluate_summary(
    result: Evaluation, current: pd.DataFrame, before: SavedModel, *, round_id: int
) -> EvaluateSummary:
    return EvaluateSummary(
        round_id=round_id,
        n_test=int((current["split"] == "test").sum()),
        n_train=int((current["split"] == "train").sum()),
        candidate=result.candidate,
        champion=result.champion,
        promoted=result.promote,
        gate=result.reason,
        champion_round=round_id if result.promote else before.meta.get("promoted_in_round"),
    )


def get_test_predictions(test: pd.DataFrame, result: Evaluation) -> pd.DataFrame:
    """``item_id, actual, predicted`` of every test item (the confusion plot's data)."""
    return pd.DataFrame(
        {
            "item_id": test["item_id"],
            "actual": test["label"],
            "predicted": result.predicted if result.predicted is not None else pd.NA,
        }
    )


def run(ctx: StageContext) -> EvaluateSummary:
    current = ctx.load("current")
    test = current[current["split"] == "test"].reset_index(drop=True)
    candidate = ctx.load("candidate")
    before = get_champion_before(ctx.load_before("champion"), round_id=ctx.round_id)
    result = evaluate_models(
        ctx.pool_rows(test["item_id"]),
        test["label"],
        candidate=_booster(candidate),
        champion=_booster(before),
        classes=ctx.params.project.classes,
        params=ctx.params.evaluate,
        champion_cache=before.test_probs,
        candidate_space=model_space(candidate),
        champion_space=model_space(before),
        label_sets=get_label_sets(ctx.params),
    )
    ctx.save("champion", get_new_champion(result, candidate, before, round_id=ctx.round_id))
    crash_point("during:evaluate")
    summary = get_evaluate_summary(result, current, before, round_id=ctx.round_id)
    ctx.save("metrics", summary.to_dict())
    ctx.save("test_predictions", get_test_predictions(test, result))
    return summary
