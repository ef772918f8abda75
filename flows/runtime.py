"""Process settings for a workspace: where Prefect and MLflow keep their state, no telemetry.

Called by the CLI before Prefect, MLflow or DVC are imported: Prefect reads some of its
settings at import time. Nothing here runs on import.
"""

from __future__ import annotations

import os
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


def configure(workspace: Path, *, api_url: str | None = None) -> dict[str, str]:
    """Point Prefect at the workspace's own state and silence telemetry.

    Returns the environment variables set, so that subprocesses (DVC, git) can inherit them.
    """
    state = (workspace / ".alloop").resolve()
    settings = {
        **QUIET,
        "PREFECT_HOME": str(state / "prefect"),
        # a fresh Prefect database takes 12-20 s to migrate on 2 cores; the default is 20 s
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"),
    }
    if api_url:
        settings["PREFECT_API_URL"] = api_url
    os.environ.update(settings)
    (state / "prefect").mkdir(parents=True, exist_ok=True)
    return settings


def mlflow_uri(workspace: Path) -> str:
    """The workspace's MLflow store: SQLite at an absolute path, whatever the current folder."""
    return f"sqlite:///{(workspace / '.alloop' / 'mlflow.db').resolve()}"
