"""``alloop simulate``: whole campaigns against a fully labeled dataset, per strategy and seed.

Each campaign is a workspace folder in which the product's own stage functions run round after
round (``module.run.fn``: the same code ``al_round`` runs, without Prefect's task machinery),
answered by a simulated annotator from the true labels. Git, DVC and MLflow are skipped per
round; one MLflow run is logged per campaign.

The protocol:

- a fixed stratified test split (``test_fraction`` of the rows, drawn once with seed 0, or a
  split column), identical for every strategy and seed; its true labels enter every campaign
  in round 1 as an issued test batch, so the workspace's own evaluate stage measures it;
- the rest is the pool: round 1 issues a uniform random seed batch of ``initial`` items,
  every later round trains, evaluates and issues ``batch`` items chosen by the strategy, until
  the training labels reach ``budget``; test and QC slices of the product's batches are off
  (``select.test_fraction=0``, ``select.qc_fraction=0``): the test set is the fixed split;
- flagging runs only when answers are noisy (``noise > 0``);
- the score is ``metric`` on the test split (default: macro-F1; mean average precision for
  label sets); the target is ``target`` when given, else 98% of the score of the same model
  trained on every training-pool label.

Label sets (``task="multilabel"``): the label column holds lists (parquet) or texts joined by
``project.label_separator``; the campaigns run the product's label-set stages, and a noisy
answer swaps one label of the set for another class.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from flows.tracking import log_batched
from flows.workspace import TEMPLATE_ROOT, WorkspaceError, prepare_pool, read_table_file
from tasks.annotation_time import get_batch_seconds
from tasks.catalog import Catalog, RoundInfo, write_csv, write_pool_partition, write_text
from tasks.context import StageContext
from tasks.evaluate import SET_THRESHOLD, get_classification_metrics
from tasks.executor import DaskExecutor
from tasks.features import (
    DETECT_ROWS,
    FeatureSpace,
    detect_text_columns,
    fit_feature_space,
)
from tasks.model import encode_labels, fit_booster, predict_proba
from tasks.multilabel import (
    fit_one_vs_rest,
    get_label_matrix,
    get_label_sets,
    get_multilabel_metrics,
    get_rarest_labels,
    split_label_set,
    to_label_text,
)
from tasks.params import (
    Params,
    ParamsError,
    ProjectParams,
    ScoreParams,
    dump_params,
    get_task_strategy,
    load_params,
    parse_override,
)
from tasks.simulate import (
    answer_batch,
    answer_batch_by_annotators,
    get_annotator_noise,
    get_aulc,
    get_labels_to_target,
    get_paired_test,
)
from tasks.strategies import REGISTRY, check_strategy_task

log = logging.getLogger(__name__)

TARGET_SHARE = 0.98
BASELINE = "random"
#: In ``--strategies``, the strategy of the project's ``params.yaml`` (``score.strategy``).
DEFAULT = "default"
SPLIT_SEED = 0
#: The first round's clock; round r starts r days later (the clock only orders events).
CLOCK = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)

#: The score of each trained round, one column per metric (NaN where the task has none).
METRIC_COLUMNS = ["macro_f1", "accuracy", "map", "micro_f1"]
#: What ``--metric`` may name, per task.
METRIC_NAMES = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "map": "MAP",
    "micro_f1": "micro-F1",
}
TASK_METRICS = {
    "multiclass": ("macro_f1", "accuracy"),
    "multilabel": ("map", "micro_f1", "macro_f1"),
}
CURVE_COLUMNS = ["strategy", "seed", "round_id", "labels", *METRIC_COLUMNS, "seconds"]
#: What the health stage said each round (tasks/health.py): the rating, the stop signal's mean
#: kappa and its advice. A baseline run outside alloop (a benchmark's) leaves them empty.
HEALTH_COLUMNS = [
    "rating",
    "balance",
    "balance_auc",
    "kappa",
    "kappa_mean",
    "stop_advised",
    "explore_fraction",
    "rebalance_fraction",
    # the stop signal's evidence, so that every candidate rule can be replayed offline
    # (tasks.health.get_stop_decision): new_classes joined by spaces
    "changed_share",
    "mean_entropy",
    "noise_kappa",
    "drop_kappa",
    "class_kappa_min",
    "class_kappa_mean",
    "new_classes",
    "explore_classes",
    "stop_criterion",
    "stop_held",
]
#: ``issued.csv``: every item a campaign's simulated annotator labeled, by the round that
#: issued it (``reason``: seed, active, or relabel when flagging is on).
ISSUED_COLUMNS = ["strategy", "seed", "round_id", "item_id", "reason"]


def _health_value(health: object, name: str) -> object:
    """A health summary field as a curves.csv cell: a tuple of classes joined by spaces, NaN
    where the stage computed nothing (a round without a kappa yet)."""
    value = getattr(health, name)
    if value is None:
        return np.nan
    return " ".join(map(str, value)) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class SimulationSpec:
    dataset: Path
    label_column: str = "label"
    id_column: str | None = None
    split_column: str | None = None
    strategies: tuple[str, ...] = (DEFAULT, BASELINE)
    seeds: int = 10
    initial: int = 100
    batch: int = 50
    budget: int = 3000
    noise: float = 0.0
    #: simulated annotators, each with its own noise around ``noise`` (their mean)
    annotators: int = 1
    test_fraction: float = 0.25
    overrides: tuple[str, ...] = ()
    jobs: int = 1
    #: a Dask scheduler whose workers run the campaigns (then ``jobs`` is not used)
    dask_address: str | None = None
    #: ``multiclass``: one class per item; ``multilabel``: a set of labels per item
    task: str = "multiclass"
    #: the test score the curves follow (:data:`TASK_METRICS`); None: the task's first
    metric: str | None = None
    #: the score to reach, absolute; None: 98% of the full-data model's
    target: float | None = None

    @property
    def score_metric(self) -> str:
        """The metric the curves, the target and the AULC are in."""
        return self.metric or TASK_METRICS.get(self.task, ("macro_f1",))[0]

    def resolved(self) -> SimulationSpec:
        """This spec with :data:`DEFAULT` replaced by the template's ``score.strategy`` (in its
        label-set form for label sets, :func:`tasks.params.get_task_strategy`)."""
        default = get_task_strategy(get_default_strategy(), self.task)
        named = tuple(dict.fromkeys(default if s == DEFAULT else s for s in self.strategies))
        return replace(self, strategies=named)

    def check(self) -> None:
        unknown = [s for s in self.resolved().strategies if s not in REGISTRY]
        if unknown:
            raise WorkspaceError(f"--strategies {unknown} unknown; known: {sorted(REGISTRY)}")
        if self.task not in TASK_METRICS:
            raise WorkspaceError(f"--task must be one of {list(TASK_METRICS)}, got {self.task!r}")
        for text in self.overrides:
            path, value = parse_override(text)
            if path == ["project", "task"] and value != self.task:
                raise WorkspaceError(
                    f"-S project.task={value} differs from --task {self.task}: the task of a "
                    "simulation is given by --task"
                )
        if self.score_metric not in TASK_METRICS[self.task]:
            raise WorkspaceError(
                f"--metric {self.score_metric} does not score {self.task} items; choose one of "
                f"{list(TASK_METRICS[self.task])}"
            )
        if self.target is not None and not 0.0 < self.target <= 1.0:
            raise WorkspaceError(f"--target must be in (0, 1], got {self.target}")
        for name in self.resolved().strategies:
            try:
                check_strategy_task(name, self.task)
            except ValueError as exc:
                raise WorkspaceError(f"--strategies: {exc}") from exc
        for name, value, low in (
            ("--seeds", self.seeds, 1),
            ("--initial", self.initial, 2),
            ("--batch", self.batch, 1),
            ("--jobs", self.jobs, 1),
            ("--annotators", self.annotators, 1),
        ):
            if value < low:
                raise WorkspaceError(f"{name} must be at least {low}, got {value}")
        if self.budget <= self.initial:
            raise WorkspaceError(f"--budget {self.budget} must exceed --initial {self.initial}")
        if not 0.0 <= self.noise < 1.0:
            raise WorkspaceError(f"--noise must be in [0, 1), got {self.noise}")
        if not 0.0 < self.test_fraction < 1.0:
            raise WorkspaceError(f"test fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class Dataset:
    """The items (``item_id`` + features), their true labels, the fixed test ids, classes."""

    items: pd.DataFrame
    truth: pd.DataFrame
    test_ids: pd.Index
    classes: tuple[str, ...]


@dataclass
class SimulationResult:
    out: Path
    #: the full-data model's test score, in the spec's metric
    reference_score: float
    target: float
    curves: pd.DataFrame
    campaigns: pd.DataFrame
    summary: pd.DataFrame
    classes: tuple[str, ...] = ()
    issued: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ISSUED_COLUMNS))
    files: list[Path] = field(default_factory=list)
    #: Wall seconds from the first campaign to the outputs written (None for a run read back
    #: from before it was recorded).
    seconds: float | None = None


# -- data -------------------------------------------------------------------------------------


def _sorted_classes(labels: pd.Series) -> list[str]:
    values = labels.dropna().unique()
    try:
        return [str(v) for v in sorted(values, key=float)]
    except (TypeError, ValueError):
        return sorted(str(v) for v in values)


def get_stratified_test_ids(truth: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """``fraction`` of each class's items (rounded, at least one of a class with two or more),
    drawn with ``seed``: the same split for every strategy and seed of a simulation. Label sets
    are stratified by their rarest label (:func:`tasks.multilabel.get_rarest_labels`): pass
    ``truth`` with ``label`` already that label."""
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in truth.groupby("label", sort=True):
        n = int(round(fraction * len(group)))
        n = min(max(n, 1 if len(group) > 1 else 0), len(group) - 1)
        picked.append(group["item_id"].to_numpy()[rng.permutation(len(group))[:n]])
    return pd.Index(np.concatenate(picked) if picked else [], dtype="string")


def load_dataset(spec: SimulationSpec) -> Dataset:
    raw = read_table_file(spec.dataset)
    if spec.label_column not in raw.columns:
        raise WorkspaceError(
            f"--label-column {spec.label_column!r} is not a column of {spec.dataset} "
            f"(columns: {list(raw.columns)[:20]})"
        )
    if raw[spec.label_column].isna().any():
        raise WorkspaceError(f"{spec.dataset}: the label column has empty values")
    separator = _get_separator(spec)
    if spec.task == "multilabel":
        raw[spec.label_column] = _read_label_sets(raw[spec.label_column], spec, separator)
    split = None
    if spec.split_column is not None:
        if spec.split_column not in raw.columns:
            raise WorkspaceError(f"--split-column {spec.split_column!r} is not a column")
        split = raw.pop(spec.split_column).astype(str)
        bad = sorted(set(split) - {"train", "test"})
        if bad:
            raise WorkspaceError(f"--split-column holds {bad[:5]}; only train and test allowed")
    id_column = spec.id_column
    if id_column is None:
        id_column = "item_id"
        if id_column in raw.columns:
            raise WorkspaceError("the dataset has an item_id column: pass --id-column item_id")
        raw.insert(0, id_column, np.arange(len(raw)))
    classes = _sorted_classes(
        raw[spec.label_column].astype(str).str.split(separator).explode()
        if spec.task == "multilabel"
        else raw[spec.label_column].astype(str)
    )
    if spec.task == "multilabel":
        raw[spec.label_column] = [
            to_label_text(labels.split(separator), classes, separator=separator)
            for labels in raw[spec.label_column]
        ]
    if len(classes) < 2:
        raise WorkspaceError(f"{spec.dataset}: the label column has fewer than two classes")
    items, truth = prepare_pool(
        raw,
        id_column=id_column,
        classes=classes,
        label_column=spec.label_column,
        label_separator=separator if spec.task == "multilabel" else None,
    )
    assert truth is not None  # a label column was given
    if split is not None:
        test_ids = pd.Index(truth["item_id"][split.to_numpy() == "test"], dtype="string")
    elif spec.task == "multilabel":
        rarest = get_rarest_labels(truth["label"], separator=separator)
        test_ids = get_stratified_test_ids(
            truth.assign(label=rarest), spec.test_fraction, SPLIT_SEED
        )
    else:
        test_ids = get_stratified_test_ids(truth, spec.test_fraction, SPLIT_SEED)
    return Dataset(items, truth, test_ids, tuple(classes))


def _get_separator(spec: SimulationSpec) -> str:
    """The label separator the campaigns' params declare (``project.label_separator``)."""
    separator = ProjectParams.model_fields["label_separator"].default
    for text in spec.overrides:
        path, value = parse_override(text)
        if path == ["project", "label_separator"]:
            separator = str(value)
    return separator


