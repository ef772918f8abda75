"""Operating the loop: rerun of a round, rollback, the nothing-to-do rule, determinism."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import dvc.api
import pandas as pd
import pytest
from conftest import BIN, make_satimage_workspace, run_cli
from test_flow import snapshot

from flows import tracking, versioning
from flows.demo import annotate_outbox
from flows.rerun import al_rerun, get_selection_overlap
from flows.round import al_round
from tasks.catalog import Catalog
from tasks.ledger import ROLLBACK, get_active_events, get_inactive_rounds, get_rollback_event
from tasks.schema import LEDGER, conform


@pytest.fixture(scope="module")
def five_rounds(prefect_api, tmp_path_factory):
    """Five recorded rounds; the answers to round 5's batch wait in data/incoming."""
    root = tmp_path_factory.mktemp("ops") / "ws"
    catalog, _ = make_satimage_workspace(root)
    for round_id in range(1, 6):
        al_round(str(root))
        annotate_outbox(catalog, round_id, noise=0.05, seed=0)
    return root


def _copy(src, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(src, ws, symlinks=True)
    return ws


def _git(ws, *args):
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True).stdout.split()


def _table_at(ws, path, rev):
    return pd.read_parquet(io.BytesIO(dvc.api.read(path, repo=str(ws), rev=rev, mode="rb")))


# -- rerun -------------------------------------------------------------------------------------


@pytest.mark.parametrize("round_id", [1, 2, 3])
def test_rerun_without_overrides_reproduces_the_round_exactly(five_rounds, round_id):
    before = snapshot(five_rounds)
    tags, branches = _git(five_rounds, "tag"), _git(five_rounds, "branch", "--list")
    result = al_rerun(str(five_rounds), round_id)
    assert result.identical, result.differences
    assert result.branch is None and result.code_changes == []
    # nothing in the workspace moved, no tag or branch appeared, no worktree is left
    assert snapshot(five_rounds) == before
    assert _git(five_rounds, "tag") == tags and _git(five_rounds, "branch", "--list") == branches
    worktrees = [w for w in _git(five_rounds, "worktree", "list", "--porcelain") if w == "worktree"]
    assert len(worktrees) == 1  # the workspace's own


