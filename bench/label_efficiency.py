"""Label efficiency: alloop's default strategy against random sampling and against a user's
alternative today (scikit-activeml's margin sampling around the same LightGBM), on the six
tabular sets of ``../shared/data``, with one protocol.

    .venv/bin/python bench/label_efficiency.py [--datasets pendigits,satimage] [--seeds 10]
        [--baseline-seeds 5] [--budget 2000] [--jobs 2] [-S train.num_boost_round=200]
        [--out DIR] [--report bench/label_efficiency.md]

Per dataset: ``alloop simulate``'s protocol (fixed stratified 25% test split, 100 random
labels, batches of 50, target 98% of the full-data macro-F1) for alloop's default strategy
and random, ``--seeds`` each; then the scikit-activeml arm on the same split, same model and
params, ``--baseline-seeds`` seeds, each starting from the seed batch of alloop's campaigns of
the same seed (so the three arms of a seed share their first 100 labels). ``-S
section.key=value`` overrides a param of every arm's campaigns, as ``alloop simulate -S`` does.

``--jobs 1`` runs everything in this one process, one campaign after another. ``--jobs N``
runs alloop's campaigns on N worker processes and, beside them, the scikit-activeml campaigns
of the previous set on N more (each single-threaded: time-sliced, not spinning), so no core
waits for a set's last campaign; the timings in bench/ were measured so.

Writes, per dataset, the simulation outputs under ``--out`` (default: a new folder under the
system's temporary folder, never the checkout) and the report (one row per dataset and
strategy, and the goals of issue 5 checked) to ``--report`` (default: ``label_efficiency.md``
in ``--out``; pass ``--report bench/label_efficiency.md`` to update the committed one).
Progress goes to stderr as each campaign finishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
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
    get_default_strategy,
    get_summary_table,
    load_simulation,
    simulate,
    single_threaded,
    single_threaded_children,
)
from tasks.model import get_lgb_params  # noqa: E402
from tasks.params import dump_params  # noqa: E402
from tasks.simulate import get_paired_test  # noqa: E402

#: The costliest set first: each set's scikit-activeml campaigns run while the next set's
#: alloop campaigns do, so only the last set's run alone at the end.
DATASETS = ("letter", "shuttle", "adult", "magic", "satimage", "pendigits")
SKAL = "skactiveml_margin"
#: Issue 5's measured labels-to-target of the scikit-activeml arm (5 seeds, budget 2,000).
GOALS = {"pendigits": 450, "satimage": 800, "magic": 1300, "adult": 1150, "shuttle": 400}

log = logging.getLogger("bench.label_efficiency")


def run_skactiveml_campaign(args: tuple) -> pd.DataFrame:
    """scikit-activeml's ``UncertaintySampling(method="margin_sampling")`` around the LightGBM
    that alloop's params define (rebuilt each round: its leaf size depends on the labels)."""
    data_dir, params_json, seed, first_ids, batch, budget = args
    from lightgbm import LGBMClassifier
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import UncertaintySampling
    from skactiveml.utils import MISSING_LABEL

    from tasks.evaluate import get_classification_metrics
    from tasks.features import get_feature_frame
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
    y_known = np.full(len(y_pool), MISSING_LABEL)
    first = pool_ids.get_indexer(pd.Index(first_ids, dtype=pool_ids.dtype))
    if (first < 0).any():
        raise ValueError(f"seed {seed}: seed batch items missing from the training pool")
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
        metrics = get_classification_metrics(y_test, probs, classes)
        # by name: simulate's curve columns grow with its metrics (a list here broke when
        # they went from two to four)
        rows.append(
            {
                "strategy": SKAL,
                "seed": seed,
                "round_id": len(rows) + 1,
                "labels": n,
                "macro_f1": metrics["macro_f1"],
                "accuracy": metrics["accuracy"],
            }
        )
        if n >= budget:
            break
        picked = strategy.query(
            x_pool.to_numpy(float), y_known, clf=clf, fit_clf=False, batch_size=batch
        )
        y_known[picked] = y_pool[picked]
    from flows.simulate import CURVE_COLUMNS

    return pd.DataFrame(rows).reindex(columns=CURVE_COLUMNS)


def get_skactiveml_jobs(
    data_dir: Path, params_json: str, issued: pd.DataFrame, args: argparse.Namespace
) -> list:
    """One job per seed, starting from the seed batch of alloop's random campaign of that seed
    (the same as its default strategy's: both draw it from the seed alone)."""
    seed_batches = issued[(issued["strategy"] == BASELINE) & (issued["reason"] == "seed")]
    return [
        (
            str(data_dir.resolve()),
            params_json,
            seed,
            seed_batches.loc[seed_batches["seed"] == seed, "item_id"].astype(str).tolist(),
            args.batch,
            args.budget,
        )
        for seed in range(args.baseline_seeds)
    ]


