"""Kill a real `alloop round` process at a named point, resume it, and compare the result with
a round that was never interrupted: same files, same hashes, same tags, one MLflow run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from conftest import BIN, DATASETS, make_satimage_workspace
from test_flow import snapshot

from flows import tracking
from flows.demo import annotate_outbox
from flows.recovery import repair_after_crash
from flows.round import al_round
from tasks.catalog import Catalog
from tasks.faults import CRASH_ENV

STARTED_AT = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
STAGES = ["validate", "merge", "flag", "train", "evaluate", "score", "select", "export"]
#: every stage boundary, the middle of every stage (after part of its outputs are written),
#: and the recording of the round: MLflow, then DVC + git
POINTS = [f"{when}:{stage}" for stage in STAGES for when in ("before", "during")] + [
    "before:mlflow",
    "before:record",
]
REPORTS = {"evaluate": "metrics"}  # the report each stage writes, when not named after it
FAST = ["during:flag", "during:evaluate"]
SLOW = [point for point in POINTS if point not in FAST]


def _round(ws, *, crash_at=None, started_at=STARTED_AT):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    args = [str(BIN / "alloop"), "round", "-w", str(ws)]
    if started_at:
        args += ["--started-at", started_at]
    # a session of its own: the crash kills this process group only
    return subprocess.run(
        args, env=env, capture_output=True, text=True, start_new_session=True, check=False
    )


@pytest.fixture(scope="module")
def before_round_3(prefect_api, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "ws"
    catalog, _ = make_satimage_workspace(root)
    for round_id in (1, 2):
        al_round(str(root))
        annotate_outbox(catalog, round_id, noise=0.05, seed=0)
    return root


@pytest.fixture(scope="module")
def uninterrupted(before_round_3, tmp_path_factory):
    ws = tmp_path_factory.mktemp("clean") / "ws"
    shutil.copytree(before_round_3, ws, symlinks=True)
    done = _round(ws)
    assert done.returncode == 0, done.stdout + done.stderr
    return ws


def _tags(ws):
    return subprocess.run(["git", "tag"], cwd=ws, capture_output=True, text=True).stdout.split()


def _check_resume(point, before_round_3, uninterrupted, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(before_round_3, ws, symlinks=True)
    crashed = _round(ws, crash_at=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    # stages that completed before the kill are not run again: their reports stay untouched
    stage = point.split(":")[1]
    done = STAGES[: STAGES.index(stage)] if stage in STAGES else STAGES
    reports = {name: ws / "reports" / f"{REPORTS.get(name, name)}.json" for name in done}
    written = {name: path.stat().st_mtime_ns for name, path in reports.items()}
    resumed = _round(ws, started_at=None)  # the resumed round keeps the clock it began with
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _tags(ws) == _tags(uninterrupted) == ["round-0001", "round-0002", "round-0003"]
    assert snapshot(ws) == snapshot(uninterrupted)
    assert not list(ws.rglob("*.tmp")) and not (ws / "models" / ".champion.old").exists()
    assert {name: path.stat().st_mtime_ns for name, path in reports.items()} == written
    runs = tracking.list_round_runs(ws)
    assert [r["round_id"] for r in runs] == [1, 2, 3]
    assert all("alloop.git_commit" in r["tags"] for r in runs)


@pytest.mark.parametrize("point", FAST)
def test_resume_after_a_kill_ends_as_if_nothing_happened(
    point, before_round_3, uninterrupted, tmp_path
):
    _check_resume(point, before_round_3, uninterrupted, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", SLOW)
def test_resume_after_a_kill_at_every_stage(point, before_round_3, uninterrupted, tmp_path):
    _check_resume(point, before_round_3, uninterrupted, tmp_path)


@pytest.mark.parametrize("point", ["before:git-tag", "before:mlflow-tag"])
def test_a_kill_after_the_commit_is_repaired_not_rerun(
    point, before_round_3, uninterrupted, tmp_path
):
    ws = tmp_path / "ws"
    shutil.copytree(before_round_3, ws, symlinks=True)
    crashed = _round(ws, crash_at=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    repaired = repair_after_crash(Catalog(ws))  # what the next command does first
    assert repaired and all(("round-0003" in line) for line in repaired)
    assert _tags(ws) == _tags(uninterrupted)
    assert snapshot(ws) == snapshot(uninterrupted)
    runs = tracking.list_round_runs(ws)
    assert [r["round_id"] for r in runs] == [1, 2, 3]
    assert all("alloop.git_commit" in r["tags"] for r in runs)
    assert repair_after_crash(Catalog(ws)) == []  # nothing left to repair


def test_two_rounds_at_once_one_runs_the_other_exits_naming_the_holder(before_round_3, tmp_path):
    import json
    import time

    ws = tmp_path / "ws"
    shutil.copytree(before_round_3, ws, symlinks=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    first = subprocess.Popen(
        [str(BIN / "alloop"), "round", "-w", str(ws)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lock = ws / ".alloop" / "lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = lock.read_text() if lock.exists() else ""
        if text and json.loads(text).get("pid") == first.pid:
            break
        time.sleep(0.1)
    else:
        first.kill()
        pytest.fail("the first round never took the lock")
    second = _round(ws, started_at=None)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert second.returncode == 1
    assert "is busy" in second.stderr and f'"pid": {first.pid}' in second.stderr
    assert _tags(ws) == ["round-0001", "round-0002", "round-0003"]


def test_a_workspace_with_a_remote_is_recovered_by_clone(prefect_api, tmp_path):
    from flows.demo import load_pmlb
    from flows.workspace import init_workspace

    raw, classes = load_pmlb(DATASETS / "satimage.parquet")
    raw = raw.iloc[:400]
    remote = tmp_path / "remote"
    original = tmp_path / "machine-a" / "ws"
    init_workspace(
        original,
        pool=raw,
        id_column="item_id",
        classes=classes,
        label_column="label",
        remote_url=str(remote),
        overrides=("select.seed_size=40",),
    )
    al_round(str(original))
    copy = tmp_path / "machine-b" / "ws"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    done = subprocess.run(
        [str(BIN / "alloop"), "clone", str(original), str(copy)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert snapshot(copy) == snapshot(original)
    assert _tags(copy) == ["round-0001"]
