"""Issue 17, part 3: drift on arriving items (tasks/drift.py's ``find_drift``) on real data.

    .venv/bin/python bench/drift.py [--sets letter,magic,pendigits,satimage,adult]
        [--splits 20] [--n-reference 10000] [--n-new 2000] [--small-sizes 50,100,200]
        [--small-splits 20] [--timing-repeats 5] [--data DIR]

Every column of ``../shared/data/<set>.parquet`` except ``label`` is a feature. adult's integer
columns are PMLB's codes of categorical columns; they are given to ``find_drift`` as pandas
categories of their codes as text, as ``tasks.features.get_feature_frame`` makes of text columns,
so the chi-square path is measured on real data. The other sets are all numeric.

Each comparison draws its reference and its new items without replacement from the set's
rows: ``--n-reference`` reference items (fewer when the set is smaller: all rows the new items
leave) and ``--n-new`` new items. Params are ``HealthParams()``'s defaults.

- **(a) No drift**: ``--splits`` random splits of each set (split ``s`` and ``find_drift``'s
  ``random_state`` both seeded with ``s``); goal: no warning.
- **(b) Shifts**, each with ``--n-new`` new items (goal: every one caught):

  - *covariate*: the new items are drawn with probability proportional to ``exp(b z)``, ``z``
    the standardized value of the numeric feature with the most distinct values (the
    responsible feature), ``b`` in {0.1, 0.25}: exponential tilting, which moves a normal
    feature's mean by ``b`` standard deviations (the achieved move is printed) and keeps
    real rows;
  - *prior*: the new items' class shares are the set's with ``d`` in {0.1, 0.2} of the mass
    moved to the rarest class (its share + d, the others scaled down), items drawn per class
    at random: a total-variation distance ``d`` between the class distributions;
  - *sub-population*: k-means (scikit-learn, seeded) on the standardized numeric features;
    the new items all from the largest of 3 clusters, or half from the largest of 8 clusters
    and half at random from the whole set.

  The reference is drawn at random from the rows the new items leave.
- **(c) Time** of ``find_drift`` on 10,000 + 2,000 items (a random split) per set, median and
  minimum of ``--timing-repeats`` runs, one thread (goal: under 5 s).
- **(d) Small arrivals, no drift**: ``--small-splits`` random splits per set with each of
  ``--small-sizes`` new items against ``--n-reference``: how often each check fires, and how
  often a fixed "PSI > drift_psi_alert" rule (without the noise-aware threshold) would have.
- **(e) The classifier's p-value under no drift**: ``--calibration-splits`` draws of 16
  independent standard normal features, 10,000 reference and 100 new items: how often
  ``find_drift``'s p-value (a Mann-Whitney test per held-out half, Bonferroni) is under 0.01
  and 0.05, against one Mann-Whitney test on the out-of-fold scores of five folds pooled
  (the same LightGBM, ``tasks.drift.DOMAIN_LGB_PARAMS``). A valid test rejects at most 1%
  and 5%.

Prints Markdown tables; progress on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

# one thread in numerical libraries: the machine is shared, and the timing is single-threaded
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from tasks.drift import (  # noqa: E402
    DOMAIN_LGB_PARAMS,
    DOMAIN_NUM_BOOST_ROUND,
    MIN_DOMAIN_AUC,
    MIN_FEATURE_DISTANCE,
    DriftResult,
    find_drift,
)
from tasks.params import HealthParams  # noqa: E402

log = logging.getLogger("bench.drift")
PARAMS = HealthParams()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="letter,magic,pendigits,satimage,adult")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--n-reference", type=int, default=10_000)
    parser.add_argument("--n-new", type=int, default=2000)
    parser.add_argument("--small-sizes", default="50,100,200")
    parser.add_argument("--small-splits", type=int, default=20)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--calibration-splits", type=int, default=200, help="0: skip (e)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    return parser.parse_args(argv)


def load_set(data: Path, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The set's feature frame (adult's coded columns as categories) and its labels."""
    raw = pd.read_parquet(data / f"{name}.parquet")
    labels = raw["label"].to_numpy()
    features = raw.drop(columns=["label"])
    if name == "adult":
        coded = [c for c in features.columns if pd.api.types.is_integer_dtype(features[c])]
        features = features.assign(**{c: features[c].astype(str).astype("category") for c in coded})
    return features, labels


