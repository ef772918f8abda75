"""The champion in MLflow is a real model: ``mlflow.pyfunc.load_model("models:/alloop@champion")``
takes raw pool rows and gives what the round itself predicted, before and after a rollback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from conftest import BIN, make_satimage_workspace
from mlflow.tracking import MlflowClient

from flows import tracking
from flows.demo import annotate_outbox
from flows.mlflow_model import LABEL, get_feature_spec, save_pyfunc_model
from flows.rollback import al_rollback
from flows.round import al_round
from flows.runtime import mlflow_uri
from flows.schedule import _free_port
from tasks.catalog import PROBS_FILE, Catalog
from tasks.features import get_feature_frame
from tasks.model import fit_booster, predict_proba
from tasks.params import TrainParams

CHAMPION_URI = f"models:/{tracking.MODEL}@{tracking.CHAMPION}"


@pytest.fixture(scope="module")
def rounds(prefect_api, tmp_path_factory):
    """A workspace after three recorded rounds: round 1 sends the seed batch out, round 2
    trains and promotes the first model, round 3 a candidate against it."""
    root = tmp_path_factory.mktemp("tracking") / "ws"
    catalog, classes = make_satimage_workspace(root)
    results = []
    for round_id in (1, 2, 3):
        results.append(al_round(str(root)))
        annotate_outbox(catalog, round_id, noise=0.05, seed=0)
    return {"root": root, "catalog": catalog, "classes": classes, "results": results}


def _load_champion(root):
    mlflow.set_tracking_uri(mlflow_uri(root))
    try:
        return mlflow.pyfunc.load_model(CHAMPION_URI)
    finally:
        mlflow.set_tracking_uri(None)


def _raw_pool(root) -> pd.DataFrame:
    """The pool as a user has it: the parquet files, read with nothing of alloop."""
    files = sorted((root / "data" / "pool").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _champion_probs(catalog: Catalog, item_ids: pd.Series, classes) -> np.ndarray:
    """The champion booster's own probabilities for these items, through tasks/model.py."""
    booster = lgb.Booster(model_file=str(catalog.path("champion") / "model.txt"))
    pool = catalog.read_pool().set_index("item_id")
    rows = pool.loc[item_ids.astype("string")].reset_index()
    return predict_proba(booster, get_feature_frame(rows), len(classes))


def _assert_matches_champion(out: pd.DataFrame, expected: np.ndarray, classes) -> None:
    assert list(out.columns) == [*classes, LABEL]
    assert np.allclose(out[list(classes)].to_numpy(dtype=float), expected)
    assert out[LABEL].tolist() == list(np.asarray(classes)[expected.argmax(axis=1)])


def test_champion_alias_loads_as_a_pyfunc_model_of_raw_pool_rows(rounds):
    root, catalog, classes = rounds["root"], rounds["catalog"], rounds["classes"]
    model = _load_champion(root)
    pool = _raw_pool(root)
    expected = _champion_probs(catalog, pool["item_id"], classes)
    _assert_matches_champion(model.predict(pool), expected, classes)
    # item_id is optional, and columns may come in any order
    features = pool.drop(columns=["item_id"])
    _assert_matches_champion(model.predict(features[features.columns[::-1]]), expected, classes)


def test_champion_predictions_are_the_rounds_own(rounds):
    """The probabilities the round computed for its test items (models/champion/)."""
    root, catalog, classes = rounds["root"], rounds["catalog"], rounds["classes"]
    cached = pd.read_parquet(catalog.path("champion") / PROBS_FILE)
    pool = _raw_pool(root).set_index("item_id")
    rows = pool.loc[cached["item_id"].astype(pool.index.dtype)].reset_index()
    out = _load_champion(root).predict(rows)
    own = cached[[f"p{k}" for k in range(len(classes))]].to_numpy(dtype=float)
    _assert_matches_champion(out, own, classes)


def test_champion_alias_is_on_the_promoting_rounds_version(rounds):
    root, catalog = rounds["root"], rounds["catalog"]
    meta = dict(catalog.load("champion").meta)
    assert tracking.get_champion(root)["round_id"] == str(meta["promoted_in_round"])
    client = MlflowClient(tracking_uri=mlflow_uri(root))
    version = client.get_model_version_by_alias(tracking.MODEL, tracking.CHAMPION)
    names = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert "model/MLmodel" in names


def test_each_round_run_keeps_the_report_and_the_page(rounds, tmp_path):
    root, catalog = rounds["root"], rounds["catalog"]
    client = MlflowClient(tracking_uri=mlflow_uri(root))
    runs = {r["round_id"]: r["run_id"] for r in tracking.list_round_runs(root)}
    for round_id in (1, 2, 3):
        names = {a.path for a in client.list_artifacts(runs[round_id])}
        assert {"round.md", "round.html"} <= names, (round_id, names)
    page = client.download_artifacts(runs[3], "round.html", str(tmp_path))
    assert open(page).read() == catalog.path("round_page").read_text()


