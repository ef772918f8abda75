"""``alloop status``: where the workspace stands, read from its files and git."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from flows import versioning
from flows.workspace import WorkspaceVersion, get_alloop_version, get_workspace_version
from tasks import schema
from tasks.catalog import Catalog, round_name


@dataclass(frozen=True)
class Status:
    round_id: int
    committed_round: int
    tags: list[str]
    labels: pd.DataFrame  # counts by class and split
    metrics: dict[str, Any]
    validation: dict[str, Any]
    flags: dict[str, Any]
    batch_out: dict[str, Any]
    incoming_files: list[str]
    rejects: pd.DataFrame  # the last round's quarantined rows
    pool_items: int
    unlabeled_left: int  # pool items never issued
    workspace_version: WorkspaceVersion  # the alloop whose code the workspace holds
    running_version: str  # the alloop running this command


def get_status(catalog: Catalog) -> Status:
    root = catalog.root
    current = catalog.read_table(catalog.current, schema.CURRENT)
    labels = (
        current.pivot_table(
            index="label", columns="split", values="item_id", aggfunc="count", fill_value=0
        )
        if not current.empty
        else pd.DataFrame()
    )
    info = catalog.read_round()
    rejected_file = catalog.quarantine(info.round_id) / "rejected.csv"
    rejects = (
        pd.read_csv(rejected_file, dtype=str, keep_default_na=False)
        if info.round_id and rejected_file.exists()
        else pd.DataFrame()
    )
    batch: dict[str, Any] = {}
    issued = catalog.read_table(catalog.issued, schema.ISSUED)
    pool_ids = catalog.read_pool_ids()
    if info.round_id:
        outbox = catalog.outbox(info.round_id)
        mine = issued[issued["round_id"] == info.round_id]
        answered = set(current.loc[current["last_round"] > info.round_id, "item_id"])
        batch = {
            "round": round_name(info.round_id),
            "folder": str(outbox.relative_to(root)),
            "items": int(len(mine)),
            "by_reason": mine["reason"].value_counts().to_dict(),
            "answered": len(answered & set(mine["item_id"])),
        }
    incoming = (
        sorted(
            p.name
            for p in catalog.incoming_dir.glob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        if catalog.incoming_dir.exists()
        else []
    )
    return Status(
        round_id=info.round_id,
        committed_round=versioning.committed_round(root),
        tags=versioning.round_tags(root),
        labels=labels,
        metrics=catalog.read_json(catalog.metrics_file, default={}),
        validation=catalog.read_json(catalog.reports_dir / "validate.json", default={}),
        flags=catalog.read_json(catalog.reports_dir / "flag.json", default={}),
        batch_out=batch,
        incoming_files=incoming,
        rejects=rejects,
        pool_items=int(len(pool_ids)),
        unlabeled_left=int((~pool_ids.isin(set(issued["item_id"]))).sum()),
        workspace_version=get_workspace_version(root),
        running_version=get_alloop_version(),
    )
