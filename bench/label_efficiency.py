"""Label efficiency: alloop's default strategy against random sampling and against a user's
alternative today (scikit-activeml's margin sampling around the same LightGBM), on the six
tabular sets of ``../shared/data``, with one protocol.

    .venv/bin/python bench/label_efficiency.py [--datasets pendigits,satimage] [--seeds 10]
        [--baseline-seeds 5] [--budget 2000] [--jobs 2] [--out bench/results/label_efficiency]

Per dataset: ``alloop simulate``'s protocol (fixed stratified 25% test split, 100 random
labels, batches of 50, target 98% of the full-data macro-F1) for alloop's default strategy
and random, ``--seeds`` each; then the scikit-activeml arm on the same split, same initial
size, same model and params, ``--baseline-seeds`` seeds. Writes ``bench/label_efficiency.md``
(one row per dataset and strategy, and the goals of issue 5 checked) and, per dataset, the
simulation outputs under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})

from flows.simulate import (  # noqa: E402
    BASELINE,
    SimulationSpec,
    get_campaign_params,
    get_campaign_table,
    get_summary_table,
    load_dataset,
    simulate,
)
from tasks.model import get_lgb_params  # noqa: E402

DATASETS = ("pendigits", "satimage", "magic", "adult", "shuttle", "letter")
SKAL = "skactiveml_margin"
#: Issue 5's measured labels-to-target of the scikit-activeml arm (5 seeds, budget 2,000).
GOALS = {"pendigits": 450, "satimage": 800, "magic": 1300, "adult": 1150, "shuttle": 400}


def run_skactiveml_campaign(args: tuple) -> pd.DataFrame:
    """scikit-activeml's ``UncertaintySampling(method="margin_sampling")`` around the LightGBM
    that alloop's params define (rebuilt each round: its leaf size depends on the labels)."""
    data_dir, params_json, seed, initial, batch, budget = args
    from lightgbm import LGBMClassifier
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import UncertaintySampling
    from skactiveml.utils import MISSING_LABEL

    from tasks.evaluate import get_classification_metrics
    from tasks.model import get_feature_frame
    from tasks.params import load_params

    params = load_params(json.loads(params_json))
    classes = params.project.classes
    items = pd.read_parquet(Path(data_dir) / "items.parquet")
    truth = pd.read_parquet(Path(data_dir) / "truth.parquet").set_index("item_id")
    items = items.set_index("item_id")
    pool_ids = truth.index[truth["split"] == "train"]
    test_ids = truth.index[truth["split"] == "test"]
    codes = {c: i for i, c in enumerate(classes)}
    x_pool = get_feature_frame(items.loc[pool_ids].reset_index())
    x_test = get_feature_frame(items.loc[test_ids].reset_index())
    y_pool = truth.loc[pool_ids, "label"].map(codes).to_numpy(float)
    y_test = truth.loc[test_ids, "label"].map(codes).to_numpy(int)
    rng = np.random.default_rng(seed)
    y_known = np.full(len(y_pool), MISSING_LABEL)
    first = rng.choice(len(y_pool), initial, replace=False)
    y_known[first] = y_pool[first]
    strategy = UncertaintySampling(method="margin_sampling", random_state=seed)
    rows = []
    while True:
        n = int(np.sum(~np.isnan(y_known)))
        lgb_params = get_lgb_params(
            params.train, n_labels=n, n_classes=len(classes), random_state=seed
        )
        for key in ("objective", "num_class"):  # LGBMClassifier sets these from the labels
            lgb_params.pop(key, None)
        estimator = LGBMClassifier(
            n_estimators=params.train.num_boost_round, class_weight="balanced", **lgb_params
        )
        clf = SklearnClassifier(
            estimator,
            classes=np.arange(len(classes), dtype=float),
            missing_label=MISSING_LABEL,
            random_state=seed,
        ).fit(x_pool.to_numpy(float), y_known)
        probs = clf.predict_proba(x_test.to_numpy(float))
        f1 = get_classification_metrics(y_test, probs, classes)["macro_f1"]
        rows.append([SKAL, seed, len(rows) + 1, n, f1, float("nan"), float("nan")])
        if n >= budget:
            break
        picked = strategy.query(
            x_pool.to_numpy(float), y_known, clf=clf, fit_clf=False, batch_size=batch
        )
        y_known[picked] = y_pool[picked]
    from flows.simulate import CURVE_COLUMNS

    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    from tasks.params import dump_params

    spec = SimulationSpec(
        dataset=args.data_dir / f"{name}.parquet",
        strategies=(args.strategy, BASELINE),
        seeds=args.seeds,
        initial=args.initial,
        batch=args.batch,
        budget=args.budget,
        jobs=args.jobs,
    )
    out = args.out / name
    result = simulate(spec, out)
    alloop_seconds = time.perf_counter() - started
    data = load_dataset(spec)
    params = get_campaign_params(spec, data.classes, BASELINE, 0)
    jobs = [
        (str((out / "data").resolve()), json.dumps(dump_params(params)), seed, args.initial,
         args.batch, args.budget)
        for seed in range(args.baseline_seeds)
    ]  # fmt: skip
    started = time.perf_counter()
    # spawn, not fork: a forked child of a process that ran LightGBM (OpenMP) can hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        skal_curves = list(pool.map(run_skactiveml_campaign, jobs))
    skal_seconds = time.perf_counter() - started
    curves = pd.concat([result.curves, *skal_curves], ignore_index=True)
    campaigns = get_campaign_table(
        curves, target=result.target, start=args.initial, stop=args.budget
    )
    summary = get_summary_table(campaigns)
    curves.to_csv(out / "curves_with_baseline.csv", index=False)
    summary.to_csv(out / "summary_with_baseline.csv", index=False)
    return {
        "dataset": name,
        "reference": result.reference_macro_f1,
        "target": result.target,
        "summary": summary,
        "seconds": {"alloop+random": alloop_seconds, SKAL: skal_seconds},
    }


