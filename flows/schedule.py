"""``alloop serve``: rounds on a schedule, by Prefect's own scheduler.

``al_round`` is served as a deployment with a cron schedule; Prefect's scheduler creates the
runs and the serving process executes them. Scheduling needs a real Prefect API (the temporary
one a lone flow starts never schedules anything), so by default ``serve`` starts a local
``prefect server`` whose state (SQLite) lives in the workspace, and stops it when serving
ends; with ``api_url`` it registers with a team's existing server instead.

``alloop deploy`` registers the same deployment with a work pool of a team's server instead,
for ``alloop worker`` (Prefect's process worker) to run: no process of alloop's has to stay up
between rounds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows.workspace import WorkspaceError

log = logging.getLogger(__name__)

#: What a served workspace's deployment is called: ``al_round/<name>``.
DEPLOYMENT_PREFIX = "alloop-"


@dataclass(frozen=True)
class LocalServer:
    api_url: str
    pid: int
    log_file: Path


def get_deployment_name(workspace: Path) -> str:
    return f"{DEPLOYMENT_PREFIX}{workspace.resolve().name}"


def server_file(workspace: Path) -> Path:
    """Where a running local server's address is written, for other tools to find it."""
    return workspace / ".alloop" / "prefect" / "server.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def local_server(workspace: Path, *, timeout: float = 180.0) -> Iterator[LocalServer]:
    """A ``prefect server start`` on a free loopback port, state in the workspace; stopped
    (SIGTERM, then SIGKILL after 30 s) when the block ends, however it ends."""
    home = workspace / ".alloop" / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_file = home / "server.log"
    prefect = Path(sys.executable).with_name("prefect")
    env = {**os.environ, "PREFECT_HOME": str(home.resolve())}
    env.pop("PREFECT_API_URL", None)
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped as a whole, never orphaned by us
        )
    server = LocalServer(api_url=api_url, pid=process.pid, log_file=log_file)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if process.poll() is not None:
                raise WorkspaceError(
                    f"the local Prefect server exited with code {process.returncode} while "
                    f"starting; its log: {log_file}"
                )
            if time.monotonic() > deadline:
                raise WorkspaceError(
                    f"the local Prefect server did not answer within {timeout:.0f} s; "
                    f"its log: {log_file}"
                )
            time.sleep(0.5)
        server_file(workspace).write_text(json.dumps({"api_url": api_url, "pid": process.pid}))
        log.info("local Prefect server at %s (log: %s)", api_url, log_file)
        yield server
    finally:
        server_file(workspace).unlink(missing_ok=True)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.info("local Prefect server stopped")


def get_schedule(cron: str, timezone: str) -> object:
    """Prefect's cron schedule; a bad cron string or time zone is named in the error."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    try:
        CronSchedule(cron=cron, timezone=timezone)  # Prefect's own validation
    except ValueError as exc:
        field = "--timezone" if "timezone" in str(exc).split("\n")[1] else "--cron"
        value = timezone if field == "--timezone" else cron
        raise WorkspaceError(
            f"{field} {value!r} is not valid: a cron string like '0 2 * * *' and an IANA time "
            "zone like UTC or Europe/Paris are expected"
        ) from None
    return Cron(cron, timezone=timezone)


def serve_rounds(workspace: Path, *, cron: str, timezone: str, api_url: str | None) -> None:
    """Serve ``al_round`` for ``workspace`` on ``cron`` until interrupted (Ctrl-C, SIGTERM)."""
    schedule = get_schedule(cron, timezone)
    if api_url is None:
        with local_server(workspace) as server:
            _serve(workspace, schedule, server.api_url)
    else:
        _serve(workspace, schedule, _require_api(api_url))


def _serve(workspace: Path, schedule: object, api_url: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.round import al_round

    os.environ["PREFECT_API_URL"] = api_url  # the runs the runner starts inherit it
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            al_round.serve(
                name=get_deployment_name(workspace),
                schedules=[schedule],
                parameters={"workspace": str(workspace.resolve())},
                description=f"alloop rounds of {workspace.resolve()}",
                tags=["alloop"],
                limit=1,  # one round at a time (the workspace lock also guards it)
                print_starting_message=False,
            )
    except KeyboardInterrupt:
        log.info("serving stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _require_api(api_url: str) -> str:
    url = api_url.rstrip("/")
    if not _healthy(url):
        raise WorkspaceError(f"no Prefect API answers at {url} ({url}/health)")
    return url


def deploy_rounds(
    workspace: Path, *, pool: str, cron: str, timezone: str, api_url: str
) -> tuple[str, bool]:
    """Register ``al_round`` for ``workspace`` with the work pool ``pool`` of the Prefect API
    at ``api_url``, on ``cron``; the pool is created (type ``process``) if it does not exist.
    Returns the deployment's name and whether the pool was created.

    The flow's code is this alloop checkout, read in place by the worker (so the worker runs
    on this machine, or on one with the same paths), and each round's process gets
    :data:`flows.runtime.QUIET` whatever the worker's environment. One round at a time (the
    workspace lock also guards it).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.round import al_round
    from flows.runtime import QUIET
    from flows.workspace import TEMPLATE_ROOT

    schedule = get_schedule(cron, timezone)
    url = _require_api(api_url)
    name = get_deployment_name(workspace)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            try:
                client.read_work_pool(pool)
                created = False
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                created = True
        flow = al_round.from_source(source=str(TEMPLATE_ROOT), entrypoint="flows/round.py:al_round")
        flow.deploy(
            name=name,
            work_pool_name=pool,
            schedules=[schedule],
            parameters={"workspace": str(workspace.resolve())},
            job_variables={"env": dict(QUIET)},
            concurrency_limit=1,
            description=f"alloop rounds of {workspace.resolve()}",
            tags=["alloop"],
            print_next_steps=False,
            ignore_warnings=True,  # "a process work pool: consider serve", which is alloop serve
        )
    return f"{al_round.name}/{name}", created


def get_worker_command(pool: str, *, run_once: bool) -> list[str]:
    """``prefect worker start`` of this alloop's environment, for a process work pool."""
    prefect = Path(sys.executable).with_name("prefect")
    return [
        str(prefect),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        *(["--run-once"] if run_once else []),
    ]


def exec_worker(pool: str, *, api_url: str, run_once: bool) -> None:
    """Become Prefect's process worker for ``pool`` (this process is replaced, so signals
    reach the worker itself), with telemetry off. It runs until stopped, or polls once with
    ``run_once`` and exits when the runs it started have finished."""
    from flows.runtime import QUIET

    url = _require_api(api_url)
    env = {**os.environ, **QUIET, "PREFECT_API_URL": url}
    command = get_worker_command(pool, run_once=run_once)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
