"""Stage 7, select: pick the next batch.

A batch has four parts, drawn in this order from items never issued before:

- ``test``: a random slice, stratified by predicted class, issued as test items. The test set
  grows from random items only, never from actively chosen ones, so it stays an unbiased
  sample of the pool.
- ``relabel``: flagged training items sent back for another opinion (not new items).
- ``qc``: a uniform random slice of training items, a quality-control sample that is free of
  the strategy's bias.
- ``explore`` and ``rebalance``: the slices the health stage's plan asks for (see
  :mod:`tasks.health`): items the model finds most likely of a class it misses (uniformly
  random items when the plan names no class), and items the balance classifier finds least
  like the labeled set. Both are drawn from a random sample of the selectable items
  (:meth:`ScoresView.get_slice_candidates`), so their cost does not grow with the pool.
- ``active``: the highest utilities (``seed`` before there is a model: uniform random).

The scores are read in one pass, a row group at a time (:func:`gather_scores`), keeping only
what a batch can take: per predicted class the first items of the test slice's draw, the first
of the QC and slice draws, the highest utilities, and the rows of items issued or labeled
before (the relabel candidates). Every random draw orders the items by a seeded hash of their
id (:func:`get_item_keys`) instead of by their position, so the batch is the same however the
scores are cut into row groups, and memory is set by the batch, not by the pool.

Each batch item carries the champion's prediction, the annotators' pre-annotation. Score
predicts the whole pool only when something reads it (see :func:`tasks.score.needs_predictions`);
when it did not, select predicts the batch's items itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks import schema
from tasks.activelab import get_relabel_plan
from tasks.catalog import SavedModel
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.features import FeatureSpace, model_space
from tasks.health import BALANCE_MODEL
from tasks.ledger import get_active_events
from tasks.merge import get_votes
from tasks.model import predict_proba
from tasks.multilabel import (
    LabelSets,
    OneVsRestModel,
    get_label_sets,
    get_predicted_sets,
    get_rarest_labels,
    get_set_confidence,
    load_model,
)
from tasks.params import FlagParams, SelectParams
from tasks.strategies import get_tie_keys
from tasks.summaries import HealthSummary, SelectSummary

STAGE = StageSpec(
    name="select",
    module=__name__,
    code=(
        "tasks/model.py",
        "tasks/features.py",
        "tasks/multilabel.py",
        "tasks/activelab.py",
        "tasks/health.py",
        "tasks/merge.py",
    ),
    reads=(
        "champion",
        "pool",
        "scores",
        "picks",
        "current",
        "flags",
        "candidate",
        "health_report",
        "health_models",
        "label_probs",
        "ledger",
    ),
    writes=("batch", "issued", "select_report"),
    params=(
        "project.classes",
        "project.task",
        "project.label_separator",
        "select",
        "health.explore_model_min_labels",
        "flag.max_votes_for_relabel",
        "merge.relabel_below_agreement",
    ),
)


#: The slices the health stage's plan may add, in the order select draws them.
PLAN_SLICES = ("explore", "rebalance")


def get_batch_sizes(
    params: SelectParams,
    *,
    has_model: bool,
    n_relabel_candidates: int,
    plan: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """How many items each part of the batch gets.

    ``plan`` maps a slice of :data:`PLAN_SLICES` to its share of the places left after the
    relabels (the health stage's plan); the test and QC slices keep theirs, the active slice
    gets the rest.
    """
    total = params.batch_size if has_model else params.seed_size
    relabel = min(n_relabel_candidates, int(params.relabel_max_fraction * total))
    rest = total - relabel
    test = int(round(params.test_fraction * rest))
    qc = int(round(params.qc_fraction * rest)) if has_model else 0
    sizes = {"test": test, "relabel": relabel, "qc": qc}
    left = rest - test - qc
    for name in PLAN_SLICES:
        share = (plan or {}).get(name, 0.0) if has_model else 0.0
        sizes[name] = min(left, int(round(share * rest)))
        left -= sizes[name]
    return {**sizes, "active": left}


# -- the pool's scores, in one pass ----------------------------------------------------------
def set_picks(scores: pd.DataFrame, picks: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (or a row group of them) with each pick's utility laid over its
    uncertainty (``picks``: schema :data:`tasks.schema.PICKS`, see
    :meth:`tasks.score.ScoreCollector.get_picks`)."""
    if picks.empty:
        return scores
    chosen = schema.is_in(scores["item_id"], picks["item_id"])
    if not chosen.any():
        return scores
    utilities = pd.Series(picks["utility"].to_numpy(), index=picks["item_id"].to_numpy())
    scores = scores.copy()
    scores.loc[chosen, "utility"] = utilities.reindex(scores.loc[chosen, "item_id"]).to_numpy()
    return scores


#: The draws select makes, each ordering the items by a key of its own (:func:`get_item_keys`):
#: the test slice (per stratum), the QC slice, the planned slices' candidates, and the order of
#: equal utilities.
ITEM_KEYS = ("test_key", "qc_key", "slice_key", "tie_key")

#: The stratum of an item without a prediction (a round without a model, or one that did not
#: predict the pool).
NO_PREDICTION = "<none>"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a uint64 mixed into an independent-looking one."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def get_item_keys(item_ids: np.ndarray, random_state: int) -> dict[str, np.ndarray]:
    """For each draw of :data:`ITEM_KEYS`, a seeded pseudo-random uint64 per item id: the
    item's place in that draw (smallest first). It depends on the id and the seed only."""
    base = get_tie_keys(item_ids, random_state)
    with np.errstate(over="ignore"):
        return {
            name: _splitmix64(base + np.uint64(i + 1) * _GOLDEN) for i, name in enumerate(ITEM_KEYS)
        }


@dataclass(frozen=True)
class ScoresView:
    """What select needs of the pool's scores (:func:`gather_scores`).

    Attributes
    ----------
    rows : pd.DataFrame
        Kept rows of the selectable items (never issued, with a utility): schema
        :data:`tasks.schema.SCORES` plus :data:`ITEM_KEYS`; no item twice.
    known : pd.DataFrame
        Score rows (schema :data:`tasks.schema.SCORES`) of the ``keep_ids`` found in the pool:
        the items a relabel may send back.
    strata : pd.Series of int
        Selectable items per predicted label text (:data:`NO_PREDICTION` for none), by text.
    n_unissued : int
        Pool items never issued.
    """

    rows: pd.DataFrame
    known: pd.DataFrame
    strata: pd.Series
    n_unissued: int

    @property
    def n_selectable(self) -> int:
        return int(self.strata.sum())

    def get_top(self, n: int) -> pd.DataFrame:
        """The ``n`` kept rows of highest utility (equal utilities by ``tie_key``)."""
        return _top(self.rows, n)

    def get_slice_candidates(self, n: int) -> pd.Series:
        """A uniform random sample of at most ``n`` selectable item ids, in random order: the
        candidates of the planned slices."""
        return self.rows.nsmallest(n, "slice_key")["item_id"].reset_index(drop=True)


def _top(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    order = np.lexsort((rows["tie_key"].to_numpy(), -rows["utility"].to_numpy()))
    return rows.iloc[order[:n]]


def get_keep_count(params: SelectParams, *, has_model: bool) -> int:
    """How many items of each draw :func:`gather_scores` must keep: the batch's size (no
    slice takes more, and the items other slices took come out of it)."""
    return params.batch_size if has_model else params.seed_size


def _keep(rows: pd.DataFrame, n: int, n_slice: int) -> pd.DataFrame:
    """The rows any draw could take: the first ``n`` of each stratum's test draw, of the QC
    draw and of the utilities, the first ``n_slice`` of the slices' draw."""
    strata = pd.factorize(rows["predicted_label"].fillna(NO_PREDICTION))[0]
    by_stratum = np.lexsort((rows["test_key"].to_numpy(), strata))
    first = rows.iloc[by_stratum].groupby(strata[by_stratum], sort=False).head(n)
    kept = pd.concat(
        [
            first,
            rows.nsmallest(n, "qc_key"),
            rows.nsmallest(n_slice, "slice_key"),
            _top(rows, n),
        ]
    )
    return kept.drop_duplicates("item_id").reset_index(drop=True)


def gather_scores(
    chunks: Iterable[pd.DataFrame],
    issued_ids: pd.Series,
    *,
    keep: int,
    keep_slice: int = 0,
    keep_ids: pd.Series | None = None,
    random_state: int,
) -> ScoresView:
    """Read the pool's scores (schema :data:`tasks.schema.SCORES`, in chunks) once, keeping
    what a batch of ``keep`` items (and ``keep_slice`` slice candidates) can take.

    Parameters
    ----------
    issued_ids : pd.Series of str
        Items issued before: not selectable.
    keep_ids : pd.Series of str, optional
        Items whose score rows are kept as they are (default: the issued ones).
    """
    issued_ids = issued_ids.astype("string")
    keep_ids = issued_ids if keep_ids is None else keep_ids.astype("string")
    rows = pd.DataFrame()
    known = []
    strata = pd.Series(dtype="int64")
    n_unissued = 0
    for chunk in chunks:
        issued = schema.is_in(chunk["item_id"], issued_ids)
        n_unissued += int((~issued).sum())
        known.append(chunk[schema.is_in(chunk["item_id"], keep_ids)])
        fresh = chunk[~issued & chunk["utility"].notna().to_numpy()]
        if fresh.empty:
            continue
        fresh = fresh.assign(**get_item_keys(fresh["item_id"].to_numpy(), random_state))
        counts = fresh["predicted_label"].fillna(NO_PREDICTION).value_counts()
        strata = strata.add(counts.astype("int64"), fill_value=0).astype("int64")
        rows = _keep(pd.concat([rows, fresh]) if len(rows) else fresh, keep, keep_slice)
    if rows.empty:
        rows = schema.empty(schema.SCORES).assign(
            **{name: np.empty(0, dtype=np.uint64) for name in ITEM_KEYS}
        )
    known_rows = (
        pd.concat(known, ignore_index=True) if known else schema.empty(schema.SCORES)
    ).drop_duplicates("item_id")
    strata.index = strata.index.astype(str)
    return ScoresView(
        rows, schema.conform(known_rows, schema.SCORES), strata.sort_index(), n_unissued
    )


def _stratified_sample(
    view: ScoresView,
    rows: pd.DataFrame,
    n: int,
    rng: np.random.Generator,
    label_sets: LabelSets | None,
) -> pd.Index:
    """``n`` of the selectable items (of ``rows``, the view's kept ones) with each predicted
    class in proportion to its size among all selectable items, each class's the first of
    the test draw; with ``label_sets``, each item counted under the rarest label of its
    predicted set (so that the test items cover rare labels, not only the common sets)."""
    if n >= view.n_selectable:
        return rows.index
    texts = view.strata
    stratum_of = (
        pd.Series(texts.index, index=texts.index, dtype="string")
        if label_sets is None
        else pd.Series(
            get_rarest_labels(
                pd.Series(texts.index), separator=label_sets.separator, weights=texts.to_numpy()
            ).to_numpy(),
            index=texts.index,
        )
    )
    sizes = texts.groupby(stratum_of.to_numpy()).sum().sort_index()
    exact = sizes / sizes.sum() * n
    quota = np.floor(exact).astype(int)
    # largest remainders get the leftover places; ties by a seeded draw
    leftover = n - int(quota.sum())
    order = np.lexsort((rng.random(len(exact)), -(exact - quota).to_numpy()))
    quota.iloc[order[:leftover]] += 1
    row_strata = rows["predicted_label"].fillna(NO_PREDICTION).astype(str).map(stratum_of)
    picked = [
        rows[(row_strata == label).to_numpy()].nsmallest(int(quota[label]), "test_key").index
        for label in sizes.index
    ]
    return pd.Index(np.concatenate(picked)) if picked else pd.Index([])


def select_batch(
    scores: pd.DataFrame | ScoresView,
    issued: pd.DataFrame,
    relabel_candidates: pd.Series,
    *,
    has_model: bool,
    params: SelectParams,
    random_state: int,
    plan: Mapping[str, float] | None = None,
    ranked: Mapping[str, pd.Series] | None = None,
    label_sets: LabelSets | None = None,
) -> pd.DataFrame:
    """Choose the next batch.

    Parameters
    ----------
    scores : pd.DataFrame or ScoresView
        Schema :data:`tasks.schema.SCORES` (``utility`` higher = label first, NaN = never), or
        what :func:`gather_scores` kept of it with ``random_state``: the same batch.
    issued : pd.DataFrame
        Every item issued so far (schema :data:`tasks.schema.ISSUED`); none is issued again
        except through ``relabel_candidates``.
    relabel_candidates : pd.Series of str
        Training items to send back for relabeling, most doubtful first.
    plan : mapping of str to float, optional
        Share of the batch for each slice of :data:`PLAN_SLICES` (the health stage's plan).
    ranked : mapping of str to pd.Series of str, optional
        For each planned slice, candidate items best first
        (:meth:`ScoresView.get_slice_candidates`); items the test or QC slice took, or not
        selectable, are skipped. A slice short of candidates leaves its places to the active
        slice.
    label_sets : LabelSets, optional
        A multilabel project's: the test slice is stratified by each item's rarest predicted
        label.

    Returns
    -------
    pd.DataFrame
        Schema :data:`tasks.schema.BATCH`; no item twice.
    """
    view = (
        scores
        if isinstance(scores, ScoresView)
        else gather_scores(
            [scores],
            issued["item_id"],
            keep=get_keep_count(params, has_model=has_model),
            keep_slice=len(scores),  # in memory already: keep what ``ranked`` may name
            keep_ids=pd.concat([issued["item_id"], relabel_candidates.astype("string")]),
            random_state=random_state,
        )
    )
    rng = np.random.default_rng(random_state)
    relabel_candidates = relabel_candidates[schema.is_in(relabel_candidates, view.known["item_id"])]
    relabel_candidates = relabel_candidates.drop_duplicates()
    sizes = get_batch_sizes(
        params, has_model=has_model, n_relabel_candidates=int(relabel_candidates.size), plan=plan
    )
    fresh = view.rows
    parts = []

    test_idx = _stratified_sample(view, fresh, sizes["test"], rng, label_sets)
    parts.append(fresh.loc[test_idx].assign(split="test", reason="test"))
    fresh = fresh.drop(index=test_idx)

    relabel_ids = relabel_candidates.head(sizes["relabel"])
    relabel = view.known.set_index("item_id").loc[relabel_ids.to_numpy()].reset_index()
    # an item goes back with the split it was first issued with: a test item stays one
    first_split = issued.drop_duplicates("item_id").set_index("item_id")["split"]
    relabel_split = relabel["item_id"].map(first_split).fillna("train")
    parts.append(relabel.assign(split=relabel_split.to_numpy(), reason="relabel"))

    qc = fresh.nsmallest(sizes["qc"], "qc_key")
    parts.append(qc.assign(split="train", reason="qc"))
    fresh = fresh.drop(index=qc.index)

    for name in PLAN_SLICES:
        wanted = (ranked or {}).get(name, pd.Series([], dtype="string"))
        taken = fresh[schema.is_in(fresh["item_id"], wanted)].set_index("item_id")
        order = [i for i in pd.unique(wanted.astype(str)) if i in taken.index][: sizes[name]]
        picked = taken.loc[order].reset_index()
        parts.append(picked.assign(split="train", reason=name))
        fresh = fresh[~schema.is_in(fresh["item_id"], picked["item_id"])]
        sizes["active"] += sizes[name] - len(picked)

    # highest utility first; equal utilities in the order of a seeded draw, not by position
    active = _top(fresh, sizes["active"])
    parts.append(active.assign(split="train", reason="active" if has_model else "seed"))

    batch = pd.concat(parts, ignore_index=True)
    return schema.conform(batch, schema.BATCH)


def rank_for_explore(
    rows: pd.DataFrame,
    booster: lgb.Booster,
    *,
    classes: tuple[str, ...],
    explore_classes: tuple[str, ...],
    examples: Mapping[str, pd.DataFrame] | None = None,
    space: FeatureSpace | None = None,
) -> pd.Series:
    """Candidate ids, the most likely of ``explore_classes`` first; in the given (random)
    order when no class is named. ``space``: the model's feature space (default: tabular).

    Each class ranks the candidates by the model's probability of it, or, for a class in
    ``examples``, by the distance (standardized numeric features) to the nearest of its
    labeled items: a model that saw too few training labels of a class cannot rank by it (the
    class a strategy never asked for is exactly that), but the random items that found it say
    where it lies. The classes' rankings are interleaved, so each gets its share.

    Parameters
    ----------
    rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of the candidates, in random order.
    examples : mapping of str to pd.DataFrame, optional
        Pool rows of the labeled items (any split) of the classes to rank by distance.
    """
    if not explore_classes or rows.empty:
        return rows["item_id"].reset_index(drop=True)
    examples = examples or {}
    space = space or FeatureSpace()
    probs = None
    rankings = []
    for name in explore_classes:
        if name in examples and len(examples[name]):
            rankings.append(_nearest_first(rows, examples[name], space))
            continue
        if probs is None:
            probs = predict_proba(booster, space.transform(rows), len(classes))
        rankings.append(np.argsort(-probs[:, classes.index(name)], kind="stable"))
    order = pd.unique(np.column_stack(rankings).ravel())  # round robin over the classes
    return rows["item_id"].iloc[order].reset_index(drop=True)


def _nearest_first(rows: pd.DataFrame, examples: pd.DataFrame, space: FeatureSpace) -> np.ndarray:
    """Positions of ``rows``, nearest to any of ``examples`` first (the embedding of
    :func:`tasks.score.get_embedding`, standardized with the candidates' mean and standard
    deviation: numeric features, and a text space's SVD coordinates)."""
    # score imports this module (the relabel queue): import its embedding here
    from tasks.score import get_embedding, get_embedding_stats

    stats = get_embedding_stats(rows, space)
    points, known = get_embedding(rows, stats, space), get_embedding(examples, stats, space)
    nearest = np.full(len(points), np.inf)
    for example in known:  # a few dozen examples at most: no n x m matrix
        nearest = np.minimum(nearest, ((points - example) ** 2).sum(axis=1))
    return np.argsort(nearest, kind="stable")


def rank_for_rebalance(
    rows: pd.DataFrame, balance_model: lgb.Booster, space: FeatureSpace | None = None
) -> pd.Series:
    """Candidate ids, the least like the labeled set first (lowest probability of the
    balance classifier, :func:`tasks.health.fit_balance_model`, fitted in ``space``, that an
    item is labeled)."""
    if rows.empty:
        return rows["item_id"].reset_index(drop=True)
    space = space or FeatureSpace()
    looks_labeled = predict_proba(balance_model, space.transform(rows), 2)[:, 1]
    order = np.argsort(looks_labeled, kind="stable")
    return rows["item_id"].iloc[order].reset_index(drop=True)


def get_plan(health: HealthSummary | None) -> dict[str, float]:
    """The shares the health stage's plan gives the slices of :data:`PLAN_SLICES`."""
    if health is None:
        return {}
    return {"explore": health.explore_fraction, "rebalance": health.rebalance_fraction}


def get_ranked_slices(
    ctx: StageContext, view: ScoresView, health: HealthSummary, plan: Mapping[str, float]
) -> dict[str, pd.Series]:
    """The candidates of each planned slice, best first (reads the pool rows of a sample)."""
    rows = ctx.pool_rows(view.get_slice_candidates(ctx.params.select.slice_candidates))
    ranked: dict[str, pd.Series] = {}
    candidate = ctx.load("candidate")
    if plan.get("explore"):
        model = candidate
        if model.text is None:
            model = ctx.load("champion")
        current = ctx.load("current")
        trained = current.loc[current["split"] == "train", "label"].value_counts()
        unknown = [
            c
            for c in health.explore_classes
            if trained.get(c, 0) < ctx.params.health.explore_model_min_labels
        ]
        examples = {
            c: ctx.pool_rows(current.loc[current["label"] == c, "item_id"]) for c in unknown
        }
        ranked["explore"] = rank_for_explore(
            rows,
            load_model(model.text),
            classes=ctx.params.project.classes,
            explore_classes=tuple(health.explore_classes),
            examples=examples,
            space=model_space(model),
        )
    models = ctx.load("health_models")
    if plan.get("rebalance") and BALANCE_MODEL in models:
        booster = lgb.Booster(model_str=models[BALANCE_MODEL].decode("utf-8"))
        # health fitted it beside the candidate, in the candidate's space
        ranked["rebalance"] = rank_for_rebalance(rows, booster, model_space(candidate))
    return ranked


def add_predictions(
    batch: pd.DataFrame,
    rows: pd.DataFrame,
    booster: lgb.Booster | OneVsRestModel,
    classes: tuple[str, ...],
    space: FeatureSpace | None = None,
    label_sets: LabelSets | None = None,
) -> pd.DataFrame:
    """The batch with the champion's prediction filled in where it has none.

    Parameters
    ----------
    batch : pd.DataFrame
        Schema :data:`tasks.schema.BATCH`.
    rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of at least the batch items without a
        prediction.

    Returns
    -------
    pd.DataFrame
        A copy of ``batch`` in the same order; rows that had a prediction keep it.
    """
    batch = batch.copy()
    missing = batch["predicted_label"].isna().to_numpy()
    if not missing.any():
        return batch
    wanted = batch.loc[missing, "item_id"]
    absent = sorted(set(wanted) - set(rows["item_id"]))
    if absent:
        raise ValueError(f"batch items {absent[:5]} are not in the pool rows given")
    space = space or FeatureSpace()
    features = space.transform(rows.set_index("item_id").loc[wanted.to_numpy()].reset_index())
    probs = predict_proba(booster, features, len(classes))
    if label_sets is not None:
        sets = get_predicted_sets(probs, classes, separator=label_sets.separator)
        batch.loc[missing, "predicted_label"] = sets
        batch.loc[missing, "confidence"] = get_set_confidence(probs)
    else:
        names = np.asarray(classes, dtype=object)
        batch.loc[missing, "predicted_label"] = names[probs.argmax(axis=1)]
        batch.loc[missing, "confidence"] = probs.max(axis=1)
    return schema.conform(batch, schema.BATCH)


def get_relabel_candidates(
    flags: pd.DataFrame,
    current: pd.DataFrame,
    issued: pd.DataFrame,
    *,
    round_id: int,
    params: FlagParams,
    min_agreement: float,
) -> pd.Series:
    """Items owed another opinion, most doubtful first: this round's flags (training items
    with at most ``params.max_votes_for_relabel`` votes), then items whose votes agree less
    than ``min_agreement`` (any split).

    An item goes back at most once: a second flag after its relabel is left to the auditor
    (the votes now disagree, or the model does), so no item circles forever.
    """
    flagged = flags[flags["round_id"] == round_id].sort_values(["label_quality", "item_id"])
    votes = flagged["item_id"].map(current.set_index("item_id")["n_votes"]).fillna(0)
    doubtful = flagged.loc[votes.to_numpy() <= params.max_votes_for_relabel, "item_id"]
    split_votes = current[current["agreement"] < min_agreement].sort_values(
        ["agreement", "item_id"]
    )["item_id"]
    candidates = pd.concat([doubtful, split_votes], ignore_index=True).drop_duplicates()
    sent_before = issued.loc[issued["reason"] == "relabel", "item_id"]
    return candidates[~schema.is_in(candidates, sent_before)].reset_index(drop=True)


def get_queue_candidates(
    ctx: StageContext, current: pd.DataFrame, issued: pd.DataFrame
) -> pd.Series:
    """The relabel queue (:func:`get_relabel_candidates`) from this round's flags: what goes
    back before flag has out-of-fold probabilities for ActiveLab."""
    return get_relabel_candidates(
        ctx.load("flags"),
        current,
        issued,
        round_id=ctx.round_id,
        params=ctx.params.flag,
        min_agreement=ctx.params.merge.relabel_below_agreement,
    )


def get_activelab_candidates(
    ctx: StageContext,
    view: ScoresView,
    issued: pd.DataFrame,
    current: pd.DataFrame,
    label_probs: pd.DataFrame,
    champion: SavedModel,
    plan: Mapping[str, float],
) -> pd.Series:
    """The items to send back, with ActiveLab deciding per item between another vote on a
    training item and a new item (:func:`tasks.activelab.get_relabel_plan`); then, as
    before, test items whose votes agree less than ``merge.relabel_below_agreement``.

    The new items it weighs are those the active slice would take: the highest utilities,
    as many as the active slice has places, scored with the champion's probabilities.
    """
    params = ctx.params
    total = params.select.batch_size
    sizes = get_batch_sizes(params.select, has_model=True, n_relabel_candidates=0, plan=plan)
    top = view.get_top(sizes["active"])["item_id"]
    candidate_probs = (
        predict_proba(
            load_model(champion.text),
            model_space(champion).transform(ctx.pool_rows(top)),
            len(params.project.classes),
        )
        if len(top)
        else np.empty((0, len(params.project.classes)))
    )
    train_ids = current.loc[current["split"] == "train", "item_id"]
    votes = get_votes(get_active_events(ctx.load("ledger")))
    votes = votes[schema.is_in(votes["item_id"], train_ids)]
    sent_before = issued.loc[issued["reason"] == "relabel", "item_id"]
    relabel = get_relabel_plan(
        votes[["item_id", "annotator", "label"]],
        label_probs,
        candidate_probs,
        classes=params.project.classes,
        n_places=sizes["active"],
        max_relabel=int(params.select.relabel_max_fraction * total),
        exclude=sent_before,
    ).relabel_ids
    split_votes = current[
        (current["split"] == "test") & (current["agreement"] < params.merge.relabel_below_agreement)
    ].sort_values(["agreement", "item_id"])["item_id"]
    split_votes = split_votes[~schema.is_in(split_votes, sent_before)]
    return pd.concat([relabel, split_votes], ignore_index=True).drop_duplicates()


def get_select_summary(batch: pd.DataFrame, issued: pd.DataFrame, n_unissued: int) -> SelectSummary:
    """The batch's parts, and how many pool items were never issued once it is out
    (``n_unissued``: before it; the batch's new items all come from the pool)."""
    counts = batch["reason"].value_counts()
    new_ids = batch.loc[~schema.is_in(batch["item_id"], issued["item_id"]), "item_id"]
    return SelectSummary(
        batch_size=int(len(batch)),
        **{
            f"n_{reason}": int(counts.get(reason, 0))
            for reason in ("seed", "active", "qc", "test", "relabel", *PLAN_SLICES)
        },
        issued_total=int(len(issued) + len(batch)),
        unlabeled_left=n_unissued - int(new_ids.nunique()),
    )


def run(ctx: StageContext) -> SelectSummary:
    issued = ctx.load_before("issued")
    champion = ctx.load("champion")
    has_model = champion.text is not None
    current = ctx.load("current")
    # what a batch can take of the pool's scores, read a row group at a time; the rows of the
    # issued and labeled items are kept for the relabels
    picks = ctx.load("picks")
    view = gather_scores(
        (set_picks(part, picks) for part in ctx.iter_table("scores")),
        issued["item_id"],
        keep=get_keep_count(ctx.params.select, has_model=has_model),
        keep_slice=ctx.params.select.slice_candidates,
        keep_ids=pd.concat([issued["item_id"], current["item_id"]]),
        random_state=ctx.random_state("select"),
    )
    report = ctx.load("health_report")
    health = HealthSummary.from_dict(report) if report else None
    plan = get_plan(health) if has_model else {}
    label_probs = ctx.load("label_probs")
    label_sets = get_label_sets(ctx.params)
    # flag's out-of-fold probabilities: ActiveLab (of one class per item)
    if has_model and not label_probs.empty and label_sets is None:
        candidates = get_activelab_candidates(
            ctx, view, issued, current, label_probs, champion, plan
        )
    else:
        candidates = get_queue_candidates(ctx, current, issued)
    ranked = (
        get_ranked_slices(ctx, view, health, plan)
        if health is not None and any(plan.values())
        else {}
    )
    batch = select_batch(
        view,
        issued,
        candidates,
        has_model=has_model,
        params=ctx.params.select,
        random_state=ctx.random_state("select"),
        plan=plan,
        ranked=ranked,
        label_sets=label_sets,
    )
    if has_model and batch["predicted_label"].isna().any():  # score did not predict the pool
        unpredicted = batch.loc[batch["predicted_label"].isna(), "item_id"]
        batch = add_predictions(
            batch,
            ctx.pool_rows(unpredicted, ordered=False),
            load_model(champion.text),
            ctx.params.project.classes,
            model_space(champion),
            label_sets,
        )
    ctx.save("issued", pd.concat([issued, batch.assign(round_id=ctx.round_id)]))
    crash_point("during:select")
    ctx.save("batch", batch)
    summary = get_select_summary(batch, issued, view.n_unissued)
    ctx.save("select_report", summary.to_dict())
    return summary
