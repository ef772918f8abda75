"""Documents labeled in a real Label Studio server (tests/labelstudio_server.py): the project
shows each text column as text, and the answers (one class, or a label set chosen in a
multi-choice) come back into the ledger and the model.

Skips when `make labelstudio` has not been run, except in CI (``CI=true``), which must build it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conftest import run_cli
from labelstudio_server import LabelStudioServer, require
from test_multilabel import CLASSES as TOPICS
from test_multilabel import _stories
from test_text import CLASSES, make_documents

from flows.round import al_round
from flows.workspace import init_workspace

TOKEN_ENV = "ALLOOP_LABELSTUDIO_TOKEN"


def _connected(server, root, **init):
    """A workspace made by ``init_workspace(root, **init)`` and connected to ``server`` by
    ``alloop labelstudio connect``: its catalog, project id and the project's labeling config."""
    catalog = init_workspace(root, id_column="item_id", **init)
    done = run_cli(["alloop", "labelstudio", "connect", "--url", server.url, "-w", str(root)], root)
    assert done.returncode == 0, done.stderr
    project_id = catalog.read_params().labelstudio.project_id
    config = ET.fromstring(server.request("GET", f"/api/projects/{project_id}/")["label_config"])
    return catalog, project_id, config


def test_documents_are_shown_as_text_and_their_answers_train_the_model(
    prefect_api, tmp_path, monkeypatch
):
    require()
    docs = make_documents(800, seed=5)
    with LabelStudioServer(tmp_path / "server") as server:
        monkeypatch.setenv(TOKEN_ENV, server.token)
        root = tmp_path / "ws"
        catalog, project_id, config = _connected(
            server,
            root,
            pool=docs,
            classes=CLASSES,
            label_column="label",
            overrides=("select.seed_size=120", "select.batch_size=60"),
        )
        assert [t.get("value") for t in config.findall("Text")] == ["$text_0"]

        al_round(str(root))
        body = server.request(
            "GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}
        )
        tasks = body["tasks"]
        text = docs.set_index("item_id")["body"]
        assert len(tasks) == 120
        for task in tasks:
            assert task["data"]["text_0"] == text[task["data"]["item_id"]]
            assert set(task["data"]["item"]) == {"desk", "length"}
        truth = docs.set_index("item_id")["label"]
        for task in tasks:
            server.annotate(task["id"], truth[task["data"]["item_id"]])

        al_round(str(root))
        ledger = catalog.load("ledger")
        votes = ledger[(ledger["round_id"] == 2) & (ledger["event"] == "label")]
        assert len(votes) == 120
        metrics = catalog.load("metrics")
        assert metrics["candidate"]["macro_f1"] > 0.7
        # the next batch went out the same way, each document as text
        pushed = [
            t
            for t in server.request(
                "GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}
            )["tasks"]
            if t["data"]["round_id"] == 2
        ]
        assert len(pushed) == 60
        assert all(t["data"]["text_0"] == text[t["data"]["item_id"]] for t in pushed)


def test_label_sets_go_out_as_multi_choice_and_come_back_as_sets(
    prefect_api, tmp_path, monkeypatch
):
    require()
    rows, matrix = _stories(600, seed=6)
    truth = {
        item: [c for c, k in zip(TOPICS, row, strict=True) if k]
        for item, row in zip(rows["item_id"], matrix, strict=True)
    }
    with LabelStudioServer(tmp_path / "server") as server:
        monkeypatch.setenv(TOKEN_ENV, server.token)
        root = tmp_path / "ws"
        catalog, project_id, config = _connected(
            server,
            root,
            pool=rows,
            classes=TOPICS,
            overrides=("project.task=multilabel", "select.seed_size=120", "select.batch_size=60"),
        )
        assert config.find("Choices").get("choice") == "multiple"

        al_round(str(root))
        tasks = server.request(
            "GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}
        )["tasks"]
        assert len(tasks) == 120
        # each answer in the annotator's own order: the ledger keeps one spelling
        for task in tasks:
            server.annotate(task["id"], truth[task["data"]["item_id"]][::-1])

        al_round(str(root))
        ledger = catalog.load("ledger")
        votes = ledger[(ledger["round_id"] == 2) & (ledger["event"] == "label")]
        assert len(votes) == 120
        spelled = {item: "|".join(labels) for item, labels in truth.items()}
        assert (votes["label"].to_numpy() == votes["item_id"].map(spelled).to_numpy()).all()
        assert catalog.load("metrics")["candidate"]["map"] > 0.8
        # the next batch goes out with the predicted set pre-selected, one choice per label
        pushed = [
            t
            for t in server.request(
                "GET",
                "/api/tasks/",
                params={"project": project_id, "page_size": 1000, "fields": "all"},
            )["tasks"]
            if t["data"]["round_id"] == 2
        ]
        assert len(pushed) == 60
        suggested = [t["predictions"][0]["result"][0]["value"]["choices"] for t in pushed]
        assert all(set(s) <= set(TOPICS) and s for s in suggested)
        assert any(len(s) > 1 for s in suggested)
