"""Issue 17: the health stage measured through ``alloop simulate``'s own code: the plan (explore
and rebalance slices) never behind random, the stop signal, the balance rating.

    .venv/bin/python bench/health.py [--datasets satimage,pendigits,magic,adult,letter,rare,hidden]
        [--seeds 10] [--batch 100] [--budget 1000] [--stop-budget 2000]
        [--stop-datasets satimage,pendigits,magic,rare] [--arms plan,noplan,random,margin,...]
        [--jobs 2] [--out DIR] [--analyze DIR]

Arms (each a ``flows.simulate.simulate`` call with a :class:`SimulationSpec`; arms that share
strategy-independent settings share a call):

- ``plan``: the default strategy with today's defaults (the health plan's explore and
  rebalance slices fire by rule); run to ``--stop-budget`` on ``--stop-datasets`` (the stop
  signal's goal), to ``--budget`` elsewhere;
- ``noplan``: the default strategy with ``-S health.explore_fraction=0 -S
  health.rebalance_fraction=0`` (alloop before the plan);
- ``random``: random sampling, plan off (pure random: the baseline of every comparison);
- ``margin``: margin sampling, plan off, ``--margin-seeds`` seeds to ``--margin-budget`` on
  ``--margin-datasets`` (does the balance rating flag a boundary-hugging strategy?);
- ``margin_plan``: margin sampling with the plan on (the real case behind the issue was
  margin-based);
- ``margin_rebalance``: margin sampling with the rebalance slice on and the explore slice off
  (does a rebalance slice bring the balance classifier's AUC down?);
- ``variant``: the plan with ``--variant-set section.key=value`` overrides on
  ``--variant-datasets`` (a candidate change of a health default);
- ``plan50``: the plan arm with batches of 50 on ``--kappa-datasets``, ``--kappa-seeds`` seeds
  to ``--stop-budget`` (how the batch size moves the stop signal's kappa).

``rare`` is a set this script builds (:func:`build_rare_set`) from ``pendigits``: four classes,
three of them groups of three digits and one a single digit (``--rare-digit``; ``rare<d>``
builds it with digit ``d``) kept at 2.5% of the rows, with its rows placed where the seed
batches of seeds ``0..--seeds-1`` do not draw, so that the first 100 labels hold none of it
(the real case behind issue 17: a 2.5% class margin-based querying never found).

``hidden`` (:func:`build_hidden_set`) is semi-synthetic and made so that uncertainty sampling
does not find its rare class: from ``--hidden-base`` (default ``satimage``), 2.5% of the rows
become a new class, drawn at random from the quarter of the ``--hidden-source`` class's rows
that an out-of-fold model on the whole set predicts as that class most confidently (the core
of a large class, far from every boundary), with the ``--hidden-features`` feature(s) on which
that class stands highest above the others shifted above the range every other row occupies
(by that range plus one standard deviation). A model that never saw the new class predicts
its items as the source class, confidently (trees extrapolate constantly); one that saw a few
separates it with one split. Its rows are kept out of the seed batches as ``rare``'s are.
``hidden-<base>`` builds the same from ``<base>`` (``hidden-magic``: 19,020 rows, a training
pool three times satimage's).

Goal 1's comparison (AULC, labels to target, paired Wilcoxon test against random) uses every
arm's curve up to ``--budget`` labels. Goal 2 reads the plan arm's ``kappa_mean`` per round
(the mean over ``stop.window`` rounds, as the product computes it) and finds, for each of
``--thresholds``, the first round it reaches the threshold; no re-run. Goal 3 reads the
``balance`` and ``balance_auc`` columns.

Writes per dataset the simulation folders and the combined ``curves.csv`` under ``--out``
(default: a new folder under the system's temporary folder, never the checkout), the tables as
CSVs and ``health.md`` there, and prints the Markdown. ``--analyze DIR`` recomputes the tables
from an earlier run's folder without running a campaign.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})

from flows.simulate import (  # noqa: E402
    BASELINE,
    DEFAULT,
    PLAN_OFF,
    SimulationSpec,
    get_campaign_params,
    get_campaign_table,
    get_default_strategy,
    get_summary_table,
    simulate,
)
from tasks.evaluate import get_classification_metrics  # noqa: E402
from tasks.features import get_feature_frame  # noqa: E402
from tasks.health import StopEvidence, get_stop_decision  # noqa: E402
from tasks.model import (  # noqa: E402
    encode_labels,
    fit_booster,
    get_out_of_fold_pred_probs,
    predict_proba,
)
from tasks.params import StopParams  # noqa: E402
from tasks.simulate import get_labels_to_target, get_paired_test  # noqa: E402

log = logging.getLogger("bench.health")

DATASETS = ("satimage", "pendigits", "magic", "adult", "letter", "rare", "hidden")
RARE = "rare"
HIDDEN = "hidden"
#: The hidden set's rare rows come from this share of the source class, its most confidently
#: predicted rows (out of fold). Rows drawn from the whole class sat among the 10% smallest
#: margins of a seed-batch model about as often as any item (1-18% of them, most near 10%; a
#: prototype on satimage, pendigits and magic, 5 seeds each); from the quarter, 0-4% on
#: satimage's class 1.
HIDDEN_CORE = 0.25
ARMS = (
    "plan",
    "noplan",
    "random",
    "margin",
    "margin_plan",
    "margin_rebalance",
    "plan50",
    "variant",
)
MARGIN_ARMS = ("margin", "margin_plan", "margin_rebalance")
THRESHOLDS = (0.95, 0.96, 0.97, 0.98, 0.985, 0.99)
#: The stop rules replayed offline from one run's evidence (``get_stop_decision`` per round,
#: :func:`get_rule_rows`): name to StopParams overrides, and whether a missed class of the
#: plan (``explore_classes``) in the window holds the advice back too (a guard only the
#: benchmark has). ``threshold`` is the product before the plateau and the guard;
#: ``default`` is StopParams' defaults.
_OFF = {"plateau": "off", "class_kappa": 0.0, "guard_new_classes": False}
_GUARD = {"class_kappa": 0.5, "guard_new_classes": False}
STOP_RULES: dict[str, tuple[dict, bool]] = {
    "threshold": (_OFF, False),
    "threshold+new": ({**_OFF, "guard_new_classes": True}, False),
    "threshold+missed": (_OFF, True),
    "threshold+classk0.5": ({**_OFF, **_GUARD}, False),
    "noise+classk0.5": ({"plateau": "noise", **_GUARD}, False),
    "drop+classk0.5": ({"plateau": "drop", **_GUARD}, False),
    "noise_slope+classk0.5": ({"plateau": "noise_slope", **_GUARD}, False),
    "drop_slope+classk0.5": ({"plateau": "drop_slope", **_GUARD}, False),
    "slope0.85+classk0.5": ({"plateau": "slope", "plateau_kappa": 0.85, **_GUARD}, False),
    "slope0.875": ({"plateau": "slope", "class_kappa": 0.0, "guard_new_classes": False}, False),
    "slope0.875+new": ({"plateau": "slope", "class_kappa": 0.0, "guard_new_classes": True}, False),
    "default": ({}, False),
}
#: The sets the stop rule is chosen on; the others are held out.
STOP_TUNE = ("satimage", "magic", "shuttle")
#: The stop signal's goals (issue 17).
FIRE_SHARE, LOST_MEDIAN, LOST_WORST, STOP_RATIO = 0.90, 0.01, 0.02, 1.5


@dataclass(frozen=True)
class Arm:
    name: str
    strategy: str
    overrides: tuple[str, ...]


ARM_SPECS = {
    "plan": Arm("plan", DEFAULT, ()),
    "noplan": Arm("noplan", DEFAULT, PLAN_OFF),
    "random": Arm("random", BASELINE, PLAN_OFF),
    "margin": Arm("margin", "margin", PLAN_OFF),
    "margin_plan": Arm("margin_plan", "margin", ()),
    "margin_rebalance": Arm("margin_rebalance", "margin", ("health.explore_fraction=0",)),
    "plan50": Arm("plan50", DEFAULT, ()),
}


# -- the rare-class set -------------------------------------------------------------------------
def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    split = np.full(labels.size, "train", dtype=object)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        split[where[rng.permutation(where.size)[: int(round(fraction * where.size))]]] = "test"
    return split


def _seed_batches(path: Path, args: argparse.Namespace, out: Path) -> pd.DataFrame:
    """The seed batches (item ids, by seed) of the campaigns on ``path``: one trained round
    of the random arm per seed. The draw depends on the item ids, the split and the seed
    only, never on the labels."""
    spec = SimulationSpec(
        dataset=path,
        split_column="split",
        strategies=(BASELINE,),
        seeds=args.seeds,
        initial=args.initial,
        batch=1,
        budget=args.initial + 1,
        overrides=PLAN_OFF,
        jobs=args.jobs,
    )
    issued = simulate(spec, out).issued
    return issued[issued["reason"] == "seed"]


def get_rare_digit(name: str, args: argparse.Namespace) -> int:
    """``rare`` is built with ``--rare-digit``, ``rare<d>`` with digit ``d``."""
    return int(name[len(RARE) :]) if name != RARE else args.rare_digit


def build_rare_set(name: str, args: argparse.Namespace) -> tuple[Path, dict]:
    """``pendigits`` as four classes: the other nine digits, in order, three by three as
    classes 0, 1, 2, and the rare digit (:func:`get_rare_digit`) as class 3, kept at
    ``--rare-share`` of the rows (a random subset of its rows); a stratified 25% test split
    (column ``split``); the rare rows swapped into training positions no seed batch of seeds
    ``0..--seeds-1`` draws."""
    out = args.out / "data"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    info_path = out / f"{name}.json"
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    rare_digit = get_rare_digit(name, args)
    raw = pd.read_parquet(args.data_dir / "pendigits.parquet")
    digit = raw["label"].to_numpy()
    rng = np.random.default_rng(17)
    common = raw[digit != rare_digit]
    rare = raw[digit == rare_digit]
    n_rare = int(round(args.rare_share / (1 - args.rare_share) * len(common)))
    rare = rare.iloc[np.sort(rng.permutation(len(rare))[:n_rare])]
    table = pd.concat([common, rare]).iloc[rng.permutation(len(common) + n_rare)]
    others = [d for d in range(10) if d != rare_digit]
    group = {d: i // 3 for i, d in enumerate(others)} | {rare_digit: 3}
    table = table.assign(label=table["label"].map(group)).reset_index(drop=True)
    table, moved, _ = _hide_from_seed_batches(table, 3, name, args, rng)
    table.to_parquet(path, index=False)
    info = {
        "rows": len(table),
        "rare_digit": rare_digit,
        "rare_rows": int((table["label"] == 3).sum()),
        "rare_share": float((table["label"] == 3).mean()),
        "rare_in_seed_batches_before_swap": moved,
        "rare_full_data_recall": get_full_data_recall(path, args)[3],
    }
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path, info


def _hide_from_seed_batches(
    table: pd.DataFrame,
    rare_label: int,
    name: str,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """``table`` (columns ``label`` and features, rows in their final order) with a
    stratified 25% test split (column ``split``) and the rows of ``rare_label`` that a seed
    batch of seeds ``0..--seeds-1`` draws swapped, whole, with training rows of other classes
    no seed batch draws (a training position keeps its split). Returns the table, how many
    rare rows moved, and the seed batches (``item_id`` = row position, ``seed``)."""
    table = table.copy()
    table["split"] = _stratified_split(table["label"].to_numpy(), 0.25, 0)
    draft = args.out / "data" / f"{name}-draft.parquet"
    table.to_parquet(draft, index=False)
    seeds = _seed_batches(draft, args, args.out / f"{name}-seed-batches")
    draft.unlink()
    in_seed = np.zeros(len(table), dtype=bool)
    in_seed[seeds["item_id"].astype(int).to_numpy()] = True
    is_rare = table["label"].to_numpy() == rare_label
    train = table["split"].to_numpy() == "train"
    move = np.flatnonzero(is_rare & in_seed)
    free = np.flatnonzero(~is_rare & ~in_seed & train)
    swap_to = rng.choice(free, size=move.size, replace=False)
    features = [c for c in table.columns if c != "split"]
    a, b = table.loc[move, features].to_numpy(), table.loc[swap_to, features].to_numpy()
    table.loc[move, features], table.loc[swap_to, features] = b, a
    return table, int(move.size), seeds[["item_id", "seed"]]


def build_hidden_set(name: str, args: argparse.Namespace) -> tuple[Path, dict]:
    """``--hidden-base`` (``hidden``) or ``<base>`` (``hidden-<base>``) with a rare class
    uncertainty sampling does not find (semi-synthetic).

    The rare class (label: the largest label plus one) is ``--rare-share`` of the rows, drawn
    at random (seed 17) from the quarter of the ``--hidden-source`` class's rows with the
    highest out-of-fold probability of that class (5 folds, alloop's training params, every
    row): the core of a large class. On the ``--hidden-features`` features whose mean over the
    source class stands highest above the other rows' (in standard deviations), each rare
    row's value is raised by that feature's range over the other rows plus their standard
    deviation, so that every rare value lies above every other row's. A model without labels
    of the class extrapolates there as at the top of the source class's range; a model with a
    few separates it with one split. The rows are then kept out of the seed batches
    (:func:`_hide_from_seed_batches`), and :func:`get_hidden_check` measures, per seed, how
    uncertain a seed-batch model finds the rare items."""
    out = args.out / "data"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.parquet"
    info_path = out / f"{name}.json"
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    base = name.split("-", 1)[1] if name != HIDDEN else args.hidden_base
    raw = pd.read_parquet(args.data_dir / f"{base}.parquet")
    features = [c for c in raw.columns if c != "label"]
    classes = tuple(str(c) for c in sorted(raw["label"].unique()))
    if str(args.hidden_source) not in classes:
        raise ValueError(
            f"--hidden-source {args.hidden_source} is not a class of {base} "
            f"(classes: {', '.join(classes)})"
        )
    codes = encode_labels(raw["label"].astype(str), classes)
    source = classes.index(str(args.hidden_source))
    spec = SimulationSpec(dataset=path, budget=args.budget)
    params = get_campaign_params(spec, classes, BASELINE, 0)
    probs = get_out_of_fold_pred_probs(
        _feature_frame(raw[features]),
        codes,
        n_classes=len(classes),
        n_folds=5,
        train_params=params.train,
        random_state=0,
    )
    in_source = np.flatnonzero(codes == source)
    n_rare = int(round(args.rare_share * len(raw)))
    core = in_source[np.argsort(-probs[in_source, source], kind="stable")]
    core = core[: max(n_rare, int(round(HIDDEN_CORE * in_source.size)))]
    rng = np.random.default_rng(17)
    rare = np.sort(rng.choice(core, size=n_rare, replace=False))
    is_source = codes == source
    stand_out = (raw.loc[is_source, features].mean() - raw.loc[~is_source, features].mean()) / raw[
        features
    ].std()
    shifted = list(stand_out.sort_values(ascending=False, kind="stable").index)
    shifted = shifted[: args.hidden_features]
    others = np.ones(len(raw), dtype=bool)
    others[rare] = False
    table = raw.copy()
    for f in shifted:
        values = table.loc[others, f]
        table[f] = table[f].astype(float)
        table.loc[rare, f] += values.max() - values.min() + values.std()
    rare_label = int(raw["label"].max()) + 1
    table.loc[rare, "label"] = rare_label
    table, moved, seeds = _hide_from_seed_batches(table, rare_label, name, args, rng)
    table.to_parquet(path, index=False)
    recall = get_full_data_recall(path, args)
    check = get_hidden_check(path, seeds, rare_label, args)
    info = {
        "description": (
            f"{base} with a rare class {rare_label}: {n_rare} rows drawn from the "
            f"core (the {HIDDEN_CORE:.0%} most confidently predicted out of fold) of class "
            f"{args.hidden_source}, feature(s) {', '.join(shifted)} shifted above every other "
            "row's range (semi-synthetic)"
        ),
        "rows": len(table),
        "rare_label": str(rare_label),
        "hidden_source": str(args.hidden_source),
        "shifted_features": shifted,
        "rare_rows": int((table["label"] == rare_label).sum()),
        "rare_share": float((table["label"] == rare_label).mean()),
        "rare_in_seed_batches_before_swap": moved,
        "rare_full_data_recall": recall[-1],  # the rare label is the largest: the last class
        "seed_batch_check": check.to_dict(orient="records"),
    }
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path, info


def get_hidden_check(
    path: Path, seeds: pd.DataFrame, rare_label: int, args: argparse.Namespace
) -> pd.DataFrame:
    """Per seed: a model on that seed's seed batch (alloop's training params) predicts the
    rest of the training pool; how the rare items fare against margin sampling.

    Returns
    -------
    pd.DataFrame
        One row per seed: ``rare_in_top10`` (the share of the rare items among the 10% of
        the pool with the smallest top-two margin; a random item: 0.10),
        ``rare_in_candidates`` (the same among the ``diversity_factor * --batch`` smallest
        margins, the default strategy's candidates, and ``candidates_share``, their share of
        the pool), the median top probability on the rare items and on the others, and the
        class most of the rare items are predicted as.
    """
    table = pd.read_parquet(path)
    classes = tuple(str(c) for c in sorted(table["label"].unique()))
    features = _feature_frame(table.drop(columns=["label", "split"]))
    rows = []
    for seed, batch in seeds.groupby("seed"):
        labeled = np.zeros(len(table), dtype=bool)
        labeled[batch["item_id"].astype(int).to_numpy()] = True
        pool = np.flatnonzero(~labeled & (table["split"] == "train").to_numpy())
        spec = SimulationSpec(dataset=path, split_column="split", budget=args.budget)
        params = get_campaign_params(spec, classes, BASELINE, int(seed))  # training params
        booster = fit_booster(
            features[labeled],
            encode_labels(table.loc[labeled, "label"].astype(str), classes),
            params=params.train,
            n_classes=len(classes),
            random_state=int(seed),
        )
        probs = predict_proba(booster, features.iloc[pool], len(classes))
        top2 = np.sort(probs, axis=1)[:, -2:]
        order = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")  # smallest margin first
        n_candidates = min(params.score.diversity_factor * args.batch, pool.size)
        is_rare = table["label"].to_numpy()[pool] == rare_label
        predicted = np.asarray(classes)[probs[is_rare].argmax(axis=1)]
        rows.append(
            {
                "seed": int(seed),
                "rare_in_top10": float(
                    np.isin(np.flatnonzero(is_rare), order[: pool.size // 10]).mean()
                ),
                "rare_in_candidates": float(
                    np.isin(np.flatnonzero(is_rare), order[:n_candidates]).mean()
                ),
                "candidates_share": n_candidates / pool.size,
                "rare_median_confidence": float(np.median(probs[is_rare].max(axis=1))),
                "others_median_confidence": float(np.median(probs[~is_rare].max(axis=1))),
                "rare_predicted_as": str(pd.Series(predicted).mode().iloc[0]),
                "rare_predicted_as_share": float(
                    (predicted == pd.Series(predicted).mode().iloc[0]).mean()
                ),
            }
        )
    return pd.DataFrame(rows)


def _feature_frame(features: pd.DataFrame) -> pd.DataFrame:
    """``features`` with the row position as ``item_id``, as simulate numbers the items."""
    features = features.copy()
    features.insert(0, "item_id", np.arange(len(features)).astype(str))
    return get_feature_frame(features)


def get_full_data_recall(path: Path, args: argparse.Namespace) -> list[float]:
    """Per class, the recall on the test split of the model on every training row (alloop's
    default params, as simulate's reference model)."""
    table = pd.read_parquet(path)
    classes = tuple(str(c) for c in sorted(table["label"].unique()))
    spec = SimulationSpec(dataset=path, split_column="split", budget=args.budget)
    params = get_campaign_params(spec, classes, BASELINE, 0)
    features = _feature_frame(table.drop(columns=["label", "split"]))
    train, test = table["split"] == "train", table["split"] == "test"
    booster = fit_booster(
        features[train.to_numpy()],
        encode_labels(table.loc[train, "label"].astype(str), classes),
        params=params.train,
        n_classes=len(classes),
        random_state=0,
    )
    probs = predict_proba(booster, features[test.to_numpy()], len(classes))
    codes = encode_labels(table.loc[test, "label"].astype(str), classes)
    predicted = probs.argmax(axis=1)
    metrics = get_classification_metrics(codes, probs, classes)
    log.info("%s: full-data macro-F1 %.4f", path.name, metrics["macro_f1"])
    return [float(np.mean(predicted[codes == k] == k)) for k in range(len(classes))]


# -- running -----------------------------------------------------------------------------------
def get_arm_runs(name: str, args: argparse.Namespace) -> list[dict]:
    """The simulate() calls of one dataset: arms that differ only by strategy share a call."""
    wanted = [a for a in args.arms if _arm_applies(a, name, args)]
    runs: dict[tuple, dict] = {}
    for arm in wanted:
        spec = ARM_SPECS.get(arm) or Arm(arm, DEFAULT, tuple(args.variant_set))
        if arm in MARGIN_ARMS:
            seeds, budget, batch = args.margin_seeds, args.margin_budget, args.batch
        elif arm == "plan50":
            seeds, budget, batch = args.kappa_seeds, args.stop_budget, 50
        elif arm == "plan" and name in args.stop_datasets:
            seeds, budget, batch = args.seeds, args.stop_budget, args.batch
        else:
            seeds, budget, batch = args.seeds, args.budget, args.batch
        key = (spec.overrides, seeds, budget, batch)
        run = runs.setdefault(
            key,
            {"arms": {}, "seeds": seeds, "budget": budget, "batch": batch, "overrides": key[0]},
        )
        run["arms"][spec.strategy] = arm
    return list(runs.values())


def _arm_applies(arm: str, name: str, args: argparse.Namespace) -> bool:
    if arm in MARGIN_ARMS:
        return name in args.margin_datasets
    if arm == "plan50":
        return name in args.kappa_datasets
    if arm == "variant":
        return name in args.variant_datasets
    return True


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    split_column, extra = None, {}
    if is_rare_set(name):
        path, extra = (build_hidden_set if is_hidden_set(name) else build_rare_set)(name, args)
        split_column = "split"
    else:
        path = args.data_dir / f"{name}.parquet"
    curves, issued, seconds, meta = [], [], {}, {}
    data_of: dict[str, Path] = {}  # each arm's simulate() data folder
    for run in get_arm_runs(name, args):
        strategies = tuple(run["arms"])
        spec = SimulationSpec(
            dataset=path,
            split_column=split_column,
            strategies=strategies,
            seeds=run["seeds"],
            initial=args.initial,
            batch=run["batch"],
            budget=run["budget"],
            overrides=run["overrides"],
            jobs=args.jobs,
        )
        folder = "-".join(run["arms"].values())
        t0 = time.perf_counter()
        result = load_finished(spec, args.out / name / folder)
        if result is None:
            result = simulate(spec, args.out / name / folder)
            seconds[folder] = time.perf_counter() - t0
            log.info("%s: %s done in %.0f s", name, folder, seconds[folder])
        else:
            seconds[folder] = result.seconds
            log.info("%s: %s reused from an earlier run", name, folder)
        data_of |= dict.fromkeys(run["arms"].values(), args.out / name / folder / "data")
        names = {s: run["arms"].get(s, run["arms"].get(DEFAULT)) for s in result.curves["strategy"]}
        curves.append(result.curves.assign(strategy=result.curves["strategy"].map(names)))
        issued.append(result.issued.assign(strategy=result.issued["strategy"].map(names)))
        meta = {"reference": result.reference_score, "target": result.target}
    curves_all = pd.concat(curves, ignore_index=True)
    issued_all = pd.concat(issued, ignore_index=True)
    truth = pd.read_parquet(args.out / name / folder / "data" / "truth.parquet")
    issued_all = issued_all.merge(truth[["item_id", "label"]], on="item_id", how="left")
    if is_hidden_set(name):
        # seed 0 of the first arm with the plan on that planned an explore slice (else plan)
        planned = curves_all[(curves_all["seed"] == 0) & (curves_all["explore_fraction"] > 0)]
        arm = next((a for a in ("plan", "margin_plan") if a in set(planned["strategy"])), "plan")
        if arm in data_of:
            extra["plan_reasons_arm"] = arm
            extra["plan_reasons"] = get_plan_reasons(
                data_of[arm], curves_all, args, arm=arm, seed=0
            )
    meta |= {"seconds": seconds, "wall": time.perf_counter() - started, **extra}
    if (args.out / name / "meta.json").exists():  # an earlier call ran other arms: keep them
        earlier = load_dataset_result(name, args.out)
        ran = set(curves_all["strategy"])
        curves_all = pd.concat(
            [earlier["curves"][~earlier["curves"]["strategy"].isin(ran)], curves_all],
            ignore_index=True,
        )
        issued_all = pd.concat(
            [earlier["issued"][~earlier["issued"]["strategy"].isin(ran)], issued_all],
            ignore_index=True,
        )
        meta["seconds"] = {**earlier["seconds"], **seconds}
        meta["wall"] += earlier["wall"]
    (args.out / name).mkdir(parents=True, exist_ok=True)
    curves_all.to_csv(args.out / name / "curves.csv", index=False)
    issued_all.to_csv(args.out / name / "issued.csv", index=False)
    (args.out / name / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return load_dataset_result(name, args.out)


def is_rare_set(name: str) -> bool:
    """A set this script builds, with a rare class kept out of the seed batches."""
    return name.startswith(RARE) or is_hidden_set(name)


def is_hidden_set(name: str) -> bool:
    """``hidden`` (built from ``--hidden-base``) or ``hidden-<base>``."""
    return name == HIDDEN or name.startswith(f"{HIDDEN}-")


def get_plan_reasons(
    data_dir: Path, curves: pd.DataFrame, args: argparse.Namespace, *, arm: str, seed: int
) -> list[dict]:
    """The campaign of ``arm`` (one with the plan on) and ``seed`` replayed in this process
    up to the first round whose plan had an explore slice, keeping each round's
    ``plan_reasons`` (the health report's sentences; simulate's workspaces are gone once a
    campaign ends). The campaign is seeded: the replay is the campaign.

    Parameters
    ----------
    data_dir : Path
        The ``data`` folder of the arm's simulate() call (items and truth).
    curves : pd.DataFrame
        The campaigns' curves: the replay stops at the arm's first explore round of ``seed``
        (at ``--budget`` when there is none).
    """
    import tasks.health  # only the replay wraps the stage
    from flows.simulate import run_campaign

    c = curves[(curves["strategy"] == arm) & (curves["seed"] == seed)]
    explored = c.loc[c["explore_fraction"] > 0, "labels"]
    budget = int(explored.min()) if len(explored) else args.budget
    truth = pd.read_parquet(data_dir / "truth.parquet")
    classes = tuple(str(c) for c in sorted(truth["label"].astype(int).unique()))
    spec = SimulationSpec(
        dataset=data_dir,
        split_column="split",
        initial=args.initial,
        batch=args.batch,
        budget=budget,
        overrides=ARM_SPECS[arm].overrides,
    )
    strategy = ARM_SPECS[arm].strategy
    strategy = get_default_strategy() if strategy == DEFAULT else strategy
    params = get_campaign_params(spec, classes, strategy, seed)
    kept: list[dict] = []
    run = tasks.health.run

    def run_and_keep(ctx):  # the stage as it is, its plan recorded
        summary = run(ctx)
        kept.append(
            {
                "round_id": ctx.round_id,
                "train_items": int((ctx.load("current")["split"] == "train").sum()),
                "explore_fraction": summary.explore_fraction,
                "explore_classes": list(summary.explore_classes or ()),
                "plan_reasons": list(summary.plan_reasons or ()),
            }
        )
        return summary

    with mock.patch.object(tasks.health, "run", run_and_keep):
        run_campaign(data_dir, params, strategy, seed, budget, 0.0)
    return kept


@dataclass
class Finished:
    curves: pd.DataFrame
    issued: pd.DataFrame
    reference_score: float
    target: float
    seconds: float


#: The spec fields that decide a simulation's campaigns (a resumed run reuses a folder whose
#: simulation.json has the same).
SPEC_KEYS = ("strategies", "seeds", "initial", "batch", "budget", "overrides", "split_column")


def load_finished(spec: SimulationSpec, folder: Path) -> Finished | None:
    """The results of an earlier simulate() call of the same spec in ``folder`` (a run that
    stopped part way resumes without re-running it), or None."""
    meta_path = folder / "simulation.json"
    if not meta_path.exists() or not (folder / "issued.csv").exists():
        return None
    meta = json.loads(meta_path.read_text())
    wanted = json.loads(json.dumps(asdict(spec.resolved()), default=str))
    if any(meta.get(k) != wanted.get(k) for k in SPEC_KEYS):
        return None
    return Finished(
        pd.read_csv(folder / "curves.csv"),
        pd.read_csv(folder / "issued.csv", dtype={"item_id": str}),
        float(meta["reference_score"]),
        float(meta["target"]),
        float(meta_path.stat().st_mtime - (folder / "data").stat().st_mtime),
    )


def load_dataset_result(name: str, out: Path) -> dict:
    meta = json.loads((out / name / "meta.json").read_text())
    curves = pd.read_csv(out / name / "curves.csv")
    issued = pd.read_csv(out / name / "issued.csv", dtype={"item_id": str, "label": str})
    return {"dataset": name, "curves": curves, "issued": issued, **meta}


# -- goal 1: never behind random ---------------------------------------------------------------
def get_goal1(r: dict, args: argparse.Namespace) -> tuple[pd.DataFrame, dict]:
    """Each arm's campaigns up to ``--budget`` labels against random's, paired by seed."""
    curves = r["curves"]
    curves = curves[curves["strategy"].isin(["plan", "noplan", "random"])]
    curves = curves[curves["labels"] <= args.budget]
    row: dict = {"dataset": r["dataset"], "reference_f1": r["reference"]}
    if curves.empty:  # a run of other arms only (the margin arms of the balance goal, say)
        return pd.DataFrame(), row
    campaigns = get_campaign_table(
        curves, target=r["target"], start=args.initial, stop=args.budget, reference=r["reference"]
    )
    summary = get_summary_table(campaigns).set_index("strategy")
    for arm in ("plan", "noplan", "random"):
        if arm not in summary.index:
            continue
        s = summary.loc[arm]
        row[f"{arm}_aulc"] = s["mean_aulc"]
        row[f"{arm}_labels_to_target"] = s["median_labels_to_target"]
        row[f"{arm}_reached"] = f"{int(s['reached_target'])}/{int(s['seeds'])}"
        # the comparison with random exists only when the run has a random arm (a stop-only
        # run has the plan arm alone)
        if arm != "random" and "aulc_diff_vs_random" in s.index:
            row[f"{arm}_minus_random"] = s["aulc_diff_vs_random"]
            row[f"{arm}_p"] = s["aulc_p_value"]
    if {"plan_minus_random", "noplan_minus_random"} <= row.keys():
        lead = row["noplan_minus_random"]
        row["lead_kept"] = row["plan_minus_random"] / lead if lead > 0 else math.nan
        row["plan_behind_random"] = bool(row["plan_minus_random"] < 0 and row["plan_p"] < 0.05)
        by_seed = campaigns.pivot(index="seed", columns="strategy", values="aulc")
        diff, p = get_paired_test((by_seed["plan"] - by_seed["noplan"]).dropna().to_numpy())
        row["plan_minus_noplan"], row["plan_vs_noplan_p"] = diff, p
    return campaigns.assign(dataset=r["dataset"]), row


def get_variant_rows(results: list[dict], args: argparse.Namespace) -> pd.DataFrame:
    """The variant arm (the plan with ``--variant-set``) against each of random, noplan and
    plan that ran (paired by seed; NaN for an arm that did not run)."""
    rows = []
    for r in results:
        c = r["curves"]
        if not (c["strategy"] == "variant").any():
            continue
        arms = ["variant", "noplan", "random", "plan"]
        c = c[c["strategy"].isin(arms) & (c["labels"] <= args.budget)]
        campaigns = get_campaign_table(c, target=r["target"], start=args.initial, stop=args.budget)
        by_seed = campaigns.pivot(index="seed", columns="strategy", values="aulc")
        row = {"dataset": r["dataset"], "aulc": float(by_seed["variant"].mean())}
        for other in arms[1:]:
            if other in by_seed:
                pair = by_seed[["variant", other]].dropna()
                diff = (pair["variant"] - pair[other]).to_numpy()
                row[f"minus_{other}"], row[f"p_{other}"] = get_paired_test(diff)
            else:
                row[f"minus_{other}"] = row[f"p_{other}"] = math.nan
        lead = (
            float((by_seed["noplan"] - by_seed["random"]).mean())
            if {"noplan", "random"} <= set(by_seed)
            else math.nan
        )
        row["lead_kept"] = row["minus_random"] / lead if lead > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def get_margin_rows(r: dict, args: argparse.Namespace) -> dict | None:
    """The margin arms (plan off, plan on) against random over the margin arms' label range,
    paired by seed (the seeds both ran)."""
    c = r["curves"]
    arms = [a for a in ("margin", "margin_plan", "margin_rebalance") if (c["strategy"] == a).any()]
    if not arms or not (c["strategy"] == "random").any():
        return None
    stop = min(args.margin_budget, args.budget)
    c = c[c["strategy"].isin([*arms, "random"]) & (c["labels"] <= stop)]
    campaigns = get_campaign_table(
        c, target=r["target"], start=args.initial, stop=stop, reference=r["reference"]
    )
    seeds = set(campaigns.loc[campaigns["strategy"] != "random", "seed"])
    summary = get_summary_table(campaigns[campaigns["seed"].isin(seeds)]).set_index("strategy")
    row: dict = {"dataset": r["dataset"], "stop": stop, "seeds": len(seeds)}
    for arm in [*arms, "random"]:
        row[f"{arm}_aulc"] = summary.loc[arm, "mean_aulc"]
        row[f"{arm}_labels_to_target"] = summary.loc[arm, "median_labels_to_target"]
        if arm != "random":
            row[f"{arm}_minus_random"] = summary.loc[arm, "aulc_diff_vs_random"]
            row[f"{arm}_p"] = summary.loc[arm, "aulc_p_value"]
    if {"margin", "margin_plan"} <= set(arms):
        by_seed = campaigns.pivot(index="seed", columns="strategy", values="aulc")
        diff = (by_seed["margin_plan"] - by_seed["margin"]).dropna().to_numpy()
        row["plan_on_minus_off"], row["plan_on_minus_off_p"] = get_paired_test(diff)
    return row


def get_plan_activity(r: dict, args: argparse.Namespace) -> dict:
    """How often the plan arm's slices fired (rounds up to ``--budget`` labels)."""
    c = r["curves"]
    c = c[(c["strategy"] == "plan") & (c["labels"] <= args.budget)]
    return {
        "dataset": r["dataset"],
        "rounds": len(c),
        "explore_rounds": float((c["explore_fraction"] > 0).mean()) if len(c) else math.nan,
        "rebalance_rounds": float((c["rebalance_fraction"] > 0).mean()) if len(c) else math.nan,
    }


def get_rare_discovery(r: dict, by: int | None = None) -> pd.DataFrame:
    """Per arm and seed: rare items in the seed batch, the training labels the campaign held
    when the first rare item was labeled (inf: never within the campaign), the round that
    issued it, the rare items among the first ``by`` labels, and the labels held when the
    plan first had an explore slice (inf: never; NaN: an arm without the plan)."""
    issued = r["issued"]
    rare_class = str(r.get("rare_label", "3"))
    curves = r["curves"]
    rows = []
    for (arm, seed), g in issued.groupby(["strategy", "seed"]):
        g = g.sort_values("round_id", kind="stable")
        per_round = g.groupby("round_id").size().cumsum()
        is_rare = g["label"].astype(str) == rare_class
        held = g["round_id"].map(per_round)  # labels once each item's round was answered
        c = curves[(curves["strategy"] == arm) & (curves["seed"] == seed)]
        explored = c.loc[c["explore_fraction"] > 0, "labels"]
        explore_at = float(explored.min()) if len(explored) else math.inf
        spec = ARM_SPECS.get(arm, Arm(arm, DEFAULT, ()))
        if "health.explore_fraction=0" in spec.overrides:
            explore_at = math.nan
        seed_rare = int((is_rare & (g["reason"] == "seed")).sum())
        if is_rare.any():
            first_round = int(g.loc[is_rare, "round_id"].min())
            labels_before = int(per_round.loc[: first_round - 1].iloc[-1]) if first_round > 1 else 0
            found = float(labels_before)
            reasons = g.loc[is_rare & (g["round_id"] == first_round), "reason"]
            reason = ", ".join(sorted(set(reasons)))
        else:
            first_round, found, reason = -1, math.inf, ""
        rows.append(
            {
                "strategy": arm,
                "seed": int(seed),
                "rare_in_seed_batch": seed_rare,
                "labels_when_first_rare_chosen": found,
                "first_rare_round": first_round,
                "first_rare_reason": reason,
                "rare_labeled": int(is_rare.sum()),
                "rare_labeled_by": int((is_rare & (held <= by)).sum()) if by else math.nan,
                "explore_first_at": explore_at,
                "explore_items": int((g["reason"] == "explore").sum()),
                "explore_rare": int((is_rare & (g["reason"] == "explore")).sum()),
                "labels": len(g),
            }
        )
    return pd.DataFrame(rows)


# -- goal 2: the stop signal -------------------------------------------------------------------
def get_stop_rows(r: dict, thresholds: tuple[float, ...], arm: str = "plan") -> pd.DataFrame:
    """Per campaign of ``arm`` and threshold: where ``kappa_mean`` first reaches it."""
    out = []
    for seed, c in r["curves"][r["curves"]["strategy"] == arm].groupby("seed"):
        c = c.sort_values("labels")
        labels, f1 = c["labels"].to_numpy(), c["macro_f1"].to_numpy()
        to_target = get_labels_to_target(labels, f1, r["target"])
        advised = c["stop_advised"].astype(str).str.lower().eq("true").to_numpy()
        for t in thresholds:
            hit = np.flatnonzero(c["kappa_mean"].to_numpy(float) >= t)
            fired = hit.size > 0
            at = int(hit[0]) if fired else -1
            row = {
                "dataset": r["dataset"],
                "arm": arm,
                "seed": int(seed),
                "threshold": t,
                "budget": int(labels[-1]),
                "fired": fired,
                "labels_at_stop": float(labels[at]) if fired else math.inf,
                "f1_at_stop": float(f1[at]) if fired else math.nan,
                "f1_lost": r["reference"] - float(f1[at]) if fired else math.nan,
                "labels_to_target": to_target,
                "stop_over_target": float(labels[at]) / to_target
                if fired and math.isfinite(to_target)
                else math.nan,
            }
            if t == 0.99:  # the product's own advice (stop.kappa default) agrees
                first = int(np.argmax(advised)) if advised.any() else -1
                row["product_advice_agrees"] = first == at
            out.append(row)
    return pd.DataFrame(out)


def _names_of(cell: object) -> dict[str, str]:
    """A curves.csv cell of class names joined by spaces, as a dict (class to "")."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)) or cell is pd.NA:
        return {}
    return dict.fromkeys(str(cell).split(), "")


def replay_stop(c: pd.DataFrame, params: StopParams, *, missed_guard: bool = False) -> np.ndarray:
    """Whether ``params``' rule advises stopping at each round of one campaign (``c``: its
    curves rows, by labels), from the evidence simulate recorded: ``get_stop_decision`` fed
    the rounds so far, as the health stage feeds it. ``missed_guard``: a class the plan
    found missed (``explore_classes``) within the window holds the advice back too."""
    advised = np.zeros(len(c), dtype=bool)
    kappas: list[float] = []
    noise: list[float | None] = []
    dropped: list[float | None] = []
    class_min: list[float | None] = []
    missed = [bool(_names_of(m)) for m in c["explore_classes"]]
    for i, row in enumerate(c.itertuples(index=False)):
        if pd.isna(row.kappa):
            continue
        kappas.append(float(row.kappa))
        noise.append(None if pd.isna(row.noise_kappa) else float(row.noise_kappa))
        dropped.append(None if pd.isna(row.drop_kappa) else float(row.drop_kappa))
        class_min.append(None if pd.isna(row.class_kappa_min) else float(row.class_kappa_min))
        evidence = StopEvidence(
            tuple(kappas),
            tuple(noise),
            tuple(class_min),
            _names_of(row.new_classes),
            tuple(dropped),
        )
        decision = get_stop_decision(evidence, params=params)
        held = missed_guard and any(missed[max(0, i - params.window + 1) : i + 1])
        advised[i] = decision.advised and not held
    return advised


def get_rule_rows(r: dict, rules: dict[str, tuple[dict, bool]], arm: str = "plan") -> pd.DataFrame:
    """Per campaign of ``arm`` and stop rule: the first round the rule advises stopping,
    replayed from the recorded evidence (:func:`replay_stop`); columns as
    :func:`get_stop_rows`' with the rule's name in ``threshold``."""
    out = []
    curves = r["curves"]
    if "noise_kappa" not in curves:  # a run from before the evidence was recorded
        return pd.DataFrame()
    for seed, c in curves[curves["strategy"] == arm].groupby("seed"):
        c = c.sort_values("labels").reset_index(drop=True)
        labels, f1 = c["labels"].to_numpy(), c["macro_f1"].to_numpy()
        to_target = get_labels_to_target(labels, f1, r["target"])
        for name, (overrides, missed_guard) in rules.items():
            advised = replay_stop(c, StopParams(**overrides), missed_guard=missed_guard)
            fired = bool(advised.any())
            at = int(np.argmax(advised)) if fired else -1
            out.append(
                {
                    "dataset": r["dataset"],
                    "arm": arm,
                    "seed": int(seed),
                    "threshold": name,
                    "budget": int(labels[-1]),
                    "fired": fired,
                    "labels_at_stop": float(labels[at]) if fired else math.inf,
                    "f1_at_stop": float(f1[at]) if fired else math.nan,
                    "f1_lost": r["reference"] - float(f1[at]) if fired else math.nan,
                    "labels_to_target": to_target,
                    "stop_over_target": float(labels[at]) / to_target
                    if fired and math.isfinite(to_target)
                    else math.nan,
                }
            )
    return pd.DataFrame(out)


def summarize_stop(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (dataset, t), g in rows.groupby(["dataset", "threshold"], sort=False):
        fired = g[g["fired"]]
        ratio = fired["stop_over_target"].dropna()
        out.append(
            {
                "dataset": dataset,
                "threshold": t,
                "campaigns": len(g),
                "fired": int(len(fired)),
                "fired_share": len(fired) / len(g),
                "median_labels_at_stop": float(fired["labels_at_stop"].median())
                if len(fired)
                else math.nan,
                "median_f1_lost": float(fired["f1_lost"].median()) if len(fired) else math.nan,
                "worst_f1_lost": float(fired["f1_lost"].max()) if len(fired) else math.nan,
                "median_stop_over_target": float(ratio.median()) if len(ratio) else math.nan,
                "worst_stop_over_target": float(ratio.max()) if len(ratio) else math.nan,
                "fired_target_never": int(fired["stop_over_target"].isna().sum()),
            }
        )
    return pd.DataFrame(out)


def meets_stop_goals(s: pd.Series) -> bool:
    return bool(
        s["fired_share"] >= FIRE_SHARE
        and s["median_f1_lost"] <= LOST_MEDIAN
        and s["worst_f1_lost"] <= LOST_WORST
        and s["median_stop_over_target"] <= STOP_RATIO
    )


def pooled_stop(rows: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """The stop summary of ``datasets`` pooled, per threshold."""
    sub = rows[rows["dataset"].isin(datasets)].assign(dataset="+".join(datasets))
    return summarize_stop(sub)


def choose_threshold(rows: pd.DataFrame, tune: list[str]) -> float | None:
    """The lowest threshold (earliest stop) meeting every stop goal on each tuning set."""
    summary = summarize_stop(rows[rows["dataset"].isin(tune)])
    ok = [
        t
        for t, g in summary.groupby("threshold")
        if len(g) == len(tune) and all(meets_stop_goals(s) for _, s in g.iterrows())
    ]
    return min(ok) if ok else None


def get_kappa_by_batch(results: list[dict]) -> pd.DataFrame:
    """Per set with the plan50 arm: successive kappa and kappa_mean of batch 50 and of the
    plan arm's batch, at the label counts both reach, median over seeds."""
    out = []
    for r in results:
        c = r["curves"]
        if not (c["strategy"] == "plan50").any():
            continue
        seeds = set(c.loc[c["strategy"] == "plan50", "seed"])
        for arm in ("plan50", "plan"):
            g = c[(c["strategy"] == arm) & c["seed"].isin(seeds)]
            for labels in (300, 500, 1000, 1500, 2000):
                at = g[g["labels"] == labels]
                if at.empty:
                    continue
                out.append(
                    {
                        "dataset": r["dataset"],
                        "arm": arm,
                        "labels": labels,
                        "median_kappa": float(at["kappa"].median()),
                        "median_kappa_mean": float(at["kappa_mean"].median()),
                    }
                )
    return pd.DataFrame(out)


# -- goal 3: balance ---------------------------------------------------------------------------
def get_random_balance(results: list[dict], after: int = 200) -> pd.DataFrame:
    rows = []
    pooled = []
    for r in results:
        c = r["curves"]
        b = c.loc[(c["strategy"] == "random") & (c["labels"] > after), "balance"].dropna()
        pooled.append(b)
        rows.append(_balance_row(r["dataset"], b))
    if pooled:
        rows.append(_balance_row("all", pd.concat(pooled)))
    return pd.DataFrame(rows)


def _balance_row(name: str, b: pd.Series) -> dict:
    return {
        "dataset": name,
        "rounds": len(b),
        "median": float(b.median()) if len(b) else math.nan,
        "p10": float(b.quantile(0.1)) if len(b) else math.nan,
        "min": float(b.min()) if len(b) else math.nan,
        "below_70": int((b < 70).sum()),
    }


def get_margin_flags(results: list[dict], by: int = 500) -> pd.DataFrame:
    rows = []
    for r in results:
        c = r["curves"]
        for seed, g in c[c["strategy"] == "margin"].groupby("seed"):
            g = g.sort_values("labels")
            low = g[(g["balance"] < 70) & (g["labels"] <= by)]
            at = g[g["labels"] <= by]
            rows.append(
                {
                    "dataset": r["dataset"],
                    "seed": int(seed),
                    "flagged": not low.empty,
                    "first_flag_labels": float(low["labels"].iloc[0]) if len(low) else math.inf,
                    "balance_at_by": float(at["balance"].iloc[-1]) if len(at) else math.nan,
                    "labels_at_by": int(at["labels"].iloc[-1]) if len(at) else -1,
                }
            )
    return pd.DataFrame(rows)


def get_rebalance_effect(results: list[dict]) -> pd.DataFrame:
    """Per campaign of an arm with the rebalance slice: the first round that planned one
    (round r), the balance classifier's AUC then and one and two rounds later, and the same
    for the arm without the slice at the same label counts (same seed)."""
    pairs = (("plan", "noplan"), ("margin_plan", "margin"), ("margin_rebalance", "margin"))
    rows = []
    for r in results:
        c = r["curves"]
        for arm, without in pairs:
            for seed, g in c[c["strategy"] == arm].groupby("seed"):
                g = g.sort_values("labels").reset_index(drop=True)
                fired = np.flatnonzero(g["rebalance_fraction"].to_numpy(float) > 0)
                if fired.size == 0:
                    rows.append({"dataset": r["dataset"], "arm": arm, "seed": int(seed)})
                    continue
                at = int(fired[0])
                aucs = [
                    float(g["balance_auc"].iloc[at + k]) if at + k < len(g) else math.nan
                    for k in (0, 1, 2)
                ]
                labels = [
                    int(g["labels"].iloc[at + k]) if at + k < len(g) else -1 for k in (0, 1, 2)
                ]
                w = c[(c["strategy"] == without) & (c["seed"] == seed)].set_index("labels")
                cf = [float(w.loc[n, "balance_auc"]) if n in w.index else math.nan for n in labels]
                later = [a for a in aucs[1:] if math.isfinite(a)]
                rows.append(
                    {
                        "dataset": r["dataset"],
                        "arm": arm,
                        "seed": int(seed),
                        "labels_at_first": labels[0],
                        "auc_at_first": aucs[0],
                        "auc_plus1": aucs[1],
                        "auc_plus2": aucs[2],
                        "drop_within_two": aucs[0] - min(later) if later else math.nan,
                        "without_auc_at_first": cf[0],
                        "without_auc_plus2": cf[2],
                        "rebalance_rounds_of_next_two": int(
                            (g["rebalance_fraction"].iloc[at : at + 2] > 0).sum()
                        ),
                    }
                )
    return pd.DataFrame(rows)


# -- the report ---------------------------------------------------------------------------------
def _f(value: float, digits: int = 4, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _labels(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return ["| " + " | ".join(header) + " |", align, *("| " + " | ".join(r) + " |" for r in rows)]


def get_markdown(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    out = args.out
    lines = [
        "# Issue 17: the health plan, the stop signal and the balance rating",
        "",
        f"`alloop simulate`'s protocol: 25% stratified test split, {args.initial} random "
        f"labels, batches of {args.batch}; arms {', '.join(args.arms)}; {args.seeds} seeds "
        f"(0-{args.seeds - 1}); goal 1 over {args.initial}-{args.budget} labels; the plan arm to "
        f"{args.stop_budget} on {', '.join(args.stop_datasets)}; `--jobs {args.jobs}`; "
        + (
            f"whole run {wall / 60:.1f} min wall."
            if args.analyze is None
            else "tables recomputed from the folders of earlier runs; their simulate() calls "
            "took "
            + ", ".join(f"{r['dataset']} {sum(r['seconds'].values()) / 60:.1f}" for r in results)
            + f" min (total {sum(sum(r['seconds'].values()) for r in results) / 60:.1f} min) wall."
        ),
        "",
        "## Goal 1: never behind random (AULC over "
        f"{args.initial}-{args.budget} labels, paired over seeds, Wilcoxon p)",
        "",
    ]
    goal1, campaigns = [], []
    for r in results:
        c, row = get_goal1(r, args)
        goal1.append(row)
        campaigns.append(c)
    if any(not c.empty for c in campaigns):
        lines += _goal1_lines(goal1, campaigns, results, args)
    else:
        lines.append("No plan, noplan or random arm in this run.")
    variant = get_variant_rows(results, args)
    if not variant.empty:
        variant.to_csv(out / "variant.csv", index=False)
        lines += [
            "",
            "The plan with " + " ".join(f"`-S {o}`" for o in args.variant_set) + " (variant):",
            "",
        ]
        lines += _table(
            [
                "set",
                "AULC variant",
                "variant - random (p)",
                "variant - noplan (p)",
                "variant - plan (p)",
                "lead kept",
            ],
            [
                [
                    v.dataset,
                    _f(v.aulc),
                    f"{_f(v.minus_random, signed=True)} ({_f(v.p_random, 3)})",
                    f"{_f(v.minus_noplan, signed=True)} ({_f(v.p_noplan, 3)})",
                    f"{_f(v.minus_plan, signed=True)} ({_f(v.p_plan, 3)})",
                    _f(v.lead_kept, 2),
                ]
                for v in variant.itertuples()
            ],
        )
    margin_rows = [m for r in results if (m := get_margin_rows(r, args)) is not None]
    if margin_rows:
        pd.DataFrame(margin_rows).to_csv(out / "margin_vs_random.csv", index=False)
        lines += ["", "Margin sampling with the plan off and on, against random:", ""]
        rows = []
        for m in margin_rows:
            for arm in ("margin", "margin_plan", "margin_rebalance"):
                if f"{arm}_aulc" not in m:
                    continue
                rows.append(
                    [
                        m["dataset"],
                        arm,
                        f"{m['seeds']}",
                        f"{args.initial}-{m['stop']}",
                        _f(m[f"{arm}_aulc"]),
                        _f(m["random_aulc"]),
                        f"{_f(m[f'{arm}_minus_random'], signed=True)} ({_f(m[f'{arm}_p'], 3)})",
                        _labels(m[f"{arm}_labels_to_target"]),
                        _labels(m["random_labels_to_target"]),
                    ]
                )
        lines += _table(
            [
                "set",
                "arm",
                "seeds",
                "labels",
                "AULC",
                "random",
                "arm - random (p)",
                "labels to target",
                "random",
            ],
            rows,
        )
        on_off = [m for m in margin_rows if "plan_on_minus_off" in m]
        if on_off:
            lines += [
                "",
                "Margin sampling, plan on minus off (paired AULC, Wilcoxon p): "
                + "; ".join(
                    f"{m['dataset']} {_f(m['plan_on_minus_off'], signed=True)} "
                    f"({_f(m['plan_on_minus_off_p'], 3)})"
                    for m in on_off
                )
                + ".",
            ]
    for r in [r for r in results if is_rare_set(r["dataset"])]:
        lines += get_rare_markdown(r, args)
    lines += ["", *get_stop_markdown(results, args)]
    lines += ["", *get_balance_markdown(results, args)]
    return "\n".join(lines) + "\n"


def _goal1_lines(
    goal1: list[dict], campaigns: list[pd.DataFrame], results: list[dict], args: argparse.Namespace
) -> list[str]:
    """Goal 1's table and the plan's activity (written beside them as CSVs)."""
    out = args.out
    lines: list[str] = []
    g1 = pd.DataFrame(goal1)
    g1.to_csv(out / "goal1.csv", index=False)
    pd.concat(campaigns).to_csv(out / "goal1_campaigns.csv", index=False)
    rows = []
    for row in goal1:
        rows.append(
            [
                row["dataset"],
                _f(row["reference_f1"]),
                _f(row.get("plan_aulc", math.nan)),
                _f(row.get("noplan_aulc", math.nan)),
                _f(row.get("random_aulc", math.nan)),
                f"{_f(row.get('plan_minus_random', math.nan), signed=True)} "
                f"({_f(row.get('plan_p', math.nan), 3)})",
                f"{_f(row.get('noplan_minus_random', math.nan), signed=True)} "
                f"({_f(row.get('noplan_p', math.nan), 3)})",
                _f(row.get("lead_kept", math.nan), 2),
                f"{_f(row.get('plan_minus_noplan', math.nan), signed=True)} "
                f"({_f(row.get('plan_vs_noplan_p', math.nan), 3)})",
                f"{_labels(row.get('plan_labels_to_target', math.nan))} "
                f"({row.get('plan_reached', '')})",
                f"{_labels(row.get('noplan_labels_to_target', math.nan))} "
                f"({row.get('noplan_reached', '')})",
                f"{_labels(row.get('random_labels_to_target', math.nan))} "
                f"({row.get('random_reached', '')})",
                "**yes**" if row.get("plan_behind_random") else "no",
            ]
        )
    lines += _table(
        [
            "set",
            "full-data F1",
            "AULC plan",
            "noplan",
            "random",
            "plan - random (p)",
            "noplan - random (p)",
            "lead kept",
            "plan - noplan (p)",
            "labels to target: plan",
            "noplan",
            "random",
            "plan behind",
        ],
        rows,
    )
    activity = pd.DataFrame([get_plan_activity(r, args) for r in results])
    activity.to_csv(out / "plan_activity.csv", index=False)
    lines += [
        "",
        "Lead kept: (plan - random) / (noplan - random) where noplan leads random. Labels to "
        f"target: median over seeds of the first label count reaching 98% of the full-data "
        f"macro-F1 within {args.budget} (reached n/N). Rounds (up to {args.budget} labels) "
        "whose plan had an explore / rebalance slice: "
        + "; ".join(
            f"{a.dataset} {a.explore_rounds:.0%} / {a.rebalance_rounds:.0%}"
            for a in activity.itertuples()
        )
        + ".",
    ]
    return lines


def get_rare_markdown(r: dict, args: argparse.Namespace) -> list[str]:
    """A built set's rare class: how it was built, when each arm first labeled it, and for
    ``hidden`` the seed-batch check and the plan's explore sentences."""
    d = get_rare_discovery(r, by=args.rare_by)
    d.to_csv(args.out / f"{r['dataset']}_discovery.csv", index=False)
    seeds_none = d.groupby("seed")["rare_in_seed_batch"].max().eq(0).sum()
    built = r.get("description") or (
        f"pendigits as 4 classes, digit {r.get('rare_digit')} the rare class"
    )
    lines = [
        "",
        f"Set {r['dataset']}: {built}: {r.get('rare_rows')} of {r.get('rows')} rows "
        f"({r.get('rare_share', 0):.1%}); the full-data model's recall on it "
        f"{r.get('rare_full_data_recall', 0):.3f}; seed batches without it: {seeds_none} of "
        f"{d['seed'].nunique()} seeds ({r.get('rare_in_seed_batches_before_swap')} rare items "
        "of the draws moved).",
        "",
    ]
    rows = []
    for arm, g in d.groupby("strategy"):
        found = g["labels_when_first_rare_chosen"]
        ok = found[np.isfinite(found)]
        rounds = g.loc[g["first_rare_round"] > 0, "first_rare_round"]
        explore = g["explore_first_at"].dropna()
        fired = explore[np.isfinite(explore)]
        rows.append(
            [
                arm,
                f"{len(ok)}/{len(g)}",
                _labels(float(ok.median())) if len(ok) else "never",
                _labels(float(ok.max())) if len(ok) else "never",
                f"{rounds.median():.0f}" if len(rounds) else "never",
                ", ".join(
                    f"{reason} {n}"
                    for reason, n in g["first_rare_reason"]
                    .str.split(", ")
                    .explode()
                    .loc[lambda x: x != ""]
                    .value_counts()
                    .sort_index()
                    .items()
                )
                or "-",
                f"{g['rare_labeled_by'].median():.0f}",
                f"{g['rare_labeled'].median():.0f}",
                "plan off"
                if explore.empty
                else f"{len(fired)}/{len(explore)}, "
                + (_labels(float(fired.median())) if len(fired) else "never"),
                f"{int(g['explore_rare'].sum())}/{int(g['explore_items'].sum())}"
                if g["explore_items"].sum()
                else "-",
            ]
        )
    lines += _table(
        [
            "arm",
            "found the rare class",
            "labels held when first chosen (median)",
            "worst",
            "round of the first rare label (median)",
            "by slice (campaigns)",
            f"rare labels by {args.rare_by} (median)",
            "at the end (median)",
            "explore planned: campaigns, labels held at the first (median)",
            "explore items of the rare class / all (sum)",
        ],
        rows,
    )
    check = pd.DataFrame(r.get("seed_batch_check") or [])
    if not check.empty:
        check.to_csv(args.out / f"{r['dataset']}_seed_batch_check.csv", index=False)
        lines += [
            "",
            "A model on each seed's seed batch (100 labels), on the rest of the training pool: "
            "the share of the rare items among the 10% smallest margins (a random item: 0.10) "
            "and among the default strategy's candidates (the "
            f"{check['candidates_share'].iloc[0]:.1%} "
            "smallest margins), median top probability on the rare items and the others, and "
            "what the rare items are predicted as:",
            "",
        ]
        lines += _table(
            [
                "seed",
                "rare in top 10%",
                "in candidates",
                "confidence: rare",
                "others",
                "predicted as",
            ],
            [
                [
                    str(c.seed),
                    _f(c.rare_in_top10, 3),
                    _f(c.rare_in_candidates, 3),
                    _f(c.rare_median_confidence, 3),
                    _f(c.others_median_confidence, 3),
                    f"{c.rare_predicted_as} ({c.rare_predicted_as_share:.0%})",
                ]
                for c in check.itertuples()
            ],
        )
    kept = r.get("plan_reasons") or []
    if kept and not any(k["explore_fraction"] > 0 for k in kept):
        lines += [
            "",
            f"The {r.get('plan_reasons_arm', 'plan')} arm, seed 0, planned no explore slice "
            f"within {kept[-1]['train_items']} training labels.",
        ]
    for k in kept:
        if k["explore_fraction"] > 0:
            lines += [
                "",
                f"The {r.get('plan_reasons_arm', 'plan')} arm, seed 0: the first explore slice "
                "was planned in round "
                f"{k['round_id']}, at {k['train_items']} training labels: "
                + " / ".join(f'"{t}"' for t in k["plan_reasons"]),
            ]
            break
    return lines


def get_stop_markdown(results: list[dict], args: argparse.Namespace) -> list[str]:
    out = args.out
    stop_sets = [r for r in results if r["dataset"] in args.stop_datasets]
    rows_all = pd.concat([get_stop_rows(r, args.thresholds) for r in results], ignore_index=True)
    rows_all.to_csv(out / "stop_campaigns.csv", index=False)
    names = [r["dataset"] for r in stop_sets]
    lines = [
        f"## Goal 2: the stop signal (plan arm to {args.stop_budget} labels on {', '.join(names)})",
        "",
    ]
    if not names or rows_all.empty:
        return [*lines, "No plan arm ran to the stop budget."]
    rows = rows_all[rows_all["dataset"].isin(names)]
    summary = summarize_stop(rows)
    summary.to_csv(out / "stop_summary.csv", index=False)
    pooled = pooled_stop(rows, names) if len(names) > 1 else summary.iloc[:0]
    table = []
    for s in pd.concat([summary, pooled]).itertuples():
        table.append(
            [
                s.dataset,
                f"{s.threshold:g}",
                f"{s.fired}/{s.campaigns}",
                _labels(s.median_labels_at_stop),
                _f(s.median_f1_lost),
                _f(s.worst_f1_lost),
                _f(s.median_stop_over_target, 2),
                _f(s.worst_stop_over_target, 2),
                "yes" if meets_stop_goals(pd.Series(s._asdict())) else "no",
            ]
        )
    lines += _table(
        [
            "set",
            "kappa_mean >=",
            "fired",
            "median labels at stop",
            "F1 lost: median",
            "worst",
            "stop / labels to 98%: median",
            "worst",
            "all goals",
        ],
        table,
    )
    agree = rows.loc[rows["threshold"] == 0.99, "product_advice_agrees"]
    half = max(1, len(names) // 2)
    tune, check = names[:half], names[half:]
    chosen = choose_threshold(rows, tune)
    lines += [
        "",
        f"The product's own advice (stop_advised) came at the 0.99 row's round in "
        f"{int(agree.sum())} of {len(agree)} campaigns. Stop / labels to 98%: over the "
        "campaigns where both happened within the budget. Goals: fired >= 90%, F1 lost "
        "<= 0.01 median and <= 0.02 worst, stop <= 1.5x the labels to 98%.",
        "",
        f"Threshold chosen on {', '.join(tune)} (the lowest meeting every goal on each): "
        f"{chosen if chosen is not None else 'none meets them'}"
        + (
            "; on "
            + ", ".join(check)
            + ": "
            + "; ".join(
                f"{s.dataset} fired {s.fired}/{s.campaigns}, F1 lost {_f(s.median_f1_lost)} / "
                f"{_f(s.worst_f1_lost)}, stop/target {_f(s.median_stop_over_target, 2)}, "
                f"{'meets' if meets_stop_goals(pd.Series(s._asdict())) else 'misses'}"
                for s in summary[
                    (summary["threshold"] == chosen) & summary["dataset"].isin(check)
                ].itertuples()
            )
            if chosen is not None and check
            else ""
        )
        + ".",
    ]
    lines += get_rule_markdown(results, args)
    kappa = get_kappa_by_batch(results)
    if not kappa.empty:
        kappa.to_csv(out / "kappa_by_batch.csv", index=False)
        k50 = pd.concat([get_stop_rows(r, args.thresholds, "plan50") for r in results])
        k50.to_csv(out / "stop_campaigns_batch50.csv", index=False)
        lines += ["", "Kappa by batch size (median over the same seeds):", ""]
        table = [
            [
                k.dataset,
                "50" if k.arm == "plan50" else str(args.batch),
                f"{k.labels:,}",
                _f(k.median_kappa),
                _f(k.median_kappa_mean),
            ]
            for k in kappa.itertuples()
        ]
        lines += _table(["set", "batch", "labels", "kappa", "kappa_mean"], table)
        s50 = summarize_stop(k50)
        lines += ["", "Batch 50, the stop rows:", ""]
        lines += _table(
            [
                "set",
                "kappa_mean >=",
                "fired",
                "median labels at stop",
                "F1 lost: median",
                "worst",
                "stop / labels to 98%: median",
            ],
            [
                [
                    s.dataset,
                    f"{s.threshold:g}",
                    f"{s.fired}/{s.campaigns}",
                    _labels(s.median_labels_at_stop),
                    _f(s.median_f1_lost),
                    _f(s.worst_f1_lost),
                    _f(s.median_stop_over_target, 2),
                ]
                for s in s50.itertuples()
            ],
        )
    return lines


def _stop_table(summary: pd.DataFrame, rule_header: str) -> list[str]:
    table = [
        [
            s.dataset,
            f"{s.threshold:g}" if isinstance(s.threshold, float) else str(s.threshold),
            f"{s.fired}/{s.campaigns}",
            _labels(s.median_labels_at_stop),
            _f(s.median_f1_lost),
            _f(s.worst_f1_lost),
            _f(s.median_stop_over_target, 2),
            _f(s.worst_stop_over_target, 2),
            "yes" if meets_stop_goals(pd.Series(s._asdict())) else "no",
        ]
        for s in summary.itertuples()
    ]
    return _table(
        [
            "set",
            rule_header,
            "fired",
            "median labels at stop",
            "F1 lost: median",
            "worst",
            "stop / labels to 98%: median",
            "worst",
            "all goals",
        ],
        table,
    )


def get_rule_markdown(results: list[dict], args: argparse.Namespace) -> list[str]:
    """The stop rules of :data:`STOP_RULES` replayed on the run's evidence: per set, pooled
    over the tuning sets (``--stop-tune``), over the held-out shared sets, and over every
    set with ``--seeds`` seeds."""
    names = [r["dataset"] for r in results if r["dataset"] in args.stop_datasets]
    parts = [get_rule_rows(r, STOP_RULES) for r in results if r["dataset"] in names]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return []
    rows = pd.concat(parts, ignore_index=True)
    rows.to_csv(args.out / "stop_rule_campaigns.csv", index=False)
    seeds = rows.groupby("dataset")["seed"].nunique()
    full = [n for n in names if seeds.get(n, 0) >= args.seeds]
    tune = [n for n in args.stop_tune if n in full]
    held = [n for n in full if n not in args.stop_tune and not is_rare_set(n)]
    pooled = [
        pooled_stop(rows, group).assign(dataset=label)
        for label, group in (
            (f"tuning ({', '.join(tune)})", tune),
            (f"held out ({', '.join(held)})", held),
            (f"all shared with {args.seeds} seeds", [*tune, *held] if held else []),
        )
        if len(group) > 1
    ]
    summary = pd.concat([summarize_stop(rows), *pooled], ignore_index=True)
    summary.to_csv(args.out / "stop_rule_summary.csv", index=False)
    order = {name: i for i, name in enumerate(STOP_RULES)}
    by_rule = summary.assign(order=summary["threshold"].map(order)).sort_values(
        ["order"], kind="stable"
    )
    lines = [
        "",
        "### The stop rules replayed (tasks.health.get_stop_decision on each round's evidence)",
        "",
        "Rules (StopParams overrides; `+missed`: the plan's missed classes in the window hold "
        "it back): "
        + "; ".join(f"`{n}` {o}{' + missed' if m else ''}" for n, (o, m) in STOP_RULES.items())
        + ".",
        "",
    ]
    lines += _stop_table(by_rule.drop(columns="order"), "rule")
    if not tune:
        return lines
    ok = [
        rule
        for rule, g in summarize_stop(rows[rows["dataset"].isin(tune)]).groupby("threshold")
        if len(g) == len(tune) and all(meets_stop_goals(s) for _, s in g.iterrows())
    ]
    lines += [
        "",
        f"Rules meeting every goal on each tuning set ({', '.join(tune)}): "
        + (", ".join(f"`{r}`" for r in ok) if ok else "none")
        + ".",
    ]
    return lines


def get_balance_markdown(results: list[dict], args: argparse.Namespace) -> list[str]:
    out = args.out
    rb = get_random_balance(results)
    rb.to_csv(out / "balance_random.csv", index=False)
    lines = ["## Goal 3: balance", ""]
    if (rb["rounds"] > 0).any():
        lines += [
            "Random campaigns, rounds after 200 labels (goal: median and 10th percentile >= 90):",
            "",
        ]
        lines += _table(
            ["set", "rounds", "median", "10th percentile", "min", "rounds < 70"],
            [
                [
                    b.dataset,
                    str(b.rounds),
                    _f(b.median, 1),
                    _f(b.p10, 1),
                    _f(b.min, 1),
                    str(b.below_70),
                ]
                for b in rb.itertuples()
            ],
        )
    else:
        lines.append("No random arm in this run.")
    flags = get_margin_flags(results)
    if not flags.empty:
        flags.to_csv(out / "balance_margin.csv", index=False)
        lines += ["", "Margin campaigns, plan off (goal: balance below 70 by 500 labels):", ""]
        lines += _table(
            ["set", "flagged by 500", "first flagged at (median)", "balance at 500: median", "max"],
            [
                [
                    name,
                    f"{int(g['flagged'].sum())}/{len(g)}",
                    _labels(float(g["first_flag_labels"].median())),
                    _f(float(g["balance_at_by"].median()), 1),
                    _f(float(g["balance_at_by"].max()), 1),
                ]
                for name, g in flags.groupby("dataset", sort=False)
            ],
        )
    effect = get_rebalance_effect(results)
    if not effect.empty:
        effect.to_csv(out / "rebalance_effect.csv", index=False)
        lines += [
            "",
            "The rebalance slice (goal: the balance classifier's AUC falls by >= 0.05 within "
            "two rounds of the first round that planned it; drop = AUC then minus the lowest of "
            "the next two rounds; 'without': the same seed's arm without the slice (plan: noplan; "
            "margin_plan: margin), AUC at the first label count minus two rounds later, "
            "negative = it rose):",
            "",
        ]
        table = []
        for (name, arm), g in effect.groupby(["dataset", "arm"], sort=False):
            fired = g.dropna(subset=["auc_at_first"]) if "auc_at_first" in g else g.iloc[:0]
            if fired.empty:
                table.append([name, arm, f"0/{len(g)}", *["n/a"] * 6])
                continue
            drop = fired["drop_within_two"]
            without = fired["without_auc_at_first"] - fired["without_auc_plus2"]
            table.append(
                [
                    name,
                    arm,
                    f"{len(fired)}/{len(g)}",
                    _labels(float(fired["labels_at_first"].median())),
                    _f(float(fired["auc_at_first"].median()), 3),
                    _f(float(fired["auc_plus2"].median()), 3),
                    _f(float(drop.median()), 3, signed=False),
                    f"{int((drop >= 0.05).sum())}/{int(drop.notna().sum())}",
                    _f(float(without.median()), 3) if without.notna().any() else "n/a",
                ]
            )
        lines += _table(
            [
                "set",
                "arm",
                "campaigns with a rebalance slice",
                "labels at the first",
                "AUC then (median)",
                "two rounds later",
                "drop within two rounds (median)",
                "drop >= 0.05",
                "without the slice: drop over the same label counts (median)",
            ],
            table,
        )
    return lines


# -- main -------------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--arms", default="plan,noplan,random,margin,margin_rebalance")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--budget", type=int, default=1000, help="goal 1's label range end")
    parser.add_argument("--stop-budget", type=int, default=2000)
    parser.add_argument("--stop-datasets", default="satimage,pendigits,magic,rare")
    parser.add_argument(
        "--stop-tune", default=",".join(STOP_TUNE), help="the sets stop rules are chosen on"
    )
    parser.add_argument("--margin-datasets", default="satimage,pendigits,magic")
    parser.add_argument("--margin-seeds", type=int, default=5)
    parser.add_argument("--margin-budget", type=int, default=800)
    parser.add_argument("--kappa-datasets", default="satimage")
    parser.add_argument("--kappa-seeds", type=int, default=3)
    parser.add_argument(
        "--variant-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="the variant arm: the default strategy with these overrides (repeatable)",
    )
    parser.add_argument("--variant-datasets", default="")
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS))
    parser.add_argument("--rare-digit", type=int, default=6)
    parser.add_argument("--rare-share", type=float, default=0.025)
    parser.add_argument("--rare-by", type=int, default=600, help="rare labels counted up to")
    parser.add_argument("--hidden-base", default="satimage", help="the set hidden is built from")
    parser.add_argument("--hidden-source", type=int, default=1, help="the class it comes from")
    parser.add_argument("--hidden-features", type=int, default=1, help="features shifted")
    parser.add_argument("--jobs", type=int, default=2, help="processes (1: this one only)")
    parser.add_argument("--out", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument(
        "--analyze", type=Path, default=None, help="recompute the tables of this earlier --out"
    )
    args = parser.parse_args(argv)
    args.datasets = _names(args.datasets)
    args.arms = _names(args.arms)
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    args.stop_datasets = _names(args.stop_datasets)
    args.stop_tune = _names(args.stop_tune)
    args.margin_datasets = _names(args.margin_datasets)
    args.kappa_datasets = _names(args.kappa_datasets)
    args.variant_datasets = _names(args.variant_datasets)
    args.thresholds = tuple(float(t) for t in _names(args.thresholds))
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.analyze is not None:
        args.out = args.analyze
    elif args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="alloop-health-"))
    if str(args.out.resolve()).startswith(str(ROOT)):
        parser.error("--out must be outside the checkout")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in (log.name, "flows.simulate"):
        logging.getLogger(name).setLevel(logging.INFO)
    log.info("results in %s", args.out)
    started = time.perf_counter()
    results = []
    for name in args.datasets:
        if args.analyze is not None:
            results.append(load_dataset_result(name, args.out))
            continue
        results.append(run_dataset(name, args))
        log.info("%s done, %.1f min so far", name, (time.perf_counter() - started) / 60)
    wall = sum(r["wall"] for r in results) if args.analyze else time.perf_counter() - started
    report = get_markdown(results, args, wall)
    (args.out / "health.md").write_text(report)
    print(report, flush=True)


if __name__ == "__main__":
    main()
