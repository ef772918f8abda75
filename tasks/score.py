"""Stage 6, score: predict the whole pool in chunks and compute each item's utility.

The strategy's :class:`~tasks.strategies.PoolView` is built only with what the strategy
declares it needs: a committee trained on the current training labels, an embedding (the
numeric features, and a text pool's SVD coordinates, standardized with the training rows'
mean and standard deviation), the
training labels per class, the expected annotation seconds of each item, the batch size.

Items already issued in an earlier round are not selectable (NaN utility): they are waiting
for labels or have them, and a strategy that ranks items against each other (diversity) must
not spend its picks on them.

The pool is predicted only when something reads the predictions: the strategy (every one but
random), or select's test slice, drawn stratified by predicted class. Otherwise (a random
campaign of a simulation, whose test set is fixed) the scores carry no prediction, and select
predicts the few items of its batch for their pre-annotations: predicting a pool of 15,000
letter items that nobody read was 40% of a random campaign's time.

Most strategies score each chunk on its own, so memory stays bounded by the chunk size. A
strategy registered with ``whole_pool=True`` (diversity) ranks items against each other, so
the chunks' probabilities and view arrays are concatenated and it is computed once over the
whole pool: memory then grows with ``n_pool * (n_classes + n_dims)`` floats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks import schema
from tasks.annotation_time import get_item_seconds
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import FeatureSpace, model_space
from tasks.model import fit_booster, predict_proba
from tasks.multilabel import (
    LabelSets,
    get_label_sets,
    get_predicted_sets,
    get_set_confidence,
    load_model,
)
from tasks.params import AnnotationParams, ScoreParams, SelectParams, TrainParams
from tasks.selection import get_relabel_candidates
from tasks.strategies import (
    PoolView,
    StrategyInfo,
    check_strategy_task,
    get_strategy,
    get_strategy_info,
)
from tasks.summaries import ScoreSummary
from tasks.train import get_training_data, load_training_set

STAGE = StageSpec(
    name="score",
    module=__name__,
    code=(
        "tasks/strategies.py",
        "tasks/annotation_time.py",
        "tasks/model.py",
        "tasks/features.py",
        "tasks/multilabel.py",
        "tasks/train.py",
        "tasks/selection.py",
    ),
    reads=("champion", "pool", "current", "flags"),
    writes=("scores", "score_report"),
    params=(
        "project",
        "score",
        "train",
        "annotation",
        "select.batch_size",
        "select.test_fraction",
        "flag.max_votes_for_relabel",
        "merge.relabel_below_agreement",
    ),
)


@dataclass(frozen=True, eq=False)
class ScoringInputs:
    """What a strategy's view is built from besides the champion; only what it needs is set.

    Attributes
    ----------
    committee : tuple of lgb.Booster
        The committee of query-by-committee strategies (see :func:`get_committee`).
    embedding_stats : pd.DataFrame, optional
        Index: embedding columns (:func:`get_embedding_stats`); ``mean`` and ``std`` of the
        training rows.
    class_counts : np.ndarray of float, shape (n_classes,), optional
        Training labels per class.
    annotation : AnnotationParams, optional
        The annotation-time model giving each item's expected seconds.
    batch_size : int, optional
    space : FeatureSpace
        The champion's feature space (its model folder's): the committee is fitted, and every
        model predicts, in it. A text space embeds items by its SVD too (``embedding_stats``
        then has the ``text_svd<i>`` columns).
    label_sets : LabelSets, optional
        A multilabel project's: the predictions are sets (:func:`_scores_frame`).
    """

    committee: tuple[lgb.Booster, ...] = ()
    embedding_stats: pd.DataFrame | None = None
    class_counts: np.ndarray | None = None
    annotation: AnnotationParams | None = None
    batch_size: int | None = None
    space: FeatureSpace = field(default_factory=FeatureSpace)
    label_sets: LabelSets | None = None


# -- what a view is made of ---------------------------------------------------------------------
def get_committee(
    labeled_rows: pd.DataFrame,
    labels: pd.Series,
    weights: np.ndarray,
    *,
    classes: tuple[str, ...],
    train_params: TrainParams,
    params: ScoreParams,
    random_state: int,
    space: FeatureSpace | None = None,
) -> tuple[lgb.Booster, ...]:
    """``params.committee_size`` boosters fitted on the training labels as train fits the
    champion, each with its own seed and ``params.bagging_fraction`` of the rows per tree.

    Parameters
    ----------
    labeled_rows, labels, weights, space
        As for :func:`tasks.train.train_model` (``space`` default: tabular).

    Returns
    -------
    tuple of lgb.Booster
        Empty when the usable labels cover fewer than two classes.
    """
    space = space or FeatureSpace()
    features, codes, used_weights = get_training_data(
        labeled_rows, labels, weights, classes=classes, space=space
    )
    if np.unique(codes).size < 2:
        return ()
    # LightGBM's seed is a C int
    seeds = np.random.SeedSequence(random_state).generate_state(params.committee_size) % 2**31
    return tuple(
        fit_booster(
            features,
            codes,
            params=train_params,
            n_classes=len(classes),
            random_state=int(seed),
            sample_weight=used_weights,
            bagging_fraction=params.bagging_fraction,
            bagging_freq=params.bagging_freq,
            categorical=space.categorical,
        )
        for seed in seeds
    )


def _embedding_columns(rows: pd.DataFrame, space: FeatureSpace | None) -> pd.DataFrame:
    """The columns items are embedded by: the numeric features, and in a text space the SVD
    coordinates of the text (``text_svd<i>``)."""
    features = rows.drop(columns=[schema.ITEM_ID])
    numeric = [
        name
        for name in features.columns
        if pd.api.types.is_numeric_dtype(features[name])
        or pd.api.types.is_bool_dtype(features[name])
    ]
    columns = features[numeric].astype(float).reset_index(drop=True)
    if space is None or space.components is None:
        return columns
    embedded = space.embed(rows)
    text = pd.DataFrame(embedded, columns=[f"text_svd{i}" for i in range(embedded.shape[1])])
    return pd.concat([columns, text], axis=1)


def get_embedding_stats(
    labeled_rows: pd.DataFrame, space: FeatureSpace | None = None
) -> pd.DataFrame:
    """Mean and standard deviation of each embedding column over the training rows.

    Categorical features are left out of the embedding: they have no distance. In a text
    space the text's SVD coordinates are columns too, standardized like the numbers, so
    neither outweighs the other by its units. A constant (or all-missing) column gets a
    standard deviation of 1.

    Returns
    -------
    pd.DataFrame
        Index: column names; columns ``mean``, ``std``.
    """
    columns = _embedding_columns(labeled_rows, space)
    std = columns.std(ddof=0)
    return pd.DataFrame(
        {"mean": columns.mean().fillna(0.0), "std": std.where(std > 0, 1.0).fillna(1.0)}
    )


def get_embedding(
    pool_rows: pd.DataFrame, stats: pd.DataFrame, space: FeatureSpace | None = None
) -> np.ndarray:
    """Standardized embedding columns: ``(x - mean) / std``; a missing value becomes 0 (the
    training mean).

    Returns
    -------
    np.ndarray of float, shape (len(pool_rows), len(stats))
    """
    columns = _embedding_columns(pool_rows, space).reindex(columns=stats.index)
    scaled = (columns - stats["mean"]) / stats["std"]
    return scaled.fillna(0.0).to_numpy(dtype=float)


def get_class_counts(labels: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """Training labels per class, in the order of ``classes`` (labels of other classes are
    not counted).

    Returns
    -------
    np.ndarray of float, shape (len(classes),), values >= 0
    """
    counts = labels.astype(str).value_counts()
    return np.array([counts.get(name, 0) for name in classes], dtype=float)


def get_pool_view(
    pool_rows: pd.DataFrame,
    pred_probs: np.ndarray,
    *,
    needs: tuple[str, ...],
    inputs: ScoringInputs,
    classes: tuple[str, ...],
    rows: np.ndarray | None = None,
) -> PoolView:
    """The view of ``pool_rows`` with the fields in ``needs`` (the others stay None).

    Parameters
    ----------
    pred_probs : np.ndarray of float, shape (len(pool_rows), n_classes)
        The champion's predictions; their maximum is the confidence the expected annotation
        seconds come from.
    rows : np.ndarray of bool, shape (len(pool_rows),), optional
        The rows the committee predicts (default: all); the others get NaN.
    """
    fields: dict[str, object] = {}
    if "committee_probs" in needs:
        wanted = np.ones(len(pool_rows), dtype=bool) if rows is None else rows
        features = inputs.space.transform(pool_rows[wanted])
        members = np.full((len(inputs.committee), len(pool_rows), len(classes)), np.nan)
        for i, member in enumerate(inputs.committee):
            if wanted.any():
                members[i, wanted] = predict_proba(member, features, len(classes))
        fields["committee_probs"] = members
    if "embedding" in needs:
        fields["embedding"] = get_embedding(
            pool_rows, _required(inputs.embedding_stats), inputs.space
        )
    if "class_counts" in needs:
        fields["class_counts"] = _required(inputs.class_counts)
    if "seconds" in needs:
        confidence = np.asarray(pred_probs, dtype=float).max(axis=1)
        fields["seconds"] = get_item_seconds(confidence, params=_required(inputs.annotation))
    if "batch_size" in needs:
        fields["batch_size"] = _required(inputs.batch_size)
    return PoolView(**fields)


def _required(value: object) -> object:
    if value is None:
        raise ValueError("a strategy needs a ScoringInputs field that was not built")
    return value


def _concat_views(views: list[PoolView]) -> PoolView:
    """One view of several chunks: row-aligned arrays concatenated, per-pool fields kept."""
    first = views[0]

    def stacked(name: str, axis: int) -> np.ndarray | None:
        if getattr(first, name) is None:
            return None
        return np.concatenate([getattr(view, name) for view in views], axis=axis)

    return PoolView(
        committee_probs=stacked("committee_probs", axis=1),
        embedding=stacked("embedding", axis=0),
        seconds=stacked("seconds", axis=0),
        class_counts=first.class_counts,
        batch_size=first.batch_size,
    )


# -- scoring ------------------------------------------------------------------------------------
def needs_predictions(info: StrategyInfo, select: SelectParams) -> bool:
    """Whether the pool must be predicted: the strategy reads the probabilities, or select
    draws a test slice stratified by predicted class. Otherwise only the batch needs a
    prediction, made by select."""
    return _reads_predictions(info) or select.test_fraction > 0


def _reads_predictions(info: StrategyInfo) -> bool:
    """The strategy reads the probabilities, directly or through the expected seconds."""
    return info.reads_probs or "seconds" in info.needs


def _predict(
    pool_rows: pd.DataFrame,
    booster: lgb.Booster,
    *,
    classes: tuple[str, ...],
    needs: tuple[str, ...],
    inputs: ScoringInputs,
    exclude_ids: pd.Series | None,
    keep_ids: pd.Series | None = None,
    predict: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, PoolView]:
    """The champion's predictions, the same with excluded rows set to NaN, and the view.

    Excluded rows (issued items) are not selectable, so they are predicted only if they are in
    ``keep_ids`` (the items select may send back for a relabel, whose batch rows carry the
    prediction); the others get NaN probabilities. Prediction is most of the score stage's
    time, and in a simulation a quarter of the pool is the issued test split.

    With ``predict=False`` (see :func:`needs_predictions`) nothing is predicted: the first
    value is None and the strategy sees uniform placeholder probabilities, NaN where excluded.
    """
    n_rows = len(pool_rows)
    excluded = (
        schema.is_in(pool_rows["item_id"], exclude_ids)
        if exclude_ids is not None
        else np.zeros(n_rows, dtype=bool)
    )
    if not predict:
        placeholder = np.full((n_rows, len(classes)), 1.0 / len(classes))
        placeholder[excluded] = np.nan
        view = get_pool_view(
            pool_rows, placeholder, needs=needs, inputs=inputs, classes=classes, rows=~excluded
        )
        return None, placeholder, view
    wanted = ~excluded
    if keep_ids is not None and excluded.any():
        wanted |= schema.is_in(pool_rows["item_id"], keep_ids)
    if wanted.all():
        pred_probs = predict_proba(booster, inputs.space.transform(pool_rows), len(classes))
    else:
        pred_probs = np.full((n_rows, len(classes)), np.nan)
        if wanted.any():
            pred_probs[wanted] = predict_proba(
                booster, inputs.space.transform(pool_rows[wanted]), len(classes)
            )
    view = get_pool_view(
        pool_rows, pred_probs, needs=needs, inputs=inputs, classes=classes, rows=wanted
    )
    selectable_probs = pred_probs.copy()
    selectable_probs[excluded] = np.nan
    return pred_probs, selectable_probs, view


def _scores_frame(
    item_ids: np.ndarray,
    pred_probs: np.ndarray | None,
    utilities: np.ndarray,
    classes,
    label_sets: LabelSets | None = None,
) -> pd.DataFrame:
    """The scores table; for label sets the prediction is the predicted set
    (:func:`tasks.multilabel.get_predicted_sets`) and the confidence the model's sureness of
    the whole set (:func:`tasks.multilabel.get_set_confidence`)."""
    n = len(item_ids)
    if pred_probs is None:
        predicted = np.full(n, pd.NA, dtype=object)
        confidence = np.full(n, np.nan)
    elif label_sets is not None:
        predicted = get_predicted_sets(pred_probs, classes, separator=label_sets.separator)
        confidence = get_set_confidence(pred_probs)
    else:
        unpredicted = np.isnan(pred_probs).any(axis=1)  # issued items left out (see _predict)
        predicted = np.asarray(classes, dtype=object)[np.nan_to_num(pred_probs).argmax(axis=1)]
        predicted[unpredicted] = pd.NA
        confidence = np.where(unpredicted, np.nan, np.nan_to_num(pred_probs).max(axis=1))
    return schema.conform(
        pd.DataFrame(
            {
                "item_id": item_ids,
                "predicted_label": predicted,
                "confidence": confidence,
                "utility": utilities,
            }
        ),
        schema.SCORES,
    )


def get_chunk_scores(
    pool_rows: pd.DataFrame,
    booster: lgb.Booster | None,
    *,
    classes: tuple[str, ...],
    strategy: str,
    random_state: int,
    params: ScoreParams | None = None,
    inputs: ScoringInputs | None = None,
    exclude_ids: pd.Series | None = None,
    keep_ids: pd.Series | None = None,
    predict: bool = True,
) -> pd.DataFrame:
    """Prediction and utility of each row of one pool chunk (the chunk taken as the pool).

    Without a model (before the first labels) every row gets a random utility, so that the
    seed batch is a uniform sample.

    Parameters
    ----------
    inputs : ScoringInputs, optional
        What the strategy's view is built from (see :func:`get_pool_view`).
    exclude_ids : pd.Series of str, optional
        Items that are not selectable (already issued): their utility is NaN, and they are
        not predicted (NaN ``predicted_label`` and ``confidence``) unless in ``keep_ids``.
    keep_ids : pd.Series of str, optional
        Excluded items to predict all the same (relabel candidates).
    predict : bool
        False: no row is predicted (NaN ``predicted_label`` and ``confidence``); allowed only
        for a strategy that does not read the probabilities (see :func:`needs_predictions`).

    Returns
    -------
    pd.DataFrame
        Schema :data:`tasks.schema.SCORES`, one row per row of ``pool_rows``, same order.
    """
    params = ScoreParams(strategy=strategy) if params is None else params
    inputs = ScoringInputs() if inputs is None else inputs
    item_ids = pool_rows["item_id"].to_numpy()
    if booster is None:
        placeholder = np.full((len(pool_rows), 2), 0.5)
        if exclude_ids is not None:
            placeholder[schema.is_in(pool_rows["item_id"], exclude_ids)] = np.nan
        utilities = get_strategy("random")(placeholder, random_state=random_state)
        return _scores_frame(item_ids, None, utilities, classes)
    info = get_strategy_info(strategy)
    pred_probs, selectable_probs, view = _predict(
        pool_rows,
        booster,
        classes=classes,
        needs=info.needs,
        inputs=inputs,
        exclude_ids=exclude_ids,
        keep_ids=keep_ids,
        predict=_checked_predict(predict, info),
    )
    utilities = info.fn(selectable_probs, random_state=random_state, view=view, params=params)
    return _scores_frame(item_ids, pred_probs, utilities, classes, inputs.label_sets)


def _checked_predict(predict: bool, info: StrategyInfo) -> bool:
    if not predict and _reads_predictions(info):
        raise ValueError(
            f"strategy {info.name!r} reads the predictions: the pool must be predicted"
        )
    return predict


def get_pool_scores(
    chunks: Iterable[pd.DataFrame],
    booster: lgb.Booster | None,
    *,
    classes: tuple[str, ...],
    params: ScoreParams,
    random_state: int,
    inputs: ScoringInputs | None = None,
    exclude_ids: pd.Series | None = None,
    keep_ids: pd.Series | None = None,
    predict: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Scores of the whole pool, read chunk by chunk.

    A strategy that scores items one by one runs per chunk (chunk ``i`` with seed
    ``random_state + i``); a ``whole_pool`` strategy runs once over the concatenated chunks
    with ``random_state``. ``predict``: as for :func:`get_chunk_scores`.

    Returns
    -------
    (pd.DataFrame, int)
        Schema :data:`tasks.schema.SCORES` in pool order, and the number of chunks.
    """
    info = get_strategy_info(params.strategy)
    inputs = ScoringInputs() if inputs is None else inputs
    if booster is None or not info.whole_pool:
        frames = [
            get_chunk_scores(
                chunk,
                booster,
                classes=classes,
                strategy=params.strategy,
                random_state=random_state + i,
                params=params,
                inputs=inputs,
                exclude_ids=exclude_ids,
                keep_ids=keep_ids,
                predict=predict,
            )
            for i, chunk in enumerate(chunks)
        ]
        scores = pd.concat(frames, ignore_index=True) if frames else schema.empty(schema.SCORES)
        return scores, len(frames)
    predict = _checked_predict(predict, info)
    ids, probs, selectable, views = [], [], [], []
    for chunk in chunks:
        pred_probs, selectable_probs, view = _predict(
            chunk,
            booster,
            classes=classes,
            needs=info.needs,
            inputs=inputs,
            exclude_ids=exclude_ids,
            keep_ids=keep_ids,
            predict=predict,
        )
        ids.append(chunk["item_id"].to_numpy())
        probs.append(pred_probs)
        selectable.append(selectable_probs)
        views.append(view)
    if not ids:
        return schema.empty(schema.SCORES), 0
    utilities = info.fn(
        np.concatenate(selectable),
        random_state=random_state,
        view=_concat_views(views),
        params=params,
    )
    pred_probs = np.concatenate(probs) if predict else None
    scores = _scores_frame(np.concatenate(ids), pred_probs, utilities, classes, inputs.label_sets)
    return scores, len(ids)


