"""Stage 6, score: predict the whole pool in chunks and compute each item's utility."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks import schema
from tasks.catalog import write_json
from tasks.context import StageContext, StageSpec, stage_task
from tasks.faults import crash_point
from tasks.model import get_feature_frame, predict_proba
from tasks.strategies import get_strategy

STAGE = StageSpec(
    name="score",
    deps=("tasks/score.py", "tasks/strategies.py", "models/champion", "data/pool"),
    params=("project", "score"),
    outs=("data/interim/scores.parquet",),
    metrics=("reports/score.json",),
)


def get_chunk_scores(
    pool_rows: pd.DataFrame,
    booster: lgb.Booster | None,
    *,
    classes: tuple[str, ...],
    strategy: str,
    random_state: int,
) -> pd.DataFrame:
    """Prediction and utility of each row of one pool chunk.

    Without a model (before the first labels) every row gets a random utility, so that the
    seed batch is a uniform sample.

    Returns
    -------
    pd.DataFrame
        Schema :data:`tasks.schema.SCORES`, one row per row of ``pool_rows``, same order.
    """
    n = len(pool_rows)
    if booster is None:
        utilities = get_strategy("random")(np.full((n, 2), 0.5), random_state=random_state)
        predicted = pd.Series(pd.NA, index=range(n), dtype="string")
        confidence = np.full(n, np.nan)
    else:
        pred_probs = predict_proba(booster, get_feature_frame(pool_rows), len(classes))
        utilities = get_strategy(strategy)(pred_probs, random_state=random_state)
        predicted = pd.Series(np.asarray(classes, dtype=object)[pred_probs.argmax(axis=1)])
        confidence = pred_probs.max(axis=1)
    return schema.conform(
        pd.DataFrame(
            {
                "item_id": pool_rows["item_id"].to_numpy(),
                "predicted_label": predicted.to_numpy(),
                "confidence": confidence,
                "utility": utilities,
            }
        ),
        schema.SCORES,
    )


@stage_task("score")
def run(ctx: StageContext) -> dict[str, object]:
    cat = ctx.catalog
    text = cat.read_model_text(cat.champion_dir)
    booster = None if text is None else lgb.Booster(model_str=text)
    get_strategy(ctx.params.score.strategy)  # fail before reading the pool
    seed = ctx.random_state("score")
    chunks = [
        get_chunk_scores(
            chunk,
            booster,
            classes=ctx.params.project.classes,
            strategy=ctx.params.score.strategy,
            random_state=seed + i,
        )
        for i, chunk in enumerate(cat.iter_pool(ctx.params.score.chunk_size))
    ]
    crash_point("during:score")
    scores = pd.concat(chunks, ignore_index=True) if chunks else schema.empty(schema.SCORES)
    cat.write_table(cat.scores, scores, schema.SCORES)
    summary: dict[str, object] = {
        "pool_items": int(len(scores)),
        "strategy": ctx.params.score.strategy if booster is not None else "random (no model yet)",
        "chunks": len(chunks),
        "mean_confidence": (
            float(np.nanmean(scores["confidence"])) if booster is not None and len(scores) else None
        ),
    }
    write_json(cat.reports_dir / "score.json", summary)
    return summary
