"""The label-efficiency benchmark's own arithmetic: the ratio vs random and its interval."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "label_efficiency", ROOT / "bench" / "label_efficiency.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_reads_never_as_a_bound(bench):
    assert bench.get_ratio(1500.0, 500.0, 2000) == (3.0, "exact")
    assert bench.get_ratio(math.inf, 250.0, 2000) == (8.0, "at least")
    assert bench.get_ratio(900.0, math.inf, 2000) == (0.0, "strategy never")
    assert bench.get_ratio(math.inf, math.inf, 2000) == (1.0, "neither")


def _campaigns(ours: list[float], random: list[float]) -> pd.DataFrame:
    seeds = range(len(ours))
    return pd.DataFrame(
        {
            "strategy": ["diversity"] * len(ours) + ["random"] * len(random),
            "seed": [*seeds, *seeds],
            "labels_to_target": [*ours, *random],
        }
    )


def test_median_ratio_interval(bench):
    # seeds that all agree leave nothing to resample: the interval is the point
    steady = [_campaigns([500.0] * 5, [1500.0] * 5), _campaigns([400.0] * 5, [800.0] * 5)]
    assert bench.get_median_ratio_interval(steady, "diversity", 2000, n_boot=200) == (2.5, 2.5)
    # noisy seeds: the interval holds the point estimate and lies within the per-seed extremes
    rng = np.random.default_rng(1)
    sets = [
        _campaigns(
            list(rng.choice([450.0, 500.0, 600.0], 10)),
            list(rng.choice([1400.0, 1800.0, math.inf], 10)),
        )
        for _ in range(5)
    ]
    low, high = bench.get_median_ratio_interval(sets, "diversity", 2000, n_boot=500)
    point = np.median(
        [
            bench.get_ratio(
                float(np.median(t.loc[t.strategy == "random", "labels_to_target"])),
                float(np.median(t.loc[t.strategy == "diversity", "labels_to_target"])),
                2000,
            )[0]
            for t in sets
        ]
    )
    assert low <= point <= high
    assert 1400 / 600 <= low and high <= 2000 / 450
    # the same draw every time
    assert bench.get_median_ratio_interval(sets, "diversity", 2000, n_boot=500) == (low, high)
