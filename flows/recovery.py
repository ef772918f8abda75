"""What every command checks before it changes a workspace: a crash to repair, a rollback left
half done, and whether a new round has anything to do.

No Prefect here: the CLI answers "nothing to do" from these functions in a second, before any
flow (and so any Prefect API) starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flows import tracking, versioning
from flows.workspace import WorkspaceError
from tasks.catalog import Catalog, round_name

log = logging.getLogger(__name__)


def repair_after_crash(catalog: Catalog, *, mlflow: bool = True) -> list[str]:
    """Finish what a crash after the git commit left undone: the round's tag, and the git
    commit on its MLflow run (unless ``mlflow`` is false: the CLI's quick check before a flow
    leaves that to the flow, which repairs first). Returns what was repaired."""
    repaired = []
    tagged = versioning.repair_unfinished_tag(catalog.root)
    if tagged is not None:
        repaired.append(f"tagged {round_name(tagged)}")
    committed = versioning.committed_round(catalog.root)
    commit = versioning.tag_commit_of(catalog.root, round_name(committed)) if committed else None
    if mlflow and commit and tracking.link_recorded_round(catalog.root, committed, commit):
        repaired.append(f"linked the MLflow run of {round_name(committed)} to {commit[:10]}")
    for line in repaired:
        log.warning("after a crash: %s", line)
    return repaired


def rollback_marker(catalog: Catalog) -> Path:
    """The file a rollback leaves while it is half done."""
    return catalog.state_dir / "rollback.json"


def check_no_interrupted_rollback(catalog: Catalog) -> None:
    """Refuse to go on while a rollback is half done."""
    marker = rollback_marker(catalog)
    if marker.exists():
        target = json.loads(marker.read_text()).get("to_round")
        raise WorkspaceError(
            f"a rollback to {round_name(int(target))} was interrupted; run "
            f"`alloop rollback {target}` again to finish it before anything else"
        )


def round_pending(catalog: Catalog) -> bool:
    """Whether a round started and was never recorded (the next round command resumes it)."""
    return catalog.read_round().round_id > versioning.committed_round(catalog.root)


def pool_added_since_last_round(root: Path) -> bool:
    """Whether ``data/pool.dvc`` was committed with other content since the last round's (or
    rollback's) tag: ``alloop pool add`` commits new items between rounds."""
    last = versioning.git(
        root,
        "describe",
        "--tags",
        "--abbrev=0",
        "--match",
        "round-*",
        "--match",
        "rollback-*",
        "HEAD",
        check=False,
    )
    if not last:
        return False
    return bool(versioning.git(root, "diff", "--name-only", last, "HEAD", "--", "data/pool.dvc"))


def resume_marker(catalog: Catalog) -> Path:
    """The file ``alloop resume`` leaves: the round after which a person chose to go on."""
    return catalog.state_dir / "resumed.json"


def resume_after_stop(catalog: Catalog) -> int:
    """Let rounds run again after the stop advice paused them (``stop.action: pause``).
    Returns the round the advice came in; the next advice (a later round's) pauses again."""
    committed = versioning.committed_round(catalog.root)
    if committed < 1:
        raise WorkspaceError("no round has run yet: there is nothing to resume")
    catalog.state_dir.mkdir(parents=True, exist_ok=True)
    resume_marker(catalog).write_text(json.dumps({"after_round": committed}) + "\n")
    return committed


def get_pause_reason(catalog: Catalog) -> str | None:
    """Why rounds are paused, or None: the last round's stop advice, with ``stop.action:
    pause``, and no ``alloop resume`` since that round."""
    committed = versioning.committed_round(catalog.root)
    report = catalog.load("health_report")
    if committed < 1 or not report or not report.get("stop_advised"):
        return None
    if catalog.read_params().stop.action != "pause":
        return None
    marker = resume_marker(catalog)
    if marker.exists() and json.loads(marker.read_text()).get("after_round", 0) >= committed:
        return None
    return (
        f"paused: {round_name(committed)} advised to stop labeling ({report.get('stop_reason')}) "
        "and stop.action is pause; no round was run. `alloop resume` lets rounds run again, "
        "`alloop round --force` runs one now."
    )


def get_idle_reason(catalog: Catalog) -> str | None:
    """Why a new round would have nothing to do, or None when it has work.

    The rule: after the first round, a round needs a label file in ``data/incoming/`` or new
    pool items (``data/pool`` changed since the last round's tag, committed by ``alloop pool
    add`` or not). Without either it would only issue another batch
    while the last one is still out, so it is skipped (``--force`` runs it anyway). A round
    that started and was never recorded always has work: finishing it. Rounds paused by the
    stop advice (:func:`get_pause_reason`) are skipped whatever waits: labels stay in
    ``data/incoming/`` for the round after ``alloop resume``.
    """
    committed = versioning.committed_round(catalog.root)
    if committed < 1 or round_pending(catalog):
        return None
    paused = get_pause_reason(catalog)
    if paused is not None:
        return paused
    if (
        catalog.list_incoming()
        or pool_added_since_last_round(catalog.root)
        or versioning.pool_changed(catalog.root)
    ):
        return None
    return (
        f"nothing to do: no label file in data/incoming and no new pool items since "
        f"{round_name(committed)}; no round was run (no commit, no tag). "
        "`alloop round --force` runs one anyway."
    )