@contextmanager
def skactiveml_runner(
    jobs: int, run: Callable[[tuple], pd.DataFrame] = run_skactiveml_campaign
) -> Iterator[Callable[[tuple], Future]]:
    """``submit(job) -> Future`` for the scikit-activeml campaigns.

    ``jobs == 1``: each runs in this process when submitted, single-threaded, so the whole
    benchmark is one campaign process. More: ``jobs`` spawned worker processes (not forked: a
    forked child of a process that ran LightGBM's OpenMP code can hang) that run while
    alloop's campaigns of the next set do.
    """
    if jobs == 1:

        def submit(job: tuple) -> Future:
            future: Future = Future()
            with single_threaded():
                future.set_result(run(job))
            return future

        yield submit
        return
    context = multiprocessing.get_context("spawn")
    with (
        single_threaded_children(),
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
    ):
        yield lambda job: pool.submit(run, job)


def get_spec(name: str, args: argparse.Namespace) -> SimulationSpec:
    """The ``alloop simulate`` spec of one set: alloop's default strategy and random."""
    return SimulationSpec(
        dataset=args.data_dir / f"{name}.parquet",
        strategies=(args.strategy, BASELINE),
        seeds=args.seeds,
        initial=args.initial,
        batch=args.batch,
        budget=args.budget,
        overrides=tuple(args.set),
        jobs=args.jobs,
    )


def run_alloop(name: str, args: argparse.Namespace) -> dict:
    """alloop's default strategy and random through ``alloop simulate``'s own code; with
    ``--resume``, read back from ``--out`` when a run of the same protocol finished there."""
    spec = get_spec(name, args)
    if args.resume and (result := load_simulation(spec, args.out / name)) is not None:
        log.info("%s: alloop's arms read back from %s", name, result.out)
        return {"dataset": name, "result": result, "seconds": result.seconds, "resumed": True}
    started = time.perf_counter()
    result = simulate(spec, args.out / name)
    return {"dataset": name, "result": result, "seconds": time.perf_counter() - started}


def combine(run: dict, skal_curves: list[pd.DataFrame], args: argparse.Namespace) -> dict:
    """The three arms of one dataset in one summary (ratios and tests against random)."""
    result = run["result"]
    curves = pd.concat([result.curves, *skal_curves], ignore_index=True)
    campaigns = get_campaign_table(
        curves, target=result.target, start=args.initial, stop=args.budget
    )
    summary = get_summary_table(campaigns)
    out = args.out / run["dataset"]
    curves.to_csv(out / "curves_with_baseline.csv", index=False)
    summary.to_csv(out / "summary_with_baseline.csv", index=False)
    return {**run, "reference": result.reference_score, "summary": summary, "campaigns": campaigns}


def get_paired_vs_skactiveml(campaigns: pd.DataFrame, strategy: str) -> tuple[float, float, str]:
    """alloop's AULC minus scikit-activeml's, paired on the seeds both ran (scikit-activeml's
    arm runs the first ``--baseline-seeds``): the mean, Wilcoxon's p and the seeds ahead."""
    aulc = campaigns.pivot_table(index="seed", columns="strategy", values="aulc")
    if SKAL not in aulc or strategy not in aulc:
        return math.nan, math.nan, "n/a"
    diff = (aulc[strategy] - aulc[SKAL]).dropna().to_numpy()
    mean, p = get_paired_test(diff)
    return mean, p, f"{int((diff > 0).sum())}/{diff.size}"


def _wall(run: dict) -> str:
    seconds = "not recorded" if run["seconds"] is None else f"{run['seconds']:.0f} s"
    return f"{seconds} (read back from an earlier run)" if run.get("resumed") else seconds


def _labels(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:,.0f}"


def get_ratio(random_labels: float, labels: float, budget: int) -> tuple[float, str]:
    """Random's labels to target over the strategy's, and how to read it.

    Random never reaching the target within the budget makes the ratio a lower bound
    (``budget / labels``); neither reaching it counts as 1 (no evidence of a gain); only the
    strategy never reaching it counts as 0.
    """
    if math.isfinite(labels) and math.isfinite(random_labels):
        return random_labels / labels, "exact"
    if math.isfinite(labels):
        return budget / labels, "at least"
    if math.isfinite(random_labels):
        return 0.0, "strategy never"
    return 1.0, "neither"


