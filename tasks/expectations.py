"""Great Expectations, as validate uses it: a suite of row-level checks, kept as a JSON file in
the workspace (versioned with it), run over a frame, failures mapped back to row positions.

Each expectation names its check in ``meta["alloop_check"]`` (the reason code of the rows that
fail it) and may give ``meta["reason"]``, the sentence for humans. A team adds its own checks
by adding expectations to the suite file; the built-in ones must stay. The class list is a
suite parameter (``{"$PARAMETER": "classes"}``), so the file holds no copy of ``params.yaml``.

The suite runs in an ephemeral, in-memory context: nothing is written to disk, no progress
bars, no analytics. ``great_expectations`` takes seconds to import, so it is imported on first
use, not when this module is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NAME_KEY = "alloop_check"
SUITE_NAME = "incoming_labels"

RESULT_FORMAT = {
    "result_format": "COMPLETE",  # every failing row, not a sample
    "return_unexpected_index_query": False,
    "exclude_unexpected_values": True,
}


class SuiteError(ValueError):
    """The expectation suite file is not usable."""


@dataclass(frozen=True)
class Check:
    """A named row-level expectation: ``expectation`` is a class of ``gx.expectations``."""

    name: str
    expectation: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def get_suite_dict(checks: Sequence[Check], *, name: str = SUITE_NAME) -> dict[str, Any]:
    """The suite as Great Expectations serialises it (what the workspace file holds)."""
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"check names must be unique, got {names}")
    gx = _gx()
    suite = gx.ExpectationSuite(
        name=name,
        expectations=[
            getattr(gx.expectations, c.expectation)(
                **c.kwargs, meta={NAME_KEY: c.name, **({"reason": c.reason} if c.reason else {})}
            )
            for c in checks
        ],
    )
    data = suite.to_json_dict()
    data.pop("id", None)
    return data


def dump_suite(suite: Mapping[str, Any]) -> str:
    """Stable JSON text for the suite file (sorted keys diff well in git)."""
    return json.dumps(suite, indent=2, sort_keys=True) + "\n"


def load_suite(suite: Mapping[str, Any], *, required: Sequence[str] = ()) -> Any:
    """A ``gx.ExpectationSuite`` from its dict; every expectation must name its check.

    Raises
    ------
    SuiteError
        If an expectation is invalid, names no check, or a ``required`` check is missing.
        (Great Expectations itself only logs and drops an invalid expectation.)
    """
    gx = _gx()
    listed = list(suite.get("expectations") or [])
    loaded = gx.ExpectationSuite(**{**suite, "expectations": listed})
    if len(loaded.expectations) != len(listed):
        raise SuiteError(
            f"{len(listed) - len(loaded.expectations)} expectation(s) of suite "
            f"{suite.get('name')!r} are invalid (unknown type or arguments)"
        )
    names = [(e.meta or {}).get(NAME_KEY) for e in loaded.expectations]
    if any(not n for n in names):
        raise SuiteError(f"every expectation needs meta.{NAME_KEY} (its reason code)")
    if len(set(names)) != len(names):
        raise SuiteError(f"check names repeat in the suite: {names}")
    missing = [n for n in required if n not in names]
    if missing:
        raise SuiteError(f"the suite lacks the built-in checks {missing}")
    return loaded


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


def get_check_order(suite: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, reason sentence)`` of every check, in the suite's order (its priority)."""
    return [
        (e["meta"][NAME_KEY], e["meta"].get("reason", ""))
        for e in suite.get("expectations") or []
        if (e.get("meta") or {}).get(NAME_KEY)
    ]


def find_failing_rows(
    frame: pd.DataFrame,
    suite: Mapping[str, Any],
    *,
    parameters: Mapping[str, Any] | None = None,
    required: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Run the suite over ``frame``; the positions (0-based) of the rows failing each check.

    A null value never fails an in-set check (Great Expectations skips nulls there); missing
    values are the business of not-null checks.

    Raises
    ------
    SuiteError
        If the suite is unusable, or a check could not be evaluated (a missing column, say):
        Great Expectations only marks it unsuccessful, and a check that silently passes
        nothing is worse.
    """
    loaded = load_suite(suite, required=required)
    names = [e.meta[NAME_KEY] for e in loaded.expectations]
    if frame.empty:
        return {name: np.array([], dtype=int) for name in names}
    data = frame.reset_index(drop=True)  # index labels are then row positions
    batch = (
        _context()
        .data_sources.add_pandas("incoming")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": data})
    )
    result = batch.validate(
        loaded, result_format=RESULT_FORMAT, expectation_parameters=dict(parameters or {})
    )
    found: dict[str, np.ndarray] = {}
    for outcome in result.results:
        name = (outcome.expectation_config.meta or {}).get(NAME_KEY)
        info = outcome.exception_info or {}
        errors = [info] if "raised_exception" in info else list(info.values())
        for error in errors:
            if isinstance(error, dict) and error.get("raised_exception"):
                message = error.get("exception_message")
                raise SuiteError(f"check {name!r} could not run: {message}")
        positions = outcome.result.get("unexpected_index_list") or []
        found[name] = np.asarray(sorted(int(p) for p in positions), dtype=int)
    missing = set(names) - found.keys()
    if missing:
        raise SuiteError(f"checks {sorted(missing)} returned no result")
    return found
