"""Query strategies: one signature, one registry.

Every strategy is ``utilities = strategy(pred_probs, *, random_state, view=PoolView(),
params=ScoreParams())`` with

- ``pred_probs``: array of float, shape ``(n_pool, n_classes)``, rows summing to 1; a row
  with a NaN marks an item that is not selectable (cannot be scored, or already issued).
  A strategy for items that carry several labels (``task="multilabel"`` at registration,
  ``ml_*``) reads each column as the independent probability that the item has that label
  (:mod:`tasks.multilabel`): values in [0, 1], rows not summing to 1;
- ``view``: a :class:`PoolView` of optional extras, row-aligned with ``pred_probs``; a
  strategy declares at registration which of them it needs (``@register(name, needs=...)``)
  and is refused, naming the field, when called without them; a strategy that reads nothing
  of ``pred_probs`` but its NaN rows says so (``reads_probs=False``: random), and then the
  score stage may pass placeholder probabilities instead of predicting the pool;
- ``params``: the ``score`` section of ``params.yaml`` (strategy options such as
  ``diversity_factor``), so that no strategy carries a hyperparameter literal;
- ``utilities``: array of float, shape ``(n_pool,)``; higher means "label this first"; NaN
  means "not selectable" (exactly the rows of ``pred_probs`` with a NaN).

A strategy never mutates its inputs, uses no global random state, and returns the same
utilities for the same ``random_state``. Strategies only score; picking a batch from the
utilities is :func:`tasks.selection.select_batch` (which breaks equal utilities by a seeded
draw). The formulas are listed in ``docs/decisions.md`` ("Query strategies").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from tasks.params import ScoreParams

Strategy = Callable[..., np.ndarray]
Task = Literal["multiclass", "multilabel"]

#: Weight of the consensus tie-break added to the vote entropy. Distinct vote entropies of a
#: committee of up to 50 members differ by far more (5e-5 for 25 members and 10 classes), so
#: the tie-break only orders items whose votes are split alike.
_VOTE_TIEBREAK = 1e-9


@dataclass(frozen=True)
class PoolView:
    """Optional extras a strategy may need, each row-aligned with ``pred_probs``.

    Attributes
    ----------
    committee_probs : np.ndarray of float, shape (n_members, n_pool, n_classes), optional
        Predicted probabilities of each committee member (query by committee).
    embedding : np.ndarray of float, shape (n_pool, n_dims), optional
        A vector per item; Euclidean distance between rows says how alike items are.
    class_counts : np.ndarray of float, shape (n_classes,), optional
        Training labels per class so far, ``>= 0``, in the order of the classes.
    seconds : np.ndarray of float, shape (n_pool,), optional
        Expected annotation seconds per item, ``> 0`` (NaN: the item is not selectable).
    batch_size : int, optional
        How many items the next batch takes, ``>= 1``.
    """

    committee_probs: np.ndarray | None = None
    embedding: np.ndarray | None = None
    class_counts: np.ndarray | None = None
    seconds: np.ndarray | None = None
    batch_size: int | None = None


VIEW_FIELDS = tuple(f.name for f in fields(PoolView))


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its function, the view fields it needs, whether it ranks
    items against each other (then it must see the whole pool at once, not a chunk), and
    whether it reads the predicted probabilities beyond their NaN rows."""

    name: str
    fn: Strategy
    needs: tuple[str, ...]
    whole_pool: bool
    reads_probs: bool = True
    #: the kind of task whose predictions it reads: one class per item, or a label set
    task: Task = "multiclass"
    #: a batch-spreading strategy's per-item uncertainty, in [-1, 0] (NaN: not selectable):
    #: the candidates are the top of it and are spread in the embedding
    #: (:func:`get_spread_picks`), so only they need the embedding (see tasks/score.py)
    spread_base: Callable[[np.ndarray], np.ndarray] | None = None


REGISTRY: dict[str, Strategy] = {}
_INFO: dict[str, StrategyInfo] = {}


