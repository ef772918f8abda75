"""The benchmarks' own arithmetic (the ratio vs random and its interval) and their command
lines: overrides reach the campaigns, ``--jobs 1`` is one process, results go outside the
checkout unless asked."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("label_efficiency")


def test_results_go_outside_the_checkout_unless_asked(bench, tmp_path):
    args = bench.parse_args(["--datasets", "satimage"])
    assert args.out.is_dir() and not args.out.resolve().is_relative_to(ROOT)
    assert args.report == args.out / "label_efficiency.md"
    args.out.rmdir()
    asked = bench.parse_args(["--out", str(tmp_path), "--report", "bench/label_efficiency.md"])
    assert (asked.out, asked.report) == (tmp_path, Path("bench/label_efficiency.md"))
    speed = _load("simulate_speed").parse_args([])
    assert speed.out.is_dir() and not speed.out.resolve().is_relative_to(ROOT)
    speed.out.rmdir()


def test_overrides_reach_every_arm(bench, tmp_path):
    args = bench.parse_args(
        ["--out", str(tmp_path), "-S", "train.num_boost_round=7", "--set", "flag.enabled=true"]
    )
    spec = bench.get_spec("satimage", args)
    assert spec.overrides == ("train.num_boost_round=7", "flag.enabled=true")
    # the scikit-activeml arm's params come from the same spec
    params = bench.get_campaign_params(spec, ["a", "b"], bench.BASELINE, 0)
    assert params.train.num_boost_round == 7 and params.flag.enabled


def test_one_job_runs_the_baseline_campaigns_in_this_process(bench):
    from threadpoolctl import threadpool_info

    def campaign(job):
        threads = [lib["num_threads"] for lib in threadpool_info()]
        return pd.DataFrame({"pid": [os.getpid()], "threads": [max(threads)], "job": [job]})

    with bench.skactiveml_runner(1, run=campaign) as submit:
        futures = [submit(job) for job in ("a", "b")]
        # run when submitted, one after another, in this process, single-threaded
        assert all(f.done() for f in futures)
    done = pd.concat([f.result() for f in futures])
    assert done["job"].tolist() == ["a", "b"]
    assert (done["pid"] == os.getpid()).all() and (done["threads"] == 1).all()


def test_ratio_reads_never_as_a_bound(bench):
    assert bench.get_ratio(1500.0, 500.0, 2000) == (3.0, "exact")
    assert bench.get_ratio(math.inf, 250.0, 2000) == (8.0, "at least")
    assert bench.get_ratio(900.0, math.inf, 2000) == (0.0, "strategy never")
    assert bench.get_ratio(math.inf, math.inf, 2000) == (1.0, "neither")


def _campaigns(ours: list[float], random: list[float]) -> pd.DataFrame:
    seeds = range(len(ours))
    return pd.DataFrame(
        {
            "strategy": ["diversity"] * len(ours) + ["random"] * len(random),
            "seed": [*seeds, *seeds],
            "labels_to_target": [*ours, *random],
        }
    )


def test_median_ratio_interval(bench):
    # seeds that all agree leave nothing to resample: the interval is the point
    steady = [_campaigns([500.0] * 5, [1500.0] * 5), _campaigns([400.0] * 5, [800.0] * 5)]
    assert bench.get_median_ratio_interval(steady, "diversity", 2000, n_boot=200) == (2.5, 2.5)
    # noisy seeds: the interval holds the point estimate and lies within the per-seed extremes
    rng = np.random.default_rng(1)
    sets = [
        _campaigns(
            list(rng.choice([450.0, 500.0, 600.0], 10)),
            list(rng.choice([1400.0, 1800.0, math.inf], 10)),
        )
        for _ in range(5)
    ]
    low, high = bench.get_median_ratio_interval(sets, "diversity", 2000, n_boot=500)
    point = np.median(
        [
            bench.get_ratio(
                float(np.median(t.loc[t.strategy == "random", "labels_to_target"])),
                float(np.median(t.loc[t.strategy == "diversity", "labels_to_target"])),
                2000,
            )[0]
            for t in sets
        ]
    )
    assert low <= point <= high
    assert 1400 / 600 <= low and high <= 2000 / 450
    # the same draw every time
    assert bench.get_median_ratio_interval(sets, "diversity", 2000, n_boot=500) == (low, high)


def test_alloop_and_scikit_activeml_are_paired_on_the_seeds_both_ran(bench):
    aulc = {
        ("diversity", 0): 0.80, ("diversity", 1): 0.82, ("diversity", 2): 0.90,
        (bench.SKAL, 0): 0.78, (bench.SKAL, 1): 0.83,  # its arm ran two seeds only
        ("random", 0): 0.70, ("random", 1): 0.71, ("random", 2): 0.72,
    }  # fmt: skip
    campaigns = pd.DataFrame([{"strategy": k[0], "seed": k[1], "aulc": v} for k, v in aulc.items()])
    mean, p, ahead = bench.get_paired_vs_skactiveml(campaigns, "diversity")
    assert mean == pytest.approx((0.02 - 0.01) / 2) and ahead == "1/2" and 0 < p <= 1
    # without the arm: nothing to compare
    alone = campaigns[campaigns["strategy"] != bench.SKAL]
    mean, p, ahead = bench.get_paired_vs_skactiveml(alone, "diversity")
    assert math.isnan(mean) and math.isnan(p) and ahead == "n/a"


def test_the_round_benchmark_times_every_stage_of_the_pipeline():
    from flows.pipeline import STAGE_NAMES

    assert _load("round").STAGES == STAGE_NAMES


@pytest.fixture(scope="module")
def reuters():
    return _load("reuters")


def test_reuters_picks_the_highest_utilities_never_nan_ties_by_seed(reuters):
    utilities = np.array([0.2, np.nan, 0.9, 0.5, 0.5, 0.5, np.nan])
    picks = reuters.select_top(utilities, 3, np.random.default_rng(0))
    assert picks[0] == 2 and set(picks[1:]) <= {3, 4, 5} and len(set(picks)) == 3
    again = reuters.select_top(utilities, 3, np.random.default_rng(0))
    assert picks.tolist() == again.tolist()
    assert set(reuters.select_top(utilities, 10, np.random.default_rng(0))) == {0, 2, 3, 4, 5}


def test_reuters_summary_of_generated_curves(reuters):
    labels = np.arange(100, 1001, 50)
    rows = []
    for seed in range(6):
        for arm, slope in (("random", 0.00035), ("ml_diversity", 0.0012)):
            scores = np.minimum(0.5 + slope * (labels - 100) + 0.0001 * seed, 0.95)
            for i, (n, m) in enumerate(zip(labels, scores, strict=True)):
                rows.append([arm, seed, i, n, m, m, m, float(i)])
    curves = pd.DataFrame(rows, columns=reuters.CURVE_COLUMNS)
    campaigns = reuters.get_campaign_table(curves, start=100, stop=1000)
    assert len(campaigns) == 12 and (campaigns["seconds"] == len(labels) - 1).all()
    summary = reuters.get_summary_table(campaigns, budget=1000).set_index("strategy")
    # diversity: 0.80 at 100 + 0.3 / 0.0012 = 350 labels, 0.85 at 400; random 0.80 at 600,
    # 0.85 never within 1,000 labels: the ratio is the lower bound 1,000 / 400
    assert summary.loc["ml_diversity", "median_labels_to_0.80"] == 350
    assert summary.loc["random", "median_labels_to_0.80"] == 1000
    assert summary.loc["random", "reached_0.85"] == 0
    assert summary.loc["ml_diversity", "ratio_random_at_0.85"] == pytest.approx(2.5)
    assert summary.loc["ml_diversity", "ratio_kind"] == "at least"
    assert summary.loc["ml_diversity", "aulc_diff_vs_random"] > 0
    assert summary.loc["ml_diversity", "paired_seeds"] == 6
    text = reuters.get_markdown(summary.reset_index(), reference=0.9, jobs=2, wall=60.0)
    assert "| ml_diversity | 6 | 350 (6/6) | 400 (6/6) | 2.50 (at least) |" in text
    assert "| random | 6 | 1,000 (6/6) | never (0/6) | n/a |" in text
    assert "1.0 min wall with --jobs 2" in text


def test_reuters_results_go_outside_the_checkout(reuters, tmp_path):
    args = reuters.parse_args(["--seeds", "3"])
    assert args.out.is_dir() and not args.out.resolve().is_relative_to(ROOT)
    args.out.rmdir()
    assert reuters.parse_args(["--out", str(tmp_path)]).out == tmp_path


# small-text 1.4.1 warns about its own code whenever a dataset's target labels are set
@pytest.mark.filterwarnings("ignore:The function get_flattened_unique_labels:DeprecationWarning")
def test_reuters_smalltext_arm_queries_around_the_same_model(reuters):
    pytest.importorskip(
        "small_text", reason="small-text is not installed (bench/reuters.py's docstring: how)"
    )
    from scipy.sparse import csr_matrix
    from small_text.data import SklearnDataset
    from small_text.query_strategies import CategoryVectorInconsistencyAndRanking

    rng = np.random.default_rng(0)
    n, k = 60, len(reuters.CATEGORIES)
    # column 0 is the item's position, so the model can answer for any subset of rows
    x = csr_matrix(np.column_stack([np.arange(n), rng.random((n, 3))]))
    y = (rng.random((n, k)) < 0.2).astype(int)
    probs = rng.random((n, k))

    class Model:  # the one method of the fitted one-vs-rest model the arm calls
        def predict(self, features):
            return probs[features[:, 0].toarray().ravel().astype(int)]

    # the adapter answers small-text's predict_proba with the model's rows, in order
    dataset = SklearnDataset(x, csr_matrix((n, k), dtype=int), target_labels=np.arange(k))
    rows = np.array([5, 2, 40])
    proba = reuters.SmallTextClassifier(Model()).predict_proba(dataset[rows])
    assert np.array_equal(proba, probs[rows])

    corpus = reuters.Corpus(x, x, y, y, pd.DataFrame())
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.permutation(n)[:20]] = True
    np.random.seed(7)  # noqa: NPY002  (the global state small-text draws from)
    picked = reuters.query_smalltext(
        "smalltext_cvirs", Model(), labeled, corpus, n=5, random_state=3
    )
    # numpy's global random state is the caller's again
    drawn = np.random.random()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    assert drawn == np.random.random()  # noqa: NPY002
    assert len(set(picked)) == 5 and not labeled[picked].any()
    # the items of highest CVIRS score, from the labeled items' label sets
    unlabeled = np.flatnonzero(~labeled)
    scores = CategoryVectorInconsistencyAndRanking(pbar=None)._compute_scores(
        unlabeled, csr_matrix(y[labeled]), probs[unlabeled]
    )
    assert set(picked) == set(unlabeled[np.argsort(-scores)[:5]])
    again = reuters.query_smalltext(
        "smalltext_cvirs", Model(), labeled, corpus, n=5, random_state=3
    )
    assert picked.tolist() == again.tolist()
    # a campaign: the real model, small-text's picks, labels to the budget
    curve = reuters.run_campaign(corpus, "smalltext_cvirs", 0, initial=10, batch=5, budget=20)
    assert curve["labels"].tolist() == [10, 15, 20]


@pytest.fixture(scope="module")
def scale():
    return _load("scale")


def test_scale_pool_partitions_are_generated_on_their_own(scale):
    pool = scale.SyntheticPool(n_features=12, n_classes=3, informative=2, seed=4)
    rows = pool.get_rows(1000, 50)
    assert rows.columns.tolist() == ["item_id", *(f"f{j:02d}" for j in range(12)), "label"]
    assert rows["item_id"].tolist() == list(range(1000, 1050))
    assert (rows[pool.feature_names].dtypes == np.float32).all()
    assert set(rows["label"]) <= set(pool.classes)
    # a partition depends on its first row and the seed only: no other partition is needed
    pd.testing.assert_frame_equal(rows, pool.get_rows(1000, 50))
    assert not np.allclose(pool.get_block(0, 50)[0], rows[pool.feature_names].to_numpy())


def test_scale_query_arms_pick_the_items_of_the_smallest_margins(scale):
    pool = scale.SyntheticPool(n_features=6, n_classes=3, informative=3)
    query = scale.run_query_comparison(
        pool, rows=3000, train_rows=300, top=20, chunk_size=700, random_state=0
    )
    assert [arm.name.split(":")[0] for arm in query.arms] == [
        "raw Booster.predict",
        "alloop",
        "modAL 0.4.2.1",
        "scikit-activeml",
    ]
    for arm in query.arms:
        if arm.skipped is None:
            assert arm.agreement == "same 20 items", arm.name
            assert arm.seconds > 0 and arm.extra_kb >= 0
        else:  # modAL lives outside the project's environment
            assert "not importable" in arm.skipped and arm.seconds is None


def test_scale_agreement_tells_ties_from_other_differences(scale):
    gaps = np.array([0.1, 0.2, 0.2, 0.5])
    assert scale.describe_agreement(np.array([1, 0]), gaps, 2) == "same 2 items"
    tie = scale.describe_agreement(np.array([0, 2]), gaps, 2)
    assert tie == "1 of 2 differ (ties at the boundary margin)"
    assert scale.describe_agreement(np.array([0, 3]), gaps, 2) == "1 of 2 differ (not ties)"
    # select's rule: highest utility first, equal ones in a seeded order
    picks = scale.get_top_utilities(np.array([0.5, 0.9, 0.5, 0.5]), 2, random_state=0)
    assert picks[0] == 1 and picks[1] in (0, 2, 3)


def test_the_scikit_activeml_arm_writes_simulate_s_curve_columns(bench, tmp_path):
    pytest.importorskip("skactiveml")
    from conftest import DATASETS

    from flows.demo import load_pmlb
    from flows.simulate import CURVE_COLUMNS
    from tasks.params import dump_params

    raw, classes = load_pmlb(DATASETS / "satimage.parquet")
    raw = raw.iloc[:400].assign(item_id=lambda r: r["item_id"].astype(str))
    split = np.where(np.arange(len(raw)) % 4 == 0, "test", "train")
    truth = raw[["item_id", "label"]].astype(str).assign(split=split)
    raw.drop(columns="label").to_parquet(tmp_path / "items.parquet", index=False)
    truth.to_parquet(tmp_path / "truth.parquet", index=False)
    args = bench.parse_args(["--out", str(tmp_path / "out"), "-S", "train.num_boost_round=5"])
    params = bench.get_campaign_params(bench.get_spec("satimage", args), classes, bench.BASELINE, 0)
    first = truth.loc[truth["split"] == "train", "item_id"].iloc[:40].tolist()
    job = (str(tmp_path), json.dumps(dump_params(params)), 0, first, 20, 80)
    curve = bench.run_skactiveml_campaign(job)
    # the columns of simulate's curves, whatever metrics they hold (a fixed-length row broke
    # the arm once simulate's metrics grew from two to four)
    assert list(curve.columns) == CURVE_COLUMNS
    assert curve["labels"].tolist() == [40, 60, 80]
    assert curve[["macro_f1", "accuracy"]].stack().between(0.0, 1.0).all()


def test_activelab_arms_are_compared_by_the_area_under_accuracy_against_answers():
    crowd = _load("crowd")
    # two arms, two seeds; the queue's curve is flat, ActiveLab's rises by 0.1 over the range
    curves = pd.DataFrame(
        {
            "strategy": ["activelab"] * 4 + ["queue"] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "answers": [300, 100, 100, 300] * 2,  # unsorted: the function orders them
            "accuracy": [0.9, 0.8, 0.7, 0.8, 0.85, 0.85, 0.75, 0.75],
        }
    )
    aulc = crowd.get_answer_aulc(curves, start=100, stop=300)
    assert aulc.loc[("activelab", 0)] == pytest.approx(0.85)
    assert aulc.loc[("activelab", 1)] == pytest.approx(0.75)
    assert aulc.loc[("queue", 0)] == pytest.approx(0.85)
    # held flat past the last point: an arm that stopped early is not rewarded or punished
    assert crowd.get_answer_aulc(curves, start=100, stop=500).loc[("activelab", 0)] == (
        pytest.approx((0.85 * 200 + 0.9 * 200) / 400)
    )
