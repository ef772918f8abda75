"""``alloop rollback N``: make round N's state current again, as a new commit on top of history.

Restored from round N: the pool, the resolved labels, flags and annotator statistics, the
candidate and champion models, the interim tables and reports, ``params.yaml`` and the
expectation suite. Kept as they are, because they record what happened and are append-only:
the ledger (which gets a ``rollback`` event; merge stops counting the undone rounds' events),
the issued items (a batch that went out stays out, so late answers to it are still accepted),
and the archive, quarantine and outbox folders of every round. Also kept: the code (``flows/``,
``tasks/``, ``dvc.yaml``), the round counter (the next round is the one after the last, so no
round id is ever reused), and every file waiting in ``data/incoming/``.

The rollback is recorded as a commit tagged ``rollback-MMMM-to-NNNN`` and the MLflow champion
alias moves to the model that was champion in round N. A rollback interrupted half-way leaves a
marker that stops every round until ``alloop rollback N`` is run again (it is idempotent).
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow

from flows import tracking, versioning
from flows.audit import read_tables
from flows.recovery import check_no_interrupted_rollback, repair_after_crash, rollback_marker
from flows.workspace import WorkspaceError, hold_workspace
from tasks.catalog import Catalog, get_git_state, get_restored_outs, round_name, write_json
from tasks.ledger import get_rollback_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackResult:
    to_round: int
    from_round: int
    commit: str
    tag: str
    champion_round: int | None
    champion_version: str | None


def _free_tag(root: Path, base: str) -> str:
    existing = set(versioning.git(root, "tag", "--list", f"{base}*").split())
    if base not in existing:
        return base
    k = 2
    while f"{base}-{k}" in existing:
        k += 1
    return f"{base}-{k}"


@flow(name="al_rollback", persist_result=False, validate_parameters=True)
def al_rollback(workspace: str, to_round: int, push: bool = True) -> RollbackResult:
    """Make round ``to_round``'s state current again in ``workspace`` (see the module doc)."""
    catalog = Catalog(Path(workspace).resolve())
    root = catalog.root
    with hold_workspace(root, "rollback"):
        repair_after_crash(catalog)
        marker = rollback_marker(catalog)
        pending = json.loads(marker.read_text()) if marker.exists() else None
        if pending is not None and pending.get("to_round") != to_round:
            check_no_interrupted_rollback(catalog)
        committed = versioning.committed_round(root)
        target = round_name(to_round)
        subject = f"rollback to {target} (from {round_name(committed)})"
        if pending is not None and versioning.git(root, "log", "-1", "--format=%s").startswith(
            subject
        ):
            # interrupted after its commit: only the tag and the champion alias may be missing
            return _finish(catalog, committed, to_round)
        if catalog.read_round().round_id > committed:
            raise WorkspaceError(
                f"{round_name(catalog.read_round().round_id)} was interrupted and is not "
                "recorded: run `alloop round` to finish it, then roll back"
            )
        if committed < 2:
            raise WorkspaceError(
                f"nothing to roll back to: {committed} round(s) recorded, and a rollback makes "
                "an earlier round's state current again"
            )
        if not 1 <= to_round < committed:
            raise WorkspaceError(
                f"can only roll back to a recorded round before the last one "
                f"(1 to {committed - 1}), not {to_round}"
            )
        if versioning.tag_commit_of(root, target) is None:
            raise WorkspaceError(f"no tag {target} in {root}")
        changed = versioning.git(root, "status", "--porcelain", "--untracked-files=no")
        if changed and pending is None:
            raise WorkspaceError(
                f"the workspace has changes that are not recorded:\n{changed}\n"
                "commit or restore them (`git status`) before a rollback"
            )
        write_json(marker, {"to_round": to_round, "from_round": committed})

        # the ledger now and at the target, both read from git + DVC, not from the workspace,
        # so that running the rollback again after an interruption appends one event only
        ledger = read_tables(root, at="HEAD")["ledger"]
        ledger_then = read_tables(root, at=target)["ledger"]
        versioning.restore_outs(
            root, rev=target, outs=list(get_restored_outs()), git_paths=get_git_state()
        )
        event = get_rollback_event(
            ledger,
            ledger_at_target=ledger_then,
            from_round=committed,
            to_round=to_round,
            operator=f"{getpass.getuser()}@{socket.gethostname()}",
            at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        catalog.save("ledger", pd.concat([ledger, event], ignore_index=True))
        undone = json.loads(event["detail"].iloc[0])["inactive_rounds"]
        message = (
            f"{subject}: its pool, labels, flags and models are current again\n\n"
            f"rounds whose labels no longer count: {undone}; the ledger, issued items, "
            "archive, quarantine and outbox are kept; the next round is "
            f"{round_name(committed + 1)}\n"
        )
        versioning.record_commit(root, message, tag=None, push=push)
        return _finish(catalog, committed, to_round)


def _finish(catalog: Catalog, from_round: int, to_round: int) -> RollbackResult:
    """Tag the rollback commit (unless a tag already names it), move the champion alias,
    drop the marker."""
    root = catalog.root
    base = f"rollback-{from_round:04d}-to-{to_round:04d}"
    tags = [
        t for t in versioning.git(root, "tag", "--points-at", "HEAD").split() if t.startswith(base)
    ]
    if tags:
        tag = tags[0]
    else:
        tag = _free_tag(root, base)
        subject = versioning.git(root, "log", "-1", "--format=%s")
        versioning.git(root, "tag", "--annotate", tag, "-m", subject)
    champion_round = catalog.load("champion").meta.get("promoted_in_round")
    version = tracking.set_champion(root, champion_round)
    rollback_marker(catalog).unlink(missing_ok=True)
    log.info("rolled back to %s; tagged %s", round_name(to_round), tag)
    return RollbackResult(
        to_round, from_round, versioning.head_commit(root), tag, champion_round, version
    )