def _read_scoring_inputs(
    ctx: StageContext, needs: tuple[str, ...], champion: lgb.Booster, space: FeatureSpace
) -> ScoringInputs:
    """Read and build only what the strategy's view needs (in the champion's ``space``)."""
    classes = ctx.params.project.classes
    fields: dict[str, object] = {"space": space, "label_sets": get_label_sets(ctx.params)}
    if {"committee_probs", "embedding", "class_counts"} & set(needs):
        train_labels, rows, weights = load_training_set(ctx)
        if "committee_probs" in needs:
            committee = get_committee(
                rows,
                train_labels["label"],
                weights,
                classes=classes,
                train_params=ctx.params.train,
                params=ctx.params.score,
                random_state=ctx.random_state("score.committee"),
                space=space,
            )
            # the champion exists, so labels of two classes existed; if this round's flags
            # leave fewer, the champion alone is the committee
            fields["committee"] = committee or (champion,)
        if "embedding" in needs:
            fields["embedding_stats"] = get_embedding_stats(rows, space)
        if "class_counts" in needs:
            fields["class_counts"] = get_class_counts(train_labels["label"], classes)
    if "seconds" in needs:
        fields["annotation"] = ctx.params.annotation
    if "batch_size" in needs:
        fields["batch_size"] = ctx.params.select.batch_size
    return ScoringInputs(**fields)


