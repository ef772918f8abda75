"""The contract every registered query strategy obeys."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.strategies import REGISTRY, get_strategy


def _probs(n=200, k=4, seed=0):
    raw = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    raw[5] = np.nan  # an item that cannot be scored
    return raw


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_shape_nan_determinism_and_no_mutation(name):
    strategy = REGISTRY[name]
    probs = _probs()
    before = probs.copy()
    first = strategy(probs, random_state=7)
    second = strategy(probs, random_state=7)
    np.testing.assert_array_equal(probs, before)
    assert first.shape == (probs.shape[0],)
    np.testing.assert_array_equal(first, second)
    assert np.isnan(first[5]) and not np.isnan(np.delete(first, 5)).any()


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"random"}))
def test_higher_utility_means_more_uncertain(name):
    sure = [0.97, 0.01, 0.01, 0.01]
    torn = [0.49, 0.48, 0.02, 0.01]
    utilities = REGISTRY[name](np.array([sure, torn]), random_state=0)
    assert utilities[1] > utilities[0]


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
