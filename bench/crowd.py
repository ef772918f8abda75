"""Crowd, flags and ActiveLab (issue 17): flag's count, merge's consensus, relabel-or-new.

    .venv/bin/python bench/crowd.py flags [--datasets letter,magic,pendigits,satimage,adult]
        [--labels 2000] [--noise 0.1] [--seeds 5] [--sizes 100,200,300,500,1000,2000]
        [--size-noises 0,0.1,0.2] [--size-seeds 3]
    .venv/bin/python bench/crowd.py flag-cost [--datasets sleep,letter]
        [--cost-labels 2000,10000,50000]
    .venv/bin/python bench/crowd.py consensus [--seeds 5]
    .venv/bin/python bench/crowd.py activelab [--datasets pendigits,satimage] [--seeds 10]
        [--answers 800] [--noise 0.2] [--jobs 1]

Every part writes its tables (CSV, and markdown to stdout and ``crowd-PART.md``) under
``--out`` (default: a new folder under the system's temporary folder, never the checkout).
All LightGBM fits use one thread.

``flags``: ``--labels`` items drawn at random from each set (a fixed sample of 3,000 other
items is the test set), ``--noise`` of their labels replaced by another class drawn
uniformly; precision, recall and F1 of the flags of the rule before issue 17 (class-weighted
out-of-fold probabilities, ``prune_by_noise_rate``, at most 5% of the labels), of cleanlab's
count on LightGBM's probabilities alone (``flag.forest_trees: 0``) and of flag's pure functions
today (``get_label_probs``, ``find_mislabels_from_probs`` with the default params), and the
best F1 any count could reach on today's ranking. Then, over ``--sizes`` x ``--size-noises``,
the test macro-F1 of a model trained without the flagged labels, minus
that of one trained on all of them, for several bounds.

``flag-cost``: seconds of the out-of-fold probabilities with LightGBM alone and with the
forest beside it, at ``--cost-labels`` labels.

``consensus``: merge's ``resolve_labels`` on real and simulated crowds (``merge.consensus``
``majority``, ``crowdlab`` = CROWDLAB as it comes, ``auto`` = the product's default), the
share of items whose label equals the gold label. Real: Abt-Buy product matching from
``../shared/data/multiannotator`` (3 votes per item; with the f_* features; with 1-3 of the
votes kept at random; with a model on the two name lengths only; on a noise feature).
Simulated: 700 items of a PMLB set, 20 annotators whose accuracy is spread evenly over a
range, 1-7 votes per item, a wrong vote uniform over the other classes or, with confusion,
the next class 80% of the time, and a weak model (a few random features).

``activelab``: ``alloop simulate``'s campaigns (default strategy, 100 random labels, batches
of 50) with three simulated annotators of ``--noise`` wrong answers each, two arms: select's
ActiveLab (today) and select's relabel queue (flags, then split votes: the path select takes
when flag saved no probabilities). Equal annotation budget: each arm is measured at the round
where ``--answers`` answers were given (relabels count), on the fixed test split. A set whose
campaigns are already in ``--out`` (an earlier run) is read, not run again.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})

from tasks.params import FlagParams, MergeParams, TrainParams  # noqa: E402

log = logging.getLogger("bench.crowd")
DATA = ROOT.parent / "shared" / "data"
CROWD = DATA / "multiannotator"
TRAIN = TrainParams(num_threads=1)
TEST_ITEMS = 3000


# -- flags --------------------------------------------------------------------------------------


def _noisy_sample(raw: pd.DataFrame, n: int, noise: float, seed: int) -> dict:
    """``n`` random items outside the fixed test sample, ``noise`` of their labels wrong."""
    classes = np.unique(raw["label"])
    codes = np.searchsorted(classes, raw["label"].to_numpy())
    test = np.random.default_rng(999).choice(len(raw), min(TEST_ITEMS, len(raw) // 4), False)
    rest = np.setdiff1d(np.arange(len(raw)), test)
    picked = np.random.default_rng(seed).choice(rest, n, replace=False)
    rng = np.random.default_rng(1000 + seed)
    true = codes[picked]
    wrong = rng.random(n) < noise
    given = true.copy()
    for i in np.flatnonzero(wrong):
        others = np.delete(np.arange(classes.size), true[i])
        given[i] = others[rng.integers(others.size)]
    features = raw.drop(columns=["label"])
    rows = features.iloc[picked].reset_index(drop=True)
    rows.insert(0, "item_id", [str(i) for i in picked])
    return {
        "rows": rows,
        "given": given,
        "wrong": wrong,
        "names": tuple(str(c) for c in classes),
        "test_x": features.iloc[test],
        "test_y": codes[test],
    }


def _old_flags(rows: pd.DataFrame, given: np.ndarray, max_fraction: float = 0.05) -> np.ndarray:
    """The rule before issue 17: class-weighted out-of-fold probabilities, cleanlab's
    ``prune_by_noise_rate``, then at most 5% of the labels, lowest self-confidence first."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from tasks.features import get_feature_frame
    from tasks.model import get_out_of_fold_pred_probs

    present = np.unique(given)
    compact = np.searchsorted(present, given)
    folds = int(min(5, np.bincount(compact).min()))
    if folds < 2:  # a class with a single label: the rule checked nothing
        return np.zeros(given.size, dtype=bool)
    probs = get_out_of_fold_pred_probs(
        get_feature_frame(rows),
        compact,
        n_classes=present.size,
        n_folds=folds,
        train_params=TRAIN,
        random_state=0,
    )
    issues = find_label_issues(compact, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(compact, probs)
    doubted = np.flatnonzero(issues)
    doubted = doubted[np.argsort(quality[doubted], kind="stable")][: int(max_fraction * given.size)]
    mask = np.zeros(given.size, dtype=bool)
    mask[doubted] = True
    return mask


def _new_flags(sample: dict, params: FlagParams) -> tuple[np.ndarray, pd.DataFrame]:
    from tasks.flag import find_mislabels_from_probs, get_label_probs

    names = sample["names"]
    labels = pd.Series(np.take(names, sample["given"]), dtype="string")
    probs, why = get_label_probs(
        sample["rows"], labels, classes=names, params=params, train_params=TRAIN, random_state=0
    )
    if why:
        return np.zeros(labels.size, dtype=bool), probs
    found = find_mislabels_from_probs(probs, labels, classes=names, params=params)
    return sample["rows"]["item_id"].isin(set(found["item_id"])).to_numpy(), probs


def _scores(mask: np.ndarray, wrong: np.ndarray) -> dict:
    hit = int((mask & wrong).sum())
    return {
        "flagged": int(mask.sum()),
        "wrong": int(wrong.sum()),
        "precision": hit / max(int(mask.sum()), 1),
        "recall": hit / max(int(wrong.sum()), 1),
        "f1": 2 * hit / max(int(mask.sum() + wrong.sum()), 1),
    }


def _best_f1(probs: pd.DataFrame, sample: dict) -> float:
    """The best flag F1 of any count on today's ranking (lowest self-confidence first)."""
    matrix = probs[list(sample["names"])].to_numpy()
    quality = matrix[np.arange(len(matrix)), sample["given"]]
    hits = np.cumsum(sample["wrong"][np.argsort(quality, kind="stable")])
    return float(np.max(2 * hits / (np.arange(1, hits.size + 1) + sample["wrong"].sum())))


def _test_f1(sample: dict, keep: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    from tasks.features import get_feature_frame
    from tasks.model import fit_booster, predict_proba

    k = len(sample["names"])
    booster = fit_booster(
        get_feature_frame(sample["rows"][keep]),
        sample["given"][keep],
        params=TRAIN,
        n_classes=k,
        random_state=0,
    )
    predicted = predict_proba(booster, sample["test_x"], k).argmax(axis=1)
    return float(f1_score(sample["test_y"], predicted, average="macro"))


def run_flags(args: argparse.Namespace) -> str:
    precision_rows, size_rows = [], []
    for name in args.datasets.split(","):
        raw = pd.read_parquet(args.data_dir / f"{name}.parquet")
        for seed in range(args.seeds):
            sample = _noisy_sample(raw, args.labels, args.noise, seed)
            new, probs = _new_flags(sample, FlagParams())
            for rule, mask in (
                ("before", _old_flags(sample["rows"], sample["given"])),
                ("lightgbm", _new_flags(sample, FlagParams(forest_trees=0))[0]),
                ("now", new),
            ):
                precision_rows.append(
                    {"set": name, "seed": seed, "rule": rule, **_scores(mask, sample["wrong"])}
                )
            precision_rows[-1]["best_f1"] = _best_f1(probs, sample)
            log.info("flags %s seed %d: %s", name, seed, precision_rows[-1])
        for n in map(int, args.sizes.split(",")) if args.sizes else ():
            for noise in map(float, args.size_noises.split(",")):
                for seed in range(args.size_seeds):
                    sample = _noisy_sample(raw, n, noise, seed)
                    if (
                        np.bincount(sample["given"]).min() < 2
                        or np.unique(sample["given"]).size < 2
                    ):
                        continue
                    rules = {
                        "none": np.zeros(n, dtype=bool),
                        "before (5% cap)": _old_flags(sample["rows"], sample["given"]),
                        "estimate alone": _new_flags(sample, FlagParams(estimate_from_labels=0))[0],
                        "fixed 15% cap": _new_flags(
                            sample, FlagParams(max_fraction=0.15, estimate_from_labels=10**9)
                        )[0],
                        "lightgbm alone": _new_flags(sample, FlagParams(forest_trees=0))[0],
                        "now": _new_flags(sample, FlagParams())[0],
                    }
                    for rule, mask in rules.items():
                        size_rows.append(
                            {
                                "set": name,
                                "labels": n,
                                "noise": noise,
                                "seed": seed,
                                "rule": rule,
                                "flagged_share": mask.mean(),
                                "test_macro_f1": _test_f1(sample, ~mask),
                            }
                        )
                    log.info("sizes %s %d labels, noise %.2f, seed %d", name, n, noise, seed)
    flags = pd.DataFrame(precision_rows)
    flags.to_csv(args.out / "flags.csv", index=False)
    table = flags.groupby(["set", "rule"])[["flagged", "wrong", "precision", "recall", "f1"]].mean()
    wide = table.unstack("rule")
    best = flags.dropna(subset=["best_f1"]).groupby("set")["best_f1"].mean()
    lines = [
        f"### Flags at {args.noise:.0%} uniform noise, {args.labels:,} labels ({args.seeds} seeds)",
        "",
        "(before: prune_by_noise_rate, 5% cap; lightgbm: cleanlab's count on LightGBM's "
        "probabilities alone; now: with the forest beside it)",
        "",
        "| set | flagged before / lightgbm / now | wrong | precision before / lightgbm / now | "
        "recall before / lightgbm / now | F1 before / lightgbm / now | best F1 of any count "
        "(now) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rules = ("before", "lightgbm", "now")
    for name in wide.index:
        r = wide.loc[name]

        def cells(metric, form, r=r):
            return " / ".join(format(r[(metric, rule)], form) for rule in rules)

        lines.append(
            f"| {name} | {cells('flagged', '.0f')} | {r[('wrong', 'now')]:.0f} | "
            f"{cells('precision', '.3f')} | {cells('recall', '.3f')} | {cells('f1', '.3f')} | "
            f"{best.get(name, float('nan')):.3f} |"
        )
    if size_rows:
        sizes = pd.DataFrame(size_rows)
        sizes.to_csv(args.out / "flag_sizes.csv", index=False)
        mean = sizes.groupby(["labels", "noise", "rule"])["test_macro_f1"].mean().unstack("rule")
        delta = mean.drop(columns="none").sub(mean["none"], axis=0) * 1000
        share = sizes.groupby(["labels", "noise", "rule"])["flagged_share"].mean().unstack("rule")
        rules = list(delta.columns)
        lines += [
            "",
            f"### Test macro-F1 without the flagged labels minus with them (x1000; "
            f"{args.datasets}, {args.size_seeds} seeds), and the share flagged",
            "",
            "| labels | noise | " + " | ".join(rules) + " |",
            "|---:|---:|" + "---:|" * len(rules),
        ]
        for (n, noise), row in delta.iterrows():
            cells = [f"{row[r]:+.1f} ({share.loc[(n, noise), r]:.0%})" for r in rules]
            lines.append(f"| {n} | {noise:.0%} | " + " | ".join(cells) + " |")
        lines.append("| mean | | " + " | ".join(f"{delta[r].mean():+.1f}" for r in rules) + " |")
    return "\n".join(lines) + "\n"


def run_flag_cost(args: argparse.Namespace) -> str:
    """Seconds of ``get_label_probs`` (every fold's fits and predictions) with LightGBM alone
    and with the forest beside it, at ``--cost-labels`` labels of each set."""
    from tasks.flag import get_label_probs

    rows = []
    for name in args.datasets.split(","):
        raw = pd.read_parquet(args.data_dir / f"{name}.parquet")
        for n in map(int, args.cost_labels.split(",")):
            if n > len(raw) - TEST_ITEMS:
                continue
            sample = _noisy_sample(raw, n, args.noise, 0)
            labels = pd.Series(np.take(sample["names"], sample["given"]), dtype="string")
            for trees in (0, FlagParams().forest_trees):
                started = time.perf_counter()
                _, why = get_label_probs(
                    sample["rows"],
                    labels,
                    classes=sample["names"],
                    params=FlagParams(forest_trees=trees),
                    train_params=TRAIN,
                    random_state=0,
                )
                seconds = time.perf_counter() - started
                rows.append({"set": name, "labels": n, "trees": trees, "seconds": seconds})
                log.info("flag cost %s %d labels, %d trees: %.2f s%s", name, n, trees, seconds, why)
    cost = pd.DataFrame(rows)
    cost.to_csv(args.out / "flag_cost.csv", index=False)
    wide = cost.pivot_table(index=["set", "labels"], columns="trees", values="seconds")
    lines = [
        "### Out-of-fold probabilities: seconds, LightGBM alone and with the forest",
        "",
        "| set | labels | LightGBM alone | with the forest | the forest's share |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, n), row in wide.iterrows():
        alone, both = row.iloc[0], row.iloc[-1]
        lines.append(f"| {name} | {n:,} | {alone:.2f} | {both:.2f} | {(both - alone) / both:.0%} |")
    return "\n".join(lines) + "\n"


# -- consensus ----------------------------------------------------------------------------------


def _abt(*, keep: int | None = None, model: str = "features", seed: int = 0) -> dict:
    items = pd.read_parquet(CROWD / "product_matching_items.parquet")
    ann = pd.read_parquet(CROWD / "product_matching_annotations.parquet")
    features = [c for c in items.columns if c.startswith("f_")]
    if model == "lengths":  # a weak model: the two names' lengths only
        features = ["f_len_name_a", "f_len_name_b"]
    votes = ann.assign(label=ann["annotator_label"].astype(str))[["item_id", "annotator", "label"]]
    rng = np.random.default_rng(seed)
    if keep is not None:
        wanted = pd.Series(rng.integers(1, keep + 1, len(items)), index=items["item_id"])
        rank = votes.groupby("item_id").cumcount().to_numpy()
        votes = votes[rank < votes["item_id"].map(wanted).to_numpy()]
    rows = items[["item_id", *features]]
    if model == "noise":
        rows = items[["item_id"]].assign(f_noise=rng.random(len(items)))
    truth = items.set_index("item_id")["label"].astype(str)
    return {"votes": votes, "rows": rows, "truth": truth, "classes": ("0", "1")}


def _simulated_crowd(
    name: str, *, low: float, high: float, features: int, confusion: float, seed: int
) -> dict:
    raw = pd.read_parquet(DATA / f"{name}.parquet")
    rng = np.random.default_rng(seed)
    sub = raw.iloc[rng.choice(len(raw), 700, replace=False)].reset_index(drop=True)
    classes = tuple(str(c) for c in sorted(raw["label"].unique()))
    truth = pd.Series(sub["label"].astype(str).to_numpy(), index=[f"i{k}" for k in range(700)])
    columns = [c for c in raw.columns if c != "label"]
    columns = list(rng.choice(columns, features, replace=False))
    rows = sub[columns].assign(item_id=truth.index)[["item_id", *columns]]
    accuracy = np.linspace(low, high, 20)
    votes = []
    for item, label in truth.items():
        for who in rng.choice(20, rng.integers(1, 8), replace=False):
            vote = label
            if rng.random() > accuracy[who]:
                if rng.random() < confusion:
                    vote = classes[(classes.index(label) + 1) % len(classes)]
                else:
                    vote = rng.choice([c for c in classes if c != label])
            votes.append((item, f"a{who:02d}", vote))
    votes = pd.DataFrame(votes, columns=["item_id", "annotator", "label"])
    return {"votes": votes, "rows": rows, "truth": truth, "classes": classes}


def _consensus_accuracy(crowd: dict) -> dict:
    from tasks.merge import get_majority_labels, resolve_labels

    votes = crowd["votes"].reset_index(drop=True)
    votes = votes.assign(order=np.arange(len(votes)), round_id=1)
    split = pd.Series("train", index=pd.Index(crowd["rows"]["item_id"].unique()))
    truth = crowd["truth"]
    out = {}
    majority = get_majority_labels(votes).set_index("item_id")["label"]
    out["majority"] = float((majority == truth.loc[majority.index]).mean())
    for mode in ("crowdlab", "auto"):
        labels = resolve_labels(
            votes,
            split,
            crowd["rows"],
            classes=crowd["classes"],
            params=MergeParams(consensus=mode),
            train_params=TRAIN,
            random_state=0,
        ).labels.set_index("item_id")["label"]
        out[mode] = float((labels == truth.loc[labels.index]).mean())
    return out


def get_crowds(seeds: int) -> list[tuple[str, int, object]]:
    crowds: list[tuple[str, int, object]] = []
    if (CROWD / "product_matching_annotations.parquet").exists():
        crowds.append(("Abt-Buy, 3 votes, f_* features", 0, lambda s: _abt()))
        crowds += [
            ("Abt-Buy, 1-3 votes kept, f_* features", s, lambda s: _abt(keep=3, seed=s))
            for s in range(seeds)
        ]
        crowds.append(
            ("Abt-Buy, 3 votes, model on the name lengths", 0, lambda s: _abt(model="lengths"))
        )
        crowds += [
            ("Abt-Buy, 3 votes, model on a noise feature", s, lambda s: _abt(model="noise", seed=s))
            for s in range(seeds)
        ]
    simulated = [
        ("pendigits, acc 0.5-0.95, 2 features", "pendigits", 0.5, 0.95, 2, 0.0),
        ("pendigits, acc 0.4-0.7, 1 feature", "pendigits", 0.4, 0.7, 1, 0.0),
        ("pendigits, acc 0.5-0.95, 2 features, confusion", "pendigits", 0.5, 0.95, 2, 0.8),
        ("letter, acc 0.5-0.95, 4 features", "letter", 0.5, 0.95, 4, 0.0),
        ("satimage, acc 0.4-0.8, 1 feature, confusion", "satimage", 0.4, 0.8, 1, 0.8),
    ]
    for label, name, low, high, features, confusion in simulated:
        crowds += [
            (
                label,
                s,
                lambda s, n=name, lo=low, hi=high, f=features, c=confusion: _simulated_crowd(
                    n, low=lo, high=hi, features=f, confusion=c, seed=s
                ),
            )
            for s in range(seeds)
        ]
    return crowds


def run_consensus(args: argparse.Namespace) -> str:
    rows = []
    for label, seed, make in get_crowds(args.seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _consensus_accuracy(make(seed))
        rows.append({"crowd": label, "seed": seed, **result})
        log.info("consensus %s seed %d: %s", label, seed, result)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "consensus.csv", index=False)
    lines = [
        "### Consensus: share of items whose label is the gold label",
        "",
        "| crowd | seeds | majority | CROWDLAB as it comes | auto (default) | "
        "seeds CROWDLAB < majority | seeds auto < majority |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c in table.groupby("crowd", sort=False):
        lines.append(
            f"| {label} | {len(c)} | {c['majority'].mean():.4f} | {c['crowdlab'].mean():.4f} | "
            f"{c['auto'].mean():.4f} | {(c['crowdlab'] < c['majority']).sum()} | "
            f"{(c['auto'] < c['majority']).sum()} |"
        )
    return "\n".join(lines) + "\n"


# -- activelab ----------------------------------------------------------------------------------


def _queue_candidates(ctx, scores, issued, current, label_probs, champion, plan):  # noqa: ARG001
    """select's relabel queue, as when flag saved no probabilities."""
    from tasks.selection import get_queue_candidates

    return get_queue_candidates(ctx, current, issued)


def activelab_job(job: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One campaign of an arm: three annotators of equal noise; ``queue`` swaps select's
    ActiveLab for its relabel queue."""
    import json

    import flows.simulate as simulate
    import tasks.selection as selection
    from tasks.params import load_params

    data_dir, params_json, arm, seed, budget, noise, annotators = job
    saved = simulate.get_annotator_noise, selection.get_activelab_candidates
    simulate.get_annotator_noise = lambda noise, n: {
        f"sim-annotator-{k + 1}": noise for k in range(n)
    }
    if arm == "queue":
        selection.get_activelab_candidates = _queue_candidates
    try:
        params = load_params(json.loads(params_json))
        curve, issued = simulate.run_campaign(
            Path(data_dir), params, params.score.strategy, seed, budget, noise, annotators
        )
    finally:
        simulate.get_annotator_noise, selection.get_activelab_candidates = saved
    return curve.assign(strategy=arm), issued.assign(strategy=arm)


def get_answer_aulc(curves: pd.DataFrame, *, start: int, stop: int) -> pd.Series:
    """Each campaign's area under its learning curve of test accuracy against the answers
    spent (relabels count, so both arms are read at equal annotation budget), over
    ``[start, stop]`` answers; index (strategy, seed)."""
    from tasks.simulate import get_aulc

    return (
        curves.sort_values("answers")
        .groupby(["strategy", "seed"])
        .apply(
            lambda c: get_aulc(
                c["answers"].to_numpy(), c["accuracy"].to_numpy(), start=start, stop=stop
            ),
            include_groups=False,
        )
    )


def run_activelab(args: argparse.Namespace) -> str:
    import json

    from flows.simulate import (
        SimulationSpec,
        get_campaign_params,
        load_dataset,
        run_campaigns,
    )
    from tasks.params import dump_params

    lines = [
        f"### ActiveLab vs the relabel queue: three annotators, {args.noise:.0%} wrong answers "
        f"each, {args.answers} answers, {args.seeds} seeds",
        "",
        f"| set | arm | test accuracy | macro-F1 | training items | relabels sent | "
        f"accuracy ActiveLab - queue (paired) | p | AULC of accuracy, {args.initial}-"
        f"{args.answers} answers | AULC ActiveLab - queue (paired) | p | seeds ActiveLab ahead |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    from tasks.simulate import get_paired_test

    for name in args.datasets.split(","):
        spec = SimulationSpec(
            dataset=args.data_dir / f"{name}.parquet",
            seeds=args.seeds,
            initial=args.initial,
            batch=args.batch,
            budget=args.answers,
            noise=args.noise,
            annotators=3,
        ).resolved()
        data = load_dataset(spec)
        data_dir = args.out / name
        data_dir.mkdir(parents=True, exist_ok=True)
        data.items.to_parquet(data_dir / "items.parquet", index=False)
        truth = data.truth.assign(
            split=np.where(data.truth["item_id"].isin(data.test_ids), "test", "train")
        )
        truth.to_parquet(data_dir / "truth.parquet", index=False)
        strategy = spec.strategies[0]
        jobs = [
            (
                str(data_dir.resolve()),
                json.dumps(dump_params(get_campaign_params(spec, data.classes, strategy, seed))),
                arm,
                seed,
                args.answers,
                args.noise,
                3,
            )
            for seed in range(args.seeds)
            for arm in ("activelab", "queue")
        ]
        results = []

        def done(job, result, results=results, name=name, total=len(jobs)):  # noqa: B008
            results.append(result)
            log.info(
                "activelab %s %s seed %s done (%d/%d)",
                name,
                job[2],
                job[3],
                len(results),
                total,
            )

        saved = args.out / f"activelab-{name}-curves.csv", args.out / f"activelab-{name}-issued.csv"
        if all(path.exists() for path in saved):  # an earlier run into the same --out
            log.info("activelab %s: reading the campaigns of %s", name, args.out)
            curves, issued = (pd.read_csv(path, dtype={"item_id": str}) for path in saved)
        else:
            run_campaigns(jobs, processes=args.jobs, on_done=done, run_job=activelab_job)
            curves = pd.concat([c for c, _ in results], ignore_index=True)
            issued = pd.concat([i for _, i in results], ignore_index=True)
            curves.to_csv(saved[0], index=False)
            issued.to_csv(saved[1], index=False)
        # answers given before round r's model: the seed batch, then a batch per round
        curves["answers"] = args.initial + (curves["round_id"] - 2) * args.batch
        at = curves[curves["answers"] == args.answers].set_index(["strategy", "seed"])
        sent = issued[issued["reason"] == "relabel"].copy()
        sent["answers_before"] = args.initial + (sent["round_id"] - 2) * args.batch
        sent = sent[sent["answers_before"] < args.answers].groupby(["strategy", "seed"]).size()
        aulc = get_answer_aulc(curves, start=args.initial, stop=args.answers)
        aulc_diff = (aulc.loc["activelab"] - aulc.loc["queue"]).to_numpy()
        aulc_mean, aulc_p = get_paired_test(aulc_diff)
        for arm in ("activelab", "queue"):
            a = at.loc[arm]
            diff, p = get_paired_test(
                (at.loc["activelab", "accuracy"] - at.loc["queue", "accuracy"]).to_numpy()
            )
            lines.append(
                f"| {name} | {arm} | {a['accuracy'].mean():.4f} | {a['macro_f1'].mean():.4f} | "
                f"{a['labels'].mean():.0f} | {sent.get(arm, pd.Series(dtype=float)).mean():.0f} | "
                + (f"{diff:+.4f} | {p:.3f} |" if arm == "activelab" else " | |")
                + f" {aulc.loc[arm].mean():.4f} |"
                + (
                    f" {aulc_mean:+.4f} | {aulc_p:.3f} | {(aulc_diff > 0).sum()}/{aulc_diff.size} |"
                    if arm == "activelab"
                    else " | | |"
                )
            )
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("flags", "flag-cost", "consensus", "activelab"))
    parser.add_argument("--datasets", default=None)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=None)
    parser.add_argument("--sizes", default="100,200,300,500,1000,2000")
    parser.add_argument("--size-noises", default="0,0.1,0.2")
    parser.add_argument("--size-seeds", type=int, default=3)
    parser.add_argument("--cost-labels", default="2000,10000,50000")
    parser.add_argument("--answers", type=int, default=800)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    defaults = {
        "flags": ("letter,magic,pendigits,satimage,adult", 5, 0.1),
        "flag-cost": ("sleep,letter", 1, 0.1),
        "consensus": ("", 5, 0.0),
        "activelab": ("pendigits,satimage", 10, 0.2),
    }[args.part]
    args.datasets = args.datasets or defaults[0]
    args.seeds = args.seeds if args.seeds is not None else defaults[1]
    args.noise = args.noise if args.noise is not None else defaults[2]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out = args.out or Path(tempfile.mkdtemp(prefix=f"alloop-crowd-{args.part}-{stamp}-"))
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    started = time.perf_counter()
    run = {
        "flags": run_flags,
        "flag-cost": run_flag_cost,
        "consensus": run_consensus,
        "activelab": run_activelab,
    }[args.part]
    text = run(args)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    text = (
        f"<!-- bench/crowd.py {args.part} at {commit}, {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - started:.0f} s -->\n" + text
    )
    (args.out / f"crowd-{args.part}.md").write_text(text)
    print(text)
    print(f"results in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