def get_score_summary(
    scores: pd.DataFrame, n_chunks: int, *, strategy: str, inputs: ScoringInputs, has_model: bool
) -> ScoreSummary:
    confidence = scores["confidence"]
    return ScoreSummary(
        pool_items=int(len(scores)),
        selectable_items=int(scores["utility"].notna().sum()),
        strategy=strategy if has_model else "random (no model yet)",
        chunks=n_chunks,
        predicted_items=int(scores["predicted_label"].notna().sum()),
        mean_confidence=float(np.nanmean(confidence)) if confidence.notna().any() else None,
        committee_size=len(inputs.committee) if inputs.committee else None,
    )


def run(ctx: StageContext) -> ScoreSummary:
    champion = ctx.load("champion")
    booster = None if champion.text is None else load_model(champion.text)
    # the strategy fits the project's task (fails before reading the pool)
    strategy = ctx.params.get_strategy()
    info = check_strategy_task(strategy, ctx.params.project.task)
    score_params = ctx.params.score.model_copy(update={"strategy": strategy})
    inputs = (
        _read_scoring_inputs(ctx, info.needs, booster, model_space(champion))
        if booster is not None
        else ScoringInputs()
    )
    issued = ctx.load_before("issued")
    # issued items are predicted only if select may send them back (it exports the prediction)
    relabel_ids = get_relabel_candidates(
        ctx.load("flags"),
        ctx.load("current"),
        issued,
        round_id=ctx.round_id,
        params=ctx.params.flag,
        min_agreement=ctx.params.merge.relabel_below_agreement,
    )
    scores, n_chunks = get_pool_scores(
        ctx.iter_pool(ctx.params.score.chunk_size),
        booster,
        classes=ctx.params.project.classes,
        params=score_params,
        random_state=ctx.random_state("score"),
        inputs=inputs,
        exclude_ids=issued["item_id"],
        keep_ids=relabel_ids,
        predict=needs_predictions(info, ctx.params.select),
    )
    crash_point("during:score")
    ctx.save("scores", scores)
    summary = get_score_summary(
        scores,
        n_chunks,
        strategy=strategy,
        inputs=inputs,
        has_model=booster is not None,
    )
    ctx.save("score_report", summary.to_dict())
    return summary
