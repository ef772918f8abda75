"""Stage 5, evaluate: the candidate and the previous champion on the same, current test set.

The candidate becomes champion only if it passes the gate. The champion folder keeps the
champion from before this round in ``previous/`` whenever this round promoted, so rerunning
the stage compares against the same model and gives the same answer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from tasks import schema
from tasks.catalog import write_csv, write_json, write_text
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


@dataclass(frozen=True)
class Evaluation:
    candidate: dict[str, float] | None
    champion: dict[str, float] | None
    promote: bool
    reason: str
    predicted: pd.Series | None = None  # the candidate's class for each test item


def evaluate_models(
    test_rows: pd.DataFrame,
    test_labels: pd.Series,
    *,
    candidate: lgb.Booster | None,
    champion: lgb.Booster | None,
    classes: tuple[str, ...],
    params: EvaluateParams,
) -> Evaluation:
    """Score both models on the test items and apply the promotion gate.

    The candidate is promoted when there is no champion, or when its ``params.gate_metric``
    is at least the champion's plus ``params.gate_min_delta``. Without test labels there is
    no evidence either way: a first model is promoted, a later one is not.
    """
    if candidate is None:
        return Evaluation(None, None, False, "no candidate model this round")
    if test_labels.empty:
        if champion is None:
            return Evaluation(None, None, True, "first model; no test labels yet")
        return Evaluation(None, None, False, "no test labels to compare against the champion")
    features = get_feature_frame(test_rows.reset_index(drop=True))
    codes = encode_labels(test_labels.reset_index(drop=True), classes)
    probs = predict_proba(candidate, features, len(classes))
    ours = get_classification_metrics(codes, probs, classes)
    predicted = pd.Series(np.asarray(classes, dtype=object)[probs.argmax(axis=1)], dtype="string")
    if champion is None:
        return Evaluation(ours, None, True, "first model", predicted)
    theirs = get_classification_metrics(
        codes, predict_proba(champion, features, len(classes)), classes
    )
    metric = params.gate_metric
    bar = theirs[metric] + params.gate_min_delta
    promote = ours[metric] >= bar
    verdict = "passes" if promote else "fails"
    reason = f"candidate {metric} {ours[metric]:.4f} {verdict} the gate {bar:.4f}"
    return Evaluation(ours, theirs, promote, reason, predicted)


def _load(model_text: str | None) -> lgb.Booster | None:
    return None if model_text is None else lgb.Booster(model_str=model_text)


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
    )
    staged = cat.champion_dir.with_name(".champion.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    if result.promote and candidate_text is not None:
        write_text(staged / "model.txt", candidate_text)
        write_json(
            staged / "meta.json", {"promoted_in_round": ctx.round_id, **(result.candidate or {})}
        )
        if before_text is not None:
            write_text(staged / "previous" / "model.txt", before_text)
            write_json(staged / "previous" / "meta.json", before_meta)
    elif before_text is not None:
        write_text(staged / "model.txt", before_text)
        write_json(staged / "meta.json", before_meta)
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
