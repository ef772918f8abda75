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

The pool is read one piece at a time (a row group of a partition, :class:`PoolPiece`) and
scored in chunks of ``score.chunk_size`` rows, here or on a Dask cluster
(``score.executor``, :mod:`tasks.executor`); ``scores.parquet`` is written a piece at a time,
once, so memory is bounded by the piece and the chunk whatever the pool's size. A strategy that
ranks items against each other (``whole_pool=True``: diversity) keeps only its candidates
across chunks (:class:`Candidates`) and spreads the batch among them at the end. The scores
keep each item's uncertainty; the picks and their utilities go to a small table of their own
(``picks``), which select lays over the scores as it reads them
(:func:`tasks.selection.set_picks`): rewriting the pool's scores to set a batch's utilities
took 2.26 s of a 1,000,000-item round's process, time a Dask cluster's workers waited on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks import schema
from tasks.annotation_time import get_item_seconds
from tasks.catalog import PoolPiece, read_pool_piece
from tasks.context import StageContext, StageSpec
from tasks.executor import get_executor
from tasks.faults import crash_point
from tasks.features import FeatureSpace, model_space
from tasks.model import fit_booster, predict_proba
from tasks.multilabel import (
    LabelSets,
    OneVsRestModel,
    get_label_sets,
    get_predicted_sets,
    get_set_confidence,
    load_model,
)
from tasks.params import AnnotationParams, ScoreParams, SelectParams, TrainParams
from tasks.selection import get_relabel_candidates, set_picks
from tasks.strategies import (
    PoolView,
    StrategyInfo,
    check_strategy_task,
    get_candidate_count,
    get_pick_utilities,
    get_spread_picks,
    get_strategy,
    get_strategy_info,
    get_tie_keys,
)
from tasks.summaries import ScoreSummary
from tasks.train import get_training_data, load_training_set

