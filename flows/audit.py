"""The auditor's questions: who gave item X which label, when, in which round, from which file,
and what the pipeline did with it; per annotator, how much they labeled and how well they
agree; which labels were questioned and what became of them.

Tables are read from the workspace, or, with ``at="round-NNNN"``, from that round's commit
through DVC, without touching the workspace.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks import schema
from tasks.catalog import Catalog, get_artifact, get_audit_tables

#: The label tables, as the catalog declares them (``audited``).
TABLES = get_audit_tables()


class AuditError(ValueError):
    """The question cannot be answered as asked (an unknown round, item or revision)."""


def read_tables(root: Path, *, at: str | None = None) -> dict[str, pd.DataFrame]:
    """The label tables of the workspace now, or as the revision ``at`` recorded them."""
    if at is None:
        catalog = Catalog(root)
        return {name: catalog.load(name) for name in TABLES}
    import dvc.api
    from dvc.exceptions import PathMissingError
    from dvc.scm import RevError as DvcRevError
    from scmrepo.exceptions import RevError

    tables = {}
    for name, artifact in TABLES.items():
        table_schema = dict(artifact.table_schema or {})
        try:
            data = dvc.api.read(artifact.path, repo=str(root), rev=at, mode="rb")
        except (PathMissingError, FileNotFoundError):
            tables[name] = schema.empty(table_schema)
            continue
        except (RevError, DvcRevError) as exc:
            raise AuditError(f"no revision {at!r} in {root} (try a tag like round-0003)") from exc
        tables[name] = schema.conform(pd.read_parquet(io.BytesIO(data)), table_schema)
    return tables


def get_item_history(tables: dict[str, pd.DataFrame], item_id: str) -> pd.DataFrame:
    """Every event of one item in order: issued, labeled, rejected, flagged, resolved,
    consensus changes; with round, who, when, which file and what the pipeline did."""
    ledger = tables["ledger"]
    mine = ledger[ledger["item_id"] == item_id]
    issued = tables["issued"][tables["issued"]["item_id"] == item_id]
    if mine.empty and issued.empty:
        raise AuditError(f"item {item_id!r} has no events (never issued, never labeled)")
    sent = pd.DataFrame(
        {
            "round_id": issued["round_id"].to_numpy(),
            "event": "issued",
            "label": pd.NA,
            "annotator": pd.NA,
            "labeled_at": pd.NA,
            "source": [f"{get_artifact('outbox').path_of(r)}/" for r in issued["round_id"]],
            "outcome": issued["reason"].to_numpy(),
            "detail": [f"sent to annotators as a {s} item" for s in issued["split"]],
            "event_id": "",
        }
    )
    source = mine["source_file"].fillna("") + mine["source_row"].map(
        lambda r: f":{r}" if pd.notna(r) else ""
    )
    events = pd.DataFrame(
        {
            "round_id": mine["round_id"].to_numpy(),
            "event": mine["event"].to_numpy(),
            "label": mine["label"].to_numpy(),
            "annotator": mine["annotator"].to_numpy(),
            "labeled_at": mine["labeled_at"].to_numpy(),
            "source": source.to_numpy(),
            "outcome": mine["outcome"].to_numpy(),
            "detail": mine["detail"].to_numpy(),
            "event_id": mine["event_id"].to_numpy(),
        }
    )
    # within a round: what was issued came before what came back
    history = pd.concat([events, sent], ignore_index=True)
    history["_sent_first"] = history["event"] != "issued"
    history = history.sort_values(["round_id", "_sent_first", "event_id"], kind="stable")
    return history.drop(columns="_sent_first").reset_index(drop=True)


@dataclass(frozen=True)
class Audit:
    events: pd.DataFrame
    annotators: pd.DataFrame
    flags: pd.DataFrame


def get_audit(
    tables: dict[str, pd.DataFrame], *, round_id: int | None = None, annotator: str | None = None
) -> Audit:
    """Label events, per-annotator statistics and the fate of every flag, optionally for one
    round and/or one annotator."""
    events = tables["ledger"]
    if round_id is not None:
        if round_id not in set(events["round_id"]) and round_id not in set(
            tables["issued"]["round_id"]
        ):
            raise AuditError(f"round {round_id} has no events in this workspace")
        events = events[events["round_id"] == round_id]
    if annotator is not None:
        events = events[events["annotator"] == annotator]
    counts = (
        events[events["annotator"].notna()]
        .pivot_table(
            index="annotator", columns="event", values="event_id", aggfunc="count", fill_value=0
        )
        .reset_index()
    )
    counts.columns.name = None
    stats = tables["annotators"]
    if not stats.empty:
        latest = stats[stats["round_id"] == stats["round_id"].max()]
        counts = counts.merge(
            latest[["annotator", "agreement", "quality", "method"]], on="annotator", how="left"
        )
    flags = tables["flags"]
    if round_id is not None:
        flags = flags[flags["round_id"] == round_id]
    ledger = tables["ledger"]
    resolved = ledger[ledger["event"] == "resolved"].drop_duplicates("item_id", keep="last")
    fate = flags.merge(
        resolved[["item_id", "round_id", "outcome"]].rename(
            columns={"round_id": "resolved_in_round", "outcome": "resolution"}
        ),
        on="item_id",
        how="left",
    )
    fate["resolution"] = fate["resolution"].fillna("open")
    if annotator is not None:
        fate = fate[fate["item_id"].isin(set(events["item_id"]))]
    return Audit(events.reset_index(drop=True), counts, fate.reset_index(drop=True))