def register(
    name: str,
    *,
    needs: tuple[str, ...] = (),
    whole_pool: bool = False,
    reads_probs: bool = True,
    task: Task = "multiclass",
    spread_base: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[Strategy], Strategy]:
    """Add a strategy to the registry under ``name``.

    The registered function checks ``pred_probs`` and the view fields in ``needs`` (present,
    shapes row-aligned) before it runs, and the check is part of the function, so calling it
    directly is as safe as calling it through :func:`get_strategy`.
    """
    unknown = sorted(set(needs) - set(VIEW_FIELDS))
    if unknown:
        raise ValueError(f"strategy {name!r} needs unknown view fields {unknown}")
    if whole_pool != (spread_base is not None):
        # the score stage never holds the pool: it ranks a whole-pool strategy's candidates
        # chunk by chunk through its spread_base, and spreads only those
        raise ValueError(f"strategy {name!r}: a whole-pool strategy needs a spread_base")

    def decorate(fn: Strategy) -> Strategy:
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")

        def checked(
            pred_probs: np.ndarray,
            *,
            random_state: int,
            view: PoolView | None = None,
            params: ScoreParams | None = None,
        ) -> np.ndarray:
            view = PoolView() if view is None else view
            params = ScoreParams() if params is None else params
            probs = _check_probs(pred_probs, task)
            _check_view(name, needs, view, probs.shape)
            return fn(probs, random_state=random_state, view=view, params=params)

        # name and docstring of the formula; the signature is the public one above
        functools.update_wrapper(checked, fn, updated=())
        del checked.__wrapped__
        REGISTRY[name] = checked
        _INFO[name] = StrategyInfo(
            name=name,
            fn=checked,
            needs=needs,
            whole_pool=whole_pool,
            reads_probs=reads_probs,
            task=task,
            spread_base=spread_base,
        )
        return checked

    return decorate


def get_strategy(name: str) -> Strategy:
    return get_strategy_info(name).fn


def get_strategy_info(name: str) -> StrategyInfo:
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(
            f"unknown query strategy {name!r} (score.strategy); known: {sorted(REGISTRY)}"
        ) from None


def check_strategy_task(name: str, task: Task) -> StrategyInfo:
    """The strategy ``name``, refused with a sentence when it scores another kind of task
    (a label-set strategy for a project whose items carry one class, or the reverse)."""
    info = get_strategy_info(name)
    if info.task != task and info.reads_probs:  # random reads no probability: either task
        fitting = sorted(n for n, i in _INFO.items() if i.task == task)
        raise ValueError(
            f"query strategy {name!r} (score.strategy) scores {info.task} items; this project's "
            f"items are {task}: choose one of {fitting}"
        )
    return info


# -- input checks ------------------------------------------------------------------------------
def _check_probs(pred_probs: np.ndarray, task: Task = "multiclass") -> np.ndarray:
    probs = np.asarray(pred_probs, dtype=float)
    if task == "multilabel":
        if probs.ndim != 2 or probs.shape[1] < 1:
            raise ValueError(f"pred_probs must have shape (n_pool, n_labels>=1), got {probs.shape}")
        known = probs[~np.isnan(probs)]
        if known.size and (known.min() < 0.0 or known.max() > 1.0):
            raise ValueError("pred_probs of a label set must be probabilities in [0, 1]")
        return probs
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"pred_probs must have shape (n_pool, n_classes>=2), got {probs.shape}")
    return probs


def _invalid(pred_probs: np.ndarray) -> np.ndarray:
    """Rows that are not selectable: shape (n_pool,), True where a row has a NaN."""
    return np.isnan(pred_probs).any(axis=1)


