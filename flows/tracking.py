"""MLflow: one run per round in the workspace's own SQLite store."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.runtime import mlflow_uri
from tasks.catalog import FEATURES, MODEL_FILE, Catalog, round_name
from tasks.params import Params, dump_params
from tasks.summaries import RoundSummaries

EXPERIMENT = "alloop"
#: The registered model: one version per promoted round, the alias on the current champion.
MODEL = "alloop"
CHAMPION = "champion"


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
    elif isinstance(value, bool):  # a verdict (promoted, stop advised, drift): 1 or 0 per round
        out[_metric_name(prefix)] = int(value)
    elif isinstance(value, int | float):
        out[_metric_name(prefix)] = value


def log_batched(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any],
    metrics: Iterable[tuple[str, float, int]],
) -> None:
    """Log params and ``(key, value, step)`` metrics in as few ``log_batch`` calls as MLflow's
    batch limits allow. One call per value is one SQLite transaction each: about 0.3 s of a
    round's 47 params and 47 metrics (bench/README.md)."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    now = int(time.time() * 1000)
    param_list = [Param(key, str(value)[:500]) for key, value in params.items()]
    metric_list = [Metric(key, float(value), now, step) for key, value, step in metrics]
    for start in range(0, len(param_list), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=param_list[start : start + MAX_PARAMS_TAGS_PER_BATCH])
    for start in range(0, len(metric_list), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_list[start : start + MAX_METRICS_PER_BATCH])


