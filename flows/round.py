"""The ``al_round`` flow: the nine stages of a round, then the round is recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import labelstudio, tracking, versioning
from flows.pipeline import STAGES, get_stage_run
from flows.progress import RoundProgress
from flows.recovery import check_no_interrupted_rollback, get_idle_reason, repair_after_crash
from flows.workspace import WorkspaceError, code_drift, hold_workspace
from tasks.catalog import Catalog, RoundInfo, round_name
from tasks.context import StageContext, StageSpec
from tasks.executor import get_executor_overrides
from tasks.faults import crash_point
from tasks.summaries import RoundSummaries, Summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    round_id: int
    commit: str
    run_id: str
    summaries: RoundSummaries
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


def get_commit_message(round_id: int, s: RoundSummaries) -> str:
    """The round's commit message: a headline an operator reads in ``git log --oneline``."""
    v, m, f, e, sel = s.validate, s.merge, s.flag, s.evaluate, s.select
    f1 = e.candidate_macro_f1 if e is not None else None
    model = (
        f"macro-F1 {f1:.4f}" + (" (promoted)" if e.promoted else " (champion kept)")
        if e is not None and isinstance(f1, float)
        else "no evaluation"
    )
    headline = (
        f"{round_name(round_id)}: +{v.rows_accepted if v else 0} labels "
        f"({v.rows_quarantined if v else 0} quarantined), {f.flagged if f else 0} flagged, "
        f"{model}, {sel.batch_size if sel else 0} items out"
    )
    body = []
    if m is not None:
        body.append(
            f"labeled items: {m.labeled_items} (train {m.train_items}, test {m.test_items}); "
            f"ledger events: {f.ledger_events if f else 0}"
        )
    if e is not None:
        body.append(f"gate: {e.gate}")
    if s.health is not None:
        body.extend(s.health.describe())
    if sel is not None:
        body.append("batch: " + ", ".join(f"{k} {n}" for k, n in sel.parts.items()))
        if sel.unlabeled_left == 0:
            body.append("the pool is exhausted: every item has been issued")
    return headline + "\n\n" + "\n".join(body) + "\n"


def get_flow_run_name() -> str:
    """Prefect's name for a round's flow run: the workspace folder and the round it runs
    (a round that resumes keeps its number), so that Prefect's UI tells rounds apart."""
    from prefect.runtime import flow_run

    root = Path(flow_run.parameters["workspace"]).resolve()
    catalog = Catalog(root)
    committed = versioning.committed_round(root)
    written = catalog.read_round().round_id
    round_id = written if written > committed else committed + 1
    return f"{root.name}-{round_name(round_id)}"


def run_stage(spec: StageSpec, ctx: StageContext) -> Summary:
    """One stage as a Prefect task.

    No Prefect caching: a stage's real output is files, and after a rollback a cached task
    would be skipped while its files are stale. DVC's hashes decide what is stale. No retries:
    a stage only touches local files, and a failure there is a bug to see, not to repeat.
    """
    stage = task(name=spec.name, cache_policy=NO_CACHE, persist_result=False)
    return stage(get_stage_run(spec))(ctx)


@flow(
    name="al_round",
    flow_run_name=get_flow_run_name,
    persist_result=False,
    validate_parameters=True,
)
def al_round(
    workspace: str,
    push: bool = True,
    started_at: str | None = None,
    force: bool = False,
    rerun_of: str | None = None,
    labelstudio_pulled: bool = False,
    dask_address: str | None = None,
) -> RoundResult:
    """One active-learning round in ``workspace``, recorded as commit and tag ``round-NNNN``.

    ``started_at`` (ISO 8601) fixes the clock of a new round (default: now); a resumed round
    keeps the clock it started with. A round with nothing new to work on is skipped unless
    ``force`` (see :func:`get_idle_reason`); the log says which. ``rerun_of`` is set by
    ``alloop rerun``: ``workspace`` is then a worktree of that workspace, the round is committed
    without a tag and its MLflow run goes to that workspace's store. ``labelstudio_pulled``:
    the caller has just pulled Label Studio's answers (``alloop round``, to know whether the
    night has work); the round uses that pull instead of making another. ``dask_address``: score
    the pool on the workers of the Dask scheduler there, for this round (``score.executor`` and
    ``score.dask_address`` of params.yaml say it for every round); the scores are the same.
    """
    logger = get_run_logger()
    catalog = Catalog(Path(workspace).resolve())
    with hold_workspace(catalog.root, "round"):
        drift = code_drift(catalog.root)
        if drift:
            raise WorkspaceError(
                f"the workspace's code differs from this alloop's in {drift[:5]}: dvc.lock "
                "would record code that did not produce the outputs. Run `alloop upgrade -w "
                f"{catalog.root}` to move the workspace to this alloop's code (its own commit), "
                "or run the workspace's own code (`cd WORKSPACE && python -m flows.cli round`)."
            )
        check_no_interrupted_rollback(catalog)
        params = catalog.read_params(get_executor_overrides(dask_address))
        now = datetime.fromisoformat(started_at) if started_at else datetime.now(UTC)
        if now.tzinfo is None:
            raise WorkspaceError(f"started_at {started_at!r} needs a time zone (e.g. +00:00)")
        repair_after_crash(catalog)
        # Label Studio's new answers land in data/incoming first: they are what a round has
        # to work on (never in a rerun, which replays a recorded round)
        live = params.labelstudio.connected and not rerun_of
        sync = (
            (
                labelstudio.read_record(catalog)
                if labelstudio_pulled
                else labelstudio.pull_into_incoming(catalog, params)
            )
            if live
            else None
        )
        idle = None if force else get_idle_reason(catalog)
        if idle is not None:
            logger.info(idle)
            committed = versioning.committed_round(catalog.root)
            head = versioning.head_commit(catalog.root)
            return RoundResult(committed, head, "", RoundSummaries(), False, idle)
        info, resumed = begin_round(catalog, now)
        if sync is not None:  # the report says what the pull brought, or why it failed
            labelstudio.save_record(catalog, sync)
        logger.info("%s %s", "resuming" if resumed else "starting", round_name(info.round_id))
        ctx = StageContext(catalog=catalog, params=params, round=info)
        progress = RoundProgress.open(catalog, info, resumed=resumed)
        summaries: dict[str, Summary] = {}
        skipping = resumed
        for spec in STAGES:
            crash_point(f"before:{spec.name}")
            done = progress.get_completed(catalog.root, spec) if skipping else None
            if done is not None:
                summaries[spec.name] = done
                logger.info("%s: completed before the interruption; skipped", spec.name)
                continue
            skipping = False  # a stage that runs again may change what every later one reads
            summaries[spec.name] = progress.record(catalog.root, spec, run_stage(spec, ctx))
            logger.info("%s: %s", spec.name, summaries[spec.name])
        round_summaries = RoundSummaries.of(summaries)
        if sync is not None:
            sync = labelstudio.push(catalog, params, sync, info.round_id)
            labelstudio.save_record(catalog, sync)
        crash_point("before:mlflow")
        store = Path(rerun_of) if rerun_of else None
        run_id = tracking.log_round(catalog, info.round_id, params, round_summaries, rerun_of=store)
        crash_point("before:record")
        commit = versioning.record_commit(
            catalog.root,
            get_commit_message(info.round_id, round_summaries),
            tag=None if rerun_of else round_name(info.round_id),
            push=push,
        )
        crash_point("before:mlflow-tag")
        tracking.tag_commit(store or catalog.root, run_id, commit)
    return RoundResult(info.round_id, commit, run_id, round_summaries, resumed)
