"""The contract every registered query strategy obeys, each strategy's own promise, and the
annotation-time model some of them use."""

from __future__ import annotations

import copy
import inspect
import typing
import warnings

import numpy as np
import pandas as pd
import pytest

from tasks import schema
from tasks.annotation_time import get_batch_seconds, get_item_seconds
from tasks.params import AnnotationParams, ScoreParams, SelectParams
from tasks.selection import select_batch
from tasks.strategies import (
    REGISTRY,
    VIEW_FIELDS,
    PoolView,
    get_strategy,
    get_strategy_info,
    register,
)

N, K, NAN_ROW = 200, 4, 5


def _probs(n=N, k=K, seed=0):
    raw = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    raw[NAN_ROW] = np.nan  # an item that cannot be scored
    return raw


def _full_view(probs, seed=0, n_members=5, batch_size=10):
    """Every field, row-aligned with ``probs``: members are noisy versions of the model."""
    rng = np.random.default_rng(seed)
    n, k = probs.shape
    base = np.nan_to_num(probs, nan=1.0 / k)
    members = np.stack([0.5 * base + 0.5 * rng.dirichlet(np.ones(k), size=n) for _ in range(5)])
    return PoolView(
        committee_probs=members[:n_members],
        embedding=rng.normal(size=(n, 3)),
        class_counts=rng.integers(0, 50, size=k).astype(float),
        seconds=rng.uniform(3.0, 7.0, size=n),
        batch_size=batch_size,
    )


def _view_arrays(view):
    return [getattr(view, f) for f in VIEW_FIELDS if isinstance(getattr(view, f), np.ndarray)]


# -- the contract ------------------------------------------------------------------------------
def test_every_strategy_has_the_one_signature():
    for name, strategy in REGISTRY.items():
        params = inspect.signature(strategy).parameters
        assert list(params) == ["pred_probs", "random_state", "view", "params"], name
        assert params["random_state"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["view"].default is None and params["params"].default is None
        assert get_strategy(name) is strategy


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_shape_nan_determinism_and_no_mutation(name):
    strategy = REGISTRY[name]
    probs = _probs()
    view = _full_view(probs)
    before = copy.deepcopy((probs, _view_arrays(view)))
    first = strategy(probs, random_state=7, view=view)
    second = strategy(probs, random_state=7, view=view)
    np.testing.assert_array_equal(probs, before[0])
    for array, kept in zip(_view_arrays(view), before[1], strict=True):
        np.testing.assert_array_equal(array, kept)
    assert first.shape == (N,) and first.dtype == float
    np.testing.assert_array_equal(first, second)
    assert np.isnan(first[NAN_ROW]) and not np.isnan(np.delete(first, NAN_ROW)).any()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rows_marked_with_nan_are_never_selectable(name):
    probs = _probs()
    view = _full_view(probs)
    marked = probs.copy()
    marked[[0, 17, 199]] = np.nan  # e.g. already issued
    utilities = REGISTRY[name](marked, random_state=0, view=view)
    assert np.flatnonzero(np.isnan(utilities)).tolist() == [0, NAN_ROW, 17, 199]


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"random"}))
def test_higher_utility_means_more_uncertain(name):
    sure = [0.97, 0.01, 0.01, 0.01]
    torn = [0.49, 0.48, 0.02, 0.01]
    members = np.array(
        [[sure, [0.9, 0.05, 0.03, 0.02]], [sure, [0.1, 0.8, 0.05, 0.05]], [sure, torn]]
    )
    view = PoolView(
        committee_probs=members,
        embedding=np.array([[0.0, 0.0], [1.0, 1.0]]),
        class_counts=np.array([10.0, 10.0, 10.0, 10.0]),
        seconds=np.array([5.0, 5.0]),
        batch_size=1,
    )
    utilities = REGISTRY[name](np.array([sure, torn]), random_state=0, view=view)
    assert utilities[1] > utilities[0]


@pytest.mark.parametrize(
    ("name", "field"),
    [(name, field) for name in sorted(REGISTRY) for field in get_strategy_info(name).needs],
)
def test_a_missing_view_field_is_named_with_the_strategy(name, field):
    probs = _probs()
    view = copy.copy(_full_view(probs))
    object.__setattr__(view, field, None)
    with pytest.raises(ValueError, match=f"'{name}' needs view.{field}"):
        REGISTRY[name](probs, random_state=0, view=view)


