"""The real Label Studio server of tests/labelstudio_server.py, through its REST API: a project,
tasks with predictions, an admin's annotation, a second user's annotation, update and skip, the
JSON export, a server killed mid-round and restarted on the same data.

Skips when `make labelstudio` has not been run, except in CI (``CI=true``), which must build it.
"""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from labelstudio_server import LabelStudioServer, require

# it starts a server process (about 10 s in all): kept out of `make test-fast` with the flow lane
pytestmark = pytest.mark.flow

LABEL_CONFIG = """<View>
  <Text name="item" value="$text"/>
  <Choices name="label" toName="item" choice="single">
    <Choice value="cat"/><Choice value="dog"/>
  </Choices>
</View>"""
ITEM_IDS = (100, 101, 102)


def _task(item_id: int) -> dict:
    prediction = {
        "model_version": "round-0001",
        "score": 0.5,
        "result": [
            {
                "from_name": "label",
                "to_name": "item",
                "type": "choices",
                "value": {"choices": ["cat"]},
            }
        ],
    }
    return {
        "data": {"item_id": item_id, "round_id": "round-0001", "text": f"item {item_id}"},
        "predictions": [prediction],
    }


def _export(server: LabelStudioServer, project_id: int) -> dict[int, list[dict]]:
    """The JSON export's annotations by our item id, with the fields alloop reads."""
    export = server.request(
        "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"}
    )
    return {
        task["data"]["item_id"]: [
            {
                "id": a["id"],
                "completed_by": a["completed_by"],
                "was_cancelled": a["was_cancelled"],
                "choices": [c for r in a["result"] for c in r["value"]["choices"]],
                "updated_at": a["updated_at"],
            }
            for a in task["annotations"]
        ]
        for task in export
    }


def test_annotations_of_two_users_survive_a_killed_server(tmp_path):
    require()
    with LabelStudioServer(tmp_path / "labelstudio") as server:
        project = server.request(
            "POST", "/api/projects", json={"title": "alloop test", "label_config": LABEL_CONFIG}
        )
        imported = server.request(
            "POST",
            f"/api/projects/{project['id']}/import",
            json=[_task(item_id) for item_id in ITEM_IDS],
        )
        assert (imported["task_count"], imported["prediction_count"]) == (3, 3)
        listed = server.request(
            "GET", "/api/tasks", params={"project": project["id"], "fields": "all"}
        )
        task_ids = {task["data"]["item_id"]: task["id"] for task in listed["tasks"]}
        assert sorted(task_ids) == list(ITEM_IDS)

        admin_id = server.request("GET", "/api/current-user/whoami")["id"]
        email = "annotator@alloop.example"
        token = server.create_user(email, secrets.token_urlsafe(12))
        annotator_id = server.request("GET", "/api/current-user/whoami", token=token)["id"]
        members = {user["email"]: user["id"] for user in server.request("GET", "/api/users/")}
        assert members[email] == annotator_id != admin_id

        by_admin = server.annotate(task_ids[100], "cat", lead_time=2.5)
        by_annotator = server.annotate(task_ids[101], "cat", token=token)
        skipped = server.skip(task_ids[102], token=token)
        updated = server.update_annotation(by_annotator["id"], "dog", token=token)
        assert updated["id"] == by_annotator["id"]
        assert updated["updated_at"] > by_annotator["updated_at"]

        expected = {
            100: [
                {
                    "id": by_admin["id"],
                    "completed_by": admin_id,
                    "was_cancelled": False,
                    "choices": ["cat"],
                    "updated_at": by_admin["updated_at"],
                }
            ],
            101: [
                {
                    "id": by_annotator["id"],
                    "completed_by": annotator_id,
                    "was_cancelled": False,
                    "choices": ["dog"],
                    "updated_at": updated["updated_at"],
                }
            ],
            102: [
                {
                    "id": skipped["id"],
                    "completed_by": annotator_id,
                    "was_cancelled": True,
                    "choices": [],
                    "updated_at": skipped["updated_at"],
                }
            ],
        }
        assert _export(server, project["id"]) == expected

        # the server dies in the middle of a round: a client fails at once, not after a timeout
        url, port = server.url, server.port
        server.kill()
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=10.0)
        assert time.monotonic() - started < 2.0

        server.restart()
        assert server.port == port
        assert _export(server, project["id"]) == expected
        # both tokens still work
        assert server.request("GET", "/api/current-user/whoami", token=token)["id"] == annotator_id