def numeric_columns(features: pd.DataFrame) -> list[str]:
    return [
        c
        for c in features.columns
        if not isinstance(features[c].dtype, pd.CategoricalDtype) and features[c].nunique() > 2
    ]


def draw_reference(
    features: pd.DataFrame, taken: np.ndarray, n_reference: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``n_reference`` rows (or all that are left) drawn from the rows not in ``taken``."""
    left = np.setdiff1d(np.arange(len(features)), taken)
    size = min(n_reference, left.size)
    return features.iloc[np.sort(rng.choice(left, size, replace=False))]


def random_split(
    features: pd.DataFrame, n_reference: int, n_new: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    new = np.sort(rng.choice(len(features), n_new, replace=False))
    return draw_reference(features, new, n_reference, rng), features.iloc[new]


# -- the shifts --------------------------------------------------------------------------------
def covariate_shift(
    features: pd.DataFrame, n_new: int, tilt: float, rng: np.random.Generator
) -> tuple[np.ndarray, str, float]:
    """New rows drawn with weights exp(tilt z) on the most distinct numeric feature; that
    feature, and its mean's move in standard deviations."""
    numeric = numeric_columns(features)
    feature = max(numeric, key=lambda c: (features[c].nunique(), -numeric.index(c)))
    values = features[feature].to_numpy(dtype=float)
    z = (values - np.nanmean(values)) / np.nanstd(values)
    weight = np.exp(tilt * np.nan_to_num(z))
    new = rng.choice(len(features), n_new, replace=False, p=weight / weight.sum())
    moved = (np.nanmean(values[new]) - np.nanmean(values)) / np.nanstd(values)
    return np.sort(new), feature, float(moved)


def prior_shift(
    labels: np.ndarray, n_new: int, moved: float, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """New rows whose class shares put ``moved`` more mass on the rarest class."""
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts / counts.sum()
    rare = int(np.argmin(counts))
    target = shares * (1 - shares[rare] - moved) / (1 - shares[rare])
    target[rare] = shares[rare] + moved
    per_class = rng.multinomial(n_new, target)
    new = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == cls), k, replace=False)
            for cls, k in zip(classes, per_class, strict=True)
        ]
    )
    return np.sort(new), f"class {classes[rare]}: {shares[rare]:.3f} -> {target[rare]:.3f}"


def subpopulation_shift(
    features: pd.DataFrame, n_new: int, n_clusters: int, share: float, seed: int
) -> tuple[np.ndarray, str]:
    """New rows: ``share`` of them from the largest of ``n_clusters`` k-means clusters, the
    rest at random from all rows."""
    rng = np.random.default_rng(seed)
    numeric = features[numeric_columns(features)].to_numpy(dtype=float)
    standard = (numeric - np.nanmean(numeric, axis=0)) / np.nanstd(numeric, axis=0)
    clusters = KMeans(n_clusters, n_init=3, random_state=seed).fit_predict(np.nan_to_num(standard))
    largest = int(np.argmax(np.bincount(clusters)))
    members = np.flatnonzero(clusters == largest)
    from_cluster = rng.choice(members, int(round(share * n_new)), replace=False)
    others = np.setdiff1d(np.arange(len(features)), from_cluster)
    at_random = rng.choice(others, n_new - from_cluster.size, replace=False)
    new = np.sort(np.concatenate([from_cluster, at_random]))
    return new, f"cluster of {members.size} rows ({members.size / len(features):.0%})"


# -- reporting ---------------------------------------------------------------------------------
def classifier_fired(result: DriftResult) -> bool:
    return result.p_value < PARAMS.drift_alpha and result.auc >= MIN_DOMAIN_AUC


def test_rejections(result: DriftResult, *, floor: bool = True) -> pd.Series:
    """Per feature: its test rejects after Bonferroni (and, with ``floor``, enough moved)."""
    table = result.features
    rejected = table["p_value"] < PARAMS.drift_alpha / len(table)
    return rejected & (table["distance"] >= MIN_FEATURE_DISTANCE) if floor else rejected


def fired(result: DriftResult) -> str:
    """Which checks fired: how many features, the classifier."""
    parts = []
    if result.shifted_features:
        parts.append(f"{len(result.shifted_features)} features")
    if classifier_fired(result):
        parts.append("classifier")
    return " + ".join(parts) or "-"


