"""The stage graph, declared once: the order ``al_round`` runs and what ``dvc.yaml`` holds."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import yaml

from tasks import evaluate, export, flag, merge, score, selection, train, validate
from tasks.catalog import ROUND_FILE
from tasks.context import StageSpec

#: The stage modules in the order a round runs them. Each has ``STAGE`` and a task ``run``.
STAGE_MODULES: tuple[ModuleType, ...] = (
    validate,
    merge,
    flag,
    train,
    evaluate,
    score,
    selection,
    export,
)
STAGES: tuple[StageSpec, ...] = tuple(module.STAGE for module in STAGE_MODULES)
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in STAGES)

#: Every stage depends on the round's id and clock, so a new round re-runs every stage.
ROUND_PARAMS = ("round_id", "started_at")


def get_stage_module(name: str) -> ModuleType:
    for module in STAGE_MODULES:
        if module.STAGE.name == name:
            return module
    raise ValueError(f"unknown stage {name!r}; stages are {list(STAGE_NAMES)}")


def render_dvc_stages() -> dict[str, Any]:
    """``dvc.yaml``'s content as the stage specs declare it."""
    stages: dict[str, Any] = {}
    for spec in STAGES:
        entry: dict[str, Any] = {
            "cmd": f"python -m flows.stage {spec.name}",
            "deps": list(spec.deps),
            "params": [*spec.params, {ROUND_FILE: list(ROUND_PARAMS)}],
        }
        outs: list[Any] = list(spec.outs)
        outs += [{path: {"persist": True}} for path in spec.persist]
        if outs:
            entry["outs"] = outs
        if spec.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in spec.metrics]
        if spec.plots:
            entry["plots"] = [{path: {"cache": False, **opts}} for path, opts in spec.plots.items()]
        stages[spec.name] = entry
    return {"stages": stages}


def dump_dvc_yaml() -> str:
    """The text of ``dvc.yaml``: the rendered stages under a header saying where they come from."""
    header = (
        "# Generated from the stage specs (STAGE in tasks/*.py); tests/test_pipeline.py keeps\n"
        "# the two in step. Regenerate with: alloop pipeline --write\n"
    )
    return header + yaml.safe_dump(render_dvc_stages(), sort_keys=False)
