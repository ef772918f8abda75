"""Label Studio, live: a workspace connected to a project gets each round's batch pushed as
tasks and the annotators' answers pulled back, with no file carried by hand.

- ``alloop labelstudio connect`` creates (or adopts) the project with the workspace's labeling
  config (``labelstudio/config.xml``, versioned: a team may edit it) and records the URL and
  project id in ``params.yaml``. The API token is never a param: it comes from the environment
  variable ``labelstudio.token_env`` or the unversioned file ``.alloop/labelstudio-token``,
  and appears in no file, commit, MLflow run or log line.
- **Pull**, before a round decides whether it has work: the annotations created or updated
  since the last pull, as Label Studio's JSON export of the tasks they belong to, written to
  ``data/incoming/`` exactly as received. Validate, the archive and the ledger consume it as
  any other file; intake knows each annotation by its id and update time, so a repeat is
  counted as already consumed, never entered twice.
- **Push**, after export: the round's ``tasks.json`` (and any earlier round's whose push
  failed) to the project. A task is known by ``data.item_id`` and ``data.round_id``: what the
  project already holds is not sent again, so a retry, or a push killed half way, creates no
  duplicate.

A server that is down, a token refused, a project deleted or a call that times out never
fails a round: the round completes on what it has, ``reports/labelstudio.json`` and ``alloop
status`` say what failed, and the next round retries (the pull from the same cursor, the push
of every round not yet confirmed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from tasks.catalog import (
    Catalog,
    get_artifact,
    json_text,
    round_name,
    write_bytes,
    write_json,
    write_text,
)
from tasks.faults import crash_point
from tasks.labelstudio import (
    get_label_config,
    get_latest_update,
    get_shown_columns,
    get_task_key,
    get_tasks_to_push,
    get_users_map,
    get_utc_time,
)
from tasks.params import LabelStudioParams, Params, load_params

log = logging.getLogger(__name__)

#: The token's unversioned file in a workspace (``.alloop/`` is git-ignored).
TOKEN_FILE = ".alloop/labelstudio-token"
#: The labeling config, versioned with the workspace.
CONFIG_FILE = get_artifact("labelstudio_config").path
#: Who the project's user ids are (written on each pull that brings answers).
USERS_FILE = get_artifact("labelstudio_users").path
#: What the last round's pull and push did, committed with the round.
RECORD_FILE = get_artifact("labelstudio_record").path
#: The last pull and push attempts, local (an idle round commits nothing): ``alloop status``.
STATE_FILE = get_artifact("labelstudio_state").path
#: Tasks listed per page.
PAGE_SIZE = 500


class LabelStudioError(RuntimeError):
    """A Label Studio call failed; the message says which call, where and why (never the
    token)."""


# -- the token and the client ----------------------------------------------------------------
def read_token(root: Path, params: LabelStudioParams) -> str:
    """The API token: the environment variable ``params.token_env``, else ``.alloop/
    labelstudio-token`` in the workspace."""
    token = os.environ.get(params.token_env, "").strip()
    if token:
        return token
    path = root / TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    raise LabelStudioError(
        f"no Label Studio API token: set the environment variable {params.token_env}, or "
        f"write the token into {path} (never versioned); Label Studio shows it under "
        "Account & Settings"
    )


class LabelStudioClient:
    """Label Studio's REST API, token auth, every call bounded by ``timeout`` seconds."""

    def __init__(self, url: str, token: str, *, timeout: float) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout,
            follow_redirects=True,
        )
        self._timeout = timeout

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, what: str, allow: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """One call; every failure a :class:`LabelStudioError` saying ``what`` failed (an
        HTTP status in ``allow`` is returned, not raised)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise LabelStudioError(
                f"{what}: Label Studio at {self.url} did not answer within {self._timeout:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise LabelStudioError(
                f"{what}: Label Studio at {self.url} is not reachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"{what}: Label Studio at {self.url} refused the API token (HTTP "
                f"{response.status_code}); check the token in the environment or "
                f"{TOKEN_FILE}, and that legacy tokens are enabled on the server"
            )
        if response.status_code >= 400 and response.status_code not in allow:
            raise LabelStudioError(
                f"{what}: HTTP {response.status_code} from {self.url}{path}: {response.text[:300]}"
            )
        return response

    def json(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        response = self.request(method, path, what=what, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise LabelStudioError(
                f"{what}: {self.url}{path} answered something that is not JSON "
                f"({response.text[:120]!r})"
            ) from exc

    # -- projects
    def get_project(self, project_id: int) -> dict[str, Any]:
        try:
            return self.json("GET", f"/api/projects/{project_id}/", what="read the project")
        except LabelStudioError as exc:
            if "HTTP 404" in str(exc):
                raise LabelStudioError(
                    f"project {project_id} does not exist at {self.url} (deleted?); "
                    "`alloop labelstudio connect` creates or adopts another"
                ) from exc
            raise

    def list_projects(self) -> list[dict[str, Any]]:
        projects: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.json(
                "GET",
                "/api/projects/",
                what="list the projects",
                params={"page": page, "page_size": 100},
            )
            rows = body.get("results", []) if isinstance(body, dict) else body
            projects.extend(rows)
            if not isinstance(body, dict) or not body.get("next"):
                return projects
            page += 1

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        return self.json(
            "POST",
            "/api/projects/",
            what="create the project",
            json={"title": title, "label_config": label_config},
        )

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self.json(
            "PATCH",
            f"/api/projects/{project_id}/",
            what="set the project's labeling config",
            json={"label_config": label_config},
        )

    def list_users(self) -> list[dict[str, Any]]:
        body = self.json("GET", "/api/users/", what="list the users")
        return body.get("results", []) if isinstance(body, dict) else body

    # -- tasks
    def iter_tasks(self, project_id: int, *, query: dict | None = None) -> Iterator[dict]:
        """The project's tasks (their ``id``, ``data``, ``updated_at``), page by page."""
        page = 1
        while True:
            params: dict[str, Any] = {
                "project": project_id,
                "page": page,
                "page_size": PAGE_SIZE,
                "fields": "task_only",  # no annotation or prediction objects
            }
            if query is not None:
                params["query"] = json.dumps(query)
            response = self.request(
                "GET", "/api/tasks/", what="list the project's tasks", allow=(404,), params=params
            )
            if response.status_code == 404:  # "Invalid page": past the last one
                if page == 1:
                    raise LabelStudioError(
                        f"list the project's tasks: project {project_id} does not exist at "
                        f"{self.url} (deleted?)"
                    )
                return
            body = response.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or total is None or page * PAGE_SIZE >= int(total):
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        body = self.json(
            "POST",
            f"/api/projects/{project_id}/import",
            what=f"import {len(tasks)} tasks",
            json=list(tasks),
        )
        return int(body.get("task_count", len(tasks))) if isinstance(body, dict) else len(tasks)

    def export(self, project_id: int, task_ids: Sequence[int]) -> bytes:
        """Label Studio's JSON export of ``task_ids``, as received."""
        params: list[tuple[str, Any]] = [("exportType", "JSON")]
        params += [("ids[]", i) for i in task_ids]
        return self.request(
            "GET",
            f"/api/projects/{project_id}/export",
            what=f"export {len(task_ids)} tasks",
            params=params,
        ).content


