"""MLflow: one run per round in the workspace's own SQLite store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flows.runtime import mlflow_uri
from tasks.catalog import Catalog, round_name
from tasks.params import Params, dump_params

EXPERIMENT = "alloop"


def _client(workspace: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri(workspace))


def _experiment_id(client: Any, workspace: Path) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    artifacts = (workspace / ".alloop" / "mlartifacts").resolve()
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())


def _metric_name(key: str) -> str:
    # names come from data too (class names, reason codes): keep what MLflow accepts
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)[:250]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[_metric_name(prefix)] = value


def _runs_of_round(client: Any, experiment_id: str, round_id: int) -> list[Any]:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`alloop.round_id` = '{round_id}'"
    )


def log_round(
    catalog: Catalog, round_id: int, params: Params, summaries: dict[str, dict[str, Any]]
) -> str:
    """Log the round's params, metrics, model and report; returns the run id.

    A run of the same round that never got its git commit is an attempt that crashed: it is
    marked KILLED and superseded, so the store never shows two real runs of one round.
    """
    client = _client(catalog.root)
    experiment_id = _experiment_id(client, catalog.root)
    for stale in _runs_of_round(client, experiment_id, round_id):
        if "alloop.git_commit" not in stale.data.tags:
            client.set_tag(stale.info.run_id, "alloop.superseded", "true")
            client.set_terminated(stale.info.run_id, "KILLED")
    run = client.create_run(
        experiment_id,
        run_name=round_name(round_id),
        tags={"alloop.round_id": str(round_id), "alloop.workspace": str(catalog.root)},
    )
    run_id = run.info.run_id
    flat_params: dict[str, Any] = {}
    for section, values in dump_params(params).items():
        if section != "project":
            for key, value in values.items():
                flat_params[f"{section}.{key}"] = value
    for key, value in flat_params.items():
        client.log_param(run_id, key, str(value)[:500])
    metrics: dict[str, Any] = {}
    for stage, summary in summaries.items():
        _flatten(stage, summary, metrics)
    for key, value in sorted(metrics.items()):
        client.log_metric(run_id, key, float(value), step=round_id)
    candidate = summaries.get("evaluate", {})
    client.set_tag(run_id, "alloop.promoted", str(bool(candidate.get("promoted"))))
    model_file = catalog.candidate_dir / "model.txt"
    if model_file.exists():
        client.log_artifacts(run_id, str(catalog.candidate_dir), "model")
    report = catalog.reports_dir / "round.md"
    if report.exists():
        client.log_artifact(run_id, str(report))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def tag_commit(workspace: Path, run_id: str, commit: str) -> None:
    _client(workspace).set_tag(run_id, "alloop.git_commit", commit)


def link_recorded_round(workspace: Path, round_id: int, commit: str) -> bool:
    """After a crash between the git commit and the MLflow tag: give the round's finished,
    not superseded run its commit. Returns whether a run was linked."""
    client = _client(workspace)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return False
    linked = False
    for run in _runs_of_round(client, found.experiment_id, round_id):
        tags = run.data.tags
        if "alloop.git_commit" not in tags and tags.get("alloop.superseded") != "true":
            client.set_tag(run.info.run_id, "alloop.git_commit", commit)
            linked = True
    return linked


def list_round_runs(workspace: Path) -> list[dict[str, Any]]:
    """Every round run in the workspace's store: round id, status, metrics, tags."""
    client = _client(workspace)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    runs = [r for r in runs if r.data.tags.get("alloop.superseded") != "true"]
    return [
        {
            "run_id": r.info.run_id,
            "round_id": int(r.data.tags.get("alloop.round_id", 0)),
            "status": r.info.status,
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
        }
        for r in runs
    ]
