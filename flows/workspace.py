"""Creating a workspace, and holding it: one round at a time."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

import flows
import tasks
from flows import versioning
from flows.pipeline import dump_dvc_yaml
from tasks.catalog import Catalog, RoundInfo, write_text
from tasks.params import ParamsError, dump_params, load_params
from tasks.schema import ITEM_ID

#: The project checkout (an editable install) is the workspace template.
TEMPLATE_ROOT = Path(flows.__file__).resolve().parent.parent
CODE_PACKAGES = {
    "flows": Path(flows.__file__).resolve().parent,
    "tasks": Path(tasks.__file__).resolve().parent,
}

GITIGNORE = """\
# local run state: Prefect home, MLflow store, the embedded DVC remote
/.alloop/
# annotators drop files here; a round archives them under data/archive/
/data/incoming/*
!/data/incoming/.gitkeep
__pycache__/
"""


class WorkspaceError(RuntimeError):
    """The workspace or its inputs are not what alloop needs."""


def read_table_file(path: Path) -> pd.DataFrame:
    """A pool file: parquet or CSV (told by content: parquet starts with ``PAR1``)."""
    if not path.is_file():
        raise WorkspaceError(f"pool file {path} does not exist")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WorkspaceError(
            f"pool file {path} is neither parquet nor readable CSV: {exc}"
        ) from exc


def prepare_pool(
    raw: pd.DataFrame,
    *,
    id_column: str,
    classes: Sequence[str],
    label_column: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Split a raw pool into the items (``item_id`` + features) and, for simulations, the
    true labels. Pure; raises :class:`WorkspaceError` naming the column and the problem."""
    if id_column not in raw.columns:
        raise WorkspaceError(
            f"--id-column {id_column!r} is not a column of the pool "
            f"(columns: {list(raw.columns)[:20]})"
        )
    ids = raw[id_column]
    if ids.isna().any():
        raise WorkspaceError(f"id column {id_column!r} has {int(ids.isna().sum())} empty values")
    ids = ids.astype(str)
    duplicated = ids[ids.duplicated()]
    if not duplicated.empty:
        raise WorkspaceError(
            f"id column {id_column!r} is not unique: {duplicated.head(5).tolist()} repeat"
        )
    if id_column != ITEM_ID and ITEM_ID in raw.columns:
        raise WorkspaceError(f"the pool has a column {ITEM_ID!r} that is not the id column")
    truth = None
    features = raw.drop(columns=[id_column])
    if label_column is not None:
        if label_column not in raw.columns:
            raise WorkspaceError(f"--label-column {label_column!r} is not a column of the pool")
        labels = raw[label_column].astype(str)
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise WorkspaceError(
                f"label column {label_column!r} holds {unknown[:10]}, not among --classes "
                f"{list(classes)}"
            )
        truth = pd.DataFrame({ITEM_ID: ids.to_numpy(), "label": labels.to_numpy()})
        truth = truth.astype("string")
        features = features.drop(columns=[label_column])
    if features.shape[1] == 0:
        raise WorkspaceError("the pool has no feature columns besides the id (and label)")
    items = pd.concat(
        [pd.Series(ids.to_numpy(), name=ITEM_ID, dtype="string"), features.reset_index(drop=True)],
        axis=1,
    )
    return items, truth


def _copy_code(root: Path) -> None:
    for name, source in CODE_PACKAGES.items():
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))


def code_drift(root: Path) -> list[str]:
    """Files of the workspace's ``flows/`` and ``tasks/`` that differ from the running code."""
    drift = []
    for name, source in CODE_PACKAGES.items():
        mine = {p.relative_to(source) for p in source.rglob("*.py")}
        theirs = {p.relative_to(root / name) for p in (root / name).rglob("*.py")}
        for rel in sorted(mine | theirs):
            a, b = source / rel, root / name / rel
            if not (a.exists() and b.exists() and a.read_bytes() == b.read_bytes()):
                drift.append(f"{name}/{rel}")
    return drift


def init_workspace(
    path: Path,
    *,
    pool: pd.DataFrame,
    id_column: str,
    classes: Sequence[str],
    label_column: str | None = None,
    remote_url: str | None = None,
    overrides: Sequence[str] = (),
) -> Catalog:
    """Create a workspace at ``path``: code, params, pipeline, pool, git + DVC, first commit."""
    root = path.resolve()
    # .alloop/ (local run state) may already exist: the CLI sets up Prefect's home first
    if root.exists() and any(p.name != ".alloop" for p in root.iterdir()):
        raise WorkspaceError(f"{root} exists and is not empty; choose a new path")
    template = yaml.safe_load((TEMPLATE_ROOT / "params.yaml").read_text())
    template["project"] = {**template.get("project", {}), "classes": [str(c) for c in classes]}
    try:
        params = load_params(template, overrides)
    except ParamsError as exc:
        raise WorkspaceError(str(exc)) from exc
    items, truth = prepare_pool(
        pool, id_column=id_column, classes=params.project.classes, label_column=label_column
    )

    root.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(root)
    _copy_code(root)
    # the expectation suite is the workspace's own, versioned with it (teams add checks)
    shutil.copytree(TEMPLATE_ROOT / "gx", root / "gx")
    write_text(catalog.params_file, yaml.safe_dump(dump_params(params), sort_keys=False))
    write_text(root / "dvc.yaml", dump_dvc_yaml())
    write_text(root / ".gitignore", GITIGNORE)
    catalog.write_round(RoundInfo(round_id=0, started_at=""))
    for folder in (catalog.incoming_dir,):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitkeep").touch()
    catalog.pool_dir.mkdir(parents=True)
    items.to_parquet(catalog.pool_dir / "items-0000.parquet", index=False)
    tracked = ["data/pool"]
    if truth is not None:
        catalog.simulation_dir.mkdir(parents=True)
        truth.to_parquet(catalog.truth_file, index=False)
        tracked.append("data/simulation")

    # DVC reads a relative local path against the folder it runs in (the workspace) and stores
    # it relative to .dvc/: the default is the workspace's own .alloop/dvc-remote, and a
    # relative --remote is taken against the caller's folder
    if remote_url is None:
        remote = os.path.relpath(catalog.state_dir / "dvc-remote", root)
    elif "://" not in remote_url and not os.path.isabs(remote_url):
        remote = os.path.abspath(remote_url)
    else:
        remote = remote_url
    versioning.init_repository(root, remote_url=remote)
    versioning.dvc(root, "add", "--quiet", *tracked)
    versioning.git(root, "add", "--all")
    versioning.git(
        root,
        "commit",
        "--quiet",
        "-m",
        f"init: pool of {len(items)} items, {items.shape[1] - 1} features, "
        f"classes {list(params.project.classes)}",
    )
    versioning.dvc(root, "push", "--quiet")
    return catalog


def clone_workspace(source: str, path: Path) -> Catalog:
    """Recover a workspace elsewhere: ``git clone`` its repository, then ``dvc pull`` its data
    from the DVC remote its config names. The remote must be reachable from here: the default
    one inside the original workspace is not (init with ``--remote`` to be recoverable)."""
    root = path.resolve()
    if root.exists() and any(root.iterdir()):
        raise WorkspaceError(f"{root} exists and is not empty; choose a new path")
    root.parent.mkdir(parents=True, exist_ok=True)
    versioning.git(root.parent, "clone", "--quiet", source, str(root))
    if not versioning.git(root, "config", "user.email", check=False):
        versioning.git(root, "config", "user.email", "alloop@localhost")
        versioning.git(root, "config", "user.name", "alloop")
    try:
        versioning.dvc(root, "pull", "--quiet")
    except versioning.VersioningError as exc:
        remote = versioning.dvc(root, "remote", "list", check=False)
        raise WorkspaceError(
            f"cloned the repository, but its data could not be pulled from the DVC remote "
            f"({remote or 'none configured'}): {exc}. A remote inside the original workspace "
            "is not reachable from a clone; use `alloop init --remote URL`, or add one with "
            "`dvc remote add -d NAME URL` in the original and push."
        ) from exc
    return Catalog(root)


class WorkspaceBusy(RuntimeError):
    """Another alloop process holds the workspace."""


#: Workspaces this process holds, with how many nested holds: the CLI takes the lock before
#: Prefect starts, and the flow inside takes it again.
_HELD: dict[Path, int] = {}


@contextmanager
def hold_workspace(root: Path, command: str, *, lock_name: str = "lock") -> Iterator[None]:
    """Hold the workspace's lock for the duration of one command, or fail at once.

    ``lock_name``: ``lock`` for the commands that change the workspace (round, rerun,
    rollback); ``serve.lock`` keeps a workspace from being served twice.

    An OS file lock (``flock``): the kernel releases it when the holder dies, however it dies,
    so a lock left by a killed process never blocks the next one. Re-entrant within a process.
    """
    key = root.resolve() / ".alloop" / lock_name
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    workspace = root.resolve()
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "{}"
            raise WorkspaceBusy(
                f"workspace {workspace} is busy: another alloop command holds it ({holder}); "
                f"{'rounds, reruns and rollbacks' if lock_name == 'lock' else 'servers'} of one "
                "workspace run one at a time"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
    finally:
        os.close(fd)  # closing releases the flock
