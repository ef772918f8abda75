"""The ``al_round`` flow: the eight stages of a round, then the round is recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import tracking, versioning
from flows.pipeline import STAGE_MODULES
from flows.progress import RoundProgress
from flows.recovery import check_no_interrupted_rollback, get_idle_reason, repair_after_crash
from flows.workspace import WorkspaceError, code_drift, hold_workspace
from tasks.catalog import Catalog, RoundInfo, round_name
from tasks.context import StageContext
from tasks.faults import crash_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    round_id: int
    commit: str
    run_id: str
    summaries: dict[str, dict[str, Any]]
    resumed: bool
    #: why the round did not run (nothing new to work on), or None when it ran
    skipped: str | None = None


def begin_round(catalog: Catalog, now: datetime) -> tuple[RoundInfo, bool]:
    """The round to run: a round that started and was never committed is resumed with its own
    clock; otherwise the next round starts now. Returns the round and whether it resumes.
    Expects :func:`repair_after_crash` to have run (``al_round`` does it first)."""
    committed = versioning.committed_round(catalog.root)
    written = catalog.read_round()
    if written.round_id > committed:
        return written, True
    info = RoundInfo(round_id=committed + 1, started_at=now.isoformat(timespec="microseconds"))
    catalog.write_round(info)
    return info, False


def get_commit_message(round_id: int, s: dict[str, dict[str, Any]]) -> str:
    v, m, f = s.get("validate", {}), s.get("merge", {}), s.get("flag", {})
    e, sel = s.get("evaluate", {}), s.get("select", {})
    f1 = (e.get("candidate") or {}).get("macro_f1")
    model = (
        f"macro-F1 {f1:.4f}" + (" (promoted)" if e.get("promoted") else " (champion kept)")
        if isinstance(f1, float)
        else "no evaluation"
    )
    headline = (
        f"{round_name(round_id)}: +{v.get('rows_accepted', 0)} labels "
        f"({v.get('rows_quarantined', 0)} quarantined), {f.get('flagged', 0)} flagged, "
        f"{model}, {sel.get('batch_size', 0)} items out"
    )
    body = [
        f"labeled items: {m.get('labeled_items', 0)} (train {m.get('train_items', 0)}, "
        f"test {m.get('test_items', 0)}); ledger events: {f.get('ledger_events', 0)}",
        f"gate: {e.get('gate', '')}",
        "batch: "
        + ", ".join(f"{k[2:]} {v}" for k, v in sorted(sel.items()) if k.startswith("n_") and v),
    ]
    return headline + "\n\n" + "\n".join(body) + "\n"


@flow(name="al_round", persist_result=False, validate_parameters=True)
def al_round(
    workspace: str,
    push: bool = True,
    started_at: str | None = None,
    force: bool = False,
    rerun_of: str | None = None,
) -> RoundResult:
    """One active-learning round in ``workspace``, recorded as commit and tag ``round-NNNN``.

    ``started_at`` (ISO 8601) fixes the clock of a new round (default: now); a resumed round
    keeps the clock it started with. A round with nothing new to work on is skipped unless
    ``force`` (see :func:`get_idle_reason`); the log says which. ``rerun_of`` is set by
    ``alloop rerun``: ``workspace`` is then a worktree of that workspace, the round is committed
    without a tag and its MLflow run goes to that workspace's store.
    """
    logger = get_run_logger()
    catalog = Catalog(Path(workspace).resolve())
    with hold_workspace(catalog.root, "round"):
        drift = code_drift(catalog.root)
        if drift:
            raise WorkspaceError(
                f"the workspace's code differs from this alloop's in {drift[:5]}: dvc.lock "
                "would record code that did not produce the outputs. Run the workspace's own "
                "code (`cd WORKSPACE && python -m flows.cli round`) or restore those files."
            )
        check_no_interrupted_rollback(catalog)
        params = catalog.read_params()
        now = datetime.fromisoformat(started_at) if started_at else datetime.now(UTC)
        if now.tzinfo is None:
            raise WorkspaceError(f"started_at {started_at!r} needs a time zone (e.g. +00:00)")
        repair_after_crash(catalog)
        idle = None if force else get_idle_reason(catalog)
        if idle is not None:
            logger.info(idle)
            committed = versioning.committed_round(catalog.root)
            return RoundResult(committed, versioning.head_commit(catalog.root), "", {}, False, idle)
        info, resumed = begin_round(catalog, now)
        logger.info("%s %s", "resuming" if resumed else "starting", round_name(info.round_id))
        ctx = StageContext(catalog=catalog, params=params, round=info)
        progress = RoundProgress.open(catalog, info, resumed=resumed)
        summaries: dict[str, dict[str, Any]] = {}
        skipping = resumed
        for module in STAGE_MODULES:
            spec = module.STAGE
            crash_point(f"before:{spec.name}")
            done = progress.get_completed(catalog.root, spec) if skipping else None
            if done is not None:
                summaries[spec.name] = done
                logger.info("%s: completed before the interruption; skipped", spec.name)
                continue
            skipping = False  # a stage that runs again may change what every later one reads
            summaries[spec.name] = progress.record(catalog.root, spec, module.run(ctx))
            logger.info("%s: %s", spec.name, summaries[spec.name])
        crash_point("before:mlflow")
        store = Path(rerun_of) if rerun_of else None
        run_id = tracking.log_round(catalog, info.round_id, params, summaries, rerun_of=store)
        crash_point("before:record")
        commit = versioning.record_commit(
            catalog.root,
            get_commit_message(info.round_id, summaries),
            tag=None if rerun_of else round_name(info.round_id),
            push=push,
        )
        crash_point("before:mlflow-tag")
        tracking.tag_commit(store or catalog.root, run_id, commit)
    return RoundResult(info.round_id, commit, run_id, summaries, resumed)
