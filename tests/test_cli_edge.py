"""The CLI edge: every user error ends in one line and an exit code, nothing is created in a
folder that is not a workspace, params are checked when they load, and a round with nothing to
do answers without starting Prefect."""

from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import DATASETS, run_cli

from tasks.params import STRATEGY_NAMES


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def _assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str):
    lines = _error_lines(done)
    assert done.returncode == code, done.stdout + done.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in done.stdout + done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["round"],
        ["audit"],
        ["history", "42"],
        ["upgrade"],
        ["pool", "add", "items.csv"],
        ["rollback", "1"],
        ["pipeline"],
        ["suite", "--write"],
    ],
)
def test_a_plain_folder_gets_one_line_and_nothing_is_created(tmp_path, args):
    plain = tmp_path / "plain"
    plain.mkdir()
    done = run_cli(["alloop", *args], plain)
    _assert_one_line_error(done, 1, f"{plain} is not an alloop workspace", "alloop init")
    assert list(plain.iterdir()) == []


def test_a_missing_workspace_folder_is_named_and_not_created(tmp_path):
    done = run_cli(["alloop", "status", "-w", str(tmp_path / "nowhere")], tmp_path)
    _assert_one_line_error(done, 1, str(tmp_path / "nowhere"))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_end_in_one_line_naming_the_command(tmp_path):
    done = run_cli(["alloop", "round", "--forc"], tmp_path)
    _assert_one_line_error(done, 2, "alloop round", "--forc")
    done = run_cli(["alloop", "audit", "--format", "xml"], tmp_path)
    _assert_one_line_error(done, 2, "--format", "'xml'")
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_the_traceback(tmp_path):
    done = run_cli(["alloop", "--verbose", "status"], tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stdout + done.stderr
    assert "error: " in done.stderr and "error: " not in done.stdout


def test_the_light_strategy_names_are_the_registry():
    from tasks.strategies import REGISTRY

    assert set(STRATEGY_NAMES) == set(REGISTRY)
    assert len(STRATEGY_NAMES) == len(set(STRATEGY_NAMES))


def test_params_refuse_an_unknown_strategy_naming_the_key():
    from tasks.params import ParamsError, load_params

    raw = {"project": {"classes": ["a", "b"]}}
    assert load_params(raw, ["score.strategy=margin"]).score.strategy == "margin"
    with pytest.raises(ParamsError, match=r"score\.strategy: .*unknown strategy 'nope'"):
        load_params(raw, ["score.strategy=nope"])


@pytest.fixture()
def pool_csv(tmp_path):
    raw = pd.read_parquet(DATASETS / "satimage.parquet").iloc[:200]
    raw.insert(0, "sample", [f"s-{i:04d}" for i in range(len(raw))])
    path = tmp_path / "pool.csv"
    raw.drop(columns=["label"]).to_csv(path, index=False)
    return path


def _init(tmp_path, pool, *extra):
    return run_cli(
        [
            "alloop",
            "init",
            str(tmp_path / "ws"),
            "--pool",
            str(pool),
            "--id-column",
            "sample",
            "--classes",
            "1,2,3,4,5,7",
            *extra,
        ],
        tmp_path,
    )


def test_init_refuses_an_unknown_strategy(tmp_path, pool_csv):
    done = _init(tmp_path, pool_csv, "-S", "score.strategy=nope")
    _assert_one_line_error(done, 1, "score.strategy", "'nope'", "diversity")
    assert not (tmp_path / "ws").exists()


def test_init_refuses_an_empty_pool(tmp_path, pool_csv):
    empty = tmp_path / "empty.csv"
    pd.read_csv(pool_csv).iloc[:0].to_csv(empty, index=False)
    done = _init(tmp_path, empty)
    _assert_one_line_error(done, 1, "no items")
    assert not (tmp_path / "ws").exists()


def test_init_refuses_a_label_column_left_in_the_pool_and_drop_column_is_the_way_out(
    tmp_path, pool_csv
):
    raw = pd.read_csv(pool_csv)
    labels = pd.read_parquet(DATASETS / "satimage.parquet").iloc[:200]["label"]
    raw["diagnosis"] = labels.map({1: "Red", 2: "cotton", 3: "grey", 4: "damp", 5: "veg", 7: "x"})
    leaky = tmp_path / "leaky.csv"
    raw.to_csv(leaky, index=False)
    classes = "red,cotton,grey,damp,veg,x"  # matched ignoring case: "Red" is a class name
    args = ["alloop", "init", str(tmp_path / "ws"), "--pool", str(leaky), "--id-column", "sample"]
    done = run_cli([*args, "--classes", classes], tmp_path)
    _assert_one_line_error(done, 1, "'diagnosis'", "--label-column", "--drop-column diagnosis")
    assert not (tmp_path / "ws").exists()
    done = run_cli([*args, "--classes", classes, "--drop-column", "diagnosis"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    pool = pd.read_parquet(tmp_path / "ws" / "data" / "pool" / "items-0000.parquet")
    assert "diagnosis" not in pool.columns and len(pool) == 200


@pytest.fixture()
def recorded_round_ws(tmp_path, pool_csv):
    """A workspace whose last commit records round 1 (tagged), as a round leaves it, so the idle
    check has something to look at; no round was actually run (no Prefect)."""
    done = _init(tmp_path, pool_csv)
    assert done.returncode == 0, done.stdout + done.stderr
    ws = tmp_path / "ws"
    (ws / "round.yaml").write_text("round_id: 1\nstarted_at: '2026-11-01T00:00:00+00:00'\n")
    for args in (
        ["git", "commit", "-q", "-am", "round-0001: recorded"],
        ["git", "tag", "--annotate", "round-0001", "-m", "round-0001"],
    ):
        assert run_cli(args, ws).returncode == 0
    return ws


def test_status_prints_file_names_as_they_are_not_as_rich_markup(recorded_round_ws):
    # rich read "[urgent]" as a style tag and dropped it (so were the rejected rows' [codes])
    (recorded_round_ws / "data" / "incoming" / "[urgent] labels.csv").write_text("item_id\n")
    done = run_cli(["alloop", "status", "-w", str(recorded_round_ws)], recorded_round_ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting in data/incoming: [urgent] labels.csv" in done.stdout, done.stdout


def test_an_idle_round_answers_once_without_starting_prefect(recorded_round_ws):
    ws = recorded_round_ws
    done = run_cli(["alloop", "round", "-w", str(ws)], ws.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("nothing to do") == 1, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (ws / ".alloop" / "prefect").exists()  # no Prefect database, no API started
    assert run_cli(["git", "tag"], ws).stdout.split() == ["round-0001"]


def test_a_params_typo_ends_the_round_in_one_line_before_prefect(recorded_round_ws):
    ws = recorded_round_ws
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["num_leavs"] = 3
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_cli(["alloop", "round", "-w", str(ws)], ws.parent)
    _assert_one_line_error(done, 1, "train.num_leavs", "params.yaml")
    assert not (ws / ".alloop" / "prefect").exists()


def test_a_bad_revision_is_one_line(recorded_round_ws):
    done = run_cli(["alloop", "audit", "--at", "round-0042", "-w", str(recorded_round_ws)], "/")
    _assert_one_line_error(done, 1, "round-0042")


def test_status_shows_the_versions_and_the_pool_left(recorded_round_ws):
    from flows.workspace import get_alloop_version

    done = run_cli(["alloop", "status", "-w", str(recorded_round_ws)], recorded_round_ws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"running {get_alloop_version()}" in done.stdout
    assert "pool: 200 of 200 items never issued" in done.stdout


def test_a_healthy_local_server_of_the_workspace_is_reused(tmp_path, monkeypatch):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from flows import runtime

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert runtime.find_local_server(tmp_path) is None  # no server.json
    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        home = runtime.prefect_home(tmp_path)
        home.mkdir(parents=True)
        api = f"http://127.0.0.1:{server.server_port}/api"
        (home / "server.json").write_text(json.dumps({"api_url": api, "pid": 1}))
        assert runtime.prepare_flow_run(tmp_path) == api
        assert os.environ["PREFECT_API_URL"] == api
    finally:
        server.shutdown()
        # not monkeypatch.delenv: a second call would record this address as the value to
        # put back after the test, and every later test would talk to a server that is gone
        os.environ.pop("PREFECT_API_URL", None)
    assert runtime.find_local_server(tmp_path) is None  # not answering: a temporary API instead


def test_a_table_shows_numbers_as_people_read_them():
    """`alloop audit` and `alloop history` print tables: a label quality of
    0.0002719370011567098 and a round id stored as 3.0 (its column holds NaN) were shown as
    such, and wrapped over four lines of an 80-column terminal."""
    from flows.cli import get_cell_text

    shown = [
        get_cell_text(v)
        for v in (0.0002719370011567098, 0.9666666666666667, 3.0, float("nan"), pd.NA, None)
    ]
    assert shown == ["0.0002719", "0.9667", "3", "", "", ""]
    assert [get_cell_text(v) for v in (123456.7, 7, True, "sim-annotator-1")] == [
        "123457",
        "7",
        "True",
        "sim-annotator-1",
    ]
