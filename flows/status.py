"""``alloop status``: where the workspace stands, read from its files and git."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flows import versioning
from flows.workspace import WorkspaceVersion, get_alloop_version, get_workspace_version
from tasks.catalog import Catalog, round_name
from tasks.summaries import SUMMARIES, RoundSummaries, read_round_summaries

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
    pool_ids = catalog.read_pool_ids()
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
        pool_items=int(len(pool_ids)),
        unlabeled_left=int((~pool_ids.isin(set(issued["item_id"]))).sum()),
        workspace_version=get_workspace_version(root),
        running_version=get_alloop_version(),
    )