def get_median_ratio_interval(
    campaigns: list[pd.DataFrame],
    strategy: str,
    budget: int,
    *,
    n_boot: int = 5000,
    random_state: int = 0,
) -> tuple[float, float]:
    """95% bootstrap interval of the median over the sets of the ratio vs random.

    Each resample draws every set's seeds with replacement (a seed's campaigns of ``strategy``
    and of random together, as they are paired) and recomputes each set's ratio of medians
    (:func:`get_ratio`) and their median over the sets: how far the median ratio could move
    with another draw of seeds.

    Parameters
    ----------
    campaigns : list of pd.DataFrame
        One per set: its campaign table (``strategy``, ``seed``, ``labels_to_target``, never
        = inf).
    """
    rng = np.random.default_rng(random_state)
    per_set = []
    for table in campaigns:
        by_seed = table.pivot(index="seed", columns="strategy", values="labels_to_target")
        per_set.append(by_seed[[strategy, BASELINE]].to_numpy(float))
    medians = np.empty(n_boot)
    for b in range(n_boot):
        ratios = []
        for labels in per_set:
            drawn = labels[rng.integers(0, len(labels), len(labels))]
            ours, rand = np.median(drawn, axis=0)
            ratios.append(get_ratio(float(rand), float(ours), budget)[0])
        medians[b] = np.median(ratios)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def get_goal_lines(results: list[dict], args: argparse.Namespace) -> list[str]:
    """Issue 5's goals, each checked on this run's numbers."""
    rows = []
    for r in results:
        s = r["summary"].set_index("strategy")
        ours = float(s.loc[args.strategy, "median_labels_to_target"])
        rand = float(s.loc[BASELINE, "median_labels_to_target"])
        skal = float(s.loc[SKAL, "median_labels_to_target"]) if SKAL in s.index else math.nan
        ratio, kind = get_ratio(rand, ours, args.budget)
        diff = float(s.loc[args.strategy, "aulc_diff_vs_random"])
        p = float(s.loc[args.strategy, "aulc_p_value"])
        vs_skal = get_paired_vs_skactiveml(r["campaigns"], args.strategy)
        rows.append((r["dataset"], ours, skal, rand, ratio, kind, diff, p, vs_skal))
    lines = [
        "## Goals of issue 5, checked on this run",
        "",
        f"| dataset | alloop `{args.strategy}` | scikit-activeml (this run) | "
        "scikit-activeml (issue) | at least as good | random | ratio vs random | "
        "AULC - random (p) | significantly worse | AULC - scikit-activeml (p, seeds ahead) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for name, ours, skal, rand, ratio, kind, diff, p, (vs, vs_p, ahead) in rows:
        as_good = (
            "n/a"
            if not math.isfinite(skal) and not math.isfinite(ours)
            else ("yes" if ours <= skal else "no")
        )
        worse = "yes" if diff < 0 and p < 0.05 else "no"
        shown = f"{ratio:.2f}" + ("" if kind == "exact" else f" ({kind})")
        lines.append(
            f"| {name} | {_labels(ours)} | {_labels(skal)} | {_labels(GOALS.get(name, math.nan))}"
            f" | {as_good} | {_labels(rand)} | {shown} | {diff:+.4f} ({p:.3f}) | {worse} | "
            + ("n/a" if not math.isfinite(vs) else f"{vs:+.4f} ({vs_p:.3f}, {ahead})")
            + " |"
        )
    if rows:
        ours_all = [r[1] for r in rows]
        skal_all = [r[2] for r in rows]
        median_ratio = float(np.median([r[4] for r in rows]))
        low, high = get_median_ratio_interval(
            [r["result"].campaigns for r in results], args.strategy, args.budget
        )
        lines += [
            "",
            f"- Median labels to target over the {len(rows)} sets: alloop "
            f"{_labels(float(np.median(ours_all)))}, scikit-activeml "
            f"{_labels(float(np.median(skal_all)))} (never counts as more than any number).",
            f"- Median ratio vs random over the sets: {median_ratio:.2f} "
            "(a set where random never reaches the target counts with the lower bound "
            "budget / labels; a set where neither does counts as 1); 95% bootstrap interval "
            f"over seeds {low:.2f} to {high:.2f} (each set's seeds redrawn with replacement).",
            f"- Sets where alloop's AULC is significantly below random's (p < 0.05): "
            f"{sum(1 for r in rows if r[6] < 0 and r[7] < 0.05)}.",
        ]
    return lines


def get_markdown(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# Label efficiency: alloop against random sampling and scikit-activeml",
        "",
        f"Protocol: `alloop simulate` (25% stratified test split, {args.initial} random labels, "
        f"batches of {args.batch}, budget {args.budget}, target 98% of the full-data "
        f"macro-F1); alloop's default strategy `{args.strategy}` and random over {args.seeds} "
        f"seeds, scikit-activeml's margin sampling around the same LightGBM over "
        f"{args.baseline_seeds} seeds, on the same split; the arms of a seed start from the "
        f"same {args.initial} labels. `--jobs {args.jobs}`"
        + "".join(f" `-S {o}`" for o in args.set)
        + f"; whole run {wall / 60:.1f} min wall"
        + (
            f" (alloop's arms of {resumed} set(s) read back from an earlier run in the same "
            "folder, `--resume`)."
            if (resumed := sum(bool(r.get("resumed")) for r in results))
            else "."
        ),
        "",
        "| dataset | strategy | median labels to target | reached | ratio vs random | "
        "mean AULC | AULC - random | p | median hours to target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["summary"].to_dict("records"):
            ratio = row.get("labels_ratio_vs_random", float("nan"))
            hours = row.get("median_hours_to_target", float("nan"))
            lines.append(
                f"| {r['dataset']} | {row['strategy']} | "
                f"{_labels(row['median_labels_to_target'])} | "
                f"{row['reached_target']}/{row['seeds']} | "
                f"{'n/a' if not math.isfinite(ratio) else f'{ratio:.2f}'} | "
                f"{row['mean_aulc']:.4f} | {row.get('aulc_diff_vs_random', float('nan')):+.4f} | "
                f"{row.get('aulc_p_value', float('nan')):.3f} | "
                f"{'n/a' if not math.isfinite(hours) else f'{hours:.2f}'} |"
            )
    lines += [
        "",
        "Full-data macro-F1 (the target is 98% of it): "
        + ", ".join(f"{r['dataset']} {r['reference']:.4f}" for r in results)
        + ". Wall time of alloop's two arms per set: "
        + ", ".join(f"{r['dataset']} {_wall(r)}" for r in results)
        + (
            " (the scikit-activeml campaigns run alongside, in their own processes)."
            if args.jobs > 1
            else " (the scikit-activeml campaigns after them, in the same process)."
        ),
        "",
        *get_goal_lines(results, args),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--strategy", default=get_default_strategy(), help="alloop's arm (default: params.yaml's)"
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--baseline-seeds", type=int, default=5)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2, help="processes (1: this one only)")
    parser.add_argument(
        "--set",
        "-S",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a param of every arm's campaigns (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: a new temporary one)"
    )
    parser.add_argument("--report", type=Path, default=None, help="the report (default: in --out)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="read alloop's arms of a set back from --out when they finished there with the "
        "same protocol and this code (after a crash); scikit-activeml's arm always runs",
    )
    args = parser.parse_args(argv)
    if args.baseline_seeds > args.seeds:
        parser.error(
            "--baseline-seeds must not exceed --seeds: scikit-activeml's campaigns start from "
            "the seed batches of alloop's campaigns of the same seeds"
        )
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="alloop-label-efficiency-"))
    if args.report is None:
        args.report = args.out / "label_efficiency.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in (log.name, "flows.simulate"):
        logging.getLogger(name).setLevel(logging.INFO)
    log.info("results in %s, report to %s", args.out, args.report)
    started = time.perf_counter()
    runs, pending = [], []
    with skactiveml_runner(args.jobs) as submit:
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            run = run_alloop(name, args)
            if not run.get("resumed"):
                log.info("%s: alloop's arms done in %.0f s", name, run["seconds"])
            result = run["result"]
            params = get_campaign_params(get_spec(name, args), result.classes, BASELINE, 0)
            jobs = get_skactiveml_jobs(
                args.out / name / "data", json.dumps(dump_params(params)), result.issued, args
            )
            futures = []
            for job in jobs:
                future = submit(job)
                future.add_done_callback(_log_skactiveml(name, job[2]))
                futures.append(future)
            runs.append(run)
            pending.append(futures)
        results = []
        for run, futures in zip(runs, pending, strict=True):
            results.append(combine(run, [f.result() for f in futures], args))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(get_markdown(results, args, time.perf_counter() - started))
    log.info("wrote %s", args.report)
    print(args.report.read_text(), flush=True)


def _log_skactiveml(name: str, seed: int) -> Callable[[Future], None]:
    def done(future: Future) -> None:
        if future.exception() is not None:
            return  # raised where the result is read
        curve = future.result()
        log.info(
            "%s: scikit-activeml seed %d done: %d labels, macro-F1 %.4f",
            name,
            seed,
            curve["labels"].iloc[-1],
            curve["macro_f1"].iloc[-1],
        )

    return done


if __name__ == "__main__":
    main()