def _read_label_sets(column: pd.Series, spec: SimulationSpec, separator: str) -> pd.Series:
    """Each row's label set as text joined by ``separator``, from a list (parquet) or a text;
    refused, naming the rows, when a set is empty, names a label twice, or a label holds the
    separator."""
    sets = [split_label_set(value, separator=separator) for value in column]
    empty = [str(i) for i, labels in zip(column.index, sets, strict=True) if not labels][:5]
    if empty:
        raise WorkspaceError(
            f"{spec.dataset}: the label sets of rows {empty} are empty; every item needs at "
            "least one label (drop those rows first)"
        )
    for i, labels in zip(column.index, sets, strict=True):
        if len(set(labels)) != len(labels):
            raise WorkspaceError(f"{spec.dataset}: row {i} names a label twice: {labels}")
        if any(separator in label for label in labels):
            raise WorkspaceError(
                f"{spec.dataset}: row {i} has a label holding the separator {separator!r} "
                f"({labels}); choose another with -S project.label_separator=..."
            )
    return pd.Series([separator.join(labels) for labels in sets], index=column.index)


def get_default_strategy() -> str:
    """The query strategy a new workspace gets (``score.strategy`` of the template)."""
    template = yaml.safe_load((TEMPLATE_ROOT / "params.yaml").read_text())
    return str((template.get("score") or {}).get("strategy") or ScoreParams().strategy)