def test_strategies_without_needs_work_with_the_default_view():
    plain = [name for name in REGISTRY if not get_strategy_info(name).needs]
    assert {"random", "least_confidence", "margin", "entropy"} <= set(plain)
    for name in plain:
        assert REGISTRY[name](_probs(), random_state=0).shape == (N,)


@pytest.mark.parametrize(
    ("name", "field", "value", "message"),
    [
        ("qbc_vote_entropy", "committee_probs", np.ones((3, N - 1, K)) / K, "committee_probs"),
        ("qbc_vote_entropy", "committee_probs", np.ones((0, N, K)), "n_members>=1"),
        ("diversity", "embedding", np.zeros(N), "embedding"),
        ("class_balance", "class_counts", np.ones(K + 1), "class_counts"),
        ("class_balance", "class_counts", -np.ones(K), ">= 0"),
        ("cost_aware", "seconds", np.zeros(N), "> 0"),
        ("diversity", "batch_size", 0, "batch_size"),
    ],
)
def test_badly_shaped_view_fields_are_refused(name, field, value, message):
    probs = _probs()
    view = copy.copy(_full_view(probs))
    object.__setattr__(view, field, value)
    with pytest.raises(ValueError, match=message):
        REGISTRY[name](probs, random_state=0, view=view)


def test_registration_declares_known_fields_and_names_once():
    with pytest.raises(ValueError, match="unknown view fields"):
        register("x", needs=("labels",))
    with pytest.raises(ValueError, match="already registered"):
        register("margin")(lambda pred_probs, **_: pred_probs)


def test_random_differs_by_seed():
    probs = _probs()
    a = get_strategy("random")(probs, random_state=1)
    b = get_strategy("random")(probs, random_state=2)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(b))


def test_unknown_strategy_is_named_in_the_error():
    with pytest.raises(ValueError, match="'marign'.*margin"):
        get_strategy("marign")


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        get_strategy("margin")(np.ones(5), random_state=0)


def _issued(ids):
    return schema.conform(
        pd.DataFrame(
            {"item_id": ids, "round_id": 1, "split": "train", "reason": "active", "utility": 0.0}
        ),
        schema.ISSUED,
    )


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_batch_selection_never_repeats_an_item_or_reissues_one(name):
    probs = _probs(n=400, seed=3)
    utilities = REGISTRY[name](probs, random_state=0, view=_full_view(probs, batch_size=60))
    scores = schema.conform(
        pd.DataFrame(
            {
                "item_id": [f"i{k}" for k in range(400)],
                "predicted_label": np.array(list("abcd"))[np.nan_to_num(probs).argmax(axis=1)],
                "confidence": np.nanmax(np.nan_to_num(probs), axis=1),
                "utility": utilities,
            }
        ),
        schema.SCORES,
    )
    # the items the strategy likes best were issued before
    issued = _issued(scores.sort_values("utility", ascending=False)["item_id"].head(30).tolist())
    batch = select_batch(
        scores,
        issued,
        pd.Series([], dtype="string"),
        has_model=True,
        params=SelectParams(batch_size=60),
        random_state=0,
    )
    assert len(batch) == 60 and batch["item_id"].is_unique
    assert not batch["item_id"].isin(issued["item_id"]).any()
    assert f"i{NAN_ROW}" not in set(batch["item_id"])


# -- query by committee ------------------------------------------------------------------------
def _votes(*splits, k=3):
    """A committee whose members vote as ``splits`` say: one row per item, one class per
    member, each member 0.8 sure of its vote."""
    n_members = len(splits[0])
    members = np.full((n_members, len(splits), k), 0.2 / (k - 1))
    for item, split in enumerate(splits):
        for member, vote in enumerate(split):
            members[member, item, vote] = 0.8
    return members


def test_vote_entropy_ranks_disagreement_above_agreement():
    members = _votes([0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 2, 0])
    probs = members.mean(axis=0)
    utilities = get_strategy("qbc_vote_entropy")(
        probs, random_state=0, view=PoolView(committee_probs=members)
    )
    assert utilities[0] < utilities[1] < utilities[2] < utilities[3]
    shares = np.array([0.5, 0.25, 0.25])
    assert utilities[3] == pytest.approx(-(shares * np.log(shares)).sum(), abs=1e-8)