def test_after_a_rollback_the_alias_still_loads(rounds, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(rounds["root"], ws, symlinks=True)
    catalog, classes = Catalog(ws), rounds["classes"]
    result = al_rollback(str(ws), 2, push=False)
    assert result.champion_round == 2
    assert tracking.get_champion(ws)["round_id"] == "2"
    pool = _raw_pool(ws)
    expected = _champion_probs(catalog, pool["item_id"], classes)
    _assert_matches_champion(_load_champion(ws).predict(pool), expected, classes)


def test_a_version_from_before_pyfunc_models_is_rebuilt_when_the_alias_moves(rounds, tmp_path):
    """A workspace whose champion version holds only model.txt (alloop before pyfunc
    champions): moving the alias onto it registers a loadable version of the same model."""
    ws = tmp_path / "ws"
    shutil.copytree(rounds["root"], ws, symlinks=True)
    catalog, classes = Catalog(ws), rounds["classes"]
    round_id = str(dict(catalog.load("champion").meta)["promoted_in_round"])
    client = MlflowClient(tracking_uri=mlflow_uri(ws))
    current = client.get_model_version_by_alias(tracking.MODEL, tracking.CHAMPION)
    client.log_artifact(current.run_id, str(catalog.path("champion") / "model.txt"), "legacy")
    run = client.get_run(current.run_id)
    legacy = client.create_model_version(
        tracking.MODEL,
        source=f"{run.info.artifact_uri}/legacy",
        run_id=current.run_id,
        tags={"alloop.round_id": round_id},
    )
    version = tracking.set_champion(ws, int(round_id))
    assert int(version) > int(legacy.version)
    assert tracking.get_champion(ws) == {"version": version, "round_id": round_id}
    pool = _raw_pool(ws)
    expected = _champion_probs(catalog, pool["item_id"], classes)
    _assert_matches_champion(_load_champion(ws).predict(pool), expected, classes)
    assert tracking.set_champion(ws, int(round_id)) == version  # once rebuilt, reused


def test_pyfunc_model_encodes_text_columns_as_alloop_does(tmp_path):
    """Text features become categories mapped onto the training ones, whatever the input's
    dtype (object from JSON, another column order, no item_id, an unseen category)."""
    rng = np.random.default_rng(0)
    n = 300
    pool = pd.DataFrame(
        {
            "item_id": pd.array([f"i{k}" for k in range(n)], dtype="string"),
            "x": rng.normal(size=n),
            "k": rng.integers(0, 5, size=n),
            "color": pd.array(rng.choice(["red", "green", "blue"], size=n), dtype="str"),
        }
    )
    labels = ((pool["x"] > 0).astype(int) + (pool["color"] == "red").astype(int)).to_numpy()
    classes = ["low", "mid", "high"]
    booster = fit_booster(
        get_feature_frame(pool), labels, params=TrainParams(), n_classes=3, random_state=0
    )
    path = tmp_path / "model"
    save_pyfunc_model(
        path,
        booster.model_to_string(),
        get_feature_spec(pool, classes),
        input_example=pool.head(2),
    )
    model = mlflow.pyfunc.load_model(str(path))

    rows = pool.head(40).drop(columns=["item_id"])[["color", "k", "x"]].astype({"color": object})
    rows.loc[0, "color"] = "purple"  # never seen in training
    expected_rows = pool.head(40).copy()
    expected_rows["color"] = expected_rows["color"].astype(object)
    expected_rows.loc[0, "color"] = "purple"
    expected = predict_proba(booster, get_feature_frame(expected_rows), 3)
    _assert_matches_champion(model.predict(rows), expected, classes)
    # JSON gives 92.0 as 92 and ids of any type: cast to the pool's dtypes, ids ignored
    as_json = rows.assign(x=rows["x"].round(), item_id=range(len(rows)))
    expected_json = predict_proba(
        booster, get_feature_frame(expected_rows.assign(x=as_json["x"].to_numpy())), 3
    )
    _assert_matches_champion(model.predict(as_json.astype({"x": int})), expected_json, classes)
    with pytest.raises(ValueError, match="lack the feature columns"):
        model.predict(rows.drop(columns=["k"]))


@pytest.mark.slow
def test_mlflow_models_serve_answers_an_invocation(rounds, tmp_path):
    root, catalog, classes = rounds["root"], rounds["catalog"], rounds["classes"]
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow_uri(root),
    }
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pool = _raw_pool(root).head(5)
        body = json.dumps({"dataframe_split": json.loads(pool.to_json(orient="split"))})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = _champion_probs(catalog, pool["item_id"], classes)
    _assert_matches_champion(pd.DataFrame(answer["predictions"]), expected, classes)