#: The health plan's slices, off in the baseline's campaigns (:func:`get_campaign_params`).
PLAN_OFF = ("health.explore_fraction=0", "health.rebalance_fraction=0")


def get_campaign_params(
    spec: SimulationSpec, classes: Sequence[str], strategy: str, seed: int
) -> Params:
    """The params of one campaign: the template's, with the simulation's settings and the
    user's overrides (``spec.overrides``).

    The baseline (``random``) is random sampling and nothing else: the health plan's explore
    and rebalance slices, which pick items by the model, are off in its campaigns whatever the
    overrides say (they had crept into it: on shuttle, explore slices in 2% of its rounds
    raised its AULC from 0.62 to 0.68). The health stage still runs and reports.
    """
    template = yaml.safe_load((TEMPLATE_ROOT / "params.yaml").read_text())
    template["project"] = {
        **template.get("project", {}),
        "classes": list(classes),
        "task": spec.task,
    }
    overrides = [
        f"score.strategy={strategy}",
        f"project.random_state={seed}",
        f"select.seed_size={spec.initial}",
        f"select.batch_size={spec.batch}",
        "select.test_fraction=0",
        "select.qc_fraction=0",
        f"flag.enabled={'true' if spec.noise > 0 else 'false'}",
        # one LightGBM thread per campaign whatever --jobs is: --jobs counts the cores a
        # simulation may take, and a campaign fits a few thousand labels at most, where a
        # second thread gains little; but when another process holds the other core (a
        # benchmark's second arm, a colleague's job) a two-thread fit spins and slowed
        # 100-1000x on a 2-core machine (../shared/STACK-NOTES.md). It also makes the
        # curves independent of --jobs. A user's -S train.num_threads=N still wins.
        "train.num_threads=1",
        *spec.overrides,
        *(PLAN_OFF if strategy == BASELINE else ()),
    ]
    try:
        return load_params(template, overrides)
    except ParamsError as exc:
        raise WorkspaceError(str(exc)) from exc


def get_reference_space(data: Dataset, params: Params) -> FeatureSpace:
    """The feature space the campaigns' features stage fits: the text columns of
    ``project.text_columns`` (or detected), vectorized on a sample of the items."""
    text_columns = params.project.text_columns
    if text_columns is None:
        text_columns = tuple(detect_text_columns(data.items.head(DETECT_ROWS)))
    if not text_columns:
        return FeatureSpace()
    rng = np.random.default_rng(SPLIT_SEED)
    sample = np.sort(rng.permutation(len(data.items))[: params.text.fit_rows])
    return fit_feature_space(
        data.items.iloc[sample].reset_index(drop=True),
        text_columns=text_columns,
        params=params.text,
        fingerprint="reference",
        random_state=SPLIT_SEED,
    )