def open_client(root: Path, params: Params) -> tuple[LabelStudioClient, int]:
    """A client of the workspace's connected project, and the project's id."""
    settings = params.labelstudio
    if not settings.connected:
        raise LabelStudioError(
            "this workspace is not connected to Label Studio: `alloop labelstudio connect "
            "--url URL` first"
        )
    client = LabelStudioClient(
        settings.url, read_token(root, settings), timeout=settings.timeout_seconds
    )
    return client, settings.project_id


# -- connect ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    url: str
    project_id: int
    title: str
    created: bool
    config_file: Path
    commit: str


def get_shown_text_columns(catalog: Catalog, params: Params) -> list[str]:
    """The pool's text columns a task shows as text (as the features stage chooses them,
    :func:`tasks.features.choose_text_columns`, and export shows them)."""
    from tasks.features import DETECT_ROWS, choose_text_columns  # scikit-learn: load if used

    head = catalog.read_pool_head(DETECT_ROWS)
    text_columns, _ = choose_text_columns(params.project.text_columns, head)
    names = [c for c in head.columns if c != "item_id"]
    return get_shown_columns(names, params=params.export, text_columns=text_columns)[1]


def connect(
    root: Path, *, url: str, project_id: int | None = None, title: str | None = None
) -> Connection:
    """Connect the workspace at ``root`` to a project: adopt ``project_id``, or the one
    project titled ``title``, or create one (titled ``title`` or the workspace's name); give
    it the workspace's labeling config (written from the params when
    ``labelstudio/config.xml`` does not exist yet); record ``labelstudio.url`` and
    ``labelstudio.project_id`` in ``params.yaml``; commit both."""
    from flows import versioning
    from flows.workspace import check_committed, hold_workspace

    catalog = Catalog(root)
    with hold_workspace(root, "labelstudio connect"):
        check_committed(root, "connecting to Label Studio")
        params = catalog.read_params()
        config_path = root / CONFIG_FILE
        label_config = (
            config_path.read_text()
            if config_path.is_file()
            else get_label_config(
                params.project.classes,
                params=params.export,
                text_columns=get_shown_text_columns(catalog, params),
                multiple=params.project.task == "multilabel",
            )
        )
        settings = params.labelstudio.model_copy(update={"url": url})
        with LabelStudioClient(
            url, read_token(root, settings), timeout=settings.timeout_seconds
        ) as client:
            created = False
            if project_id is not None:
                project = client.get_project(project_id)
            else:
                wanted = title or f"alloop {root.name}"
                same = [p for p in client.list_projects() if p.get("title") == wanted]
                if len(same) > 1:
                    raise LabelStudioError(
                        f"{len(same)} projects at {url} are titled {wanted!r} (ids "
                        f"{[p.get('id') for p in same]}): name one with --project ID"
                    )
                if same:
                    project = same[0]
                else:
                    project = client.create_project(wanted, label_config)
                    created = True
            # Label Studio keeps the config without its last newline
            if not created and (project.get("label_config") or "").strip() != label_config.strip():
                client.set_label_config(int(project["id"]), label_config)
            users = get_users_map(client.list_users())
        write_text(config_path, label_config)
        write_json(root / USERS_FILE, users)
        set_connection(catalog, url=url, project_id=int(project["id"]))
        versioning.git(root, "add", "--", CONFIG_FILE, USERS_FILE, "params.yaml")
        message = (
            f"labelstudio connect: project {project['id']} ({project.get('title')!r}) at {url}"
        )
        versioning.git(root, "commit", "--quiet", "-m", message)
        return Connection(
            url,
            int(project["id"]),
            str(project.get("title")),
            created,
            config_path,
            versioning.head_commit(root),
        )


