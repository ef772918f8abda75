"""``alloop status``: where the workspace stands, read from its files and git."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from flows import versioning
from flows.workspace import WorkspaceVersion, get_alloop_version, get_workspace_version
from tasks.catalog import Catalog, round_name
from tasks.params import StopParams
from tasks.summaries import SUMMARIES, HealthSummary, RoundSummaries, read_round_summaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    round_id: int
    committed_round: int
    tags: list[str]
    labels: pd.DataFrame  # counts by class and split
    #: the last round's stage summaries, as its reports hold them
    summaries: RoundSummaries
    batch_out: dict[str, Any]
    incoming_files: list[str]
    rejects: pd.DataFrame  # the last round's quarantined rows
    pool_items: int
    unlabeled_left: int  # pool items never issued
    workspace_version: WorkspaceVersion  # the alloop whose code the workspace holds
    running_version: str  # the alloop running this command
    #: the stop signal's params (None: params.yaml unreadable; status still answers)
    stop: StopParams | None = None


def read_summaries(catalog: Catalog) -> RoundSummaries:
    """The last round's summaries; a report this alloop cannot read (written by another
    version) is left out, with a line in the log, rather than failing ``status``."""
    found = {}
    for stage in SUMMARIES:
        try:
            summary = getattr(read_round_summaries(catalog.load, stages=(stage,)), stage)
        except ValueError as exc:
            log.info("status: %s", exc)
            continue
        if summary is not None:
            found[stage] = summary
    return RoundSummaries.of(found)


FACTOR_NAMES = {
    "balance": "balance",
    "coverage": "coverage",
    "all_labels": "all labels",
    "worst_labels": "worst labels",
}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def get_rating_line(health: HealthSummary | None, stop: StopParams | None) -> str:
    """The line ``alloop status`` leads with: the model rating and its factors, and the
    stop advice with its evidence, e.g. ``model rating 72/100 (balance 55, coverage 80, all
    labels 85, worst labels 40: 'sleep-stage-1'); stop: go on (kappa 0.93, 3-round mean 0.91
    < 0.99)``."""
    if health is None:
        return (
            "model rating: none yet (no health report: the next round of this alloop writes "
            "one); stop: no signal yet"
        )
    if health.rating is None:
        rating = f"model rating: not rated ({health.not_rated_because or 'no reason given'})"
    else:
        factors = []
        for name, value in health.factors.items():
            text = f"{FACTOR_NAMES[name]} {_score(value)}"
            if name == "worst_labels" and health.worst_classes:
                text += ": " + ", ".join(repr(c) for c in list(health.worst_classes)[:3])
            factors.append(text)
        rating = f"model rating {health.rating:.0f}/100 ({', '.join(factors)})"
    return f"{rating}; stop: {get_stop_words(health, stop)}"


def get_stop_words(health: HealthSummary, stop: StopParams | None) -> str:
    """The stop advice and its evidence: ``go on (kappa 0.93, 3-round mean 0.91 < 0.99)``."""
    if health.kappa is None:
        return f"no signal yet ({health.stop_reason or 'it compares two rounds of models'})"
    advice = "advised" if health.stop_advised else "go on"
    window = f"{stop.window}-round mean" if stop is not None else "mean"
    if health.kappa_mean is None:
        mean = f"{window} not yet: {health.stop_reason}" if health.stop_reason else ""
    else:
        mean = f"{window} {health.kappa_mean:.2f}"
        if stop is not None:
            mean += f" {'>=' if health.kappa_mean >= stop.kappa else '<'} {stop.kappa:g}"
    return f"{advice} (kappa {health.kappa:.2f}" + (f", {mean})" if mean else ")")


def get_drift_lines(health: HealthSummary | None) -> list[str]:
    """A line for a drift warning on the items that arrived this round (none without one)."""
    if health is None or not health.drift_warning:
        return []
    evidence = []
    if health.drift_auc is not None:
        p_value = f", p {health.drift_p_value:.2g}" if health.drift_p_value is not None else ""
        evidence.append(f"classifier AUC {health.drift_auc:.2f}{p_value}")
    if health.drift_features:
        evidence.append("shifted features: " + ", ".join(health.drift_features))
    if health.drift_prediction_shift:
        evidence.append("the model's predictions shifted")
    detail = f" ({'; '.join(evidence)})" if evidence else ""
    return [
        f"drift warning: the {health.drift_new_items} items that arrived differ from the "
        f"pool{detail}; the round page (alloop report) has the table"
    ]


def get_batch_rounds(issued: pd.DataFrame, ledger: pd.DataFrame, *, last: int) -> pd.DataFrame:
    """Per round of the last ``last`` that issued a batch: the items ``out``, those
    ``answered`` (a label event in a later round) and those only ``skipped`` (a skip event
    and no label), whatever carried the answers (Label Studio or files)."""
    if issued.empty:
        return pd.DataFrame(columns=["round", "out", "answered", "skipped"])
    events = ledger[["round_id", "event", "item_id"]] if not ledger.empty else ledger
    rows = []
    for round_id in sorted(issued["round_id"].unique())[-last:]:
        items = set(issued.loc[issued["round_id"] == round_id, "item_id"])
        later = events[events["round_id"] > round_id] if not events.empty else events
        answered = (
            items & set(later.loc[later["event"].isin(["label", "relabel"]), "item_id"])
            if not later.empty
            else set()
        )
        skipped = (
            (items & set(later.loc[later["event"] == "skip", "item_id"])) - answered
            if not later.empty
            else set()
        )
        rows.append(
            {
                "round": round_name(int(round_id)),
                "out": len(items),
                "answered": len(answered),
                "skipped": len(skipped),
            }
        )
    return pd.DataFrame(rows)


def get_labelstudio_lines(catalog: Catalog) -> list[str]:
    """What the Label Studio connection did last: the pull, the push, the batches it still
    owes the project. Empty when the workspace is not connected."""
    try:
        params = catalog.read_params()
    except Exception:  # noqa: BLE001 (status answers even with a broken params.yaml)
        return []
    if not params.labelstudio.connected:
        return []
    from flows import labelstudio

    ls = params.labelstudio
    record = labelstudio.read_record(catalog)
    lines = [f"Label Studio: project {ls.project_id} at {ls.url}"]
    if record.pull_ok is not None:
        what = (
            f"{record.pulled_tasks} tasks with new answers into {', '.join(record.pull_files)}"
            if record.pull_files
            else "nothing new"
        )
        lines.append(
            f"  last pull {record.pulled_at}: "
            + (what if record.pull_ok else f"FAILED: {record.pull_error}")
        )
    if record.push_ok is not None:
        sent = ", ".join(
            f"{name}: {c['sent']} sent, {c['already_there']} already there"
            for name, c in record.pushed.items()
        )
        lines.append(
            f"  last push {record.pushed_at}: "
            + ((sent or "nothing to send") if record.push_ok else f"FAILED: {record.push_error}")
        )
    if record.unpushed_rounds:
        names = ", ".join(round_name(r) for r in record.unpushed_rounds)
        lines.append(
            f"  not yet in the project: the batch of {names} (in its outbox; the next round "
            "retries)"
        )
    return lines


def _read_stop_params(catalog: Catalog) -> StopParams | None:
    try:
        return catalog.read_params().stop
    except (ValueError, yaml.YAMLError) as exc:  # status answers even with a broken params file
        log.info("status: params.yaml: %s", exc)
        return None


def get_status(catalog: Catalog) -> Status:
    root = catalog.root
    current = catalog.load("current")
    labels = (
        current.pivot_table(
            index="label", columns="split", values="item_id", aggfunc="count", fill_value=0
        )
        if not current.empty
        else pd.DataFrame()
    )
    info = catalog.read_round()
    rejected_file = catalog.path("quarantine", info.round_id) if info.round_id else None
    rejects = (
        pd.read_csv(rejected_file, dtype=str, keep_default_na=False)
        if rejected_file is not None and rejected_file.exists()
        else pd.DataFrame()
    )
    batch: dict[str, Any] = {}
    issued = catalog.load("issued")
    # counted from the footers and the issued ids found in the pool, not from every pool id
    pool_items = sum(catalog.pool_partition_sizes().values())
    issued_in_pool = catalog.read_pool_ids_among(issued["item_id"].drop_duplicates())
    if info.round_id:
        outbox = catalog.path("outbox", info.round_id)
        mine = issued[issued["round_id"] == info.round_id]
        answered = set(current.loc[current["last_round"] > info.round_id, "item_id"])
        batch = {
            "round": round_name(info.round_id),
            "folder": str(outbox.relative_to(root)),
            "items": int(len(mine)),
            "by_reason": mine["reason"].value_counts().to_dict(),
            "answered": len(answered & set(mine["item_id"])),
        }
    return Status(
        round_id=info.round_id,
        committed_round=versioning.committed_round(root),
        tags=versioning.round_tags(root),
        labels=labels,
        summaries=read_summaries(catalog),
        batch_out=batch,
        incoming_files=catalog.list_incoming(),
        rejects=rejects,
        pool_items=int(pool_items),
        unlabeled_left=int(pool_items - len(issued_in_pool)),
        workspace_version=get_workspace_version(root),
        running_version=get_alloop_version(),
        stop=_read_stop_params(catalog),
    )
