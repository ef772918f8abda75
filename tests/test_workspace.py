"""Workspace operations: the pool guards at init, `alloop pool add` between rounds, `alloop
upgrade` to the running alloop's code, the auditor's CSV files and the demo's closing commands."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import DATASETS, run_cli

from flows.workspace import (
    VERSION_FILE,
    WorkspaceError,
    add_to_pool,
    get_alloop_version,
    init_workspace,
    prepare_pool,
)
from tasks.catalog import Catalog

CLASSES = ["benign", "malignant"]


def _raw(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"i{k}" for k in range(n)],
            "size": [float(k % 7) for k in range(n)],
            "binary": [k % 2 for k in range(n)],
            "label": ["benign" if k % 2 else "malignant" for k in range(n)],
        }
    )


def test_a_column_of_class_names_is_refused_whatever_the_case():
    raw = _raw().assign(diagnosis=lambda d: d["label"].str.upper())
    with pytest.raises(WorkspaceError, match=r"'diagnosis' holds the class names.*--drop-column"):
        prepare_pool(raw.drop(columns=["label"]), id_column="id", classes=CLASSES)
    items, _ = prepare_pool(
        raw.drop(columns=["label"]), id_column="id", classes=CLASSES, drop_columns=["diagnosis"]
    )
    assert "diagnosis" not in items.columns


def test_the_label_column_itself_is_named_as_the_way_out():
    with pytest.raises(WorkspaceError, match=r"pass --label-column label"):
        prepare_pool(_raw(), id_column="id", classes=CLASSES)
    items, truth = prepare_pool(
        _raw().drop(columns=["binary"]), id_column="id", classes=CLASSES, label_column="label"
    )
    assert "label" not in items.columns and len(truth) == 40


def test_a_column_that_predicts_the_given_labels_exactly_is_refused():
    # 'binary' is 0/1 numbers, not class names, but it is the label in disguise
    with pytest.raises(WorkspaceError, match=r"'binary' predicts --label-column 'label' exactly"):
        prepare_pool(_raw(), id_column="id", classes=CLASSES, label_column="label")
    items, _ = prepare_pool(
        _raw(), id_column="id", classes=CLASSES, label_column="label", drop_columns=["binary"]
    )
    assert list(items.columns) == ["item_id", "size"]


def test_numeric_features_that_look_like_class_names_are_kept():
    raw = _raw().drop(columns=["label"])
    items, _ = prepare_pool(raw, id_column="id", classes=["0", "1"])
    assert "binary" in items.columns


def test_an_empty_pool_and_an_unknown_drop_column_are_refused():
    with pytest.raises(WorkspaceError, match="no items"):
        prepare_pool(_raw().iloc[:0], id_column="id", classes=CLASSES)
    with pytest.raises(WorkspaceError, match=r"--drop-column \['nope'\]"):
        prepare_pool(_raw(), id_column="id", classes=CLASSES, drop_columns=["nope"])


def _satimage(rows: slice) -> pd.DataFrame:
    raw = pd.read_parquet(DATASETS / "satimage.parquet").iloc[rows].reset_index(drop=True)
    raw.insert(0, "item_id", [f"s{k}" for k in range(rows.start, rows.start + len(raw))])
    return raw


@pytest.fixture(scope="module")
def round_one(prefect_api, tmp_path_factory):
    """A workspace of 60 items after round 1, whose seed batch issued every one of them."""
    from flows.round import al_round

    root = tmp_path_factory.mktemp("round-one") / "ws"
    raw = _satimage(slice(0, 60))
    classes = [str(c) for c in sorted(raw["label"].unique())]
    init_workspace(
        root,
        pool=raw,
        id_column="item_id",
        classes=classes,
        label_column="label",
        overrides=("select.seed_size=100", "select.batch_size=10"),
    )
    result = al_round(str(root))
    assert result.round_id == 1
    return root


@pytest.fixture()
def ws(round_one, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(round_one, copy, symlinks=True)
    return copy


def _new_items(tmp_path, rows: slice, **changes) -> os.PathLike:
    raw = _satimage(rows).drop(columns=["label"]).assign(**changes)
    path = tmp_path / "new.csv"
    raw.to_csv(path, index=False)
    return path


def test_pool_add_is_a_commit_that_the_next_round_picks_up(ws, tmp_path):
    from flows.recovery import get_idle_reason
    from flows.round import al_round

    catalog = Catalog(ws)
    status = run_cli(["alloop", "status", "-w", str(ws)], ws)
    assert "pool: exhausted: all 60 items have been issued" in status.stdout, status.stdout
    assert get_idle_reason(catalog) is not None  # nothing new: the next round would be skipped

    done = run_cli(
        ["alloop", "pool", "add", str(_new_items(tmp_path, slice(60, 80))), "-w", str(ws)], ws
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "added 20 items to the pool (80 now)" in done.stdout
    log = run_cli(["git", "log", "-1", "--format=%s"], ws).stdout.strip()
    assert log == "pool add: 20 items from new.csv"
    assert run_cli(["git", "status", "--porcelain"], ws).stdout == ""
    assert sorted(p.name for p in catalog.pool_files()) == [
        "items-0000.parquet",
        "items-0001.parquet",
    ]
    assert get_idle_reason(catalog) is None  # committed new items are work for the next round
    status = run_cli(["alloop", "status", "-w", str(ws)], ws)
    assert "pool: 20 of 80 items never issued" in status.stdout, status.stdout

    result = al_round(str(ws))
    assert result.round_id == 2 and not result.skipped
    issued = pd.read_parquet(ws / "data" / "labels" / "issued.parquet")
    second = set(issued.loc[issued["round_id"] == 2, "item_id"])
    assert second == {f"s{k}" for k in range(60, 80)}

    # the demo's closing commands work exactly as printed, with a PATH that lacks the venv
    from flows.cli import get_where_to_look

    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    for line in get_where_to_look(ws, 2):
        command = line.split("#")[0].strip()
        if " ui " in command or "server start" in command:  # servers: check their tool exists
            tool = next(word for word in command.split() if word.startswith("/"))
            assert os.access(tool, os.X_OK), command
            continue
        ran = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
        assert ran.returncode == 0, (command, ran.stderr)


@pytest.mark.parametrize(
    ("rows", "changes", "message"),
    [
        (slice(50, 70), {}, r"10 item ids of new.csv are already in the pool \(e.g. \['s50'"),
        (slice(60, 70), {"extra": 1}, r"not in the pool \['extra'\]"),
        (slice(60, 70), {"A1": "dark"}, r"column 'A1' of new.csv does not convert"),
        (slice(60, 60), {}, r"no items"),
    ],
)
def test_pool_add_refusals_name_the_ids_or_columns_and_change_nothing(
    ws, tmp_path, rows, changes, message
):
    head = run_cli(["git", "rev-parse", "HEAD"], ws).stdout
    raw = pd.read_csv(_new_items(tmp_path, rows, **changes))
    with pytest.raises(WorkspaceError, match=message):
        add_to_pool(ws, raw, source="new.csv")
    assert run_cli(["git", "rev-parse", "HEAD"], ws).stdout == head
    assert len(Catalog(ws).pool_files()) == 1
    assert run_cli(["git", "status", "--porcelain"], ws).stdout == ""


def test_pool_add_refuses_a_missing_column_in_one_line(ws, tmp_path):
    path = _new_items(tmp_path, slice(60, 70))
    pd.read_csv(path).drop(columns=["A1"]).to_csv(path, index=False)
    done = run_cli(["alloop", "pool", "add", str(path), "-w", str(ws)], ws)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert "missing ['A1']" in lines[0]


def test_upgrade_moves_an_older_workspace_forward_in_one_commit(ws):
    from flows.round import al_round

    # the workspace as an older alloop left it: other code, another version recorded
    (ws / "tasks" / "train.py").write_text((ws / "tasks" / "train.py").read_text() + "# old\n")
    (ws / VERSION_FILE).write_text(yaml.safe_dump({"alloop": "0.0.9+0ld0ld0ld0"}))
    assert run_cli(["git", "commit", "-qam", "older alloop"], ws).returncode == 0
    lock_before = (ws / "dvc.lock").read_bytes()

    refused = run_cli(["alloop", "round", "-w", str(ws)], ws)
    assert refused.returncode == 1 and "alloop upgrade" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\n")
    dirty = run_cli(["alloop", "upgrade", "-w", str(ws)], ws)
    assert dirty.returncode == 1 and "not committed (params.yaml)" in dirty.stderr, dirty.stderr
    run_cli(["git", "checkout", "--", "params.yaml"], ws)

    done = run_cli(["alloop", "upgrade", "-w", str(ws)], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    message = run_cli(["git", "log", "-1", "--format=%B"], ws).stdout
    assert message.startswith("upgrade: alloop 0.0.9+0ld0ld0ld0")
    assert get_alloop_version() in message.splitlines()[0]
    changed = run_cli(["git", "diff", "--name-only", "HEAD~1", "HEAD"], ws).stdout.split()
    assert "tasks/train.py" in changed and VERSION_FILE in changed
    assert all(
        p.startswith(("flows/", "tasks/")) or p in {"dvc.yaml", VERSION_FILE} for p in changed
    )
    assert (ws / "dvc.lock").read_bytes() == lock_before
    assert run_cli(["git", "status", "--porcelain"], ws).stdout == ""
    again = run_cli(["alloop", "upgrade", "-w", str(ws)], ws)
    assert again.returncode == 0 and "already runs this alloop" in again.stdout

    result = al_round(str(ws), force=True)
    assert result.round_id == 2 and result.commit


def test_audit_csv_writes_one_table_per_file(ws, tmp_path):
    out = tmp_path / "audit"
    done = run_cli(["alloop", "audit", "--format", "csv", "--out", str(out), "-w", str(ws)], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["annotators.csv", "events.csv", "flags.csv"]
    for path in out.iterdir():
        pd.read_csv(path)  # each one a plain table
    events = pd.read_csv(out / "events.csv")
    one = run_cli(["alloop", "audit", "--format", "csv", "--table", "events", "-w", str(ws)], ws)
    assert one.returncode == 0, one.stdout + one.stderr
    assert len(pd.read_csv(io.StringIO(one.stdout))) == len(events)
    mixed = run_cli(["alloop", "audit", "--format", "csv", "-w", str(ws)], ws)
    assert mixed.returncode == 2 and "--out DIR" in mixed.stderr


def test_upgrade_adds_the_ignore_rules_a_newer_alloop_has_and_keeps_the_teams():
    from flows.workspace import GITIGNORE, get_gitignore

    older = "/.alloop/\n# ours\n/scratch/\n"
    updated = get_gitignore(older)
    assert updated.startswith(older) and "/dvc_plots/" in updated and "/scratch/" in updated
    assert get_gitignore(updated) == updated and get_gitignore(GITIGNORE) == GITIGNORE