def test_vote_entropy_orders_unanimous_items_by_their_consensus():
    close = [[0.55, 0.45, 0.0]] * 3
    clear = [[0.95, 0.05, 0.0]] * 3
    members = np.array([[close[0], clear[0]]] * 3)
    utilities = get_strategy("qbc_vote_entropy")(
        members.mean(axis=0), random_state=0, view=PoolView(committee_probs=members)
    )
    assert utilities[0] > utilities[1] and utilities[0] - utilities[1] < 1e-8


def test_consensus_margin_is_the_margin_of_the_mean_member():
    members = np.array([[[0.9, 0.1]], [[0.3, 0.7]]])  # mean: 0.6 / 0.4
    utilities = get_strategy("qbc_consensus_margin")(
        np.array([[0.99, 0.01]]), random_state=0, view=PoolView(committee_probs=members)
    )
    assert utilities[0] == pytest.approx(-0.2)


def test_an_item_a_member_cannot_score_is_not_selectable():
    members = _votes([0, 1], [0, 0])
    members[1, 0] = np.nan
    for name in ("qbc_vote_entropy", "qbc_consensus_margin"):
        utilities = get_strategy(name)(
            members.mean(axis=0), random_state=0, view=PoolView(committee_probs=members)
        )
        assert np.isnan(utilities[0]) and not np.isnan(utilities[1])


# -- diversity ---------------------------------------------------------------------------------
DIVERSITY_METHODS = typing.get_args(ScoreParams.model_fields["diversity_method"].annotation)


def _two_clusters(n_per=10, seed=0):
    rng = np.random.default_rng(seed)
    embedding = np.vstack([rng.normal(0.0, 0.01, (n_per, 2)), rng.normal(10.0, 0.01, (n_per, 2))])
    probs = np.tile([0.5, 0.4, 0.1], (2 * n_per, 1))  # all equally uncertain
    return probs, embedding


