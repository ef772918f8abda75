"""`alloop simulate`: campaigns through the product's own stages, and the statistics on them,
recomputed here independently from the written curves."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, DATASETS
from scipy.stats import wilcoxon

from flows.simulate import (
    CURVE_COLUMNS,
    HEALTH_COLUMNS,
    ISSUED_COLUMNS,
    SimulationSpec,
    get_campaign_params,
    get_stratified_test_ids,
    load_dataset,
    load_simulation,
    run_campaigns,
)
from tasks.simulate import get_aulc, get_labels_to_target, get_paired_test

CAMPAIGN_COLUMNS = [
    "strategy",
    "seed",
    "aulc",
    "labels_to_target",
    "hours_to_target",
    "final_labels",
    "final_score",
    # where the stop advice came (tasks/health.py), and the rating
    "labels_at_stop",
    "score_at_stop",
    "score_lost_at_stop",
    "rating_at_stop",
    "final_rating",
]
SUMMARY_COLUMNS = [
    "strategy",
    "seeds",
    "median_labels_to_target",
    "reached_target",
    "mean_aulc",
    "median_hours_to_target",
    "stop_fired",
    "median_labels_at_stop",
    "median_score_lost_at_stop",
    "max_score_lost_at_stop",
    "median_stop_over_target",
    "mean_final_rating",
    "labels_ratio_vs_random",
    "random_reached",
    "aulc_diff_vs_random",
    "aulc_p_value",
]


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "out"
    args = [
        "alloop", "simulate", "--dataset", str(DATASETS / "satimage.parquet"),
        "--strategies", "margin,random", "--seeds", "2", "--initial", "60", "--batch", "30",
        "--budget", "150", "--out", str(out), "-S", "train.num_boost_round=60",
    ]  # fmt: skip
    # output into a pipe, as when redirected to a file, without PYTHONUNBUFFERED: each line
    # is stamped with the time it arrived
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONUNBUFFERED", None)
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(
        args, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = [(time.monotonic(), line) for line in proc.stdout]
    assert proc.wait() == 0, "".join(line for _, line in lines)
    return out, "".join(line for _, line in lines), lines


def test_outputs_have_the_documented_columns(simulation):
    out, stdout, _ = simulation
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == CURVE_COLUMNS + HEALTH_COLUMNS
    assert list(pd.read_csv(out / "campaigns.csv").columns) == CAMPAIGN_COLUMNS
    assert list(pd.read_csv(out / "summary.csv").columns) == SUMMARY_COLUMNS
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| margin |" in (out / "simulation.md").read_text() and "| margin |" in stdout
    # every campaign: a point per round from the seed batch to the budget, labels growing
    for (_, _), c in curves.groupby(["strategy", "seed"]):
        assert c["labels"].tolist() == [60, 90, 120, 150]
        assert c["seconds"].is_monotonic_increasing and c["seconds"].iloc[0] > 0
        assert c["macro_f1"].between(0, 1).all()
    # both strategies start from the same random seed batch of the same seed
    first = curves[curves["labels"] == 60].groupby("seed")["macro_f1"].nunique()
    assert (first == 1).all()


def test_progress_reaches_a_pipe_as_each_campaign_finishes(simulation):
    _, _, lines = simulation
    # the CLI's line per campaign, once each
    arrived = [t for t, line in lines if re.match(r"\s+(margin|random) seed \d: \d+ labels", line)]
    assert len(arrived) == 4, "".join(line for _, line in lines)
    # held in a buffer until exit, the four lines would arrive together; a campaign takes
    # seconds
    assert arrived[-1] - arrived[0] > 1.0


def test_campaigns_in_this_process_run_single_threaded():
    from threadpoolctl import threadpool_info

    def threads():
        return [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info()]

    before, seen, finished = threads(), [], []

    def job(args):
        seen.append(threads())
        return args, None

    run_campaigns(
        [("a",), ("b",)],
        processes=1,
        on_done=lambda job, result: finished.append(job),
        run_job=job,
    )
    assert finished == [("a",), ("b",)]
    # k-means (OpenMP) and numpy (BLAS) held to one thread, as in --jobs 2's workers
    apis = {lib["internal_api"] for lib in threadpool_info()}
    assert {"openmp", "openblas"} <= apis and len(seen) == 2
    assert all(n == 1 for libs in seen for _, n in libs)
    # and given back afterwards
    assert [n for path, n in threads() if path in dict(before)] == [n for _, n in before]


@pytest.mark.parametrize("jobs", [1, 2])
def test_campaigns_fit_one_lightgbm_thread_whatever_jobs(jobs):
    spec = SimulationSpec(dataset=DATASETS / "satimage.parquet", jobs=jobs)
    assert get_campaign_params(spec, ["a", "b"], "random", 0).train.num_threads == 1
    more = SimulationSpec(dataset=spec.dataset, jobs=jobs, overrides=("train.num_threads=2",))
    assert get_campaign_params(more, ["a", "b"], "random", 0).train.num_threads == 2


def test_the_baseline_is_random_sampling_without_the_health_plan():
    spec = SimulationSpec(
        dataset=DATASETS / "satimage.parquet",
        overrides=("health.explore_fraction=0.4", "train.num_boost_round=7"),
    )
    baseline = get_campaign_params(spec, ["a", "b"], "random", 0)
    # the plan's slices pick by the model: never in the baseline, whatever -S says
    assert baseline.health.explore_fraction == 0 and baseline.health.rebalance_fraction == 0
    # the other overrides reach it, and the health stage still runs
    assert baseline.train.num_boost_round == 7 and baseline.health.enabled
    strategy = get_campaign_params(spec, ["a", "b"], "margin", 0)
    assert strategy.health.explore_fraction == 0.4
    assert strategy.health.rebalance_fraction > 0  # the template's


def test_issued_items_are_written_per_campaign(simulation):
    out, _, _ = simulation
    issued = pd.read_csv(out / "issued.csv", dtype={"item_id": str})
    assert list(issued.columns) == ISSUED_COLUMNS
    truth = pd.read_parquet(out / "data" / "truth.parquet").set_index("item_id")
    # only training-pool items, each once per campaign, as many as the campaign's labels
    assert (truth.loc[issued["item_id"], "split"] == "train").all()
    for (_, _), c in issued.groupby(["strategy", "seed"]):
        assert c["item_id"].is_unique and len(c) == 150
        assert c.groupby("round_id").size().tolist() == [60, 30, 30, 30]
        assert set(c.loc[c["round_id"] == 1, "reason"]) == {"seed"}
        # the strategy's items, and the slices the health stage planned (tasks/health.py)
        later = set(c.loc[c["round_id"] > 1, "reason"])
        assert "active" in later and later <= {"active", "explore", "rebalance"}
    # the arms of a seed share the seed batch, and seeds differ
    seed_batches = {
        key: frozenset(c["item_id"])
        for key, c in issued[issued["round_id"] == 1].groupby(["strategy", "seed"])
    }
    assert seed_batches["margin", 0] == seed_batches["random", 0]
    assert seed_batches["margin", 1] == seed_batches["random", 1]
    assert seed_batches["random", 0] != seed_batches["random", 1]


def test_statistics_are_recomputed_from_the_curves(simulation):
    out, _, _ = simulation
    curves = pd.read_csv(out / "curves.csv")
    campaigns = pd.read_csv(out / "campaigns.csv")
    summary = pd.read_csv(out / "summary.csv").set_index("strategy")
    meta = json.loads((out / "simulation.json").read_text())
    target = meta["target"]
    assert target == pytest.approx(0.98 * meta["reference_score"])
    for row in campaigns.itertuples(index=False):
        c = curves[(curves["strategy"] == row.strategy) & (curves["seed"] == row.seed)]
        x, y = c["labels"].to_numpy(float), c["macro_f1"].to_numpy()
        # the curve spans exactly 60..150: the area is a plain trapezoid sum
        area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
        assert row.aulc == pytest.approx(area / 90)
        reached = [lab for lab, f in zip(x, y, strict=True) if f >= target]
        assert row.labels_to_target == (reached[0] if reached else math.inf)
    for strategy, c in campaigns.groupby("strategy"):
        assert summary.loc[strategy, "mean_aulc"] == pytest.approx(c["aulc"].mean())
        base = campaigns[campaigns["strategy"] == "random"].set_index("seed")["aulc"]
        diff = c.set_index("seed")["aulc"] - base
        assert summary.loc[strategy, "aulc_diff_vs_random"] == pytest.approx(diff.mean())


def test_a_finished_run_is_read_back_only_for_its_own_protocol(simulation):
    out, _, _ = simulation
    spec = SimulationSpec(
        dataset=DATASETS / "satimage.parquet",
        strategies=("margin", "random"),
        seeds=2,
        initial=60,
        batch=30,
        budget=150,
        overrides=("train.num_boost_round=60",),
        jobs=2,  # how the campaigns ran does not count
    )
    result = load_simulation(spec, out)
    assert result is not None
    meta = json.loads((out / "simulation.json").read_text())
    assert result.target == meta["target"] and result.seconds == meta["seconds"] > 0
    assert result.classes == load_dataset(spec).classes
    pd.testing.assert_frame_equal(result.curves, pd.read_csv(out / "curves.csv"))
    issued = pd.read_csv(out / "issued.csv", dtype={"item_id": str})
    assert result.issued["item_id"].tolist() == issued["item_id"].tolist()
    # another protocol, or no run at all: None, never another run's numbers
    for other in (
        replace(spec, seeds=3),
        replace(spec, budget=120),
        replace(spec, strategies=("margin",)),
        replace(spec, overrides=()),
        replace(spec, target=0.5),
    ):
        assert load_simulation(other, out) is None
    assert load_simulation(spec, out.parent / "nothing-here") is None


def test_one_mlflow_run_per_campaign_holds_its_curve(simulation):
    from mlflow.tracking import MlflowClient

    out, _, _ = simulation
    curves = pd.read_csv(out / "curves.csv")
    campaigns = pd.read_csv(out / "campaigns.csv")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alloop-simulate")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(campaigns)
    for run in runs:
        strategy, seed = run.data.params["strategy"], int(run.data.params["seed"])
        assert run.info.status == "FINISHED"
        assert run.data.params["budget"] == "150" and run.data.params["batch"] == "30"
        c = curves[(curves["strategy"] == strategy) & (curves["seed"] == seed)]
        history = client.get_metric_history(run.info.run_id, "macro_f1")
        history = sorted(history, key=lambda m: m.step)
        assert [m.step for m in history] == c["labels"].tolist()
        assert [m.value for m in history] == pytest.approx(c["macro_f1"].tolist())
        row = campaigns[(campaigns["strategy"] == strategy) & (campaigns["seed"] == seed)]
        assert run.data.metrics["aulc"] == pytest.approx(row["aulc"].item())


def test_learning_curve_statistics_by_hand():
    labels, f1 = np.array([100, 150, 200, 300]), np.array([0.5, 0.7, 0.8, 0.9])
    # (50*(0.5+0.7)/2 + 50*(0.7+0.8)/2 + 100*(0.8+0.9)/2) / 200
    assert get_aulc(labels, f1, start=100, stop=300) == pytest.approx(0.7625)
    # the curve is held flat past its last point
    assert get_aulc(labels, f1, start=100, stop=400) == pytest.approx((152.5 + 90) / 300)
    assert get_labels_to_target(labels, f1, 0.8) == 200
    assert get_labels_to_target(labels, f1, 0.95) == math.inf
    diff = np.array([0.02, 0.01, 0.03, -0.01, 0.02, 0.04])
    mean, p = get_paired_test(diff)
    assert mean == pytest.approx(diff.mean()) and p == pytest.approx(wilcoxon(diff).pvalue)
    assert get_paired_test(np.zeros(4)) == (0.0, 1.0)


def test_the_test_split_is_stratified_and_fixed():
    truth = pd.DataFrame(
        {"item_id": [str(i) for i in range(100)], "label": ["a"] * 80 + ["b"] * 20}
    )
    ids = get_stratified_test_ids(truth, 0.25, seed=0)
    labels = truth.set_index("item_id").loc[ids, "label"]
    assert (labels == "a").sum() == 20 and (labels == "b").sum() == 5
    assert ids.equals(get_stratified_test_ids(truth, 0.25, seed=0))


def test_a_bad_dataset_or_spec_is_named(tmp_path):
    from flows.workspace import WorkspaceError

    path = tmp_path / "d.csv"
    pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "a"]}).to_csv(path, index=False)
    with pytest.raises(WorkspaceError, match="--label-column 'label'"):
        load_dataset(SimulationSpec(dataset=path))
    with pytest.raises(WorkspaceError, match="marign"):
        SimulationSpec(dataset=path, strategies=("marign",)).check()
    with pytest.raises(WorkspaceError, match="--budget"):
        SimulationSpec(dataset=path, initial=100, budget=50).check()


def test_simulated_annotators_each_have_their_own_noise_and_relabels_go_to_someone_new():
    from tasks.simulate import answer_batch_by_annotators, get_annotator_noise

    noise = get_annotator_noise(0.2, 3)
    assert noise == {"sim-annotator-1": 0.1, "sim-annotator-2": 0.2, "sim-annotator-3": 0.3}
    assert get_annotator_noise(0.2, 1) == {"sim-annotator-1": 0.2}
    assert max(get_annotator_noise(0.8, 2).values()) == 1.0  # 1.5 x 0.8, clipped
    truth = pd.DataFrame(
        {"item_id": [str(i) for i in range(6000)], "label": np.resize(["a", "b", "c"], 6000)}
    )
    ids = truth["item_id"]

    def answer(items, seed, voted=None):
        return answer_batch_by_annotators(
            items,
            truth,
            classes=("a", "b", "c"),
            annotators=noise,
            labeled_at="2026-01-01T00:00:00Z",
            random_state=seed,
            voted=voted,
        )

    first = answer(ids, 0)
    assert list(first.columns) == ["item_id", "label", "annotator", "labeled_at"]
    pd.testing.assert_frame_equal(first, answer(ids, 0))  # seeded
    wrong = first["label"].to_numpy() != truth["label"].to_numpy()
    share = pd.Series(wrong).groupby(first["annotator"]).agg(["mean", "size"])
    assert share["size"].tolist() == [2000, 2000, 2000]  # in turn
    np.testing.assert_allclose(share["mean"], [0.1, 0.2, 0.3], atol=0.025)
    # a second and a third opinion come from annotators who have not voted on the item
    second = answer(ids.iloc[:300], 1, voted=first)
    assert (second["annotator"].to_numpy() != first["annotator"].iloc[:300].to_numpy()).all()
    both = pd.concat([first, second])
    third = answer(ids.iloc[:300], 2, voted=both)
    seen = both.groupby("item_id")["annotator"].agg(set)
    pairs = zip(third["item_id"], third["annotator"], strict=True)
    assert all(a not in seen[i] for i, a in pairs)
    # everyone has voted: the item still gets an answer, from the annotator in turn
    assert len(answer(ids.iloc[:300], 3, voted=pd.concat([both, third]))) == 300


def test_a_campaign_with_several_annotators(tmp_path):
    from flows.simulate import simulate
    from flows.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="--annotators"):
        SimulationSpec(dataset=DATASETS / "satimage.parquet", annotators=0).check()
    spec = SimulationSpec(
        dataset=DATASETS / "satimage.parquet",
        strategies=("margin",),
        seeds=1,
        initial=100,
        batch=50,
        budget=250,
        noise=0.2,
        annotators=3,
        overrides=("train.num_boost_round=30",),
    )
    result = simulate(spec, tmp_path / "out")
    assert "3 annotators: 10%, 20%, 30%" in (tmp_path / "out" / "simulation.md").read_text()
    assert result.curves["labels"].max() >= 250
    # flag saved its out-of-fold probabilities, and select sent training items back
    assert (result.issued["reason"] == "relabel").any()