def _labels(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:,.0f}"


def get_markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Label efficiency: alloop against random sampling and scikit-activeml",
        "",
        f"Protocol: `alloop simulate` (25% stratified test split, {args.initial} random labels, "
        f"batches of {args.batch}, budget {args.budget}, target 98% of the full-data "
        f"macro-F1); alloop's `{args.strategy}` and random over {args.seeds} seeds, "
        f"scikit-activeml's margin sampling around the same LightGBM over "
        f"{args.baseline_seeds} seeds, on the same split. `--jobs {args.jobs}`.",
        "",
        "| dataset | strategy | median labels to target | reached | ratio vs random | "
        "mean AULC | AULC - random | p | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["summary"].to_dict("records"):
            wall = r["seconds"][SKAL] if row["strategy"] == SKAL else r["seconds"]["alloop+random"]
            ratio = row.get("labels_ratio_vs_random", float("nan"))
            lines.append(
                f"| {r['dataset']} | {row['strategy']} | "
                f"{_labels(row['median_labels_to_target'])} | "
                f"{row['reached_target']}/{row['seeds']} | "
                f"{'n/a' if not math.isfinite(ratio) else f'{ratio:.2f}'} | "
                f"{row['mean_aulc']:.4f} | {row.get('aulc_diff_vs_random', float('nan')):+.4f} | "
                f"{row.get('aulc_p_value', float('nan')):.3f} | {wall:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--strategy", default="margin", help="alloop's arm (its default)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--baseline-seeds", type=int, default=5)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label_efficiency")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "label_efficiency.md")
    args = parser.parse_args()
    results = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        started = time.perf_counter()
        results.append(run_dataset(name, args))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        args.report.write_text(get_markdown(results, args))  # after each set: partial results
    print(args.report.read_text())


if __name__ == "__main__":
    main()
