"""Reuters-21578 (ModApte, top 20 categories): the mission's own multi-label benchmark, with
the model and strategies alloop uses, called directly rather than through alloop's rounds (a
campaign of 59 models in minutes; the same benchmark through the rounds is ``alloop simulate
--task multilabel`` on ``--write-dataset``'s table).

    PYTHONPATH=. .venv/bin/python bench/reuters.py [--arms random,ml_diversity,ml_mean_uncertainty]
        [--seeds 10] [--budget 3000] [--initial 100] [--batch 50] [--jobs 2] [--out DIR]
        [--report-only]
    PYTHONPATH=. .venv/bin/python bench/reuters.py --write-dataset reuters-top20.parquet

Protocol (``../shared/data/README.md``, section Reuters): the split as given; the 20 most
frequent categories, stories with none of them dropped (7,118 train, 2,738 test); the train
split is the pool. The TF-IDF vocabulary and the SVD are fitted once on the pool's texts with
``TextParams()`` defaults (:func:`tasks.features.fit_feature_space`, as the features stage
would). Each campaign starts from 100 labels drawn at random from the pool (seed ``s``: the
same 100 for every arm), fits :func:`tasks.multilabel.fit_one_vs_rest` with ``TrainParams()``
defaults (one thread), records the mean average precision on the test split, scores the pool
with the arm's registered strategy (labeled items NaN; ``ml_diversity`` gets the embedding the
score stage builds: SVD coordinates standardized by the labeled rows,
:func:`tasks.score.get_embedding_stats` and :func:`tasks.score.get_embedding`), and labels the
``--batch`` items of highest utility (equal utilities in a seeded random order, as
:func:`tasks.selection.select_batch` does), or, in a small-text arm, the ``--batch`` items its
strategy queries (below), until ``--budget`` labels.

Arms: ``random`` (the baseline), ``ml_diversity`` and ``ml_mean_uncertainty`` (alloop's
registered strategies; any other registered name works too) and ``smalltext_cvirs``.

scikit-activeml (1.0.1) has no multi-label query strategy. What a user of it would write
around the same one-vs-rest model, its ``uncertainty_scores`` (least confidence,
``1 - max(p, 1 - p)``) of each label's binary prediction averaged over the labels, is
``ml_mean_uncertainty`` halved (``1 - max(p, 1 - p) = (1 - |2 p - 1|) / 2``): the same ranking,
so it is not a separate arm.

``smalltext_cvirs`` is small-text's (1.4.1) multi-label uncertainty sampling,
``CategoryVectorInconsistencyAndRanking`` (CVIRS, Reyes et al. 2018), the one query strategy
of that release declared multi-label (it refuses labels that are not a CSR matrix); its
``LeastConfidence``, ``PredictionEntropy`` and ``BreakingTies`` read a row of probabilities
as one distribution over classes (its maximum, its entropy after normalizing, its top two),
not as one probability per label. The arm keeps everything else of the protocol: the same
model, fitted the same way, and each round small-text's ``query`` picks the ``--batch`` items
(:func:`query_smalltext`) through :class:`SmallTextClassifier`, which answers the strategy's
only call, ``predict_proba``, with the model's per-label probabilities; small-text trains
nothing. Its score is the Hamming distance of an item's predicted label set (probability above
0.5) to the labeled items' sets, times a ranking term of per-label margins; as released, that
term ranks positions rather than items (``np.argsort`` read as ranks) and its margin is
``|p_j - sum(p)|``, and the entropy distance the paper uses where the Hamming distance is
below 1 is computed but not returned: the arm measures the library as a user gets it.
small-text is not one of alloop's dependencies; to run the arm, install it beside the project::

    .venv/bin/python -m pip install --no-deps --target /path/st-site small-text==1.4.1 dill
    PYTHONPATH=.:/path/st-site .venv/bin/python bench/reuters.py --arms random,smalltext_cvirs

(``--no-deps``: its other requirements, numpy, scipy, scikit-learn, tqdm and packaging, are
alloop's already; its wheel also installs a top-level ``tests`` package, which can be deleted
from ``/path/st-site``.) Without it, a run asking for the arm stops before any campaign and
says so.

Everything goes under ``--out`` (default: a new folder under the system's temporary folder,
never the checkout): ``curves/<arm>_seed<s>.csv`` as each campaign finishes (a rerun with the
same ``--out`` skips campaigns already there, so a cut-short run can be resumed or
summarized with ``--report-only``), ``curves.csv``, ``campaigns.csv``, ``summary.csv`` and
``reuters.md``. Campaigns run seed by seed (every arm of seed 0, then of seed 1, ...), so a run
stopped early leaves paired seeds. ``--jobs N`` runs N campaigns at a time, each in its own
process with one thread per numerical library (:func:`flows.simulate.run_campaigns`); the
curves do not depend on it. Progress goes to stderr.

``--write-dataset PATH`` writes the same stories as one table for ``alloop simulate --task
multilabel`` (``text``, ``topics`` as a list, ``split``) and exits: the benchmark run through
alloop's own rounds (README, "Does it beat random sampling on your data?").
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.params import ScoreParams, TextParams, TrainParams  # noqa: E402
from tasks.simulate import get_aulc, get_labels_to_target, get_paired_test  # noqa: E402

#: The README's 20 most frequent categories, in its order.
CATEGORIES = (
    "earn", "acq", "money-fx", "grain", "crude", "trade", "interest", "ship", "wheat", "corn",
    "dlr", "money-supply", "oilseed", "sugar", "coffee", "gnp", "veg-oil", "gold", "soybean",
    "nat-gas",
)  # fmt: skip
BASELINE = "random"
ARMS = (BASELINE, "ml_diversity", "ml_mean_uncertainty")
#: Arms that let small-text pick the batch around the same model: the arm's name, its query
#: strategy (a class of ``small_text.query_strategies``) and the strategy's arguments.
SMALLTEXT_ARMS = {
    "smalltext_cvirs": ("CategoryVectorInconsistencyAndRanking", {"pbar": None}),
}
SMALLTEXT_VERSION = "1.4.1"
#: Issue 19's goals: labels to 0.80 MAP at most, and random's labels to 0.85 over ours at least.
TARGETS = (0.80, 0.85)
GOAL_LABELS_080 = 875
GOAL_RATIO_085 = 1.7
GOAL_MINUTES = 60
#: The label counts the report's curve table shows.
CURVE_POINTS = (100, 300, 500, 900, 1000, 1500, 2000, 2500, 3000)
CURVE_COLUMNS = ["strategy", "seed", "round", "labels", "map", "micro_f1", "macro_f1", "seconds"]

log = logging.getLogger("bench.reuters")


@dataclass(frozen=True)
class Corpus:
    """The benchmark's data, transformed once.

    Attributes
    ----------
    x_pool, x_test : scipy.sparse.csr_matrix, shape (n_pool | n_test, n_features)
    y_pool, y_test : np.ndarray of int, shape (n_pool | n_test, 20)
    embedding_rows : pd.DataFrame, shape (n_pool, 1 + k)
        ``item_id`` and the SVD coordinates ``text_svd<i>`` of each pool story (what
        :func:`tasks.score.get_embedding_stats` reads in a text space).
    """

    x_pool: object
    x_test: object
    y_pool: np.ndarray
    y_test: np.ndarray
    embedding_rows: pd.DataFrame


def load_reuters(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pool (train split) and the test split: ``item_id``, ``text`` and one 0/1 column per
    category; stories with none of :data:`CATEGORIES` dropped."""
    data = pd.read_parquet(path)
    sets = data["categories"].map(lambda cats: set(cats) & set(CATEGORIES))
    data = data[sets.map(bool)].reset_index(drop=True)
    sets = sets[sets.map(bool)].reset_index(drop=True)
    frame = pd.DataFrame({"item_id": data["id"].astype(str), "text": data["text"].astype(str)})
    for name in CATEGORIES:
        frame[name] = sets.map(lambda s, name=name: int(name in s)).to_numpy()
    is_train = (data["split"] == "train").to_numpy()
    return frame[is_train].reset_index(drop=True), frame[~is_train].reset_index(drop=True)


