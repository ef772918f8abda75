"""Run one stage outside Prefect: ``python -m flows.stage NAME``, as ``dvc.yaml`` does.

This is how ``dvc repro`` reproduces a round with no orchestrator: the same stage functions
that ``al_round`` wraps in Prefect tasks, on the workspace in the current directory.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flows import runtime
from flows.pipeline import STAGE_NAMES, get_stage_module, get_stage_run
from tasks.catalog import Catalog
from tasks.context import StageContext
from tasks.summaries import Summary


def run_stage(workspace: Path, name: str) -> Summary:
    catalog = Catalog(workspace.resolve())
    ctx = StageContext(catalog=catalog, params=catalog.read_params(), round=catalog.read_round())
    if ctx.round_id < 1:
        raise SystemExit(f"{catalog.round_file} names no round: run `alloop round` first")
    return get_stage_run(get_stage_module(name).STAGE)(ctx)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.stage", description=__doc__)
    parser.add_argument("stage", choices=STAGE_NAMES)
    parser.add_argument("--workspace", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runtime.configure(args.workspace)
    summary = run_stage(args.workspace, args.stage)
    logging.getLogger("alloop.stage").info("%s: %s", args.stage, summary)


if __name__ == "__main__":
    main()