def get_reference_score(data: Dataset, params: Params, metric: str = "macro_f1") -> float:
    """Test ``metric`` of the model trained on every training-pool label (in the feature space
    the campaigns use, :func:`get_reference_space`; one booster per label for label sets)."""
    train = data.truth[~data.truth["item_id"].isin(data.test_ids)]
    test = data.truth[data.truth["item_id"].isin(data.test_ids)]
    rows = data.items.set_index("item_id")
    space = get_reference_space(data, params)
    label_sets = get_label_sets(params)
    if label_sets is not None:
        separator = label_sets.separator
        model = fit_one_vs_rest(
            space.transform(rows.loc[train["item_id"]].reset_index()),
            get_label_matrix(train["label"], data.classes, separator=separator),
            params=params.train,
            random_state=SPLIT_SEED,
            categorical=space.categorical,
        )
        return get_multilabel_metrics(
            get_label_matrix(test["label"], data.classes, separator=separator),
            model.predict(space.transform(rows.loc[test["item_id"]].reset_index())),
            data.classes,
            threshold=SET_THRESHOLD,
        )[metric]
    booster = fit_booster(
        space.transform(rows.loc[train["item_id"]].reset_index()),
        encode_labels(train["label"], data.classes),
        params=params.train,
        n_classes=len(data.classes),
        random_state=SPLIT_SEED,
        categorical=space.categorical,
    )
    probs = predict_proba(
        booster, space.transform(rows.loc[test["item_id"]].reset_index()), len(data.classes)
    )
    labels = encode_labels(test["label"], data.classes)
    return get_classification_metrics(labels, probs, data.classes)[metric]


# -- one campaign -------------------------------------------------------------------------------


def _setup_campaign(root: Path, data_dir: Path, params: Params, truth: pd.DataFrame) -> Catalog:
    catalog = Catalog(root)
    catalog.path("pool").mkdir(parents=True)
    os.symlink(data_dir / "items.parquet", catalog.path("pool") / "items-0000.parquet")
    shutil.copytree(TEMPLATE_ROOT / "gx", root / "gx")
    write_text(catalog.params_file, yaml.safe_dump(dump_params(params), sort_keys=False))
    catalog.path("incoming").mkdir(parents=True)
    test = truth[truth["split"] == "test"]
    issued = pd.DataFrame(
        {
            "item_id": test["item_id"],
            "round_id": 0,
            "split": "test",
            "reason": "test",
            "utility": np.nan,
        }
    )
    catalog.save("issued", issued)
    answers = test[["item_id", "label"]].assign(
        annotator="sim-test-labeler", labeled_at=CLOCK.isoformat(timespec="seconds")
    )
    write_csv(catalog.path("incoming") / "test-labels.csv", answers)
    return catalog