def top_shifted(result: DriftResult, k: int = 3) -> str:
    table = result.features.loc[result.features["shifted"]].copy()
    table["order"] = table["p_value"]
    return ", ".join(table.sort_values("order", kind="stable")["feature"].head(k)) or "-"


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def run_null(sets: dict, args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for name, (features, _) in sets.items():
        results = []
        for seed in range(args.splits):
            reference, arriving = random_split(features, args.n_reference, args.n_new, seed)
            results.append(find_drift(reference, arriving, params=PARAMS, random_state=seed))
        log.info("(a) %s: %d splits done", name, args.splits)
        aucs = np.array([r.auc for r in results])
        rows.append(
            {
                "set": name,
                "reference / new": f"{results[0].n_reference} / {results[0].n_new}",
                "splits": args.splits,
                "warnings": sum(r.warning for r in results),
                "splits with a shifted feature": sum(bool(r.shifted_features) for r in results),
                "... by a test without the distance floor": sum(
                    bool(test_rejections(r, floor=False).any()) for r in results
                ),
                "classifier p < 0.01": sum(r.p_value < PARAMS.drift_alpha for r in results),
                "AUC min-max": f"{aucs.min():.3f}-{aucs.max():.3f}",
                "largest PSI": f"{max(r.features['psi'].max() for r in results):.3f}",
            }
        )
    return pd.DataFrame(rows)


def run_shifts(sets: dict, args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for name, (features, labels) in sets.items():
        cases = []
        for tilt in (0.1, 0.25):
            rng = np.random.default_rng(1)
            new, feature, moved = covariate_shift(features, args.n_new, tilt, rng)
            cases.append((f"covariate b={tilt}", f"{feature} +{moved:.2f} sd", new, feature, rng))
        for moved in (0.1, 0.2):
            rng = np.random.default_rng(2)
            new, how = prior_shift(labels, args.n_new, moved, rng)
            cases.append((f"prior d={moved}", how, new, None, rng))
        for n_clusters, share in ((3, 1.0), (8, 0.5)):
            new, how = subpopulation_shift(features, args.n_new, n_clusters, share, seed=3)
            label = f"sub-population {share:.0%} of 1/{n_clusters}"
            cases.append((label, how, new, None, np.random.default_rng(3)))
        for case, how, new, responsible, rng in cases:
            reference = draw_reference(features, new, args.n_reference, rng)
            result = find_drift(reference, features.iloc[new], params=PARAMS, random_state=0)
            named = "-"
            if responsible is not None:
                ranked = result.features.sort_values("p_value", kind="stable")["feature"]
                rank = list(ranked).index(responsible) + 1
                named = (
                    f"shifted: {responsible in result.shifted_features}, test rank {rank}, "
                    f"classifier #1: {result.classifier_features[:1] == (responsible,)}"
                )
            rows.append(
                {
                    "set": name,
                    "shift": case,
                    "how": how,
                    "caught": "yes" if result.warning else "**no**",
                    "by": fired(result),
                    "AUC": f"{result.auc:.3f}",
                    "largest distance": f"{result.features['distance'].max():.3f}",
                    "shifted features (most significant first)": top_shifted(result),
                    "classifier's features": ", ".join(result.classifier_features) or "-",
                    "responsible feature": named,
                }
            )
            log.info("(b) %s %s: warning %s", name, case, result.warning)
    return pd.DataFrame(rows)


def run_timing(sets: dict, args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for name, (features, _) in sets.items():
        reference, arriving = random_split(features, 10_000, 2000, seed=0)
        walls, cpus = [], []
        for repeat in range(args.timing_repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            find_drift(reference, arriving, params=PARAMS, random_state=repeat)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        rows.append(
            {
                "set": name,
                "items": f"{len(reference)} + {len(arriving)}",
                "features": features.shape[1],
                "wall s, median": f"{np.median(walls):.2f}",
                "wall s, min": f"{np.min(walls):.2f}",
                "CPU s, median": f"{np.median(cpus):.2f}",
            }
        )
        log.info("(c) %s timed", name)
    return pd.DataFrame(rows)


def run_small(sets: dict, args: argparse.Namespace) -> pd.DataFrame:
    sizes = [int(s) for s in args.small_sizes.split(",") if s.strip()]
    rows = []
    for name, (features, _) in sets.items():
        for size in sizes:
            counts = dict.fromkeys(("warning", "test", "psi", "classifier", "psi_fixed"), 0)
            for seed in range(args.small_splits):
                reference, arriving = random_split(features, args.n_reference, size, 100 + seed)
                result = find_drift(reference, arriving, params=PARAMS, random_state=seed)
                table = result.features
                counts["warning"] += result.warning
                counts["test"] += bool(test_rejections(result).any())
                counts["psi"] += bool((table["psi"] > table["psi_threshold"]).any())
                counts["classifier"] += classifier_fired(result)
                counts["psi_fixed"] += bool((table["psi"] > PARAMS.drift_psi_alert).any())
            rows.append(
                {
                    "set": name,
                    "new items": size,
                    "splits": args.small_splits,
                    "warnings": counts["warning"],
                    "by a test (KS / chi-square)": counts["test"],
                    "by PSI (noise-aware)": counts["psi"],
                    "by the classifier": counts["classifier"],
                    f"PSI > {PARAMS.drift_psi_alert:g} alone would have": counts["psi_fixed"],
                }
            )
            log.info("(d) %s, %d new items done", name, size)
    return pd.DataFrame(rows)


def pooled_p_value(frame: pd.DataFrame, target: np.ndarray, seed: int, folds: int = 5) -> float:
    """One Mann-Whitney test on the out-of-fold scores of ``folds`` folds pooled (the design
    find_drift does not use), with find_drift's weights and LightGBM."""
    weight = np.where(target == 1, 0.5 / target.sum(), 0.5 / (target == 0).sum()) * target.size
    scores = np.zeros(target.size)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(frame, target)
    for fold, (fit, held) in enumerate(split):
        data = lgb.Dataset(frame.iloc[fit], label=target[fit], weight=weight[fit])
        params = {**DOMAIN_LGB_PARAMS, "seed": seed + fold}
        booster = lgb.train(params, data, num_boost_round=DOMAIN_NUM_BOOST_ROUND)
        scores[held] = booster.predict(frame.iloc[held])
    test = stats.mannwhitneyu(scores[target == 1], scores[target == 0], alternative="greater")
    return float(test.pvalue)


def run_calibration(sets: dict, args: argparse.Namespace) -> pd.DataFrame:
    n_reference, n_new, n_features = 10_000, 100, 16
    ours, pooled = [], []
    for seed in range(args.calibration_splits):
        rng = np.random.default_rng(10_000 + seed)
        frame = pd.DataFrame(
            rng.normal(size=(n_reference + n_new, n_features)),
            columns=[f"x{i}" for i in range(n_features)],
        )
        target = np.r_[np.zeros(n_reference, dtype=int), np.ones(n_new, dtype=int)]
        result = find_drift(
            frame.iloc[:n_reference], frame.iloc[n_reference:], params=PARAMS, random_state=seed
        )
        ours.append(result.p_value)
        pooled.append(pooled_p_value(frame, target, seed))
    log.info("(e) %d draws done", args.calibration_splits)
    rows = []
    for name, values in (("find_drift (per half, Bonferroni)", ours), ("5 folds pooled", pooled)):
        values = np.asarray(values)
        rows.append(
            {
                "p-value": name,
                "draws": values.size,
                "p < 0.01": f"{(values < 0.01).mean():.1%}",
                "p < 0.05": f"{(values < 0.05).mean():.1%}",
                "p < 0.10": f"{(values < 0.10).mean():.1%}",
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    sets = {name: load_set(args.data, name) for name in names}
    sections = [
        ("(a) No drift: random splits", run_null),
        ("(b) Shifts", run_shifts),
        ("(c) Time of find_drift, 10,000 + 2,000 items", run_timing),
        ("(d) Small arrivals, no drift: how often each check fires", run_small),
    ]
    if args.calibration_splits > 0:
        sections.append(("(e) The classifier's p-value under no drift", run_calibration))
    for title, run in sections:
        started = time.perf_counter()
        table = run(sets, args)
        print(f"\n### {title}\n\n{markdown(table)}\n", flush=True)
        log.info("%s: %.0f s", title, time.perf_counter() - started)


if __name__ == "__main__":
    main()