def set_connection(catalog: Catalog, *, url: str, project_id: int) -> None:
    """Write ``labelstudio.url`` and ``labelstudio.project_id`` into ``params.yaml``, every
    other line as it was."""
    raw = yaml.safe_load(catalog.params_file.read_text()) or {}
    section = dict(raw.get("labelstudio") or {})
    section.update(url=url, project_id=project_id)
    raw["labelstudio"] = section
    load_params(raw)  # refuse to write what a round could not read
    write_text(catalog.params_file, yaml.safe_dump(raw, sort_keys=False))


# -- the record of a round's pull and push --------------------------------------------------
@dataclass
class SyncRecord:
    """What a round's pull and push did (``reports/labelstudio.json``)."""

    project_id: int | None = None
    url: str | None = None
    #: the latest annotation update consumed so far (Label Studio's own text, UTC)
    pull_cursor: str | None = None
    pull_ok: bool | None = None
    pull_error: str | None = None
    #: the files the pull wrote into data/incoming (the changed tasks, 500 to a file)
    pull_files: list[str] = field(default_factory=list)
    pulled_tasks: int = 0
    pushed_at: str | None = None
    push_ok: bool | None = None
    push_error: str | None = None
    #: per round pushed: tasks sent now, tasks the project held already
    pushed: dict[str, dict[str, int]] = field(default_factory=dict)
    #: rounds whose batch is not confirmed in the project: the next push retries them
    unpushed_rounds: list[int] = field(default_factory=list)
    pulled_at: str | None = None

    @classmethod
    def read(cls, path: Path) -> SyncRecord:
        if not path.is_file():
            return cls()
        known = {f for f in cls.__dataclass_fields__}
        raw = json.loads(path.read_text())
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def last_change(self) -> str:
        """When the last pull or push of this record was made ("" for none)."""
        return max(self.pulled_at or "", self.pushed_at or "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- pull ------------------------------------------------------------------------------------
def get_changed_query(since: str | None) -> dict[str, Any] | None:
    """The data manager's filter for tasks updated after ``since`` (None: every task).

    A task's ``updated_at`` moves when one of its annotations is created, updated or skipped
    (checked on 1.23.2); the server takes the time only as ``%Y-%m-%dT%H:%M:%S.%fZ`` (any
    other form answers HTTP 500).
    """
    if since is None:
        return None
    moment = get_utc_time(since)
    if moment is None:
        raise LabelStudioError(f"the pull cursor {since!r} is not a time: delete {STATE_FILE}")
    return {
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": moment,
                }
            ],
        }
    }