def _check_view(name: str, needs: tuple[str, ...], view: PoolView, shape: tuple[int, ...]) -> None:
    n_pool, n_classes = shape
    for field in needs:
        if getattr(view, field) is None:
            raise ValueError(
                f"strategy {name!r} needs view.{field}, but the PoolView has none "
                f"(it needs {list(needs)})"
            )
    expected = {
        "committee_probs": ("(n_members>=1, n_pool, n_classes)", 3, (n_pool, n_classes)),
        "embedding": ("(n_pool, n_dims)", 2, (n_pool,)),
        "class_counts": ("(n_classes,)", 1, (n_classes,)),
        "seconds": ("(n_pool,)", 1, (n_pool,)),
    }
    for field, (text, ndim, head) in expected.items():
        value = getattr(view, field)
        if value is None or field not in needs:
            continue
        arr = np.asarray(value)
        got = arr.shape[-len(head) :] if field == "committee_probs" else arr.shape[: len(head)]
        no_members = field == "committee_probs" and arr.shape[0] == 0
        if arr.ndim != ndim or got != head or no_members:
            raise ValueError(
                f"strategy {name!r}: view.{field} must have shape {text} with n_pool={n_pool}, "
                f"n_classes={n_classes}; got {arr.shape}"
            )
    if "class_counts" in needs and (np.asarray(view.class_counts, dtype=float) < 0).any():
        raise ValueError(f"strategy {name!r}: view.class_counts must be >= 0")
    if "seconds" in needs and (np.asarray(view.seconds, dtype=float) <= 0).any():
        raise ValueError(f"strategy {name!r}: view.seconds must be > 0 (or NaN)")
    if "batch_size" in needs and (
        not isinstance(view.batch_size, int | np.integer) or view.batch_size < 1
    ):
        raise ValueError(f"strategy {name!r}: view.batch_size must be an int >= 1")


