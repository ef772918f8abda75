"""The loop closed through a real Label Studio server (tests/labelstudio_server.py): connect,
push, two annotators answer through the API (one skips), pull, a pull with nothing new, an
answer changed in Label Studio, a cumulative export dropped by hand, and the server down in
the middle of a round.

Skips when `make labelstudio` has not been run, except in CI (``CI=true``), which must build it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import BIN, make_satimage_workspace, run_cli
from labelstudio_server import LabelStudioServer, require

from flows import labelstudio
from flows.round import al_round
from tasks.catalog import Catalog
from tasks.faults import CRASH_ENV

TOKEN_ENV = "ALLOOP_LABELSTUDIO_TOKEN"


def _tasks(server: LabelStudioServer, project_id: int) -> list[dict]:
    body = server.request("GET", "/api/tasks/", params={"project": project_id, "page_size": 1000})
    return body["tasks"]


def _events(catalog: Catalog, round_id: int) -> pd.Series:
    ledger = catalog.load("ledger")
    return ledger.loc[ledger["round_id"] == round_id, "event"].value_counts()


@pytest.fixture(scope="module")
def loop(prefect_api, tmp_path_factory):
    """A satimage workspace connected to a fresh project of a real server, after round 1."""
    require()
    work = tmp_path_factory.mktemp("labelstudio")
    with LabelStudioServer(work / "server") as server:
        root = work / "ws"
        catalog, classes = make_satimage_workspace(root)
        truth = pd.read_parquet(catalog.path("truth")).set_index("item_id")["label"]
        previous = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = server.token
        try:
            yield {
                "server": server,
                "root": root,
                "catalog": catalog,
                "classes": classes,
                "truth": truth.astype(str),
            }
        finally:
            if previous is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = previous


def test_a_team_labels_in_label_studio_and_never_touches_a_file(loop):
    server, root, catalog, truth = loop["server"], loop["root"], loop["catalog"], loop["truth"]

    # connect: the project is created with the workspace's config; the token is nowhere
    done = run_cli(["alloop", "labelstudio", "connect", "--url", server.url, "-w", str(root)], root)
    assert done.returncode == 0, done.stderr
    assert "created project" in done.stdout
    params = yaml.safe_load((root / "params.yaml").read_text())["labelstudio"]
    project_id = params["project_id"]
    assert params["url"] == server.url and project_id >= 1
    project = server.request("GET", f"/api/projects/{project_id}/")
    assert project["label_config"].strip() == (root / labelstudio.CONFIG_FILE).read_text().strip()
    tracked = subprocess.run(
        ["git", "grep", "-l", server.token], cwd=root, capture_output=True, text=True
    )
    assert tracked.stdout == "", f"the token is in versioned files: {tracked.stdout}"

    # round 1 pushes its batch; pushing again sends nothing
    first = al_round(str(root))
    issued = catalog.load("issued")
    batch1 = issued[issued["round_id"] == 1]
    tasks = _tasks(server, project_id)
    assert sorted(t["data"]["item_id"] for t in tasks) == sorted(batch1["item_id"])
    assert {t["data"]["round_id"] for t in tasks} == {1}
    record = json.loads((root / labelstudio.RECORD_FILE).read_text())
    assert record["push_ok"] and record["pushed"]["round-0001"]["sent"] == len(batch1)
    again = run_cli(["alloop", "labelstudio", "push", "-w", str(root)], root)
    assert again.returncode == 0, again.stderr
    assert f"0 tasks sent, {len(batch1)} already in the project" in again.stdout
    assert len(_tasks(server, project_id)) == len(batch1)
    assert first.round_id == 1

    # two annotators answer through the API; the second skips one task
    second_token = server.create_user("bea@alloop.example", "a-long-password-1")
    by_item = {t["data"]["item_id"]: t["id"] for t in tasks}
    items = sorted(by_item)
    admin_items, bea_items, skipped = items[:100], items[100:-1], items[-1]
    for item in admin_items:
        server.annotate(by_item[item], truth[item])
    for item in bea_items:
        server.annotate(by_item[item], truth[item], token=second_token)
    server.skip(by_item[skipped], token=second_token)

    # round 2 pulls every answer: one event each, under the annotator's email
    al_round(str(root))
    events = _events(catalog, 2)
    assert events.get("label", 0) == len(items) - 1
    assert events.get("skip", 0) == 1
    assert events.get("relabel", 0) == 0
    ledger = catalog.load("ledger")
    votes = ledger[(ledger["round_id"] == 2) & (ledger["event"] == "label")]
    assert set(votes["annotator"]) == {"admin@alloop.example", "bea@alloop.example"}
    assert votes["annotator_id"].str.startswith("labelstudio:").all()
    pulled = list((catalog.path("archive", 2)).glob("labelstudio-*.json"))
    assert len(pulled) == 1
    report = catalog.load("round_report")
    assert f"tasks with new answers pulled into `{pulled[0].name}`" in report
    # round 2's tasks carry the model's suggestion, as a prediction of model round-0002
    round2 = [t for t in _tasks(server, project_id) if t["data"]["round_id"] == 2]
    suggested = catalog.load("issued").query("round_id == 2 and reason != 'relabel'")
    assert len(round2) == (catalog.load("issued")["round_id"] == 2).sum()
    with_prediction = {t["data"]["item_id"] for t in round2 if t["total_predictions"] == 1}
    assert with_prediction == set(suggested["item_id"])
    assert "1 skips" in report

    # nothing new: the pull adds nothing, the round is idle
    nothing = run_cli(["alloop", "labelstudio", "pull", "-w", str(root)], root)
    assert nothing.returncode == 0 and "nothing new" in nothing.stdout
    idle = al_round(str(root))
    assert idle.skipped is not None and idle.round_id == 2

    # an answer changed in Label Studio is one relabel of that annotator
    changed_item = admin_items[0]
    (annotation,) = server.request("GET", f"/api/tasks/{by_item[changed_item]}/annotations/")
    wrong = next(c for c in loop["classes"] if c != truth[changed_item])
    server.update_annotation(annotation["id"], wrong)
    al_round(str(root))
    events = _events(catalog, 3)
    assert events.get("relabel", 0) == 1 and events.get("label", 0) == 0
    relabel = catalog.load("ledger").query("round_id == 3 and event == 'relabel'")
    assert relabel["item_id"].tolist() == [changed_item]
    assert relabel["annotator"].tolist() == ["admin@alloop.example"]

    # the whole project's export, dropped in by hand: no event
    export = server.request(
        "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"}
    )
    assert len(export) >= len(items)
    (catalog.path("incoming") / "project-export.json").write_text(json.dumps(export))
    al_round(str(root))
    events = _events(catalog, 4)
    assert events.get("label", 0) == 0 and events.get("relabel", 0) == 0
    assert events.get("skip", 0) == 0
    assert catalog.load("validate_report")["rows_already_consumed"] >= len(items)

    # the server stopped during a round: the round completes, status says so, nothing lost
    server.kill()
    down = al_round(str(root), force=True)
    assert down.skipped is None
    record = json.loads((root / labelstudio.RECORD_FILE).read_text())
    assert record["pull_ok"] is False and record["push_ok"] is False
    assert down.round_id in record["unpushed_rounds"]
    assert "the pull FAILED" in catalog.load("round_report")
    status = run_cli(["alloop", "status", "-w", str(root)], root)
    assert status.returncode == 0, status.stderr
    assert "FAILED" in status.stdout and "not yet in the project" in status.stdout
    assert "batches of the last rounds" in status.stdout  # out, answered, skipped per round

    # back up: the next round pushes what it owed and pulls what was answered meanwhile
    server.restart()
    owed = catalog.load("issued").query(f"round_id == {down.round_id}")
    caught = al_round(str(root), force=True)
    record = json.loads((root / labelstudio.RECORD_FILE).read_text())
    assert record["push_ok"] and record["unpushed_rounds"] == []
    assert record["pushed"][f"round-{down.round_id:04d}"]["sent"] == len(owed)
    keys = {(t["data"]["item_id"], t["data"]["round_id"]) for t in _tasks(server, project_id)}
    assert len(keys) == len(_tasks(server, project_id))  # no task twice
    assert caught.round_id == down.round_id + 1


def _cli_round(root, *, crash_at=None):
    """``alloop round`` as its own process group, killed at ``crash_at`` (tasks/faults.py)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [str(BIN / "alloop"), "round", "-w", str(root)],
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )


def test_a_kill_in_the_middle_of_a_push_or_a_pull_loses_nothing_and_counts_nothing_twice(
    loop, tmp_path
):
    server = loop["server"]
    root = tmp_path / "ws"
    catalog, _ = make_satimage_workspace(root)
    truth = pd.read_parquet(catalog.path("truth")).set_index("item_id")["label"].astype(str)
    done = run_cli(
        [
            "alloop",
            "labelstudio",
            "connect",
            "--url",
            server.url,
            "--title",
            "kills",
            "-w",
            str(root),
        ],
        root,
    )
    assert done.returncode == 0, done.stderr
    project_id = yaml.safe_load((root / "params.yaml").read_text())["labelstudio"]["project_id"]
    params = (root / "params.yaml").read_text().replace("push_chunk: 500", "push_chunk: 50")
    (root / "params.yaml").write_text(params)

    # killed after the first 50 of 150 tasks went out: the resumed round sends the other 100
    killed = _cli_round(root, crash_at="during:labelstudio-push")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(_tasks(server, project_id)) == 50
    resumed = _cli_round(root)
    assert resumed.returncode == 0, resumed.stderr
    batch = catalog.load("issued").query("round_id == 1")
    tasks = _tasks(server, project_id)
    assert sorted(t["data"]["item_id"] for t in tasks) == sorted(batch["item_id"])
    record = json.loads((root / labelstudio.RECORD_FILE).read_text())
    assert record["pushed"]["round-0001"] == {"sent": 100, "already_there": 50}

    # killed after the pulled answers were written, before the pull was recorded: the next
    # pull fetches them again, and each answer is one label event all the same
    for task in tasks:
        server.annotate(task["id"], truth[task["data"]["item_id"]])
    killed = _cli_round(root, crash_at="during:labelstudio-pull")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert list(catalog.path("incoming").glob("labelstudio-*.json"))
    again = _cli_round(root)
    assert again.returncode == 0, again.stderr
    events = _events(catalog, 2)
    assert events.get("label", 0) == len(tasks)
    assert catalog.load("ledger").query("event == 'label'")["item_id"].is_unique


