"""The score stage on a Dask cluster: a LocalCluster of two single-threaded worker processes,
started here, scores a pool of many partitions exactly as this process does, and a worker
killed in the middle of scoring changes nothing but the time it takes."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from conftest import DATASETS

from flows.demo import load_pmlb
from flows.round import al_round
from flows.stage import run_stage
from flows.workspace import add_to_pool, init_workspace
from tasks import executor as executors
from tasks.catalog import Catalog, write_csv
from tasks.executor import DaskExecutor, ExecutorError, LocalExecutor, get_executor
from tasks.simulate import answer_batch

distributed = pytest.importorskip("distributed")

#: small chunks, so that every partition is several chunks and the pool is many pieces
OVERRIDES = ("select.seed_size=150", "select.batch_size=60", "score.chunk_size=400")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each, with nannies (a killed worker is restarted)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


def _answer(catalog: Catalog, truth: pd.DataFrame, round_id: int) -> None:
    batch = pd.read_csv(catalog.path("outbox", round_id) / "batch.csv", dtype={"item_id": str})
    answers = answer_batch(
        batch["item_id"],
        truth,
        classes=catalog.read_params().project.classes,
        noise=0.0,
        annotator="annotator-1",
        labeled_at=datetime.now(UTC).isoformat(timespec="seconds"),
        random_state=round_id,
    )
    write_csv(catalog.path("incoming") / f"answers-{round_id}.csv", answers)


@pytest.fixture(scope="module")
def rounds(prefect_api, tmp_path_factory):
    """Three local rounds on satimage; two partitions are added before round 2 and two before
    round 3, so round 3 scores five partitions (17 chunks)."""
    raw, classes = load_pmlb(DATASETS / "satimage.parquet")
    truth = raw[["item_id", "label"]].astype(str)
    root = tmp_path_factory.mktemp("dask") / "ws"
    catalog = init_workspace(
        root,
        pool=raw.iloc[:2000],
        id_column="item_id",
        classes=classes,
        label_column="label",
        overrides=OVERRIDES,
    )
    rest = raw.iloc[2000:].drop(columns="label")
    later = [rest.iloc[i : i + 1109] for i in range(0, len(rest), 1109)]  # four arrivals
    for round_id in (1, 2, 3):
        if round_id > 1:
            for part in later[2 * (round_id - 2) : 2 * (round_id - 1)]:
                add_to_pool(root, part, source=f"arrival-{part['item_id'].iloc[0]}.csv")
        result = al_round(str(root))
        assert result.skipped is None
        if round_id < 3:
            _answer(catalog, truth, round_id)
    return catalog


def _kept(catalog: Catalog) -> dict[str, pd.DataFrame]:
    return {
        "scores": pd.read_parquet(catalog.path("scores")),
        "picks": pd.read_parquet(catalog.path("picks")),
        "batch": pd.read_parquet(catalog.path("batch")),
    }


def _score_and_select_on(catalog: Catalog, address: str) -> dict[str, pd.DataFrame]:
    """Round 3's score and select stages again, scored on the cluster at ``address``."""
    params = catalog.params_file.read_text()
    try:
        catalog.params_file.write_text(
            params.replace("executor: local", "executor: dask").replace(
                "dask_address: null", f"dask_address: {address}"
            )
        )
        summary = run_stage(catalog.root, "score")
        run_stage(catalog.root, "select")
    finally:
        catalog.params_file.write_text(params)
    assert summary.pool_items == 6435 and summary.chunks == 17
    return _kept(catalog)


def _assert_same(local: dict[str, pd.DataFrame], dask: dict[str, pd.DataFrame]) -> None:
    # the utilities bit for bit, not close: select ranks by them
    assert np.array_equal(
        local["scores"]["utility"].to_numpy(), dask["scores"]["utility"].to_numpy(), equal_nan=True
    )
    pd.testing.assert_frame_equal(local["scores"], dask["scores"], check_exact=True)
    pd.testing.assert_frame_equal(local["picks"], dask["picks"], check_exact=True)
    pd.testing.assert_frame_equal(local["batch"], dask["batch"], check_exact=True)


