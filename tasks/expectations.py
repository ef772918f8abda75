"""Great Expectations, as validate uses it: row-level checks mapped back to row positions.

The suite runs in an ephemeral, in-memory context: nothing is written to disk, no progress
bars, no analytics. ``great_expectations`` takes seconds to import, so it is imported on
first use, not when this module is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NAME_KEY = "alloop_check"

RESULT_FORMAT = {
    "result_format": "COMPLETE",  # every failing row, not a sample
    "return_unexpected_index_query": False,
    "exclude_unexpected_values": True,
}


@dataclass(frozen=True)
class Check:
    """A named row-level expectation: ``expectation`` is a class of ``gx.expectations``."""

    name: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def build_suite(checks: Sequence[Check], *, name: str = "incoming_labels") -> Any:
    """A ``gx.ExpectationSuite`` whose expectations carry their check name in ``meta``."""
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"check names must be unique, got {names}")
    gx = _gx()
    return gx.ExpectationSuite(
        name=name,
        expectations=[
            getattr(gx.expectations, c.expectation)(**c.kwargs, meta={NAME_KEY: c.name})
            for c in checks
        ],
    )


def _context() -> Any:
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    return gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        ),
    )


def find_failing_rows(frame: pd.DataFrame, checks: Sequence[Check]) -> dict[str, np.ndarray]:
    """Run ``checks`` over ``frame``; the positions (0-based) of the rows failing each.

    A null value never fails an in-set check here (Great Expectations skips nulls in
    ``ExpectColumnValuesToBeInSet``); missing values are the business of not-null checks.

    Raises
    ------
    RuntimeError
        If an expectation could not be evaluated (a missing column, say): Great Expectations
        only marks it unsuccessful, and a check that silently passes nothing is worse.
    """
    if frame.empty:
        return {c.name: np.array([], dtype=int) for c in checks}
    data = frame.reset_index(drop=True)  # index labels are then row positions
    batch = (
        _context()
        .data_sources.add_pandas("incoming")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": data})
    )
    result = batch.validate(build_suite(checks), result_format=RESULT_FORMAT)
    found: dict[str, np.ndarray] = {}
    for outcome in result.results:
        name = (outcome.expectation_config.meta or {}).get(NAME_KEY)
        info = outcome.exception_info or {}
        errors = [info] if "raised_exception" in info else list(info.values())
        for error in errors:
            if isinstance(error, dict) and error.get("raised_exception"):
                raise RuntimeError(
                    f"check {name!r} failed to run: {error.get('exception_message')}"
                )
        positions = outcome.result.get("unexpected_index_list") or []
        found[name] = np.asarray(sorted(int(p) for p in positions), dtype=int)
    missing = {c.name for c in checks} - found.keys()
    if missing:
        raise RuntimeError(f"checks {sorted(missing)} returned no result")
    return found