def _runs_of_round(client: Any, experiment_id: str, round_id: int) -> list[Any]:
    """The runs of the round itself (not those of its reruns)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`alloop.round_id` = '{round_id}'"
    )
    return [r for r in runs if "alloop.rerun_of" not in r.data.tags]


def log_round(
    catalog: Catalog,
    round_id: int,
    params: Params,
    summaries: RoundSummaries,
    *,
    rerun_of: Path | None = None,
) -> str:
    """Log the round's params, metrics, model and report; returns the run id.

    A run of the same round that never got its git commit is an attempt that crashed: it is
    marked KILLED and superseded, so the store never shows two real runs of one round.
    ``rerun_of``: the workspace whose round this reruns; the run goes to its store, tagged
    ``alloop.rerun_of``, and never moves the champion alias.
    """
    store = rerun_of or catalog.root
    client = _client(store)
    experiment_id = _experiment_id(client, store)
    for stale in [] if rerun_of else _runs_of_round(client, experiment_id, round_id):
        if "alloop.git_commit" not in stale.data.tags:
            client.set_tag(stale.info.run_id, "alloop.superseded", "true")
            client.set_terminated(stale.info.run_id, "KILLED")
            for version in _model_versions(client, run_id=stale.info.run_id):
                client.delete_model_version(MODEL, version.version)
    run = client.create_run(
        experiment_id,
        run_name=round_name(round_id),
        tags={
            "alloop.round_id": str(round_id),
            "alloop.workspace": str(store),
            **({"alloop.rerun_of": str(round_id)} if rerun_of else {}),
        },
    )
    run_id = run.info.run_id
    flat_params: dict[str, Any] = {}
    for section, values in dump_params(params).items():
        if section != "project":
            for key, value in values.items():
                flat_params[f"{section}.{key}"] = value
    metrics: dict[str, Any] = {}
    for stage, summary in summaries.to_dicts().items():
        _flatten(stage, summary, metrics)
    log_batched(
        client,
        run_id,
        params=flat_params,
        metrics=[(key, value, round_id) for key, value in sorted(metrics.items())],
    )
    promoted = summaries.evaluate is not None and summaries.evaluate.promoted
    client.set_tag(run_id, "alloop.promoted", str(promoted))
    if summaries.health is not None:  # what the loop said of itself, readable in the run list
        client.set_tag(run_id, "alloop.health", "\n".join(summaries.health.describe())[:5000])
    model_file = catalog.path("candidate") / MODEL_FILE
    champion = promoted and model_file.exists() and not rerun_of
    if champion:
        _log_model(client, run_id, catalog, params.project.classes)
    elif model_file.exists():
        # not registered: the raw files suffice, and skip the pyfunc's cost (docs/decisions.md)
        client.log_artifacts(run_id, str(catalog.path("candidate")), "model")
    # the round report, as Markdown and as the page with plots (MLflow's UI shows the page)
    for name in ("round_report", "round_page"):
        report = catalog.path(name)
        if report.exists():
            client.log_artifact(run_id, str(report))
    if champion:
        _register_champion(client, run_id, round_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_model(
    client: Any,
    run_id: str,
    catalog: Catalog,
    classes: Sequence[str],
    *,
    folder: Path | None = None,
    artifact_path: str = "model",
) -> None:
    """The model in ``folder`` (default: the round's promoted candidate) as the run's
    ``artifact_path``: an MLflow pyfunc model that takes raw pool rows
    (flows/mlflow_model.py), so every registered version loads."""
    from flows.mlflow_model import get_feature_spec, save_pyfunc_model

    project = catalog.read_params().project
    label_separator = project.label_separator if project.task == "multilabel" else None
    # two pool rows as the stages see them: the columns, dtypes and an input example
    example = catalog.read_pool_head(2)
    folder = folder or catalog.path("candidate")
    meta = folder / "meta.json"
    # a text model's feature space (its vocabularies and SVD) goes with it
    space = sorted((folder / FEATURES).glob("*")) if (folder / FEATURES).is_dir() else []
    with tempfile.TemporaryDirectory(prefix="alloop-model-") as tmp, _quiet_mlflow():
        path = Path(tmp) / "model"
        save_pyfunc_model(
            path,
            (folder / "model.txt").read_text(),
            get_feature_spec(example, classes, label_separator),
            extra_files=([meta] if meta.exists() else []) + space,
            input_example=example,
        )
        client.log_artifacts(run_id, str(path), artifact_path)


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No progress bar for each artifact MLflow copies into a model folder (they are local
    files), and no warning that the model class is pickled: it is pickled by reference."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        pyfunc_log.setLevel(level)
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _model_versions(client: Any, *, run_id: str | None = None) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(MODEL)
    except MlflowException:
        return []
    query = f"name='{MODEL}'" + (f" and run_id='{run_id}'" if run_id else "")
    return list(client.search_model_versions(query))


def _register_champion(client: Any, run_id: str, round_id: int) -> None:
    """A model version for the round's promoted model, with the champion alias on it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(MODEL)
    except MlflowException:
        client.create_registered_model(MODEL, description="alloop's champion model by round")
    run = client.get_run(run_id)
    version = client.create_model_version(
        MODEL,
        source=f"{run.info.artifact_uri}/model",
        run_id=run_id,
        tags={"alloop.round_id": str(round_id)},
    )
    client.set_registered_model_alias(MODEL, CHAMPION, version.version)


def set_champion(workspace: Path, round_id: int | None) -> str | None:
    """Point the champion alias at the model version promoted in ``round_id`` (None: no
    champion, the alias is removed). Returns the version, or None."""
    client = _client(workspace)
    versions = [
        v for v in _model_versions(client) if v.tags.get("alloop.round_id") == str(round_id)
    ]
    if round_id is None or not versions:
        if _model_versions(client):
            client.delete_registered_model_alias(MODEL, CHAMPION)
        return None
    version = max(versions, key=lambda v: int(v.version))
    if not _is_pyfunc_model(version):
        version = _rebuild_version(client, Catalog(workspace), version) or version
    client.set_registered_model_alias(MODEL, CHAMPION, version.version)
    return str(version.version)


def _is_pyfunc_model(version: Any) -> bool:
    from mlflow.artifacts import list_artifacts

    return any(Path(a.path).name == "MLmodel" for a in list_artifacts(version.source))


def _rebuild_version(client: Any, catalog: Catalog, old: Any) -> Any | None:
    """A version registered before champions were pyfunc models (raw ``model.txt`` only):
    log the workspace's champion, which a rollback has just restored to that round's, as a
    pyfunc model in the same run and register it beside the old version. None if the
    champion folder holds another round's model."""
    round_id = old.tags.get("alloop.round_id")
    champion = catalog.load("champion")
    if str(champion.meta.get("promoted_in_round")) != round_id or champion.text is None:
        return None
    path = f"model-v{old.version}"
    classes = catalog.read_params().project.classes
    _log_model(
        client, old.run_id, catalog, classes, folder=catalog.path("champion"), artifact_path=path
    )
    run = client.get_run(old.run_id)
    return client.create_model_version(
        MODEL,
        source=f"{run.info.artifact_uri}/{path}",
        run_id=old.run_id,
        tags={"alloop.round_id": round_id, "alloop.rebuilt_from": str(old.version)},
    )


def get_champion(workspace: Path) -> dict[str, str] | None:
    """The version the champion alias points at, with its round, or None."""
    from mlflow.exceptions import MlflowException

    client = _client(workspace)
    try:
        version = client.get_model_version_by_alias(MODEL, CHAMPION)
    except MlflowException:
        return None
    return {"version": str(version.version), "round_id": version.tags.get("alloop.round_id", "")}


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
    runs = [
        r
        for r in runs
        if r.data.tags.get("alloop.superseded") != "true" and "alloop.rerun_of" not in r.data.tags
    ]
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
