"""Creating a workspace, and holding it: one round at a time."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import yaml

import flows
import tasks
from flows import versioning
from tasks.catalog import Catalog, RoundInfo, write_pool_partition, write_text
from tasks.params import ParamsError, dump_params, load_params
from tasks.schema import ITEM_ID, is_in

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
# what `dvc plots show` renders (reports/history.csv, the confusion matrix): never part of a
# round's commit
/dvc_plots/
"""


def get_gitignore(current: str) -> str:
    """A workspace's ``.gitignore``: its own lines, then any rule of :data:`GITIGNORE` it lacks
    (an upgrade adds what a newer alloop ignores, and keeps what the team added)."""
    have = {line.strip() for line in current.splitlines()}
    missing = [line for line in GITIGNORE.splitlines() if line.strip() and line.strip() not in have]
    if not current:
        return GITIGNORE
    text = current if current.endswith("\n") else current + "\n"
    return text + "".join(line + "\n" for line in missing)


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


def _text_like(column: pd.Series) -> bool:
    return bool(
        pd.api.types.is_object_dtype(column)
        or pd.api.types.is_string_dtype(column)
        or isinstance(column.dtype, pd.CategoricalDtype)
    )


def find_class_name_columns(features: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """Text columns whose non-empty values are all class names (ignoring case and surrounding
    space), with at least two different ones: a label column left in the pool. (A column
    with one value only is constant, not a leak; numeric columns are not checked this way,
    as class names such as ``0``/``1`` are also ordinary feature values.)"""
    names = {str(c).strip().casefold() for c in classes}
    found = []
    for column in features.columns:
        values = features[column]
        if not _text_like(values):
            continue
        seen = {str(v).strip().casefold() for v in values.dropna().unique()} - {""}
        if len(seen) >= 2 and seen <= names:
            found.append(str(column))
    return found


def find_label_predicting_columns(features: pd.DataFrame, labels: pd.Series) -> list[str]:
    """Columns that determine the given labels exactly: every value goes with one label only,
    and values repeat (on average at least 5 rows a value, so that an id-like or continuous
    column that happens to be unique is not taken for a leak)."""
    labels = labels.reset_index(drop=True)
    if labels.nunique() < 2:
        return []
    found = []
    for column in features.columns:
        values = features[column].reset_index(drop=True)
        known = values.notna()
        n_values = values[known].nunique()
        if n_values < 2 or known.sum() < 5 * n_values:
            continue
        per_value = labels[known].groupby(values[known], observed=True).nunique()
        if int(per_value.max()) == 1:
            found.append(str(column))
    return found


def _leak_error(column: str, why: str, *, label_column: str | None) -> WorkspaceError:
    way_out = (
        f"drop it with --drop-column {column}"
        if label_column is not None
        else f"if it holds the true labels (simulations and demos only), pass --label-column "
        f"{column}; otherwise drop it with --drop-column {column}"
    )
    return WorkspaceError(
        f"pool column {column!r} {why}: as a feature it would give the answers away (and "
        f"reach the annotators in batch.csv). {way_out[0].upper()}{way_out[1:]}."
    )


def prepare_pool(
    raw: pd.DataFrame,
    *,
    id_column: str,
    classes: Sequence[str],
    label_column: str | None = None,
    drop_columns: Sequence[str] = (),
    label_separator: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Split a raw pool into the items (``item_id`` + features) and, for simulations, the
    true labels. Pure; raises :class:`WorkspaceError` naming the column and the problem.

    ``label_separator``: the labels are sets joined by it (``project.task: multilabel``), and
    each label of a set must be one of ``classes``.

    ``drop_columns`` are removed first. A feature column holding the class names, or one that
    predicts ``label_column`` exactly, is refused (see :func:`find_class_name_columns` and
    :func:`find_label_predicting_columns`): it would leak the answers.
    """
    if raw.empty:
        raise WorkspaceError("the pool has no items (0 rows): nothing to label")
    missing = [c for c in drop_columns if c not in raw.columns]
    if missing:
        raise WorkspaceError(
            f"--drop-column {missing} is not a column of the pool (columns: "
            f"{list(raw.columns)[:20]})"
        )
    if id_column in drop_columns or (label_column is not None and label_column in drop_columns):
        raise WorkspaceError("--drop-column cannot name the id column or the label column")
    raw = raw.drop(columns=list(drop_columns))
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
        named = (
            set(labels)
            if label_separator is None
            else set(labels.str.split(label_separator).explode())
        )
        unknown = sorted(named - set(classes))
        if unknown:
            raise WorkspaceError(
                f"label column {label_column!r} holds {unknown[:10]}, not among --classes "
                f"{list(classes)}"
            )
        truth = pd.DataFrame({ITEM_ID: ids.to_numpy(), "label": labels.to_numpy()})
        truth = truth.astype("string")
        features = features.drop(columns=[label_column])
    named = find_class_name_columns(features, classes)
    if named:
        raise _leak_error(named[0], "holds the class names", label_column=label_column)
    predicting = (
        find_label_predicting_columns(features, truth["label"]) if truth is not None else []
    )
    if predicting:
        raise _leak_error(
            predicting[0],
            f"predicts --label-column {label_column!r} exactly",
            label_column=label_column,
        )
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


#: The versioned file that says which alloop's code a workspace runs (init and upgrade write it).
VERSION_FILE = "alloop-version.yaml"


def get_code_hash(packages: dict[str, Path]) -> str:
    """A short hash of the ``*.py`` files of ``flows/`` and ``tasks/`` (paths and bytes): the
    same files :func:`code_drift` compares, so equal hashes mean no drift."""
    digest = hashlib.sha256()
    for name, folder in sorted(packages.items()):
        for path in sorted(folder.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:10]


def _release() -> str:
    try:
        return str(
            tomllib.loads((TEMPLATE_ROOT / "pyproject.toml").read_text())["project"]["version"]
        )
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("alloop")
        except PackageNotFoundError:
            return "0"


def get_alloop_version() -> str:
    """The running alloop: its release (pyproject.toml) and a hash of its code, e.g.
    ``0.1.0+3f2a9c1d0e``. Two checkouts with the same version run the same code."""
    return f"{_release()}+{get_code_hash(CODE_PACKAGES)}"


@dataclass(frozen=True)
class WorkspaceVersion:
    recorded: str | None  # what init / upgrade wrote (None: a workspace from before versions)
    code_hash: str  # the hash of the workspace's own flows/ and tasks/ now

    def __str__(self) -> str:
        if self.recorded is None:
            return f"unrecorded (code {self.code_hash})"
        if not self.recorded.endswith(f"+{self.code_hash}"):
            return f"{self.recorded}, its code edited since (code {self.code_hash})"
        return self.recorded


def get_workspace_version(root: Path) -> WorkspaceVersion:
    """The alloop version a workspace records, and the hash of the code it holds."""
    code_hash = get_code_hash({name: root / name for name in CODE_PACKAGES})
    try:
        recorded = yaml.safe_load((root / VERSION_FILE).read_text()).get("alloop")
    except (OSError, AttributeError, yaml.YAMLError):
        recorded = None
    return WorkspaceVersion(recorded=str(recorded) if recorded else None, code_hash=code_hash)


def _write_version(root: Path, version: str) -> None:
    write_text(
        root / VERSION_FILE,
        "# the alloop whose code (flows/, tasks/) this workspace runs: release+code hash.\n"
        "# Written by `alloop init` and `alloop upgrade`; do not edit.\n"
        + yaml.safe_dump({"alloop": version}, sort_keys=False),
    )


def check_workspace(path: Path) -> Path:
    """The workspace's root, or :class:`WorkspaceError` when ``path`` is not a workspace.
    Reads only: nothing is created anywhere."""
    root = path.resolve()
    if not root.is_dir():
        raise WorkspaceError(f"{root} is not an alloop workspace (no such folder)")
    if not (root / "params.yaml").is_file():
        raise WorkspaceError(
            f"{root} is not an alloop workspace (no params.yaml); create one with "
            "`alloop init`, or point at one with --workspace"
        )
    return root


def check_code(root: Path) -> None:
    """Refuse when the workspace's code is not the running alloop's (see :func:`code_drift`)."""
    drift = code_drift(root)
    if drift:
        raise WorkspaceError(
            f"the workspace's code ({get_workspace_version(root)}) differs from this alloop's "
            f"({get_alloop_version()}) in {drift[:5]}{' ...' if len(drift) > 5 else ''}: run "
            f"`alloop upgrade -w {root}` to move it to this alloop's code (its own commit)"
        )


def init_workspace(
    path: Path,
    *,
    pool: pd.DataFrame,
    id_column: str,
    classes: Sequence[str],
    label_column: str | None = None,
    remote_url: str | None = None,
    overrides: Sequence[str] = (),
    drop_columns: Sequence[str] = (),
) -> Catalog:
    """Create a workspace at ``path``: code, params, pipeline, pool, git + DVC, first commit."""
    from flows.pipeline import dump_dvc_yaml  # every stage module: imported only when needed

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
        pool,
        id_column=id_column,
        classes=params.project.classes,
        label_column=label_column,
        drop_columns=drop_columns,
    )

    root.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(root)
    _copy_code(root)
    # the expectation suite is the workspace's own, versioned with it (teams add checks)
    shutil.copytree(TEMPLATE_ROOT / "gx", root / "gx")
    write_text(catalog.params_file, yaml.safe_dump(dump_params(params), sort_keys=False))
    write_text(root / "dvc.yaml", dump_dvc_yaml())
    _write_version(root, get_alloop_version())
    write_text(root / ".gitignore", GITIGNORE)
    catalog.write_round(RoundInfo(round_id=0, started_at=""))
    for folder in (catalog.path("incoming"),):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitkeep").touch()
    catalog.path("pool").mkdir(parents=True)
    write_pool_partition(
        pa.Table.from_pandas(items, preserve_index=False),
        catalog.path("pool") / "items-0000.parquet",
    )
    tracked = ["data/pool"]
    if truth is not None:
        catalog.path("truth").parent.mkdir(parents=True)
        truth.to_parquet(catalog.path("truth"), index=False)
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


@dataclass(frozen=True)
class UpgradeResult:
    from_version: str
    to_version: str
    #: the upgrade's commit, or None when the workspace already ran this alloop's code
    commit: str | None
    changed: list[str]


def check_committed(root: Path, what: str) -> None:
    from flows.recovery import check_no_interrupted_rollback, round_pending

    catalog = Catalog(root)
    check_no_interrupted_rollback(catalog)
    if round_pending(catalog):
        raise WorkspaceError(
            f"round {catalog.read_round().round_id} started and is not recorded: finish it "
            f"with `alloop round -w {root}` before {what}"
        )
    changed = versioning.git(root, "status", "--porcelain").splitlines()
    if changed:
        shown = ", ".join(line.split(maxsplit=1)[-1] for line in changed[:5]) + (
            " ..." if len(changed) > 5 else ""
        )
        raise WorkspaceError(
            f"the workspace {root} has changes that are not committed ({shown}): commit or "
            f"restore them (`git -C {root} status`) before {what}"
        )


def upgrade_workspace(root: Path) -> UpgradeResult:
    """Move a workspace to the running alloop's code as one commit of its own.

    ``flows/`` and ``tasks/`` become this alloop's, ``dvc.yaml`` is regenerated from its stage
    specs and the version file records it; nothing else changes. ``dvc.lock`` is left as it is:
    it records the code that produced the current outputs, and the next round records the new
    code. Refused while another command holds the workspace, while a round or a rollback is
    unfinished, with uncommitted changes, or when ``params.yaml`` is not valid for this alloop.
    """
    from flows.pipeline import dump_dvc_yaml  # every stage module: imported only when needed

    with hold_workspace(root, "upgrade"):
        check_committed(root, "an upgrade")
        target = get_alloop_version()
        try:
            load_params(yaml.safe_load((root / "params.yaml").read_text()) or {})
        except ParamsError as exc:
            raise WorkspaceError(
                f"{root / 'params.yaml'} is not valid for alloop {target}, so the workspace "
                f"cannot move to it: {exc}"
            ) from exc
        before = get_workspace_version(root)
        pipeline = dump_dvc_yaml()
        dvc_yaml = root / "dvc.yaml"
        ignore = root / ".gitignore"
        ignored = get_gitignore(ignore.read_text() if ignore.exists() else "")
        if (
            not code_drift(root)
            and dvc_yaml.read_text() == pipeline
            and before.recorded == target
            and ignore.exists()
            and ignore.read_text() == ignored
        ):
            return UpgradeResult(str(before), target, None, [])
        for name in CODE_PACKAGES:
            shutil.rmtree(root / name, ignore_errors=True)
        _copy_code(root)
        write_text(dvc_yaml, pipeline)
        write_text(ignore, ignored)
        _write_version(root, target)
        versioning.git(
            root, "add", "--all", "--", *CODE_PACKAGES, "dvc.yaml", ".gitignore", VERSION_FILE
        )
        changed = versioning.git(root, "diff", "--cached", "--name-only").splitlines()
        message = (
            f"upgrade: alloop {before} -> {target}\n\n"
            f"{len(changed)} files changed: {', '.join(changed[:20])}"
            f"{' ...' if len(changed) > 20 else ''}\n"
            "dvc.lock is unchanged: it records the code that produced the current outputs; "
            "the next round records the new code.\n"
        )
        versioning.git(root, "commit", "--quiet", "-m", message)
        return UpgradeResult(str(before), target, versioning.head_commit(root), changed)


@dataclass(frozen=True)
class PoolAddResult:
    items: int
    file: Path
    commit: str
    pool_items: int  # the pool's size after the addition


def add_to_pool(
    root: Path,
    raw: pd.DataFrame,
    *,
    source: str,
    id_column: str = ITEM_ID,
    drop_columns: Sequence[str] = (),
) -> PoolAddResult:
    """Add items to the pool as a new partition ``data/pool/items-NNNN.parquet``, committed at
    once (``pool add: N items from SOURCE``) and pushed; the next round scores them.

    The items must have the pool's columns (``id_column`` becomes ``item_id``; ``drop_columns``
    are removed first) with values that convert to the pool's types, and ids that are unique
    and not in the pool already. Refused, with nothing written, otherwise, and while another
    command holds the workspace or a round or a rollback is unfinished.
    """
    import pyarrow.parquet as pq

    catalog = Catalog(root)
    with hold_workspace(root, "pool add"):
        check_committed(root, "adding items")
        items, _ = prepare_pool(
            raw,
            id_column=id_column,
            classes=catalog.read_params().project.classes,
            drop_columns=drop_columns,
        )
        files = catalog.pool_files()
        if not files:
            raise WorkspaceError(f"no pool files (*.parquet) in {catalog.path('pool')}")
        pool_schema = pq.read_schema(files[0])
        wanted = list(pool_schema.names)
        missing = [c for c in wanted if c not in items.columns]
        extra = [c for c in items.columns if c not in wanted]
        if missing or extra:
            raise WorkspaceError(
                f"{source} does not have the pool's columns: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"not in the pool {extra}" if extra else "",
                    )
                    if part
                )
                + (" (--id-column names the id column)" if ITEM_ID in missing else "")
            )
        arrays = []
        for field in pool_schema:
            values = items[field.name]
            try:
                arrays.append(pa.array(values, from_pandas=True).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise WorkspaceError(
                    f"column {field.name!r} of {source} does not convert to the pool's type "
                    f"{field.type} (it holds {values.dtype}): {first}"
                ) from exc
        # the pool's ids among the new ones, read a row group at a time (not a set of millions);
        # its size from the footers
        n_before = sum(catalog.pool_partition_sizes().values())
        new_ids = items[ITEM_ID].astype("string")
        clash = items.loc[is_in(new_ids, catalog.read_pool_ids_among(new_ids)), ITEM_ID].tolist()
        if clash:
            raise WorkspaceError(
                f"{len(clash)} item ids of {source} are already in the pool "
                f"(e.g. {clash[:5]}): ids must be new"
            )
        numbers = [
            int(p.stem.rsplit("-", 1)[-1]) for p in files if p.stem.rsplit("-", 1)[-1].isdigit()
        ]
        target = catalog.path("pool") / f"items-{max(numbers, default=0) + 1:04d}.parquet"
        write_pool_partition(pa.Table.from_arrays(arrays, schema=pool_schema), target)
        try:
            versioning.dvc(root, "add", "--quiet", "data/pool")
            versioning.git(root, "add", "--", "data/pool.dvc")
            versioning.git(
                root,
                "commit",
                "--quiet",
                "-m",
                f"pool add: {len(items)} items from {source}\n\n"
                f"{target.relative_to(root)}; the pool has {n_before + len(items)} items\n",
                "--",
                "data/pool.dvc",
            )
        except versioning.VersioningError:
            target.unlink(missing_ok=True)
            versioning.git(root, "checkout", "--", "data/pool.dvc", check=False)
            raise
        versioning.dvc(root, "push", "--quiet")
        return PoolAddResult(
            len(items), target, versioning.head_commit(root), n_before + len(items)
        )