def get_simulate_table(pool: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The benchmark's stories as ``alloop simulate`` reads them: ``item_id``, ``text``,
    ``topics`` (the story's top-20 categories, a list) and ``split`` (train or test)."""
    both = pd.concat([pool.assign(split="train"), test.assign(split="test")], ignore_index=True)
    has = both[list(CATEGORIES)].to_numpy(bool)
    return pd.DataFrame(
        {
            "item_id": both["item_id"],
            "text": both["text"],
            "topics": [[c for c, k in zip(CATEGORIES, row, strict=True) if k] for row in has],
            "split": both["split"],
        }
    )


def build_corpus(pool: pd.DataFrame, test: pd.DataFrame, *, random_state: int = 0) -> Corpus:
    """Fit the feature space on the pool's texts and transform both splits once."""
    from tasks.features import fit_feature_space

    columns = ["item_id", "text"]
    space = fit_feature_space(
        pool[columns],
        text_columns=("text",),
        params=TextParams(),
        fingerprint="reuters-apte-top20",
        random_state=random_state,
    )
    embedded = space.embed(pool[columns])
    embedding_rows = pd.DataFrame(
        embedded, columns=[f"text_svd{i}" for i in range(embedded.shape[1])]
    )
    embedding_rows.insert(0, "item_id", pool["item_id"].to_numpy())
    return Corpus(
        x_pool=space.transform(pool[columns]),
        x_test=space.transform(test[columns]),
        y_pool=pool[list(CATEGORIES)].to_numpy(int),
        y_test=test[list(CATEGORIES)].to_numpy(int),
        embedding_rows=embedding_rows,
    )


def select_top(utilities: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``n`` highest utilities (NaN never), equal ones in a seeded random
    order, as :func:`tasks.selection.select_batch` picks its active part."""
    selectable = np.flatnonzero(~np.isnan(utilities))
    order = np.lexsort((rng.random(selectable.size), -utilities[selectable]))
    return selectable[order[:n]]


def get_utilities(
    arm: str,
    probs: np.ndarray | None,
    labeled: np.ndarray,
    corpus: Corpus,
    *,
    batch: int,
    random_state: int,
) -> np.ndarray:
    """The arm's utilities over the pool (shape ``(n_pool,)``, higher = label first, NaN for
    labeled items)."""
    from tasks.strategies import PoolView, get_strategy, get_strategy_info

    n_pool = corpus.y_pool.shape[0]
    info = get_strategy_info(arm)
    pred_probs = (
        np.array(probs, dtype=float)
        if info.reads_probs
        else np.zeros((n_pool, len(CATEGORIES)), dtype=float)
    )
    pred_probs[labeled] = np.nan
    view = PoolView()
    if "embedding" in info.needs:
        from tasks.score import get_embedding, get_embedding_stats

        stats = get_embedding_stats(corpus.embedding_rows.iloc[np.flatnonzero(labeled)])
        view = PoolView(embedding=get_embedding(corpus.embedding_rows, stats), batch_size=batch)
    return get_strategy(arm)(pred_probs, random_state=random_state, view=view, params=ScoreParams())


def run_campaign(
    corpus: Corpus, arm: str, seed: int, *, initial: int, batch: int, budget: int
) -> pd.DataFrame:
    """One campaign: a learning curve with columns :data:`CURVE_COLUMNS` (``seconds``: wall
    time since the campaign started)."""
    from tasks.multilabel import fit_one_vs_rest, get_multilabel_metrics

    started = time.perf_counter()
    n_pool = corpus.y_pool.shape[0]
    labeled = np.zeros(n_pool, dtype=bool)
    labeled[np.random.default_rng(seed).permutation(n_pool)[:initial]] = True
    params = TrainParams()
    rows = []
    for round_id in range(n_pool):
        rows_labeled = np.flatnonzero(labeled)
        model = fit_one_vs_rest(
            corpus.x_pool[rows_labeled],
            corpus.y_pool[rows_labeled],
            params=params,
            random_state=seed * 1000,
        )
        metrics = get_multilabel_metrics(
            corpus.y_test, model.predict(corpus.x_test), CATEGORIES, threshold=0.5
        )
        n = int(labeled.sum())
        rows.append(
            [arm, seed, round_id, n, metrics["map"], metrics["micro_f1"], metrics["macro_f1"],
             time.perf_counter() - started]
        )  # fmt: skip
        if n >= budget or n == n_pool:
            break
        if arm in SMALLTEXT_ARMS:
            picked = query_smalltext(
                arm,
                model,
                labeled,
                corpus,
                n=min(batch, budget - n, n_pool - n),
                random_state=seed * 1000 + round_id,
            )
            labeled[picked] = True
            continue
        probs = model.predict(corpus.x_pool) if _reads_probs(arm) else None
        utilities = get_utilities(
            arm, probs, labeled, corpus, batch=batch, random_state=seed * 1000 + round_id
        )
        picked = select_top(
            utilities, min(batch, budget - n), np.random.default_rng([seed, round_id])
        )
        labeled[picked] = True
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


# -- the small-text arms ------------------------------------------------------------------------
class SmallTextClassifier:
    """What small-text's query strategies call on a classifier, answered by alloop's fitted
    one-vs-rest model (:class:`tasks.multilabel.OneVsRestModel`): small-text never trains it.

    ``predict_proba(dataset)`` is the model's per-label probabilities of the dataset's rows
    (``dataset.x``, a small-text ``SklearnDataset`` or a view of one), shape
    ``(n, n_labels)``, rows not summing to 1.
    """

    def __init__(self, model: object) -> None:
        self.model = model

    def predict_proba(self, dataset: object) -> np.ndarray:
        return np.asarray(self.model.predict(dataset.x), dtype=float)


def import_smalltext() -> tuple[object, object]:
    """small-text's ``query_strategies`` module and its ``SklearnDataset``, or an error saying
    how to get them (small-text is not one of alloop's dependencies)."""
    try:
        from small_text import query_strategies
        from small_text.data import SklearnDataset
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the {', '.join(SMALLTEXT_ARMS)} arm needs small-text {SMALLTEXT_VERSION}, which "
            f"is not importable here ({error}). Install it outside the project's environment: "
            f"`.venv/bin/python -m pip install --no-deps --target DIR "
            f"small-text=={SMALLTEXT_VERSION} dill`, then run with PYTHONPATH=.:DIR"
        ) from error
    return query_strategies, SklearnDataset


def query_smalltext(
    arm: str,
    model: object,
    labeled: np.ndarray,
    corpus: Corpus,
    *,
    n: int,
    random_state: int,
) -> np.ndarray:
    """The ``n`` pool positions the arm's small-text strategy queries (``strategy.query(clf,
    dataset, indices_unlabeled, indices_labeled, y, n=n)``, as small-text's active learner
    calls it).

    ``clf`` is :class:`SmallTextClassifier` around ``model``; ``dataset`` the pool's features
    with an all-zero label matrix (the strategy reads no pool label); ``y`` the labeled
    items' label sets as a CSR matrix, rows in the order of ``indices_labeled`` (a CSR ``y``
    is how small-text tells multi-label data). numpy's global random state is seeded with
    ``random_state`` for the call and restored after it (what small-text's random choices
    draw from; the CVIRS strategy draws none).
    """
    from scipy.sparse import csr_matrix

    query_strategies, SklearnDataset = import_smalltext()
    name, kwargs = SMALLTEXT_ARMS[arm]
    strategy = getattr(query_strategies, name)(**kwargs)
    n_pool, n_labels = corpus.y_pool.shape
    indices_labeled = np.flatnonzero(labeled)
    indices_unlabeled = np.flatnonzero(~labeled)
    dataset = SklearnDataset(
        corpus.x_pool,
        csr_matrix((n_pool, n_labels), dtype=np.int64),
        target_labels=np.arange(n_labels),
    )
    y = csr_matrix(corpus.y_pool[indices_labeled].astype(np.int64))
    # small-text draws from numpy's global random state, so that is the state seeded
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(random_state)  # noqa: NPY002
    try:
        picked = strategy.query(
            SmallTextClassifier(model), dataset, indices_unlabeled, indices_labeled, y, n=n
        )
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    picked = np.asarray(picked, dtype=np.int64)
    if picked.size != n or np.unique(picked).size != n or labeled[picked].any():
        raise RuntimeError(f"{arm} queried {picked.tolist()}: not {n} distinct unlabeled items")
    return picked


def _reads_probs(arm: str) -> bool:
    from tasks.strategies import get_strategy_info

    return get_strategy_info(arm).reads_probs


def get_full_data_map(corpus: Corpus, *, random_state: int = 0) -> float:
    """MAP on the test split of the one-vs-rest model trained on every pool story."""
    from tasks.multilabel import fit_one_vs_rest, get_multilabel_metrics

    model = fit_one_vs_rest(
        corpus.x_pool, corpus.y_pool, params=TrainParams(), random_state=random_state
    )
    probs = model.predict(corpus.x_test)
    return get_multilabel_metrics(corpus.y_test, probs, CATEGORIES, threshold=0.5)["map"]


# -- the summary -------------------------------------------------------------------------------
def get_campaign_table(curves: pd.DataFrame, *, start: int, stop: int) -> pd.DataFrame:
    """One row per campaign: labels to each of :data:`TARGETS` (inf: never within the curve),
    AULC of MAP over ``[start, stop]`` labels and wall seconds."""
    rows = []
    for (arm, seed), curve in curves.groupby(["strategy", "seed"], sort=False):
        curve = curve.sort_values("labels")
        labels, scores = curve["labels"].to_numpy(), curve["map"].to_numpy()
        row = {"strategy": arm, "seed": int(seed)}
        for target in TARGETS:
            row[f"labels_to_{target:.2f}"] = get_labels_to_target(labels, scores, target)
        row["aulc"] = get_aulc(labels, scores, start=start, stop=stop)
        row["final_labels"] = int(labels[-1])
        row["final_map"] = float(scores[-1])
        row["seconds"] = float(curve["seconds"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def get_ratio(random_labels: float, labels: float, budget: int) -> tuple[float, str]:
    """Random's labels to target over the arm's, and how to read it (as bench/
    label_efficiency.py reads it): random never reaching the target makes it a lower bound
    ``budget / labels``; neither reaching it counts as 1; only the arm never reaching it, 0."""
    if math.isfinite(labels) and math.isfinite(random_labels):
        return random_labels / labels, "exact"
    if math.isfinite(labels):
        return budget / labels, "at least"
    if math.isfinite(random_labels):
        return 0.0, "arm never"
    return 1.0, "neither"


def get_summary_table(campaigns: pd.DataFrame, *, budget: int) -> pd.DataFrame:
    """One row per arm: medians over seeds (never = inf), seeds reaching each target, the ratio
    random/arm of the median labels to 0.85 and the paired Wilcoxon test of the AULC
    difference to random (both over the seeds both ran), and mean AULC."""
    rows = []
    by_seed = campaigns.pivot(index="seed", columns="strategy", values="aulc")
    to_085 = campaigns.pivot(index="seed", columns="strategy", values="labels_to_0.85")
    for arm, group in campaigns.groupby("strategy", sort=False):
        row = {"strategy": arm, "seeds": len(group)}
        for target in TARGETS:
            column = f"labels_to_{target:.2f}"
            row[f"median_{column}"] = float(np.median(group[column]))
            row[f"reached_{target:.2f}"] = int(np.isfinite(group[column]).sum())
        if BASELINE in to_085 and arm != BASELINE:
            # over the seeds both arms ran: a seed's two campaigns share their first labels
            paired = to_085[[arm, BASELINE]].dropna(how="any")
            row["ratio_random_at_0.85"], row["ratio_kind"] = get_ratio(
                float(np.median(paired[BASELINE])), float(np.median(paired[arm])), budget
            )
        row["mean_aulc"] = float(group["aulc"].mean())
        if BASELINE in by_seed and arm != BASELINE:
            paired = by_seed[[arm, BASELINE]].dropna()
            row["aulc_diff_vs_random"], row["aulc_p_value"] = get_paired_test(
                (paired[arm] - paired[BASELINE]).to_numpy()
            )
            row["paired_seeds"] = len(paired)
        row["mean_seconds"] = float(group["seconds"].mean())
        row["total_seconds"] = float(group["seconds"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def get_curve_table(curves: pd.DataFrame, points: tuple[int, ...] = CURVE_POINTS) -> pd.DataFrame:
    """Mean MAP over seeds per arm at a few label counts (rows: arms; columns: labels; NaN
    where no campaign of the arm has that point)."""
    at = curves[curves["labels"].isin(points)]
    return at.pivot_table(index="strategy", columns="labels", values="map", aggfunc="mean")


def _labels(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:,.0f}"


def get_markdown(
    summary: pd.DataFrame,
    *,
    reference: float,
    jobs: int,
    wall: float,
    curve_table: pd.DataFrame | None = None,
) -> str:
    """The summary table and issue 19's goals, checked on this run's numbers."""
    lines = [
        "| arm | seeds | median labels to 0.80 MAP (reached) | median labels to 0.85 MAP "
        "(reached) | random / arm at 0.85 | mean AULC | AULC - random (p) | s per campaign |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary.to_dict("records"):
        ratio = row.get("ratio_random_at_0.85", math.nan)
        kind = row.get("ratio_kind", "")
        shown_ratio = (
            "n/a"
            if not isinstance(kind, str) or not kind
            else f"{ratio:.2f}" + ("" if kind == "exact" else f" ({kind})")
        )
        diff = row.get("aulc_diff_vs_random", math.nan)
        test = "" if not math.isfinite(diff) else f"{diff:+.4f} ({row['aulc_p_value']:.3f})"
        lines.append(
            f"| {row['strategy']} | {row['seeds']} | "
            f"{_labels(row['median_labels_to_0.80'])} ({row['reached_0.80']}/{row['seeds']}) | "
            f"{_labels(row['median_labels_to_0.85'])} ({row['reached_0.85']}/{row['seeds']}) | "
            f"{shown_ratio} | {row['mean_aulc']:.4f} | {test} | {row['mean_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Full-data reference (one-vs-rest on all pool stories): MAP {reference:.4f}. "
        f"Campaign time summed: {summary['total_seconds'].sum() / 60:.1f} min; "
        f"this invocation {wall / 60:.1f} min wall with --jobs {jobs} (issue 19's goal: "
        f"10 seeds of two arms to 3,000 labels under {GOAL_MINUTES} min on 2 cores).",
        "",
    ]
    if curve_table is not None and not curve_table.empty:
        columns = [int(c) for c in curve_table.columns]
        lines += [
            "Mean MAP over the seeds at some label counts:",
            "",
            "| arm | " + " | ".join(f"{c:,}" for c in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for arm, values in curve_table.iterrows():
            lines.append(f"| {arm} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
        lines.append("")
    lines += [
        "Goals of issue 19 (labels to 0.80 MAP at most "
        f"{GOAL_LABELS_080}; random / arm at 0.85 at least {GOAL_RATIO_085}; AULC never "
        "significantly below random, p < 0.05):",
        "",
    ]
    for row in summary.to_dict("records"):
        if row["strategy"] == BASELINE:
            continue
        diff = row.get("aulc_diff_vs_random", math.nan)
        worse = diff < 0 and row.get("aulc_p_value", 1.0) < 0.05
        labels_080 = row["median_labels_to_0.80"]
        ratio = row.get("ratio_random_at_0.85", math.nan)
        lines.append(
            f"- `{row['strategy']}`: median labels to 0.80 MAP {_labels(labels_080)} "
            f"({'met' if labels_080 <= GOAL_LABELS_080 else 'not met'}); random / arm at 0.85 "
            f"{ratio:.2f} ({'met' if ratio >= GOAL_RATIO_085 else 'not met'}); AULC "
            f"{'significantly' if worse else 'not significantly'} below random."
        )
    return "\n".join(lines) + "\n"


# -- the command -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "reuters" / "reuters21578_apte.parquet",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"registered strategies, or small-text's: {', '.join(SMALLTEXT_ARMS)}",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument(
        "--jobs", type=int, default=1, help="campaigns at a time, one process and core each"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: a new temporary one)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="summarize the curves already in --out"
    )
    parser.add_argument(
        "--write-dataset",
        type=Path,
        default=None,
        help="write the stories for alloop simulate --task multilabel to this parquet and exit",
    )
    args = parser.parse_args(argv)
    args.arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.budget <= args.initial:
        parser.error(f"--budget must exceed --initial, got {args.budget} <= {args.initial}")
    if args.out is None and args.write_dataset is None:
        if args.report_only:
            parser.error("--report-only needs --out")
        args.out = Path(tempfile.mkdtemp(prefix="alloop-reuters-"))
    return args


def run_campaigns(args: argparse.Namespace, reference_file: Path) -> None:
    """The full-data reference (unless already in ``--out``) and every campaign not yet in
    ``--out``, seed by seed, ``--jobs`` at a time."""
    from flows.simulate import run_campaigns as run_jobs
    from flows.simulate import single_threaded

    curve_dir = args.out / "curves"
    if set(args.arms) & set(SMALLTEXT_ARMS):
        import_smalltext()  # before the reference's minutes, not in a worker after them
    if not reference_file.exists():
        began = time.perf_counter()
        with single_threaded():
            reference = get_full_data_map(get_corpus(args.data))
        reference_file.write_text(f"{reference:.6f}\n")
        log.info("full-data reference in %.0f s", time.perf_counter() - began)
    jobs = [
        (str(args.data), arm, seed, args.initial, args.batch, args.budget)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for arm in args.arms
        if not (curve_dir / f"{arm}_seed{seed}.csv").exists()
    ]

    def done(job: tuple, curve: pd.DataFrame) -> None:
        _, arm, seed, *_ = job
        curve.to_csv(curve_dir / f"{arm}_seed{seed}.csv", index=False)
        log.info(
            "%s seed %d: %d labels, MAP %.4f, %.0f s",
            arm,
            seed,
            curve["labels"].iloc[-1],
            curve["map"].iloc[-1],
            curve["seconds"].iloc[-1],
        )

    log.info("%d campaigns, %d at a time", len(jobs), args.jobs)
    run_jobs(jobs, processes=args.jobs, on_done=done, run_job=_campaign_job)


@functools.cache
def get_corpus(data: Path) -> Corpus:
    """The corpus of ``data``, built once per process."""
    pool, test = load_reuters(data)
    log.info("pool %d stories, test %d", len(pool), len(test))
    return build_corpus(pool, test)


def _campaign_job(job: tuple) -> pd.DataFrame:
    data, arm, seed, initial, batch, budget = job
    return run_campaign(
        get_corpus(Path(data)), arm, seed, initial=initial, batch=batch, budget=budget
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.write_dataset is not None:
        table = get_simulate_table(*load_reuters(args.data))
        table.to_parquet(args.write_dataset, index=False)
        log.info("%d stories (%d test) in %s", len(table), (table["split"] == "test").sum(),
                 args.write_dataset)  # fmt: skip
        return
    started = time.perf_counter()
    curve_dir = args.out / "curves"
    curve_dir.mkdir(parents=True, exist_ok=True)
    log.info("results in %s", args.out)
    reference_file = args.out / "reference.txt"
    if not args.report_only:
        run_campaigns(args, reference_file)
    reference = float(reference_file.read_text())
    curves = pd.concat([pd.read_csv(p) for p in sorted(curve_dir.glob("*.csv"))], ignore_index=True)
    curves.to_csv(args.out / "curves.csv", index=False)
    campaigns = get_campaign_table(curves, start=args.initial, stop=args.budget)
    campaigns.to_csv(args.out / "campaigns.csv", index=False)
    summary = get_summary_table(campaigns, budget=args.budget)
    summary.to_csv(args.out / "summary.csv", index=False)
    report = get_markdown(
        summary,
        reference=reference,
        jobs=args.jobs,
        wall=time.perf_counter() - started,
        curve_table=get_curve_table(curves),
    )
    (args.out / "reuters.md").write_text(report)
    print(report, flush=True)


if __name__ == "__main__":
    main()