def get_round_query(round_id: int) -> dict[str, Any]:
    """The data manager's filter for the tasks alloop sent in round ``round_id``."""
    return {
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:data.round_id",
                    "operator": "equal",
                    "type": "Number",
                    "value": round_id,
                }
            ],
        }
    }


def pull(catalog: Catalog, params: Params, record: SyncRecord) -> SyncRecord:
    """Fetch the annotations created or updated since ``record.pull_cursor`` into
    ``data/incoming/``; never raises for Label Studio's faults (they are in the record).

    The changed tasks are exported :data:`PAGE_SIZE` at a time (their ids go in the URL), each
    export written as received, when it holds an answer newer than the cursor.
    """
    pulled = SyncRecord(**{**record.to_dict(), "pull_files": [], "pulled_tasks": 0})
    pulled.pulled_at = _now()
    try:
        client, project_id = open_client(catalog.root, params)
        with client:
            changed = [
                int(t["id"])
                for t in client.iter_tasks(project_id, query=get_changed_query(record.pull_cursor))
                if t.get("total_annotations", 1) or t.get("cancelled_annotations", 0)
            ]
            exports = [
                client.export(project_id, changed[start : start + PAGE_SIZE])
                for start in range(0, len(changed), PAGE_SIZE)
            ]
            users = get_users_map(client.list_users()) if changed else None
        try:
            tasks = [json.loads(content) for content in exports]
        except ValueError as exc:
            raise LabelStudioError(
                f"export: Label Studio at {client.url} sent an export that is not JSON ({exc})"
            ) from exc
    except LabelStudioError as exc:
        log.warning("Label Studio pull failed: %s; the next round retries", exc)
        pulled.pull_ok, pulled.pull_error = False, str(exc)
        return pulled
    pulled.pull_ok, pulled.pull_error = True, None
    pulled.project_id, pulled.url = project_id, params.labelstudio.url
    cursor = get_utc_time(record.pull_cursor) if record.pull_cursor else None
    new = [
        (content, export, latest)
        for content, export in zip(exports, tasks, strict=True)
        if (latest := get_latest_update(export)) is not None and (cursor is None or latest > cursor)
    ]
    if not new:
        log.info("Label Studio: nothing new since %s", cursor or "the start")
        return pulled
    for content, export, latest in new:
        # named by its first task and its latest answer: a pull repeated after a crash writes
        # the same file again
        stamp = latest.replace(":", "").replace(".", "-")
        name = f"labelstudio-p{project_id}-{stamp}-t{export[0].get('id')}.json"
        write_bytes(catalog.path("incoming") / name, content)
        crash_point("during:labelstudio-pull")
        pulled.pull_files.append(name)
        pulled.pulled_tasks += len(export)
    if users:
        path = catalog.root / USERS_FILE
        known = json.loads(path.read_text()) if path.is_file() else {}
        if {**known, **users} != known:
            write_json(path, {**known, **users})
    pulled.pull_cursor = max(latest for _, _, latest in new)
    log.info(
        "Label Studio: %d tasks with new answers pulled into %s",
        pulled.pulled_tasks,
        ", ".join(pulled.pull_files),
    )
    return pulled