def run_campaign(
    data_dir: Path,
    params: Params,
    strategy: str,
    seed: int,
    budget: int,
    noise: float,
    annotators: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One campaign in a temporary workspace, answered by one simulated annotator, or by
    ``annotators`` of them (:func:`tasks.simulate.answer_batch_by_annotators`: each batch
    item by one of them in turn, a relabel by one who has not voted on it; their noise spread
    evenly over [0.5, 1.5] x ``noise``).

    Returns
    -------
    curve : pd.DataFrame
        Columns :data:`CURVE_COLUMNS` and :data:`HEALTH_COLUMNS`, one row per trained round.
    issued : pd.DataFrame
        Columns :data:`ISSUED_COLUMNS`: the items the campaign's annotator labeled, by the
        round that issued them (the fixed test split is not among them).
    """
    from flows.pipeline import STAGES, get_stage_run

    truth = pd.read_parquet(data_dir / "truth.parquet")
    known = truth.set_index("item_id")["label"]
    classes = params.project.classes
    label_sets = get_label_sets(params)
    separator = label_sets.separator if label_sets is not None else None
    rows = []
    seconds = 0.0
    voted = pd.DataFrame(columns=["item_id", "annotator"])  # who answered what, for relabels
    with tempfile.TemporaryDirectory(prefix=f"alloop-sim-{strategy}-{seed}-") as tmp:
        catalog = _setup_campaign(Path(tmp) / "ws", data_dir, params, truth)
        round_id = 0
        while True:
            round_id += 1
            info = RoundInfo(round_id, (CLOCK + timedelta(days=round_id)).isoformat())
            catalog.write_round(info)
            ctx = StageContext(catalog=catalog, params=params, round=info)
            s = {spec.name: get_stage_run(spec)(ctx) for spec in STAGES}
            n_train = int(s["merge"].train_items)
            candidate = s["evaluate"].candidate
            if candidate:
                health = s["health"]
                rows.append(
                    [
                        strategy,
                        seed,
                        round_id,
                        n_train,
                        *(candidate.get(name, np.nan) for name in METRIC_COLUMNS),
                        seconds,
                        *(_health_value(health, name) for name in HEALTH_COLUMNS),
                    ]
                )
            if n_train >= budget:
                break
            batch = pd.read_csv(
                catalog.path("outbox", round_id) / "batch.csv",
                dtype={"item_id": str},
                keep_default_na=False,
            )
            if batch.empty:
                log.info("%s seed %s: the pool is exhausted at %s labels", strategy, seed, n_train)
                break
            seconds += get_batch_seconds(
                batch["predicted_label"].replace("", pd.NA),
                batch["confidence"].replace("", np.nan).astype(float).fillna(0.0).to_numpy(),
                params=params.annotation,
                true_labels=known.loc[batch["item_id"]].reset_index(drop=True),
                separator=separator,
            )
            answers = (
                answer_batch(
                    batch["item_id"],
                    truth[["item_id", "label"]],
                    classes=classes,
                    noise=noise,
                    annotator="sim-annotator",
                    labeled_at=info.started_at,
                    random_state=seed * 100_003 + round_id,
                    separator=separator,
                )
                if annotators == 1
                else answer_batch_by_annotators(
                    batch["item_id"],
                    truth[["item_id", "label"]],
                    classes=classes,
                    annotators=get_annotator_noise(noise, annotators),
                    labeled_at=info.started_at,
                    random_state=seed * 100_003 + round_id,
                    voted=voted,
                    separator=separator,
                )
            )
            voted = pd.concat([voted, answers[["item_id", "annotator"]]], ignore_index=True)
            write_csv(catalog.path("incoming") / f"answers-{round_id:04d}.csv", answers)
        issued = catalog.load("issued")
    # round 0 is the fixed test split; the last round's batch is never answered
    answered = issued["round_id"].between(1, round_id - 1)
    issued = issued[answered].assign(strategy=strategy, seed=seed)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS + HEALTH_COLUMNS), issued[ISSUED_COLUMNS]


#: Thread pools of numerical libraries that a process sizes from these variables when it loads
#: them (OpenMP: scikit-learn's k-means, LightGBM; BLAS: numpy).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started inside this block get one thread per numerical library.

    Campaigns run one per process, ``--jobs`` of them on as many cores; a library that also
    starts one thread per core in each of them (k-means does) oversubscribes the machine, and
    OpenMP threads waiting for work spin: measured, two concurrent pendigits campaigns took
    36 s each, 31.7 s with these limits (28.2 s alone). A variable the user set is kept.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def single_threaded() -> Iterator[None]:
    """Inside this block, this process's numerical libraries use one thread each.

    What :func:`single_threaded_children` does for worker processes, for campaigns run in
    this process (``--jobs 1``): OpenMP (scikit-learn's k-means, LightGBM) and BLAS (numpy,
    scipy) limited through threadpoolctl. threadpoolctl reaches only libraries already
    loaded, so they are imported first.
    """
    import lightgbm  # noqa: F401  (loads its OpenMP runtime)
    import sklearn.cluster  # noqa: F401  (loads scikit-learn's OpenMP runtime and scipy's BLAS)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


CampaignJob = tuple[Any, ...]
CampaignResult = tuple[pd.DataFrame, pd.DataFrame]


def run_campaigns(
    jobs: Sequence[CampaignJob],
    *,
    processes: int,
    on_done: Callable[[CampaignJob, Any], None],
    run_job: Callable[[CampaignJob], Any] | None = None,
    dask_address: str | None = None,
) -> None:
    """Run every job, one thread per numerical library, and call ``on_done`` as each ends.

    ``run_job`` (default: one campaign of :func:`run_campaign`, returning a
    :data:`CampaignResult`) must be a module-level function, as worker processes import it.

    ``processes == 1`` runs them in this process, one after another; more starts as many
    worker processes (spawned: a forked child of a process that ran OpenMP code can hang).
    With ``dask_address`` each job is a task on that Dask scheduler's workers instead (which
    must see the jobs' data folder at the same path, and run one thread each). ``on_done``
    runs in this process, in the order the jobs finish.
    """
    run_job = run_job or _campaign_job
    if dask_address:
        executor = DaskExecutor(dask_address)
        try:
            for job, result in executor.map_unordered(run_job, jobs):
                on_done(job, result)
        finally:
            executor.close()
        return
    if processes == 1:
        with single_threaded():
            for job in jobs:
                on_done(job, run_job(job))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with (
        single_threaded_children(),
        ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool,
    ):
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in as_completed(futures):
            on_done(futures[future], future.result())


def _campaign_job(args: CampaignJob) -> CampaignResult:
    data_dir, params_json, strategy, seed, budget, noise, annotators = args
    params = load_params(json.loads(params_json))
    return run_campaign(Path(data_dir), params, strategy, seed, budget, noise, annotators)


# -- statistics and outputs ---------------------------------------------------------------------


def get_stop_point(
    curve: pd.DataFrame, reference: float | None, metric: str = "macro_f1"
) -> dict[str, float]:
    """Where one campaign's stop advice first came (:data:`HEALTH_COLUMNS`): its labels
    (``inf`` when it never came), the score (``metric``) there and the score lost against
    ``reference`` (the full-data model), and the rating then and at the end."""
    advised = (
        curve["stop_advised"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        if "stop_advised" in curve
        else np.zeros(len(curve), dtype=bool)
    )
    ratings = pd.to_numeric(
        curve["rating"] if "rating" in curve else pd.Series(np.nan, index=curve.index)
    )
    final_rating = float(ratings.iloc[-1]) if len(curve) else float("nan")
    if not advised.any():
        return {
            "labels_at_stop": float("inf"),
            "score_at_stop": float("nan"),
            "score_lost_at_stop": float("nan"),
            "rating_at_stop": float("nan"),
            "final_rating": final_rating,
        }
    at = int(np.argmax(advised))
    score = float(curve[metric].iloc[at])
    return {
        "labels_at_stop": float(curve["labels"].iloc[at]),
        "score_at_stop": score,
        "score_lost_at_stop": reference - score if reference is not None else float("nan"),
        "rating_at_stop": float(ratings.iloc[at]),
        "final_rating": final_rating,
    }


def get_campaign_table(
    curves: pd.DataFrame,
    *,
    target: float,
    start: int,
    stop: int,
    reference: float | None = None,
    metric: str = "macro_f1",
) -> pd.DataFrame:
    """One row per campaign: AULC of ``metric`` over ``[start, stop]`` labels, labels and
    annotator hours to reach ``target`` (``inf`` / NaN when never reached), the final score,
    and where the stop advice came (:func:`get_stop_point`; the score lost is against
    ``reference``)."""
    out = []
    for (strategy, seed), c in curves.groupby(["strategy", "seed"], sort=True):
        c = c.sort_values("labels")
        labels, f1 = c["labels"].to_numpy(), c[metric].to_numpy()
        to_target = get_labels_to_target(labels, f1, target)
        hours = (
            float(c.loc[c["labels"] == to_target, "seconds"].iloc[0]) / 3600
            if math.isfinite(to_target)
            else float("nan")
        )
        out.append(
            {
                "strategy": strategy,
                "seed": int(seed),
                "aulc": get_aulc(labels, f1, start=start, stop=stop),
                "labels_to_target": to_target,
                "hours_to_target": hours,
                "final_labels": int(labels[-1]),
                "final_score": float(f1[-1]),
                **get_stop_point(c, reference, metric),
            }
        )
    return pd.DataFrame(out)


def get_summary_table(campaigns: pd.DataFrame, *, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per strategy: median labels to target, the ratio of the baseline's to it, mean
    AULC, the paired AULC difference to the baseline over seeds and its p-value, hours."""
    base = campaigns[campaigns["strategy"] == baseline].set_index("seed")
    rows = []
    for strategy, c in campaigns.groupby("strategy", sort=True):
        c = c.set_index("seed")
        median_labels = float(np.median(c["labels_to_target"]))
        row: dict[str, Any] = {
            "strategy": strategy,
            "seeds": int(len(c)),
            "median_labels_to_target": median_labels,
            "reached_target": int(np.isfinite(c["labels_to_target"]).sum()),
            "mean_aulc": float(c["aulc"].mean()),
            "median_hours_to_target": float(np.nanmedian(c["hours_to_target"]))
            if np.isfinite(c["hours_to_target"]).any()
            else float("nan"),
        }
        fired = np.isfinite(c["labels_at_stop"])
        row["stop_fired"] = int(fired.sum())
        row["median_labels_at_stop"] = (
            float(np.median(c.loc[fired, "labels_at_stop"])) if fired.any() else float("nan")
        )
        lost = c.loc[fired, "score_lost_at_stop"].dropna()
        row["median_score_lost_at_stop"] = float(lost.median()) if len(lost) else float("nan")
        row["max_score_lost_at_stop"] = float(lost.max()) if len(lost) else float("nan")
        both = fired & np.isfinite(c["labels_to_target"])
        row["median_stop_over_target"] = (
            float(np.median(c.loc[both, "labels_at_stop"] / c.loc[both, "labels_to_target"]))
            if both.any()
            else float("nan")
        )
        row["mean_final_rating"] = float(c["final_rating"].mean())
        if not base.empty:
            base_median = float(np.median(base["labels_to_target"]))
            row["labels_ratio_vs_random"] = (
                base_median / median_labels if math.isfinite(median_labels) else float("nan")
            )
            row["random_reached"] = math.isfinite(base_median)
            paired = c.index.intersection(base.index)
            diff, p = get_paired_test((c.loc[paired, "aulc"] - base.loc[paired, "aulc"]).to_numpy())
            row["aulc_diff_vs_random"] = diff
            row["aulc_p_value"] = p
        rows.append(row)
    return pd.DataFrame(rows)


def plot_learning_curves(
    curves: pd.DataFrame,
    target: float,
    path: Path,
    title: str,
    *,
    metric: str = "macro_f1",
    target_label: str = "target (98% of full)",
) -> None:
    """Mean ``metric`` per strategy against labels, with a band of two standard deviations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for strategy, c in curves.groupby("strategy", sort=True):
        grid = np.unique(c["labels"])
        per_seed = [np.interp(grid, s["labels"], s[metric]) for _, s in c.groupby("seed")]
        stack = np.vstack(per_seed)
        mean, sd = stack.mean(axis=0), stack.std(axis=0)
        (line,) = ax.plot(grid, mean, label=f"{strategy} ({len(per_seed)} seeds)")
        ax.fill_between(grid, mean - 2 * sd, mean + 2 * sd, alpha=0.2)
        stops = [
            point["labels_at_stop"]
            for _, seed_curve in c.groupby("seed")
            if math.isfinite((point := get_stop_point(seed_curve, None, metric))["labels_at_stop"])
        ]
        if stops:  # where the stop advice came, median over the seeds where it came
            at = float(np.median(stops))
            ax.plot([at], [np.interp(at, grid, mean)], marker="v", color=line.get_color(), ms=9)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=target_label)
    ax.plot([], [], marker="v", linestyle="", color="grey", label="stop advice (median)")
    ax.set_xlabel("training labels")
    ax.set_ylabel(f"test {METRIC_NAMES.get(metric, metric)}")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _log_campaigns(
    out: Path, spec: SimulationSpec, curves: pd.DataFrame, campaigns: pd.DataFrame
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    name = "alloop-simulate"
    found = client.get_experiment_by_name(name)
    experiment = (
        found.experiment_id
        if found
        else client.create_experiment(
            name, artifact_location=(out / "mlartifacts").resolve().as_uri()
        )
    )
    for row in campaigns.itertuples(index=False):
        run = client.create_run(
            experiment,
            run_name=f"{spec.dataset.stem}-{row.strategy}-seed{row.seed}",
            tags={"alloop.dataset": str(spec.dataset), "alloop.strategy": row.strategy},
        )
        rid = run.info.run_id
        curve = curves[(curves["strategy"] == row.strategy) & (curves["seed"] == row.seed)]
        metric = spec.score_metric
        metrics = [
            (metric, float(value), int(labels))
            for labels, value in zip(curve["labels"], curve[metric], strict=True)
        ]
        for key in ("aulc", "labels_to_target", "hours_to_target", "final_score"):
            value = float(getattr(row, key))
            if math.isfinite(value):
                metrics.append((key, value, 0))
        log_batched(
            client,
            rid,
            params={
                "strategy": row.strategy,
                "seed": row.seed,
                "initial": spec.initial,
                "batch": spec.batch,
                "budget": spec.budget,
                "noise": spec.noise,
                "annotators": spec.annotators,
                "task": spec.task,
                "metric": spec.score_metric,
            },
            metrics=metrics,
        )
        client.set_terminated(rid, "FINISHED")


def get_target_label(spec: SimulationSpec) -> str:
    """How the target was set: absolute (``--target``) or 98% of the full-data score."""
    return "target (given)" if spec.target is not None else f"target ({TARGET_SHARE:.0%} of full)"


def get_report(spec: SimulationSpec, reference: float, target: float, summary: pd.DataFrame) -> str:
    name = METRIC_NAMES.get(spec.score_metric, spec.score_metric)
    items = "label sets" if spec.task == "multilabel" else "one class per item"
    lines = [
        f"# Simulation on {spec.dataset.name}",
        "",
        f"{items.capitalize()}; {spec.seeds} seeds; {spec.initial} random labels, then batches "
        f"of {spec.batch} up to {spec.budget}; noise {spec.noise:.0%}{_crowd(spec)}. Full-data "
        f"{name} {reference:.4f}; {get_target_label(spec)} {target:.4f}.",
        "",
        "| strategy | median labels to target | reached | ratio vs random | mean AULC | "
        "AULC - random | p | median hours to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.to_dict("records"):
        lines.append(
            f"| {r['strategy']} | {_fmt_labels(r['median_labels_to_target'])} | "
            f"{r['reached_target']}/{r['seeds']} | {_fmt(r.get('labels_ratio_vs_random'), 2)} | "
            f"{r['mean_aulc']:.4f} | {_fmt(r.get('aulc_diff_vs_random'), 4, signed=True)} | "
            f"{_fmt(r.get('aulc_p_value'), 3)} | {_fmt(r['median_hours_to_target'], 2)} |"
        )
    lines += [
        "",
        "| strategy | stop advice came | median labels at stop | labels at stop / to target "
        f"| {name} lost at stop: median | worst | final rating |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.to_dict("records"):
        lines.append(
            f"| {r['strategy']} | {r['stop_fired']}/{r['seeds']} | "
            f"{_fmt_labels(r['median_labels_at_stop'])} | "
            f"{_fmt(r['median_stop_over_target'], 2)} | "
            f"{_fmt(r['median_score_lost_at_stop'], 4)} | "
            f"{_fmt(r['max_score_lost_at_stop'], 4)} | "
            f"{_fmt(r['mean_final_rating'], 0)} |"
        )
    lines += [
        "",
        f"Labels to target: the first label count whose test {name} reaches the target "
        "(never = not within the budget). Ratio: random's median labels to target divided by the "
        f"strategy's. AULC: mean {name} over the label range, trapezoidal. p: Wilcoxon "
        "signed-rank test of the paired AULC differences over seeds. Hours: the annotation-time "
        "model (tasks/annotation_time.py) summed over the batches. Stop advice: the first round "
        f"whose stop signal advised stopping; lost: the full-data {name} minus the {name} there. "
        "Rating: the model rating (0-100) of the last round, mean over seeds.",
    ]
    return "\n".join(lines) + "\n"


def _crowd(spec: SimulationSpec) -> str:
    """The annotators' noise, when there are several (empty for one)."""
    if spec.annotators == 1:
        return ""
    rates = get_annotator_noise(spec.noise, spec.annotators).values()
    return f" on average, {spec.annotators} annotators: " + ", ".join(f"{r:.0%}" for r in rates)


def _fmt(value: Any, digits: int, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_labels(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:,.0f}"


#: What does not change a simulation's results (how its campaigns were run).
_RUN_FIELDS = ("jobs", "dask_address")


def _spec_record(spec: SimulationSpec) -> dict:
    """``spec`` as ``simulation.json`` records it (JSON types: lists, the dataset's path)."""
    return json.loads(json.dumps({**asdict(spec), "dataset": str(spec.dataset)}, default=str))


def load_simulation(spec: SimulationSpec, out: Path) -> SimulationResult | None:
    """The finished run of ``spec`` in ``out``, read back from its files, or None when ``out``
    holds none or a run of another protocol (a different set, strategies, seeds, budget,
    override...; how it was run, on how many processes or which cluster, does not count).

    Lets a benchmark of many sets go on after a crash without running the finished sets again.
    The code is not compared: read back only what the code checked out now ran.
    """
    spec = spec.resolved()
    try:
        meta = json.loads((out / "simulation.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    wanted = {**_spec_record(spec), "metric": spec.score_metric}
    if spec.target is None:
        del wanted["target"]  # meta holds the one it derived from the full-data score
    if any(meta.get(k) != v for k, v in wanted.items() if k not in _RUN_FIELDS):
        return None
    files = [out / f"{name}.csv" for name in ("curves", "campaigns", "summary", "issued")]
    if not all(f.exists() for f in files):
        return None
    curves, campaigns, summary, issued = (
        pd.read_csv(f, dtype={"item_id": str}) if f.stem == "issued" else pd.read_csv(f)
        for f in files
    )
    return SimulationResult(
        out,
        float(meta["reference_score"]),
        float(meta["target"]),
        curves,
        campaigns,
        summary,
        classes=load_dataset(spec).classes,
        issued=issued,
        files=[*files, out / "learning_curves.png", out / "simulation.md", out / "simulation.json"],
        seconds=meta.get("seconds"),
    )


def simulate(
    spec: SimulationSpec,
    out: Path,
    *,
    on_campaign: Callable[[str, int, pd.DataFrame], None] | None = None,
) -> SimulationResult:
    """Run every (strategy, seed) campaign of ``spec`` and write the results to ``out``.

    Progress goes out as each campaign finishes, not at the end: as an INFO line on this
    module's logger or, when ``on_campaign(strategy, seed, curve)`` is given, to it (the CLI
    prints a line with it; the logger then says it at DEBUG, so that a CLI showing INFO lines
    does not say it twice). Whatever ``spec.jobs`` is, each campaign's numerical libraries use
    one thread.
    """
    spec = spec.resolved()
    spec.check()
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(spec)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    write_pool_partition(
        pa.Table.from_pandas(data.items, preserve_index=False), data_dir / "items.parquet"
    )
    truth = data.truth.assign(
        split=np.where(data.truth["item_id"].isin(data.test_ids), "test", "train")
    )
    truth.to_parquet(data_dir / "truth.parquet", index=False)
    n_train_pool = int((truth["split"] == "train").sum())
    if spec.budget > n_train_pool:
        raise WorkspaceError(
            f"--budget {spec.budget} exceeds the {n_train_pool} items of the training pool"
        )
    reference_params = get_campaign_params(spec, data.classes, BASELINE, 0)
    metric = spec.score_metric
    reference = get_reference_score(data, reference_params, metric)
    target = spec.target if spec.target is not None else TARGET_SHARE * reference
    jobs = [
        (
            str(data_dir.resolve()),
            json.dumps(dump_params(get_campaign_params(spec, data.classes, strategy, seed))),
            strategy,
            seed,
            spec.budget,
            spec.noise,
            spec.annotators,
        )
        for seed in range(spec.seeds)
        for strategy in spec.strategies
    ]
    log.info(
        "%s: full-data %s %.4f; %d campaigns on %s",
        spec.dataset.name,
        METRIC_NAMES[metric],
        reference,
        len(jobs),
        f"the Dask cluster at {spec.dask_address}"
        if spec.dask_address
        else f"{spec.jobs} process(es)",
    )
    results: list[CampaignResult] = []
    started = time.perf_counter()

    def done(job: CampaignJob, result: CampaignResult) -> None:
        curve = result[0]
        results.append(result)
        last = (
            f"{curve['labels'].iloc[-1]} labels, {METRIC_NAMES[metric]} "
            f"{curve[metric].iloc[-1]:.4f}"
            if len(curve)
            else "no model"
        )
        log.log(
            logging.INFO if on_campaign is None else logging.DEBUG,
            "campaign %d/%d done: %s seed %s, %s, %.0f s elapsed",
            len(results),
            len(jobs),
            job[2],
            job[3],
            last,
            time.perf_counter() - started,
        )
        if on_campaign is not None:
            on_campaign(job[2], job[3], curve)

    run_campaigns(jobs, processes=spec.jobs, on_done=done, dask_address=spec.dask_address)
    curves = (
        pd.concat([curve for curve, _ in results], ignore_index=True)
        .sort_values(["strategy", "seed", "labels"])
        .reset_index(drop=True)
    )
    issued = (
        pd.concat([issued for _, issued in results], ignore_index=True)
        .sort_values(["strategy", "seed", "round_id"], kind="stable")
        .reset_index(drop=True)
    )
    campaigns = get_campaign_table(
        curves,
        target=target,
        start=spec.initial,
        stop=spec.budget,
        reference=reference,
        metric=metric,
    )
    summary = get_summary_table(campaigns)
    files = [out / "curves.csv", out / "campaigns.csv", out / "summary.csv", out / "issued.csv"]
    curves.to_csv(files[0], index=False)
    campaigns.to_csv(files[1], index=False)
    summary.to_csv(files[2], index=False)
    issued.to_csv(files[3], index=False)
    png = out / "learning_curves.png"
    plot_learning_curves(
        curves,
        target,
        png,
        f"{spec.dataset.stem}: test {METRIC_NAMES[metric]} by labels",
        metric=metric,
        target_label=get_target_label(spec),
    )
    report = out / "simulation.md"
    report.write_text(get_report(spec, reference, target, summary))
    meta = {
        **_spec_record(spec),
        "metric": metric,
        "reference_score": reference,
        "target": target,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "simulation.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    _log_campaigns(out, spec, curves, campaigns)
    files += [png, report, out / "simulation.json"]
    return SimulationResult(
        out,
        reference,
        target,
        curves,
        campaigns,
        summary,
        classes=data.classes,
        issued=issued,
        files=files,
        seconds=meta["seconds"],
    )
