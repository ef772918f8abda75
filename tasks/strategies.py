"""Query strategies: one signature, one registry.

Every strategy is ``utilities = strategy(pred_probs, *, random_state)`` with

- ``pred_probs``: array of float, shape ``(n_pool, n_classes)``, rows summing to 1;
- ``utilities``: array of float, shape ``(n_pool,)``; higher means "label this first"; NaN
  means "not selectable" (here: a row of ``pred_probs`` with a NaN).

Strategies only score; picking a batch from the utilities is :func:`tasks.selection.select_batch`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Strategy = Callable[..., np.ndarray]

REGISTRY: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def decorate(fn: Strategy) -> Strategy:
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        REGISTRY[name] = fn
        return fn

    return decorate


def get_strategy(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown query strategy {name!r} (score.strategy); known: {sorted(REGISTRY)}"
        ) from None


def _check(pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(pred_probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"pred_probs must have shape (n_pool, n_classes>=2), got {probs.shape}")
    return probs, np.isnan(probs).any(axis=1)


@register("random")
def get_random_scores(pred_probs: np.ndarray, *, random_state: int) -> np.ndarray:
    """Uniform random utilities in [0, 1): the baseline every strategy must beat."""
    probs, invalid = _check(pred_probs)
    utilities = np.random.default_rng(random_state).random(probs.shape[0])
    utilities[invalid] = np.nan
    return utilities


@register("least_confidence")
def get_least_confidence_scores(pred_probs: np.ndarray, *, random_state: int) -> np.ndarray:
    """``1 - max_k p_k`` in [0, 1 - 1/K]; higher = less confident."""
    probs, invalid = _check(pred_probs)
    utilities = 1.0 - probs.max(axis=1)
    utilities[invalid] = np.nan
    return utilities


@register("margin")
def get_margin_scores(pred_probs: np.ndarray, *, random_state: int) -> np.ndarray:
    """``-(p_top1 - p_top2)`` in [-1, 0]; higher = the two best classes are closer."""
    probs, invalid = _check(pred_probs)
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    utilities = -(top2[:, 1] - top2[:, 0])
    utilities[invalid] = np.nan
    return utilities


@register("entropy")
def get_entropy_scores(pred_probs: np.ndarray, *, random_state: int) -> np.ndarray:
    """Shannon entropy in [0, log K] nats; higher = more uncertain."""
    probs, invalid = _check(pred_probs)
    safe = np.clip(probs, 1e-300, 1.0)
    utilities = -(probs * np.log(safe)).sum(axis=1)
    utilities[invalid] = np.nan
    return utilities