@pytest.mark.parametrize("seed", range(5))
def test_diversity_spreads_equally_uncertain_items_over_clusters(seed):
    probs, embedding = _two_clusters(seed=seed)
    view = PoolView(embedding=embedding, batch_size=4)
    for method in DIVERSITY_METHODS:
        utilities = get_strategy("diversity")(
            probs, random_state=seed, view=view, params=ScoreParams(diversity_method=method)
        )
        top = np.argsort(-utilities)
        assert {int(i) // 10 for i in top[:4]} == {0, 1}, method  # both clusters in the batch
        if method == "farthest_first":  # and in every prefix
            assert {int(top[0]) // 10, int(top[1]) // 10} == {0, 1}


@pytest.mark.parametrize("method", DIVERSITY_METHODS)
def test_diversity_picks_among_the_most_uncertain_and_ranks_picks_first(method):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=300)
    embedding = rng.normal(size=(300, 4))
    margin = get_strategy("margin")(probs, random_state=0)
    utilities = get_strategy("diversity")(
        probs,
        random_state=0,
        view=PoolView(embedding=embedding, batch_size=20),
        params=ScoreParams(diversity_factor=5, diversity_method=method),
    )
    picks = np.argsort(-utilities)[:20]
    if method == "farthest_first":
        assert picks[0] == np.argmax(margin)
    else:  # picks are ordered most uncertain first
        assert (np.diff(margin[picks]) <= 0).all()
    np.testing.assert_allclose(np.sort(utilities[picks]), np.arange(1, 21) / 20)
    candidates = np.argsort(-margin)[:100]
    assert set(picks) <= set(candidates)
    others = np.setdiff1d(np.arange(300), picks)
    np.testing.assert_array_equal(utilities[others], margin[others])  # below every pick


def test_diversity_picks_are_farther_apart_than_the_plain_top():
    rng = np.random.default_rng(2)
    centers = np.array([[0, 0], [20, 0], [0, 20], [20, 20], [40, 0], [0, 40]])
    embedding = np.vstack([c + rng.normal(0, 0.1, (50, 2)) for c in centers])
    # the most uncertain items all sit in the first cluster, the next ones in the second
    gap = np.concatenate([np.linspace(0.0, 0.1, 50), np.linspace(0.2, 0.9, 250)])
    probs = np.column_stack([(1 + gap) / 2, (1 - gap) / 2])
    view = PoolView(embedding=embedding, batch_size=6)
    margin_top = np.argsort(-get_strategy("margin")(probs, random_state=0))[:6]
    assert {int(i) // 50 for i in margin_top} == {0}
    # 60 candidates (the default factor 10): clusters 0 and 1 only
    default = get_strategy("diversity")(probs, random_state=0, view=view)
    assert {int(i) // 50 for i in np.argsort(-default)[:6]} == {0, 1}
    wide = get_strategy("diversity")(
        probs, random_state=0, view=view, params=ScoreParams(diversity_factor=50)
    )
    assert {int(i) // 50 for i in np.argsort(-wide)[:6]} == set(range(6))


def test_weighted_kmeans_pulls_picks_toward_the_uncertain_end_of_a_cluster():
    # one cluster of candidates along a line, uncertainty falling from left to right: plain
    # k-means picks the middle, weighting by informativeness moves the pick to the left
    embedding = np.column_stack([np.linspace(0.0, 1.0, 11), np.zeros(11)])
    gap = np.linspace(0.0, 1.0, 11)
    probs = np.column_stack([(1 + gap) / 2, (1 - gap) / 2])
    view = PoolView(embedding=embedding, batch_size=1)
    picked = {}
    for method in ("kmeans", "weighted_kmeans"):
        params = ScoreParams(diversity_factor=11, diversity_method=method)
        utilities = get_strategy("diversity")(probs, random_state=0, view=view, params=params)
        picked[method] = int(np.argmax(utilities))
    assert picked["kmeans"] == 5
    # the weighted centre: sum((1 - g) * x) / sum(1 - g) with x = g, i.e. 1.65 / 5.5 = 0.3
    assert picked["weighted_kmeans"] == 3


def test_kmeans_most_uncertain_picks_each_clusters_most_uncertain_candidate():
    # two clusters of candidates along a line, uncertainty falling from left to right in each:
    # plain k-means picks each cluster's middle, this method each cluster's left end
    line = np.linspace(0.0, 1.0, 7)
    embedding = np.column_stack([np.concatenate([line, line + 10.0]), np.zeros(14)])
    gap = np.concatenate([line, line]) * 0.5 + np.repeat([0.0, 0.01], 7)
    probs = np.column_stack([(1 + gap) / 2, (1 - gap) / 2])
    view = PoolView(embedding=embedding, batch_size=2)
    picked = {}
    for method in ("kmeans", "kmeans_most_uncertain"):
        params = ScoreParams(diversity_factor=7, diversity_method=method)
        utilities = get_strategy("diversity")(probs, random_state=0, view=view, params=params)
        picked[method] = sorted(np.flatnonzero(utilities > 0).tolist())
        assert utilities[picked[method]].max() == 1.0  # the more uncertain pick ranks first
    assert picked["kmeans"] == [3, 10]
    assert picked["kmeans_most_uncertain"] == [0, 7]


def test_kmeans_most_uncertain_fills_a_batch_when_duplicates_leave_clusters_empty():
    # ten identical candidates: k-means finds one cluster, the batch still gets three items,
    # the three most uncertain
    gap = np.linspace(0.0, 0.9, 10)
    probs = np.column_stack([(1 + gap) / 2, (1 - gap) / 2])
    view = PoolView(embedding=np.zeros((10, 2)), batch_size=3)
    params = ScoreParams(diversity_factor=4, diversity_method="kmeans_most_uncertain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: fewer distinct clusters than asked
        utilities = get_strategy("diversity")(probs, random_state=0, view=view, params=params)
    np.testing.assert_allclose(utilities[:3], [1.0, 2 / 3, 1 / 3])
    assert (utilities[3:] <= 0).all()


# -- class balance and cost --------------------------------------------------------------------
def test_class_balance_favours_a_rare_predicted_class_at_equal_uncertainty():
    probs = np.array([[0.6, 0.4, 0.0], [0.4, 0.6, 0.0]])  # same margin, predicted 0 and 1
    counts = np.array([98.0, 2.0, 0.0])
    strategy = get_strategy("class_balance")
    utilities = strategy(probs, random_state=0, view=PoolView(class_counts=counts))
    assert utilities[1] > utilities[0]
    # (mean + 1) / (n_c + 1): mean 100/3; uncertainty 1 - 0.2 = 0.8
    assert utilities[0] == pytest.approx(0.8 * (100 / 3 + 1) / 99)
    assert utilities[1] == pytest.approx(0.8 * (100 / 3 + 1) / 3)
    flat = strategy(
        probs,
        random_state=0,
        view=PoolView(class_counts=counts),
        params=ScoreParams(class_balance_power=0.0),
    )
    np.testing.assert_allclose(flat, [0.8, 0.8])


def test_cost_aware_prefers_the_cheaper_item_at_equal_uncertainty():
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    seconds = np.array([7.0, 3.0, np.nan])
    utilities = get_strategy("cost_aware")(probs, random_state=0, view=PoolView(seconds=seconds))
    assert utilities[1] > utilities[0]
    np.testing.assert_allclose(utilities[:2], [0.8 / 7.0, 0.8 / 3.0])
    assert np.isnan(utilities[2])  # unknown cost: not selectable


# -- the annotation-time model -----------------------------------------------------------------
TIMES = AnnotationParams(confirm_seconds=3.0, assign_seconds=7.0, switch_seconds=2.0)


def test_item_seconds_are_the_expectation_over_a_right_or_wrong_suggestion():
    seconds = get_item_seconds(np.array([1.0, 0.0, 0.5, 0.9, np.nan]), params=TIMES)
    # 0.9 * 3 + 0.1 * 7 = 3.4; no suggestion (NaN) = assigned by hand
    np.testing.assert_allclose(seconds, [3.0, 7.0, 5.0, 3.4, 7.0])


def test_batch_seconds_add_a_switch_for_each_change_of_suggested_class():
    predicted = pd.Series(["a", "a", "b", pd.NA], dtype="string")
    confidence = np.array([0.9, 0.5, 1.0, np.nan])
    # items 3.4 + 5 + 3 + 7 = 18.4; switches a->b and b->(none): 2 * 2 s
    assert get_batch_seconds(predicted, confidence, params=TIMES) == pytest.approx(22.4)


def test_batch_seconds_with_known_truth_count_right_and_wrong_suggestions():
    predicted = pd.Series(["a", "a", "b", "b"], dtype="string")
    truth = pd.Series(["a", "b", "b", "c"], dtype="string")
    got = get_batch_seconds(
        predicted, np.array([0.1, 0.1, 0.1, 0.1]), params=TIMES, true_labels=truth
    )
    # right, wrong, right, wrong: 3 + 7 + 3 + 7 = 20; one switch (a -> b): 2
    assert got == pytest.approx(22.0)
    assert get_batch_seconds(predicted.iloc[:0], np.array([]), params=TIMES) == 0.0


def test_a_label_set_by_hand_costs_its_first_label_then_each_further_one():
    times = TIMES.model_copy(update={"label_seconds": 1.5})
    truth = pd.Series(["a|b|c", "a", "b|a", pd.NA], dtype="string")
    predicted = pd.Series(["a|b", "a", "a|b", "a|b"], dtype="string")
    got = get_batch_seconds(
        predicted, np.full(4, 0.5), params=times, true_labels=truth, separator="|"
    )
    # wrong: 7 + 2 * 1.5; right: 3; right in another order: 3; no answer known: by hand, 7;
    # one switch (a|b -> a -> a|b): 2 * 2
    assert got == pytest.approx(10 + 3 + 3 + 7 + 4)
    # without the answer, the suggested set's labels are counted: 0.5 * 3 + 0.5 * (7 + 1.5)
    expected = get_batch_seconds(predicted.iloc[:1], np.array([0.5]), params=times, separator="|")
    assert expected == pytest.approx(5.75)
    np.testing.assert_allclose(
        get_item_seconds(np.array([0.0, 1.0]), params=times, n_labels=np.array([3, 3])),
        [10.0, 3.0],
    )


def test_time_model_refuses_bad_input():
    with pytest.raises(ValueError, match="confidence"):
        get_item_seconds(np.array([1.5]), params=TIMES)
    with pytest.raises(ValueError, match="shape"):
        get_batch_seconds(pd.Series(["a", "b"]), np.array([0.5]), params=TIMES)
    with pytest.raises(ValueError, match="true_labels"):
        get_batch_seconds(
            pd.Series(["a"]), np.array([0.5]), params=TIMES, true_labels=pd.Series(["a", "b"])
        )
