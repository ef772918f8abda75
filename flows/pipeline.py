"""The stage graph, declared once: the order ``al_round`` runs the stages and what ``dvc.yaml``
holds, both derived from the stage specs (``STAGE`` in each ``tasks`` module) and the catalog
(``tasks/catalog.py``), which says what each artifact is and how DVC versions it."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import yaml

from tasks import (
    evaluate,
    export,
    features,
    flag,
    health,
    merge,
    score,
    selection,
    train,
    validate,
)
from tasks.catalog import ARTIFACTS, ROUND_FILE
from tasks.context import StageContext, StageSpec
from tasks.summaries import Summary

#: The stage modules in the order a round runs them. Each has ``STAGE`` and ``run(ctx)``.
STAGE_MODULES: tuple[ModuleType, ...] = (
    validate,
    features,
    merge,
    flag,
    train,
    evaluate,
    health,
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


def get_stage_run(spec: StageSpec) -> Callable[[StageContext], Summary]:
    """The stage's ``run``, given a context that checks every load and save against ``spec``."""
    run = get_stage_module(spec.name).run

    def run_stage(ctx: StageContext) -> Summary:
        return run(ctx.for_stage(spec))

    run_stage.__name__ = run_stage.__qualname__ = spec.name
    return run_stage


def get_stage_outputs(spec: StageSpec) -> tuple[str, ...]:
    """The paths a stage writes, as DVC tracks them (a per-round file: its whole folder)."""
    return tuple(dict.fromkeys(ARTIFACTS[name].tracked_path for name in spec.writes))


def get_writer(name: str) -> StageSpec | None:
    """The stage that writes artifact ``name`` (None for the round's inputs)."""
    return next((spec for spec in STAGES if name in spec.writes), None)


def _render_stage(spec: StageSpec) -> dict[str, Any]:
    deps = [*spec.source_files]
    deps += dict.fromkeys(ARTIFACTS[name].tracked_path for name in spec.reads)
    entry: dict[str, Any] = {"cmd": f"python -m flows.stage {spec.name}"}
    if spec.reads_before:
        entry["desc"] = (
            f"also reads what earlier rounds left: {', '.join(spec.reads_before)} "
            "(declared in tasks/catalog.py; not deps, which would make the graph a cycle)"
        )
    entry["deps"] = deps
    entry["params"] = [*spec.params, {ROUND_FILE: list(ROUND_PARAMS)}]
    outs: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    for name in spec.writes:
        artifact = ARTIFACTS[name]
        path = artifact.tracked_path
        # what the stage reads back in a later round must survive `dvc repro`, which deletes
        # a stage's outputs before it runs
        persist = artifact.role == "persist" or spec.name in artifact.read_later_by
        if artifact.role in ("out", "persist"):
            outs[path] = {"persist": True} if persist else None
        elif artifact.role == "metric":
            metrics[path] = {"cache": False, **({"persist": True} if persist else {})}
        elif artifact.role == "plot":
            plots[path] = {"cache": False, **({"persist": True} if persist else {})}
            plots[path].update(artifact.plot)
        else:
            raise ValueError(f"stage {spec.name!r} writes {name!r}, a {artifact.role} artifact")
    if outs:
        entry["outs"] = [path if opts is None else {path: opts} for path, opts in outs.items()]
    if metrics:
        entry["metrics"] = [{path: opts} for path, opts in metrics.items()]
    if plots:
        entry["plots"] = [{path: opts} for path, opts in plots.items()]
    return entry


def render_dvc_stages() -> dict[str, Any]:
    """``dvc.yaml``'s content as the stage specs and the catalog declare it."""
    return {"stages": {spec.name: _render_stage(spec) for spec in STAGES}}


def dump_dvc_yaml() -> str:
    """The text of ``dvc.yaml``: the rendered stages under a header saying where they come from."""
    header = (
        "# Generated from the stage specs (STAGE in tasks/*.py) and the catalog\n"
        "# (tasks/catalog.py); tests/test_pipeline.py keeps them in step.\n"
        "# Regenerate with: alloop pipeline --write\n"
    )
    return header + yaml.safe_dump(render_dvc_stages(), sort_keys=False)


#: The generated part of docs/architecture.md lies between these lines.
DOC_BEGIN = "<!-- generated from tasks/catalog.py and the stage specs: python -m flows.pipeline -->"
DOC_END = "<!-- end of generated part -->"


def render_architecture_tables() -> str:
    """Markdown tables of what each stage reads and writes, and of every artifact."""
    lines = [
        "| stage | reads (this round) | reads (as earlier rounds left them) | writes |",
        "|---|---|---|---|",
    ]
    for spec in STAGES:
        lines.append(
            f"| {spec.name} | {', '.join(spec.reads)} | {', '.join(spec.reads_before) or '-'} "
            f"| {', '.join(spec.writes)} |"
        )
    lines += [
        "",
        "| artifact | path | kind | versioned as | append-only | written by | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, artifact in ARTIFACTS.items():
        writer = get_writer(name)
        lines.append(
            f"| {name} | `{artifact.path}` | {artifact.kind} | {artifact.role} "
            f"| {'yes' if artifact.append_only else ''} | {writer.name if writer else '-'} "
            f"| {artifact.doc} |"
        )
    return "\n".join(lines) + "\n"


def render_architecture_doc(text: str) -> str:
    """``text`` (docs/architecture.md) with its generated part brought up to date."""
    head, _, rest = text.partition(DOC_BEGIN + "\n")
    _, _, tail = rest.partition(DOC_END)
    return f"{head}{DOC_BEGIN}\n{render_architecture_tables()}{DOC_END}{tail}"


if __name__ == "__main__":
    # python -m flows.pipeline: bring docs/architecture.md's generated part up to date
    import sys
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
    doc.write_text(render_architecture_doc(doc.read_text()))
    sys.stdout.write(f"wrote the generated part of {doc}\n")