log = logging.getLogger(__name__)

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
    writes=("scores", "picks", "score_report"),
    # every score key but where the pieces run (executor, dask_*): the scores are the same
    params=(
        "project",
        "score.strategy",
        "score.chunk_size",
        "score.committee_size",
        "score.bagging_fraction",
        "score.bagging_freq",
        "score.diversity_factor",
        "score.diversity_method",
        "score.embedding",
        "score.class_balance_power",
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
    item_ids: pd.Series,
    pred_probs: np.ndarray | None,
    utilities: np.ndarray,
    classes,
    label_sets: LabelSets | None = None,
) -> pd.DataFrame:
    """The scores table; for label sets the prediction is the predicted set
    (:func:`tasks.multilabel.get_predicted_sets`) and the confidence the model's sureness of
    the whole set (:func:`tasks.multilabel.get_set_confidence`).

    The text columns are built as text arrays (the ids as they came, a class by taking from
    the classes' array), not as Python strings converted afterwards: the conversions were
    most of what a margin query spent besides LightGBM's prediction."""
    n = len(item_ids)
    text = schema.SCORES["predicted_label"]
    if pred_probs is None:
        predicted = pd.array(np.full(n, pd.NA, dtype=object), dtype=text)
        confidence = np.full(n, np.nan)
    elif label_sets is not None:
        predicted = get_predicted_sets(pred_probs, classes, separator=label_sets.separator)
        confidence = get_set_confidence(pred_probs)
    else:
        unpredicted = np.isnan(pred_probs).any(axis=1)  # issued items left out (see _predict)
        codes = np.nan_to_num(pred_probs).argmax(axis=1)
        codes[unpredicted] = -1
        predicted = pd.array(list(classes), dtype=text).take(codes, allow_fill=True)
        confidence = np.where(unpredicted, np.nan, np.nan_to_num(pred_probs).max(axis=1))
    return schema.conform(
        pd.DataFrame(
            {
                "item_id": pd.array(item_ids, dtype=schema.SCORES["item_id"]),
                "predicted_label": predicted,
                "confidence": confidence,
                "utility": utilities,
            },
            copy=False,
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
    item_ids = pool_rows["item_id"]
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


# -- the pool, piece by piece --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ScoringJob:
    """Everything a chunk is scored with besides its rows: what an executor ships to each
    Dask worker once per round. ``predict``: as for :func:`get_chunk_scores`."""

    booster: lgb.Booster | OneVsRestModel | None
    classes: tuple[str, ...]
    params: ScoreParams
    random_state: int
    inputs: ScoringInputs = field(default_factory=ScoringInputs)
    exclude_ids: pd.Series | None = None
    keep_ids: pd.Series | None = None
    predict: bool = True

    @property
    def info(self) -> StrategyInfo:
        return get_strategy_info(self.params.strategy)

    @property
    def spreads(self) -> bool:
        """A batch-spreading strategy with a model: chunks give candidates, picked at the end."""
        return self.booster is not None and self.info.spread_base is not None


@dataclass(frozen=True)
class Candidates:
    """The most uncertain items seen so far of a batch-spreading strategy, most uncertain
    first (equal uncertainties by :func:`tasks.strategies.get_tie_keys`), with their
    embedding: what the picks are chosen from, whatever the pool's size."""

    item_ids: np.ndarray
    base: np.ndarray
    ties: np.ndarray
    embedding: np.ndarray

    @staticmethod
    def merge(parts: Iterable[Candidates], limit: int) -> Candidates | None:
        """The ``limit`` most uncertain of several parts' candidates."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        ids, base, ties, emb = (
            np.concatenate([getattr(p, name) for p in parts])
            for name in ("item_ids", "base", "ties", "embedding")
        )
        order = np.lexsort((ties, -base))[:limit]
        return Candidates(ids[order], base[order], ties[order], emb[order])


@dataclass(frozen=True)
class PieceScores:
    """What scoring one pool piece gives: its scores (a spreading strategy's utility is the
    uncertainty until the picks are set), its chunk count, its candidates."""

    scores: pd.DataFrame
    n_chunks: int
    candidates: Candidates | None = None


def score_chunk(rows: pd.DataFrame, chunk: int, job: ScoringJob) -> PieceScores:
    """Chunk number ``chunk`` of the pool. A strategy that scores items one by one runs on the
    chunk with seed ``random_state + chunk``; a batch-spreading one gives each row its
    uncertainty and the chunk's candidates, embedded."""
    if not job.spreads:
        scores = get_chunk_scores(
            rows,
            job.booster,
            classes=job.classes,
            strategy=job.params.strategy,
            random_state=job.random_state + chunk,
            params=job.params,
            inputs=job.inputs,
            exclude_ids=job.exclude_ids,
            keep_ids=job.keep_ids,
            predict=job.predict,
        )
        return PieceScores(scores, 1)
    info = job.info
    pred_probs, selectable_probs, _ = _predict(
        rows,
        job.booster,
        classes=job.classes,
        needs=(),
        inputs=job.inputs,
        exclude_ids=job.exclude_ids,
        keep_ids=job.keep_ids,
        predict=_checked_predict(job.predict, info),
    )
    base = info.spread_base(selectable_probs)
    item_ids = rows["item_id"].to_numpy()
    valid = np.flatnonzero(~np.isnan(base))
    ties = get_tie_keys(item_ids[valid], job.random_state)
    limit = get_candidate_count(job.params, _required(job.inputs.batch_size))
    order = np.lexsort((ties, -base[valid]))[:limit]
    top = valid[order]
    embedding = get_embedding(
        rows.iloc[top], _required(job.inputs.embedding_stats), job.inputs.space
    )
    if not np.isfinite(embedding).all():
        raise ValueError(f"strategy {info.name!r}: the embedding has NaN or inf")
    candidates = Candidates(item_ids[top], base[top], ties[order], embedding)
    scores = _scores_frame(rows["item_id"], pred_probs, base, job.classes, job.inputs.label_sets)
    return PieceScores(scores, 1, candidates)


def score_piece(piece: PoolPiece, job: ScoringJob) -> PieceScores:
    """One pool piece (a row group of a partition), read from its file and scored chunk by
    chunk: what an executor runs, here or on a Dask worker."""
    parts = [
        score_chunk(rows, piece.first_chunk + j, job)
        for j, rows in enumerate(piece.chunks(read_pool_piece(piece)))
    ]
    return _join(parts, job)


def _join(parts: list[PieceScores], job: ScoringJob) -> PieceScores:
    scores = (
        pd.concat([p.scores for p in parts], ignore_index=True)
        if parts
        else schema.empty(schema.SCORES)
    )
    limit = get_candidate_count(job.params, job.inputs.batch_size or 0) if job.spreads else 0
    return PieceScores(
        scores,
        sum(p.n_chunks for p in parts),
        Candidates.merge((p.candidates for p in parts), limit) if job.spreads else None,
    )


@dataclass
class ScoreTally:
    """Counts over the pool's scores, kept while they stream past (for the summary)."""

    pool_items: int = 0
    selectable_items: int = 0
    predicted_items: int = 0
    confidence_sum: float = 0.0
    chunks: int = 0

    def add(self, part: PieceScores) -> None:
        scores = part.scores
        self.pool_items += len(scores)
        self.selectable_items += int(scores["utility"].notna().sum())
        self.predicted_items += int(scores["predicted_label"].notna().sum())
        self.confidence_sum += float(scores["confidence"].sum(skipna=True))
        self.chunks += part.n_chunks


class ScoreCollector:
    """Takes the pieces' results in pool order: counts them, keeps the best candidates, and
    passes their scores on (to be written); :meth:`get_picks` then spreads the batch."""

    def __init__(self, job: ScoringJob) -> None:
        self.job = job
        self.tally = ScoreTally()
        self.candidates: Candidates | None = None

    def take(self, parts: Iterable[PieceScores]) -> Iterator[pd.DataFrame]:
        limit = get_candidate_count(self.job.params, self.job.inputs.batch_size or 0)
        for part in parts:
            self.tally.add(part)
            if self.job.spreads:
                self.candidates = Candidates.merge((self.candidates, part.candidates), limit)
            yield part.scores

    def get_picks(self) -> pd.DataFrame:
        """The picks and their utilities (schema :data:`tasks.schema.PICKS`), ``(b - j) / b``
        for the ``j``-th of ``b``; empty for a strategy that does not spread."""
        found = self.candidates
        if not self.job.spreads or found is None or not len(found.item_ids):
            return schema.empty(schema.PICKS)
        picks = get_spread_picks(
            found.embedding,
            found.base,
            n_picks=_required(self.job.inputs.batch_size),
            random_state=self.job.random_state,
            params=self.job.params,
        )
        return schema.conform(
            pd.DataFrame(
                {"item_id": found.item_ids[picks], "utility": get_pick_utilities(len(picks))}
            ),
            schema.PICKS,
        )


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
    """Scores of a pool given as chunks, in memory (the stage streams pieces instead, see
    :func:`run`): chunk ``i`` is scored as :func:`score_chunk` scores chunk number ``i``.

    Returns
    -------
    (pd.DataFrame, int)
        Schema :data:`tasks.schema.SCORES` in pool order, and the number of chunks.
    """
    job = ScoringJob(
        booster,
        tuple(classes),
        params,
        random_state,
        ScoringInputs() if inputs is None else inputs,
        exclude_ids,
        keep_ids,
        predict,
    )
    collector = ScoreCollector(job)
    frames = list(
        collector.take(score_chunk(rows, i, job) for i, rows in enumerate(chunks) if len(rows))
    )
    scores = pd.concat(frames, ignore_index=True) if frames else schema.empty(schema.SCORES)
    return set_picks(scores, collector.get_picks()), collector.tally.chunks


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
    tally: ScoreTally, *, strategy: str, inputs: ScoringInputs, has_model: bool
) -> ScoreSummary:
    return ScoreSummary(
        pool_items=tally.pool_items,
        selectable_items=tally.selectable_items,
        strategy=strategy if has_model else "random (no model yet)",
        chunks=tally.chunks,
        predicted_items=tally.predicted_items,
        mean_confidence=(
            tally.confidence_sum / tally.predicted_items if tally.predicted_items else None
        ),
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
    job = ScoringJob(
        booster,
        ctx.params.project.classes,
        score_params,
        ctx.random_state("score"),
        inputs,
        issued["item_id"],
        relabel_ids,
        needs_predictions(info, ctx.params.select),
    )
    collector = ScoreCollector(job)
    executor = get_executor(
        score_params.executor,
        score_params.dask_address,
        timeout_seconds=score_params.dask_timeout_seconds,
    )
    try:
        pieces = ctx.pool_pieces(score_params.chunk_size)
        if executor.name == "dask":  # where the work went is news only when it left here
            log.info(
                "scoring %d pool piece%s on the Dask cluster at %s",
                len(pieces),
                "" if len(pieces) == 1 else "s",
                score_params.dask_address,
            )
        ctx.save_chunks("scores", collector.take(executor.map(score_piece, pieces, job)))
    finally:
        executor.close()
    ctx.save("picks", collector.get_picks())
    crash_point("during:score")
    summary = get_score_summary(
        collector.tally,
        strategy=strategy,
        inputs=inputs,
        has_model=booster is not None,
    )
    ctx.save("score_report", summary.to_dict())
    return summary
