"""Process settings for a workspace: where Prefect and MLflow keep their state, no telemetry.

Called by the CLI before Prefect, MLflow or DVC are imported: Prefect reads some of its
settings at import time. Nothing here runs on import.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

#: Everything the stack would otherwise send home, turned off.
QUIET = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
}


def prefect_home(workspace: Path) -> Path:
    """Prefect's state for this workspace (its database, the local server's address)."""
    return (workspace / ".alloop" / "prefect").resolve()


def configure(
    workspace: Path, *, api_url: str | None = None, create_state: bool = True
) -> dict[str, str]:
    """Point Prefect at the workspace's own state and silence telemetry.

    ``create_state=False`` only sets the environment: the CLI creates the state folder when a
    command really runs a flow (:func:`prepare_flow_run`), never in a folder that is not a
    workspace. Returns the environment variables set, so that subprocesses (DVC, git) can
    inherit them.
    """
    settings = {
        **QUIET,
        "PREFECT_HOME": str(prefect_home(workspace)),
        # a fresh Prefect database takes 12-20 s to migrate on 2 cores; the default is 20 s
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"),
    }
    if api_url:
        settings["PREFECT_API_URL"] = api_url
    os.environ.update(settings)
    if create_state:
        prefect_home(workspace).mkdir(parents=True, exist_ok=True)
    return settings


def find_local_server(workspace: Path, *, timeout: float = 1.0) -> str | None:
    """The API of a healthy local Prefect server that ``alloop serve`` runs for this workspace
    (its address is in ``.alloop/prefect/server.json``), or None."""
    try:
        api_url = json.loads((prefect_home(workspace) / "server.json").read_text())["api_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as answer:
            return str(api_url) if answer.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def prepare_flow_run(workspace: Path) -> str | None:
    """Just before a flow runs in this process: create Prefect's state folder, and use the
    workspace's running local server when there is a healthy one (no temporary API to start:
    5-20 s saved). An API already set in the environment (a team's server) is kept.
    Returns the API used, or None for Prefect's temporary one."""
    prefect_home(workspace).mkdir(parents=True, exist_ok=True)
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    api_url = find_local_server(workspace)
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    return api_url


def mlflow_uri(workspace: Path) -> str:
    """The workspace's MLflow store: SQLite at an absolute path, whatever the current folder."""
    return f"sqlite:///{(workspace / '.alloop' / 'mlflow.db').resolve()}"
