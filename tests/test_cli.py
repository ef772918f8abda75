"""The command line as an operator uses it."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import DATASETS, run_cli

from flows.workspace import WorkspaceBusy, hold_workspace


@pytest.fixture()
def pool_csv(tmp_path):
    raw = pd.read_parquet(DATASETS / "satimage.parquet").iloc[:300]
    raw.insert(0, "sample", [f"s-{i:04d}" for i in range(len(raw))])
    path = tmp_path / "pool.csv"
    raw.drop(columns=["label"]).to_csv(path, index=False)
    return path


def test_init_names_a_missing_id_column(tmp_path, pool_csv):
    done = run_cli(
        [
            "alloop",
            "init",
            str(tmp_path / "ws"),
            "--pool",
            str(pool_csv),
            "--id-column",
            "nope",
            "--classes",
            "a,b",
        ],
        tmp_path,
    )
    assert done.returncode == 1
    assert "'nope' is not a column of the pool" in done.stderr
    assert not (tmp_path / "ws" / ".git").exists()


def test_init_then_status_on_a_csv_pool(tmp_path, pool_csv):
    ws = tmp_path / "ws"
    done = run_cli(
        [
            "alloop",
            "init",
            str(ws),
            "--pool",
            str(pool_csv),
            "--id-column",
            "sample",
            "--classes",
            "1,2,3,4,5,7",
            "-S",
            "select.seed_size=40",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for path in (
        "params.yaml",
        "dvc.yaml",
        "round.yaml",
        "flows/round.py",
        "tasks/train.py",
        "data/pool.dvc",
        ".dvc/config",
    ):
        assert (ws / path).exists(), path
    pool = pd.read_parquet(ws / "data" / "pool" / "items-0000.parquet")
    assert pool["item_id"].iloc[0] == "s-0000" and "sample" not in pool.columns
    assert "seed_size: 40" in (ws / "params.yaml").read_text()
    assert run_cli(["git", "status", "--porcelain"], ws).stdout == ""
    status = run_cli(["alloop", "status", "--workspace", str(ws)], tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "round: 0" in status.stdout
    check = run_cli(["alloop", "pipeline", "--workspace", str(ws)], tmp_path)
    assert "matches the stage specs" in check.stdout


def test_a_second_process_on_a_busy_workspace_names_the_holder(tmp_path):
    with hold_workspace(tmp_path, "round"):
        with pytest.raises(WorkspaceBusy, match=f'"pid": {os.getpid()}'):
            _try_from_another_process(tmp_path)
    _try_from_another_process(tmp_path)  # released: free again (raises nothing)


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with hold_workspace(tmp_path, "round"):
        with hold_workspace(tmp_path, "round"):  # the flow inside the CLI's hold
            pass
        with pytest.raises(WorkspaceBusy):  # still held by the outer hold
            _try_from_another_process(tmp_path)


def _try_from_another_process(root):
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from flows.workspace import hold_workspace\n"
        "with hold_workspace(Path(sys.argv[1]), 'round'): pass"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 and "is busy" in done.stderr:
        raise WorkspaceBusy(done.stderr)