def pull_into_incoming(catalog: Catalog, params: Params) -> SyncRecord:
    """:func:`pull` from where the last pull stopped, its result kept (``alloop status``)."""
    record = pull(catalog, params, read_record(catalog))
    save_state(catalog, record)
    return record


# -- push ------------------------------------------------------------------------------------
def push(catalog: Catalog, params: Params, record: SyncRecord, round_id: int) -> SyncRecord:
    """Send round ``round_id``'s batch, and every earlier round's not yet confirmed, to the
    project; never raises for Label Studio's faults (they are in the record)."""
    rounds = sorted({*record.unpushed_rounds, round_id})
    pushed = SyncRecord(**{**record.to_dict(), "pushed": {}, "unpushed_rounds": list(rounds)})
    pushed.pushed_at = _now()
    try:
        client, project_id = open_client(catalog.root, params)
        with client:
            for r in rounds:
                existing = {
                    key
                    for task in client.iter_tasks(project_id, query=get_round_query(r))
                    if (key := get_task_key(task)) is not None
                }
                tasks_file = catalog.path("outbox", r) / "tasks.json"
                if not tasks_file.is_file():  # its batch is gone (rolled back): nothing to send
                    pushed.unpushed_rounds.remove(r)
                    continue
                tasks = json.loads(tasks_file.read_text())
                missing = get_tasks_to_push(tasks, existing)
                for start in range(0, len(missing), params.labelstudio.push_chunk):
                    chunk = missing[start : start + params.labelstudio.push_chunk]
                    client.import_tasks(project_id, chunk)
                    crash_point("during:labelstudio-push")
                pushed.pushed[round_name(r)] = {
                    "sent": len(missing),
                    "already_there": len(tasks) - len(missing),
                }
                pushed.unpushed_rounds.remove(r)
    except LabelStudioError as exc:
        log.warning(
            "Label Studio push failed: %s; the batch stays in the outbox and the next round "
            "retries",
            exc,
        )
        pushed.push_ok, pushed.push_error = False, str(exc)
        return pushed
    pushed.push_ok, pushed.push_error = True, None
    pushed.project_id, pushed.url = project_id, params.labelstudio.url
    return pushed


# -- state ----------------------------------------------------------------------------------
def read_record(catalog: Catalog) -> SyncRecord:
    """The newer of the last committed record and the local state (an idle round's pull, a
    push by hand)."""
    committed = SyncRecord.read(catalog.root / RECORD_FILE)
    local = SyncRecord.read(catalog.root / STATE_FILE)
    return local if local.last_change() > committed.last_change() else committed


def save_state(catalog: Catalog, record: SyncRecord) -> None:
    write_text(catalog.root / STATE_FILE, json_text(record.to_dict()))


def save_record(catalog: Catalog, record: SyncRecord) -> None:
    save_state(catalog, record)
    write_text(catalog.root / RECORD_FILE, json_text(record.to_dict()))