def test_rerun_with_an_override_goes_on_a_branch_and_says_what_changed(five_rounds, tmp_path):
    ws = _copy(five_rounds, tmp_path)
    head = _git(ws, "rev-parse", "HEAD")
    done = run_cli(["alloop", "rerun", "3", "-w", str(ws), "-S", "score.strategy=entropy"], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rerun/round-0003-1" in done.stdout and "selection:" in done.stdout
    assert "dvc metrics diff" in done.stdout
    assert _git(ws, "rev-parse", "HEAD") == head  # history untouched
    branch = "rerun/round-0003-1"
    assert _git(ws, "log", "-1", "--format=%s", branch)[0] == "round-0003:"
    params = _git(ws, "show", f"{branch}:params.yaml")
    assert "entropy" in params
    # the branch's data is in the cache: its batch can be read, and differs from round 3's
    mine = _table_at(ws, "data/interim/batch.parquet", branch)
    theirs = _table_at(ws, "data/interim/batch.parquet", "round-0003")
    overlap = get_selection_overlap(theirs, mine)
    assert overlap["original"] == len(theirs) and 0 <= overlap["both"] < len(theirs)
    # its MLflow run is a rerun, not a second run of round 3
    assert [r["round_id"] for r in tracking.list_round_runs(ws)] == [1, 2, 3, 4, 5]
    again = run_cli(["alloop", "rerun", "3", "-w", str(ws), "-S", "score.strategy=entropy"], ws)
    assert again.returncode == 0 and "rerun/round-0003-2" in again.stdout


def test_selection_overlap_counts_items_in_both_batches():
    a = pd.DataFrame({"item_id": ["1", "2", "3", "4"]})
    b = pd.DataFrame({"item_id": ["3", "4", "5"]})
    assert get_selection_overlap(a, b) == {
        "original": 4,
        "rerun": 3,
        "both": 2,
        "share_of_original": 0.5,
    }


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_to_round_2_then_two_more_rounds(five_rounds, tmp_path):
    ws = _copy(five_rounds, tmp_path)
    catalog = Catalog(ws)
    waiting = sorted(p.name for p in catalog.path("incoming").iterdir() if p.name != ".gitkeep")
    assert waiting, "the answers to round 5's batch wait in data/incoming"
    ledger_5 = pd.read_parquet(catalog.path("ledger"))
    commits_5 = _git(ws, "rev-list", "HEAD")

    done = run_cli(["alloop", "rollback", "2", "-w", str(ws)], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollback-0005-to-0002" in _git(ws, "tag")
    # round 2's state is current: labels, flags, models, interim tables, params
    for path in (
        "data/labels/current.parquet",
        "data/labels/flags.parquet",
        "models/champion/model.txt",
        "data/interim/batch.parquet",
    ):
        data = dvc.api.read(path, repo=str(ws), rev="round-0002", mode="rb")
        assert (ws / path).read_bytes() == data, path
    # the ledger kept every event and got the rollback
    ledger = pd.read_parquet(catalog.path("ledger"))
    assert len(ledger) == len(ledger_5) + 1
    pd.testing.assert_frame_equal(ledger.iloc[: len(ledger_5)], ledger_5)
    assert get_inactive_rounds(conform(ledger, LEDGER)) == {3, 4, 5}
    # the champion alias follows the model
    meta = json.loads((ws / "models/champion/meta.json").read_text())
    assert tracking.get_champion(ws)["round_id"] == str(meta["promoted_in_round"])
    # files waiting in incoming were not touched; the workspace is clean
    assert (
        sorted(p.name for p in catalog.path("incoming").iterdir() if p.name != ".gitkeep")
        == waiting
    )
    assert run_cli(["dvc", "status", "--quiet"], ws).returncode == 0
    assert not versioning.git(ws, "status", "--porcelain")

    for round_id in (6, 7):
        result = al_round(str(ws))
        assert result.round_id == round_id and not result.skipped
        annotate_outbox(catalog, round_id, noise=0.05, seed=0)
    # the waiting files were consumed by round 6, and their rows accepted (round 5's batch is
    # still out: issuing is never undone)
    manifest = catalog.load("manifest", 6)
    assert sorted(e["file"] for e in manifest) == waiting
    assert all(e["accepted"] == e["rows_read"] > 0 for e in manifest)
    # history intact: every earlier commit is still an ancestor, every round tag still there
    commits = _git(ws, "rev-list", "HEAD")
    assert set(commits_5) <= set(commits)
    assert [t for t in _git(ws, "tag") if t.startswith("round-")] == [
        f"round-{i:04d}" for i in range(1, 8)
    ]
    # labels of the undone rounds no longer count, unless answered again after the rollback
    current = pd.read_parquet(catalog.path("current"))
    final = conform(pd.read_parquet(catalog.path("ledger")), LEDGER)
    active = get_active_events(final)
    voted = set(active.loc[active["event"].isin(["label", "relabel"]), "item_id"])
    assert set(current["item_id"]) == voted
    only_undone = set(ledger_5.loc[ledger_5["round_id"].isin([3, 4]), "item_id"]) - voted
    assert only_undone and not (only_undone & set(current["item_id"]))
    # the audit shows the rollback
    audit = run_cli(["alloop", "audit", "--round", "5", "--format", "json", "-w", str(ws)], ws)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    events = json.loads(audit.stdout)["events"]
    rollback = [e for e in events if e["event"] == ROLLBACK]
    assert len(rollback) == 1 and rollback[0]["outcome"] == "round-0002"


def test_rollback_refuses_a_round_that_is_not_before_the_last(five_rounds, tmp_path):
    ws = _copy(five_rounds, tmp_path)
    for bad in ("5", "0", "9"):
        done = run_cli(["alloop", "rollback", bad, "-w", str(ws)], ws)
        assert done.returncode == 1 and "1 to 4" in done.stderr, done.stdout + done.stderr


def test_rollback_events_keep_the_inactive_set_of_the_target_state():
    empty = conform(pd.DataFrame(columns=list(LEDGER)), LEDGER)
    first = get_rollback_event(
        empty, ledger_at_target=empty, from_round=5, to_round=2, operator="op", at="now"
    )
    assert get_inactive_rounds(first) == {3, 4, 5}
    # rounds 6, 7 ran after it; going back to round 6 keeps 3-5 undone and undoes 7
    second = get_rollback_event(
        first, ledger_at_target=first, from_round=7, to_round=6, operator="op", at="now"
    )
    assert get_inactive_rounds(pd.concat([first, second])) == {3, 4, 5, 7}
    # going back to round 4 (its state had no rollback yet) makes 3 and 4 count again
    third = get_rollback_event(
        second, ledger_at_target=empty, from_round=8, to_round=4, operator="op", at="now"
    )
    assert get_inactive_rounds(pd.concat([first, second, third])) == {5, 6, 7, 8}
    with pytest.raises(ValueError, match="earlier round"):
        get_rollback_event(
            empty, ledger_at_target=empty, from_round=3, to_round=3, operator="", at=""
        )


# -- nothing to do -----------------------------------------------------------------------------


def test_a_round_with_nothing_new_is_skipped_and_says_so(five_rounds, tmp_path):
    ws = _copy(five_rounds, tmp_path)
    for path in Catalog(ws).path("incoming").iterdir():
        if path.name != ".gitkeep":
            path.unlink()
    tags = _git(ws, "tag")
    done = run_cli(["alloop", "round", "-w", str(ws)], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to do" in done.stdout and "no round was run" in done.stdout
    assert _git(ws, "tag") == tags
    forced = run_cli(["alloop", "round", "--force", "-w", str(ws)], ws)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "round-0006" in _git(ws, "tag")
    # a tabular pool's feature space is written down, not left an empty folder that DVC
    # warned of twice per commit, every round ("WARNING: 'models/features' is empty.")
    assert "is empty" not in forced.stdout + forced.stderr
    assert json.loads((ws / "models/features/space.json").read_text()) == {"kind": "tabular"}


# -- determinism -------------------------------------------------------------------------------


def test_identical_inputs_give_identical_selection_and_model_bytes(prefect_api, tmp_path):
    """Two workspaces built alike and fed the same files with the same clock end byte-equal."""
    roots = [tmp_path / "a" / "ws", tmp_path / "b" / "ws"]
    clock = "2026-01-05T02:00:00+00:00"
    for root in roots:
        catalog, _ = make_satimage_workspace(root)
        al_round(str(root), started_at=clock)
        annotate_outbox(catalog, 1, noise=0.1, seed=3)
        # the annotation clock is the wall clock: make the files identical
        for path in catalog.path("incoming").glob("*.csv"):
            pd.read_csv(path, dtype=str).assign(labeled_at=clock).to_csv(path, index=False)
        # round 2 trains, flags, scores and selects actively
        al_round(str(root), started_at="2026-01-06T02:00:00+00:00")
    a, b = (snapshot(root) for root in roots)
    assert a["models/candidate/model.txt"] == b["models/candidate/model.txt"]
    assert a["data/interim/batch.parquet"] == b["data/interim/batch.parquet"]
    assert a == b


def test_an_interrupted_rollback_blocks_rounds_until_it_is_finished(five_rounds, tmp_path):
    """Killed between its commit and its tag: rounds refuse, a second rollback finishes it
    with one rollback event, one commit and its tag."""
    import os
    import signal

    from tasks.faults import CRASH_ENV

    ws = _copy(five_rounds, tmp_path)
    env = {**os.environ, CRASH_ENV: "before:git-tag"}
    crashed = subprocess.run(
        [str(BIN / "alloop"), "rollback", "3", "-w", str(ws)],
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    blocked = run_cli(["alloop", "round", "--force", "-w", str(ws)], ws)
    assert blocked.returncode == 1 and "rollback to round-0003 was interrupted" in blocked.stderr
    done = run_cli(["alloop", "rollback", "3", "-w", str(ws)], ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [t for t in _git(ws, "tag") if t.startswith("rollback")] == ["rollback-0005-to-0003"]
    ledger = Catalog(ws).load("ledger")
    assert (ledger["event"] == ROLLBACK).sum() == 1
    assert len(_git(ws, "rev-list", "HEAD")) == len(_git(five_rounds, "rev-list", "HEAD")) + 1
    assert run_cli(["alloop", "round", "-w", str(ws)], ws).returncode == 0