def test_a_round_of_many_partitions_scores_the_same_on_dask(rounds, cluster):
    catalog = rounds
    assert len(catalog.pool_files()) == 5
    local = _kept(catalog)
    # diversity picked one batch; the scores keep every item's uncertainty, in [-1, 0]
    assert len(local["picks"]) == 60 and (local["picks"]["utility"] > 0).all()
    assert not (local["scores"]["utility"] > 0).any()
    active = local["batch"].loc[local["batch"]["reason"] == "active", "item_id"]
    assert active.isin(local["picks"]["item_id"]).all()
    _assert_same(local, _score_and_select_on(catalog, cluster.scheduler_address))


def test_a_worker_killed_while_scoring_changes_nothing(rounds, cluster, monkeypatch):
    catalog = rounds
    local = _kept(catalog)
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    killed: list[int] = []
    original = DaskExecutor._next

    def next_then_kill(pending):
        result = original(pending)
        if not killed:  # after the first piece: kill a worker that is busy with another
            busy = {w: keys for w, keys in client.processing().items() if keys}
            pids = client.run(os.getpid)
            victim = next(iter(busy), next(iter(pids)))
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(pids[victim])
        return result

    monkeypatch.setattr(DaskExecutor, "_next", staticmethod(next_then_kill))
    try:
        again = _score_and_select_on(catalog, cluster.scheduler_address)
        assert killed, "no worker was killed"
        _assert_same(local, again)
        # the nanny brings the worker back for the next test
        deadline = time.monotonic() + 60
        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        client.close()


def test_the_dask_executor_yields_in_order_with_a_small_window(cluster):
    dask = DaskExecutor(cluster.scheduler_address, window=3)
    try:
        assert list(dask.map(pow, range(20), 2)) == [i**2 for i in range(20)]
    finally:
        dask.close()
    assert list(LocalExecutor().map(pow, range(5), 3)) == [0, 1, 8, 27, 64]


def test_workers_with_other_scoring_code_are_refused(cluster, monkeypatch):
    # this process digests one module fewer: its scoring code differs from the workers'
    monkeypatch.setattr(executors, "SCORING_MODULES", executors.SCORING_MODULES[:-1])
    with pytest.raises(ExecutorError, match="run other scoring code"):
        DaskExecutor(cluster.scheduler_address)


def test_a_dask_executor_needs_a_reachable_scheduler():
    with pytest.raises(ExecutorError, match="no scheduler address"):
        get_executor("dask", None)
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler"):
        get_executor("dask", "tcp://127.0.0.1:9", timeout_seconds=2)


def test_simulation_campaigns_run_on_the_cluster_as_here(cluster, tmp_path):
    from flows.simulate import SimulationSpec, simulate

    spec = SimulationSpec(
        dataset=DATASETS / "satimage.parquet",
        strategies=("margin", "random"),
        seeds=1,
        initial=100,
        batch=50,
        budget=200,
        overrides=("train.num_boost_round=20",),
    )
    here = simulate(spec, tmp_path / "here")
    there = simulate(replace(spec, dask_address=cluster.scheduler_address), tmp_path / "there")
    pd.testing.assert_frame_equal(here.curves, there.curves, check_exact=True)


def test_a_round_given_a_dask_address_scores_on_the_cluster_for_that_round(rounds, cluster):
    """``alloop round --dask-address`` (al_round's ``dask_address``): the round scores on the
    cluster, params.yaml is left as it was, and the executor is no DVC param of the stage."""
    catalog = rounds
    params = catalog.params_file.read_text()
    result = al_round(str(catalog.root), force=True, dask_address=cluster.scheduler_address)
    assert result.skipped is None and result.round_id == 4
    assert result.summaries.score.pool_items == 6435
    assert catalog.params_file.read_text() == params
    lock = (catalog.root / "dvc.lock").read_text()
    assert "score.strategy" in lock and "executor" not in lock and "dask_address" not in lock