def test_a_refused_token_a_missing_token_and_a_deleted_project_are_one_line_each(loop, tmp_path):
    server = loop["server"]
    root = tmp_path / "ws"
    make_satimage_workspace(root)
    connect = ["alloop", "labelstudio", "connect", "--url", server.url, "-w", str(root)]

    os.environ[TOKEN_ENV] = "not-a-token"
    try:
        refused = run_cli(connect, root)
    finally:
        os.environ[TOKEN_ENV] = server.token
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    assert "refused the API token (HTTP 401)" in refused.stderr
    assert "not-a-token" not in refused.stderr + refused.stdout

    os.environ.pop(TOKEN_ENV)
    try:
        missing = run_cli(connect, root)
    finally:
        os.environ[TOKEN_ENV] = server.token
    assert missing.returncode == 1 and "no Label Studio API token" in missing.stderr
    assert ".alloop/labelstudio-token" in missing.stderr

    # the token from the workspace's own unversioned file works as well
    (root / ".alloop").mkdir(exist_ok=True)
    (root / labelstudio.TOKEN_FILE).write_text(server.token + "\n")
    os.environ.pop(TOKEN_ENV)
    try:
        done = run_cli([*connect, "--title", "to be deleted"], root)
    finally:
        os.environ[TOKEN_ENV] = server.token
    assert done.returncode == 0, done.stderr
    assert run_cli(["git", "status", "--porcelain"], root).stdout == ""
    project_id = yaml.safe_load((root / "params.yaml").read_text())["labelstudio"]["project_id"]

    # a server that accepts the connection and never answers: the call gives up in time
    params = (
        (root / "params.yaml").read_text().replace("timeout_seconds: 30.0", "timeout_seconds: 1.0")
    )
    (root / "params.yaml").write_text(params)
    server.freeze()
    try:
        stuck = run_cli(["alloop", "labelstudio", "push", "-w", str(root)], root)
        stuck_pull = run_cli(["alloop", "labelstudio", "pull", "-w", str(root)], root)
    finally:
        server.thaw()
    assert stuck.returncode == 1 and "no round has run yet" in stuck.stderr
    assert stuck_pull.returncode == 1, stuck_pull.stdout
    assert "did not answer within 1 s" in stuck_pull.stderr
    state = json.loads((root / labelstudio.STATE_FILE).read_text())
    assert state["pull_ok"] is False and "did not answer" in state["pull_error"]

    server.request("DELETE", f"/api/projects/{project_id}/")
    pulled = run_cli(["alloop", "labelstudio", "pull", "-w", str(root)], root)
    assert pulled.returncode == 1
    assert f"project {project_id} does not exist" in pulled.stderr
    assert len(pulled.stderr.splitlines()) == 1