# -- shared pieces -----------------------------------------------------------------------------
def _top2_gap(probs: np.ndarray) -> np.ndarray:
    """``p_top1 - p_top2`` per row, in [0, 1] (NaN rows give NaN)."""
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _with_nan(utilities: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    utilities = np.asarray(utilities, dtype=float).copy()
    utilities[invalid] = np.nan
    return utilities


# -- single-model uncertainty ------------------------------------------------------------------
@register("random", reads_probs=False)
def get_random_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Uniform random utilities in [0, 1): the baseline every strategy must beat."""
    utilities = np.random.default_rng(random_state).random(pred_probs.shape[0])
    return _with_nan(utilities, _invalid(pred_probs))


@register("least_confidence")
def get_least_confidence_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """``1 - max_k p_k`` in [0, 1 - 1/K]; higher = less confident."""
    return _with_nan(1.0 - pred_probs.max(axis=1), _invalid(pred_probs))


@register("margin")
def get_margin_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """``-(p_top1 - p_top2)`` in [-1, 0]; higher = the two best classes are closer."""
    return _with_nan(-_top2_gap(pred_probs), _invalid(pred_probs))


@register("entropy")
def get_entropy_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Shannon entropy in [0, log K] nats; higher = more uncertain."""
    safe = np.clip(pred_probs, 1e-300, 1.0)
    return _with_nan(-(pred_probs * np.log(safe)).sum(axis=1), _invalid(pred_probs))


# -- query by committee ------------------------------------------------------------------------
def _committee(pred_probs: np.ndarray, view: PoolView) -> tuple[np.ndarray, np.ndarray]:
    """The members' probabilities, shape (M, n_pool, K), and the rows that are not
    selectable: those of ``pred_probs`` and those some member could not score."""
    members = np.asarray(view.committee_probs, dtype=float)
    return members, _invalid(pred_probs) | np.isnan(members).any(axis=(0, 2))


@register("qbc_vote_entropy", needs=("committee_probs",))
def get_vote_entropy_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Vote entropy of the committee, with a tiny consensus tie-break.

    ``H(v) + 1e-9 * (1 - (c_top1 - c_top2))`` where ``v_k`` is the share of members whose
    most probable class is ``k``, ``H`` its entropy in ``[0, log min(M, K)]`` nats (M members,
    K classes), and ``c`` the members' mean probabilities. Higher = the members disagree more.
    Items whose votes are split alike (most often: unanimous) are ordered by how close the
    consensus is to a tie, instead of all being equal.
    """
    members, invalid = _committee(pred_probs, view)
    n_members, n_pool, n_classes = members.shape
    votes = np.nan_to_num(members).argmax(axis=2)  # (M, n_pool)
    counts = np.zeros((n_pool, n_classes))
    np.add.at(counts, (np.tile(np.arange(n_pool), n_members), votes.ravel()), 1.0)
    # sorted shares: the same split of votes gives bit-identical entropies whatever the classes
    shares = np.sort(counts, axis=1) / n_members
    vote_entropy = -(shares * np.log(np.where(shares > 0, shares, 1.0))).sum(axis=1)
    consensus_uncertainty = 1.0 - _top2_gap(members.mean(axis=0))
    return _with_nan(vote_entropy + _VOTE_TIEBREAK * consensus_uncertainty, invalid)


@register("qbc_consensus_margin", needs=("committee_probs",))
def get_consensus_margin_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """``-(c_top1 - c_top2)`` in [-1, 0] of the members' mean probabilities ``c``; higher =
    the committee as a whole is torn between its two best classes."""
    members, invalid = _committee(pred_probs, view)
    return _with_nan(-_top2_gap(members.mean(axis=0)), invalid)


# -- diversity ---------------------------------------------------------------------------------
def get_margin_base(pred_probs: np.ndarray) -> np.ndarray:
    """Diversity's per-item uncertainty: ``-(p_top1 - p_top2)`` in [-1, 0], NaN rows NaN."""
    return _with_nan(-_top2_gap(pred_probs), _invalid(pred_probs))


@register(
    "diversity",
    needs=("embedding", "batch_size"),
    whole_pool=True,
    spread_base=get_margin_base,
)
def get_diversity_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Margin uncertainty, then a batch spread out in the embedding.

    1. Candidates: the ``params.diversity_factor * view.batch_size`` selectable items with the
       highest margin utility ``-(p_top1 - p_top2)`` (equal margins ordered by a draw seeded
       with ``random_state``; the score stage orders them by :func:`get_tie_keys` instead,
       which does not depend on how the pool is cut into chunks).
    2. ``params.diversity_method`` (see :func:`get_spread_picks`):

       - ``kmeans``: k-means (``batch_size`` clusters, one k-means++ start seeded with
         ``random_state``) of the candidates in ``view.embedding``; the candidate nearest each
         centre is picked, picks ordered most uncertain first;
       - ``weighted_kmeans``: the same, each candidate weighted by its informativeness
         ``1 - (p_top1 - p_top2)``, which pulls the centres toward the most uncertain
         candidates (Zhdanov 2019, "Diverse mini-batch active learning");
       - ``kmeans_most_uncertain``: the same clusters as ``kmeans``, but the most uncertain
         candidate of each cluster is picked, not the one nearest its centre: one pick per
         region, each the region's best by margin;
       - ``farthest_first``: the first pick is the most uncertain candidate, each next pick the
         candidate farthest (Euclidean) from all picks so far (equal distances: the more
         uncertain one), so every prefix of the picks is spread.

    3. The ``j``-th pick (``j = 0, 1, ...``) gets ``(b - j) / b`` in ``(0, 1]`` with ``b`` the
       number of picks; every other item keeps its margin utility in ``[-1, 0]``, below all
       picks.

    Higher = label first. Needs the whole pool at once (the picks depend on each other).
    """
    return _spread_in_embedding(
        get_margin_base(pred_probs),
        random_state=random_state,
        view=view,
        params=params,
        name="diversity",
    )


def _spread_in_embedding(
    base: np.ndarray,
    *,
    random_state: int,
    view: PoolView,
    params: ScoreParams,
    name: str,
) -> np.ndarray:
    """Steps 1-3 of :func:`get_diversity_scores` for an uncertainty utility ``base`` in
    [-1, 0] (higher: more uncertain; NaN: not selectable)."""
    invalid = np.isnan(base)
    embedding = np.asarray(view.embedding, dtype=float)
    if not np.isfinite(embedding[~invalid]).all():
        raise ValueError(f"strategy {name!r}: view.embedding has NaN or inf in selectable rows")
    selectable = np.flatnonzero(~invalid)
    rng = np.random.default_rng(random_state)
    order = selectable[np.lexsort((rng.random(selectable.size), -base[selectable]))]
    candidates = order[: get_candidate_count(params, int(view.batch_size))]
    picks = get_spread_picks(
        embedding[candidates],
        base[candidates],
        n_picks=int(view.batch_size),
        random_state=random_state,
        params=params,
    )
    utilities = base.copy()
    utilities[candidates[picks]] = get_pick_utilities(len(picks))
    return utilities


def get_candidate_count(params: ScoreParams, batch_size: int) -> int:
    """How many of the most uncertain items a batch is spread among."""
    return params.diversity_factor * batch_size


def get_tie_keys(item_ids: np.ndarray, random_state: int) -> np.ndarray:
    """A seeded pseudo-random key per item id (uint64), to order equal uncertainties: it
    depends on the id and the seed only, so the order is the same however the pool is cut
    into chunks or wherever they are scored."""
    from pandas.util import hash_array

    key = f"{random_state % 10**16:016d}"
    return hash_array(np.asarray(item_ids, dtype=object), hash_key=key, categorize=False)


def get_spread_picks(
    embedding: np.ndarray,
    base: np.ndarray,
    *,
    n_picks: int,
    random_state: int,
    params: ScoreParams,
) -> np.ndarray:
    """Step 2 of :func:`get_diversity_scores`: positions in the candidates (given most
    uncertain first, with their ``embedding`` rows and uncertainty ``base``) of at most
    ``n_picks`` picks, in pick order."""
    n_picks = min(n_picks, len(base))
    if params.diversity_method == "farthest_first":
        picks = _farthest_first(embedding, n_picks)
    else:  # k-means; weighted_kmeans weights each candidate by 1 + base (its informativeness)
        weights = 1.0 + base if params.diversity_method == "weighted_kmeans" else None
        picks = _kmeans_picks(
            embedding,
            n_picks,
            random_state,
            weights,
            most_uncertain=params.diversity_method == "kmeans_most_uncertain",
        )
    return np.asarray(picks, dtype=np.int64)


def get_pick_utilities(n_picks: int) -> np.ndarray:
    """Step 3 of :func:`get_diversity_scores`: ``(b - j) / b`` for the ``j``-th of ``b``
    picks, in (0, 1], above every uncertainty in [-1, 0]."""
    return (n_picks - np.arange(n_picks)) / max(n_picks, 1)


def _kmeans_picks(
    points: np.ndarray,
    n_picks: int,
    random_state: int,
    weights: np.ndarray | None = None,
    *,
    most_uncertain: bool = False,
) -> list[int]:
    """Indices of ``points`` nearest each of ``n_picks`` k-means centres, in index order
    (``points`` are ordered most uncertain first); each point is picked at most once.
    ``weights`` (>= 0, one per point) weight the k-means objective; all zero counts as none.
    ``most_uncertain``: each cluster's first point (its most uncertain) instead of the one
    nearest its centre; if duplicate points leave clusters empty, the most uncertain points
    not yet picked fill the places."""
    if n_picks == 0:
        return []
    from sklearn.cluster import KMeans

    if weights is not None and not weights.sum() > 0:
        weights = None
    seed = int(random_state % (2**32 - 1))
    kmeans = KMeans(n_clusters=n_picks, n_init=1, random_state=seed)
    fitted = kmeans.fit(points, sample_weight=weights)
    if most_uncertain:
        _, first = np.unique(fitted.labels_, return_index=True)  # first = most uncertain
        chosen = set(first.tolist())
        rest = (i for i in range(len(points)) if i not in chosen)
        while len(chosen) < n_picks:
            chosen.add(next(rest))
        return sorted(chosen)
    centres = fitted.cluster_centers_
    picks: list[int] = []
    taken = np.zeros(len(points), dtype=bool)
    for centre in centres:  # duplicate points can share a centre: take the next nearest
        distance = np.linalg.norm(points - centre, axis=1)
        distance[taken] = np.inf
        picks.append(int(np.argmin(distance)))
        taken[picks[-1]] = True
    return sorted(picks)


def _farthest_first(points: np.ndarray, n_picks: int) -> list[int]:
    """Greedy farthest-first traversal from row 0; indices of ``points`` in pick order.

    ``points`` are ordered most uncertain first, and ``argmax`` takes the first of equal
    distances, so ties go to the more uncertain candidate.
    """
    if n_picks == 0:
        return []
    picks = [0]
    nearest = np.linalg.norm(points - points[0], axis=1)
    nearest[0] = -np.inf
    while len(picks) < n_picks:
        nxt = int(np.argmax(nearest))
        picks.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
        nearest[picks] = -np.inf
    return picks


# -- class balance and cost --------------------------------------------------------------------
@register("class_balance", needs=("class_counts",))
def get_class_balance_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Margin uncertainty weighted toward items predicted in rare classes.

    ``(1 - (p_top1 - p_top2)) * w_c`` with ``c`` the predicted class and
    ``w_c = ((mean(n) + 1) / (n_c + 1)) ** params.class_balance_power``, ``n`` the training
    labels per class (``view.class_counts``). ``w`` is 1 for a class of average size, above 1
    for rarer classes and below 1 for commoner ones; power 0 gives plain margin uncertainty.
    Range ``[0, inf)``; higher = label first.
    """
    counts = np.asarray(view.class_counts, dtype=float)
    weights = ((counts.mean() + 1.0) / (counts + 1.0)) ** params.class_balance_power
    predicted = np.nan_to_num(pred_probs).argmax(axis=1)
    utilities = (1.0 - _top2_gap(pred_probs)) * weights[predicted]
    return _with_nan(utilities, _invalid(pred_probs))


@register("cost_aware", needs=("seconds",))
def get_cost_aware_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """Uncertainty per expected annotation second: ``(1 - (p_top1 - p_top2)) / seconds``.

    Range ``[0, 1 / min(seconds)]``, in 1/s; higher = more uncertainty bought per second of
    an annotator's time. An item with NaN ``view.seconds`` is not selectable.
    """
    seconds = np.asarray(view.seconds, dtype=float)
    invalid = _invalid(pred_probs) | np.isnan(seconds)
    return _with_nan((1.0 - _top2_gap(pred_probs)) / seconds, invalid)


# -- label sets (tasks/multilabel.py) ------------------------------------------------------------
def _label_uncertainty(pred_probs: np.ndarray) -> np.ndarray:
    """Per item and label, ``1 - |2 p - 1|`` in [0, 1]: 1 at p = 0.5, 0 at p = 0 or 1."""
    return 1.0 - np.abs(2.0 * pred_probs - 1.0)


@register("ml_mean_uncertainty", task="multilabel")
def get_mean_label_uncertainty_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """The mean over labels of ``1 - |2 p_k - 1|``, in [0, 1]: how unsure the model is of the
    item's set as a whole (each label's binary margin; Brinker 2006's mean max-margin).
    Higher = label first."""
    invalid = _invalid(pred_probs)
    return _with_nan(_label_uncertainty(np.nan_to_num(pred_probs)).mean(axis=1), invalid)


@register("ml_max_uncertainty", task="multilabel")
def get_max_label_uncertainty_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """The largest ``1 - |2 p_k - 1|`` over labels, in [0, 1]: the one label the model is
    least sure of. Higher = label first."""
    invalid = _invalid(pred_probs)
    return _with_nan(_label_uncertainty(np.nan_to_num(pred_probs)).max(axis=1), invalid)


def get_label_set_base(pred_probs: np.ndarray) -> np.ndarray:
    """ml_diversity's per-item uncertainty: the mean label uncertainty minus 1, in [-1, 0]."""
    invalid = _invalid(pred_probs)
    return _with_nan(_label_uncertainty(np.nan_to_num(pred_probs)).mean(axis=1) - 1.0, invalid)


@register(
    "ml_diversity",
    needs=("embedding", "batch_size"),
    whole_pool=True,
    task="multilabel",
    spread_base=get_label_set_base,
)
def get_label_set_diversity_scores(
    pred_probs: np.ndarray, *, random_state: int, view: PoolView, params: ScoreParams
) -> np.ndarray:
    """:func:`get_diversity_scores` for label sets: the candidates are the items of highest
    mean label uncertainty (:func:`get_mean_label_uncertainty_scores`), spread in the
    embedding as ``params.diversity_method`` says; the picks get ``(b - j) / b``, every other
    item its mean label uncertainty minus 1, in [-1, 0]."""
    return _spread_in_embedding(
        get_label_set_base(pred_probs),
        random_state=random_state,
        view=view,
        params=params,
        name="ml_diversity",
    )
