"""Benchmark of alloop at scale (issue 20): rounds on pools of millions of synthetic items, the
margin query against raw prediction and two libraries, and scoring on a Dask cluster.

What it measures
----------------
**Pools built in bounded memory.** For each pool size (default 1,000,000 and 10,000,000 items)
a synthetic pool is generated partition by partition (``--partition-rows``, default 500,000),
never whole: ``--classes`` Gaussian classes (default 5) whose centres differ in a few
informative dimensions (``--informative``), standard normal noise in the others, ``--features``
float32 columns ``f00``, ``f01``, ...; ``item_id`` is the global row number (a string in the
workspace, as ``flows.workspace.prepare_pool`` makes every id), each partition seeded by
``(--seed, its first row)``. The workspace is created by ``init_workspace`` with the first
partition and its labels (it writes ``data/pool/items-0000.parquet`` and the truth table of the
simulated annotator); the other partitions are written straight to ``data/pool/items-0001.parquet``
... in items-0000's schema (pyarrow, row groups of 65,536 rows) and their labels streamed into
the truth table, then versioned once as ``alloop pool add`` does (``dvc add``, ``git commit``,
``dvc push``). Reported: generation (numpy) and writing (parquet) time, ``init_workspace``,
each versioning command, the process's peak RSS meanwhile, the pool's size on disk.

**Rounds.** ``--rounds`` rounds of ``flows.round.al_round`` in this process, measured by
``bench/round.py``'s instrumentation (imported, not copied): round 1 is the seed batch (no
model), its batch is answered by ``flows.demo.annotate_outbox`` (not timed), round 2 has a
model, and so on. Per round: the wall clock, each stage's wall and CPU time and peak RSS, and
the time outside the stages, of which versioning (``versioning.record_commit``: DVC commit and
push, git commit and tag). This process holds no pool data during the rounds (the build's
memory is given back first), so the RSS before each round (the baseline: Prefect, alloop, the
libraries, and what earlier rounds left in the heap) is reported, and the score stage's peak
minus it: what scoring needs, plus what the round's earlier stages left in the heap (the
baseline is read before the round, not before the stage). So after the rounds the last round's
score stage runs again alone, as ``dvc repro`` runs it (``python -m flows.stage score``, a new
process): its wall time and peak RSS are the scoring stage's own, compared across pool sizes.

**Dask.** With ``--dask-workers N`` (N > 0) a ``distributed.LocalCluster`` of N single-threaded
worker processes is started first (its start reported apart, not in any round) and the
workspaces get ``score.executor=dask`` and ``score.dask_address=<its scheduler>``. Each worker's
peak RSS (``VmHWM``, reset before each pool's rounds) is reported per pool. One run measures one
N: the issue's comparisons (local against Dask, two workers against one) take one run each.


**The margin query.** One LightGBM model (``tasks.model.fit_booster`` with alloop's default
``TrainParams``, on ``--query-train-rows`` labeled rows of the same synthetic data) is fitted
once; then, on the same ``--query-rows`` rows held in memory (float32), one after the other in
this process: (a) one raw ``Booster.predict`` of all rows; (b) alloop's query:
``tasks.score.get_pool_scores`` with strategy ``margin`` over in-memory chunks of the
workspaces' ``score.chunk_size`` rows (50,000), then the top ``--query-top`` utilities as select's
active slice picks them; (c) modAL's ``margin_sampling`` and (d) scikit-activeml's
``UncertaintySampling(method="margin_sampling")`` (``fit_clf=False``, the batch of
``--query-top``), both on a scikit-learn face of the same fitted booster. The arms run
``--query-repeats`` times in turn; reported: each arm's fastest wall time and every repeat's,
its peak extra memory (freed memory given back to the system first, ``VmHWM`` reset, minus the
RSS before it), and how its picks compare with the smallest margins of the raw prediction.
modAL is not a dependency of alloop: install it outside the project's environment (``pip
install --target DIR modAL-python==0.4.2.1 --no-deps``, DIR on ``PYTHONPATH``); its arm is
reported as skipped when it cannot be imported.

Goals (issue 20): 1,000,000 items x 50 features: a round under 60 s on 2 cores, peak RSS under
2 GB; 10,000,000: under 10 minutes, under 3 GB, the score stage's peak the same as at 1,000,000
(within 10%); versioning under 10% of a round after the first; the margin query at most 1.2x
raw prediction and faster than modAL's and scikit-activeml's; each Dask worker's peak under
1 GB.

Usage: ``PYTHONPATH=. python bench/scale.py [--sizes 1000000,10000000] [--rounds 3]
[--partition-rows 500000] [--features 50] [--classes 5] [--dask-workers N] [--query-rows
1000000 | --no-query] [--query-repeats 1] [--set section.key=value ...] [--out DIR] [--keep]``.
The Markdown result is printed and written to ``--results`` (default
``bench/results-scale.md``). Workspaces go to ``--out`` (default: a temporary folder, deleted
at the end unless ``--keep``); nothing is written inside the repository except the results.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/scale.py` puts bench/, not the checkout, first
    sys.path.insert(0, str(REPO))

import bench.round as round_bench  # noqa: E402
from bench.round import MON, STAGES, PoolRun, RoundRecord  # noqa: E402

RESULTS = REPO / "bench" / "results-scale.md"
PACKAGES = (
    *round_bench.PACKAGES,
    "numpy",
    "pyarrow",
    "scikit-learn",
    "scikit-activeml",
    "modAL-python",
    "dask",
    "distributed",
)
#: issue 20's goals for a full round: pool size -> (seconds, peak RSS in GiB)
ROUND_GOALS = {1_000_000: (60.0, 2.0), 10_000_000: (600.0, 3.0)}
#: the score stage's peak (minus the baseline) at 10M within this share of 1M's
SCORE_PEAK_TOLERANCE = 0.10
VERSIONING_SHARE = 0.10
QUERY_RAW_RATIO = 1.2
WORKER_PEAK_GIB = 1.0
ROW_GROUP_ROWS = 65_536
GIB_KB = 2**20


# -- the synthetic pool -------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticPool:
    """Gaussian classes that differ in the first ``informative`` dimensions; noise elsewhere.

    Rows are generated block by block, each block seeded by ``(seed, start)``, so that a
    partition never needs the others; row ``i`` of the pool has ``item_id`` ``i``.
    """

    n_features: int = 50
    n_classes: int = 5
    informative: int = 5
    #: standard deviation of the class centres, in units of the noise's
    separation: float = 1.5
    seed: int = 0

    @property
    def classes(self) -> list[str]:
        return [str(k) for k in range(self.n_classes)]

    @property
    def feature_names(self) -> list[str]:
        width = max(2, len(str(self.n_features - 1)))
        return [f"f{j:0{width}d}" for j in range(self.n_features)]

    def get_block(self, start: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and class codes of the rows ``start .. start + n_rows - 1``.

        Returns
        -------
        (np.ndarray of float32, shape (n_rows, n_features), np.ndarray of int, shape (n_rows,))
            Codes in ``[0, n_classes)``.
        """
        informative = min(self.informative, self.n_features)
        centres = np.random.default_rng([self.seed, 2**32 - 1]).standard_normal(
            (self.n_classes, informative)
        )
        rng = np.random.default_rng([self.seed, start])
        codes = rng.integers(0, self.n_classes, n_rows)
        features = rng.standard_normal((n_rows, self.n_features), dtype=np.float32)
        features[:, :informative] += (centres * self.separation).astype(np.float32)[codes]
        return features, codes

    def get_rows(self, start: int, n_rows: int) -> pd.DataFrame:
        """The rows as a raw pool: ``item_id`` (int), the features, ``label`` (class name)."""
        features, codes = self.get_block(start, n_rows)
        frame = pd.DataFrame(features, columns=self.feature_names, copy=False)
        frame.insert(0, "item_id", np.arange(start, start + n_rows))
        frame["label"] = np.asarray(self.classes)[codes]
        return frame


@dataclass
class PoolBuild:
    """How one pool was built: seconds per step, peak RSS, size on disk."""

    size: int
    partitions: int = 0
    generate_s: float = 0.0
    write_s: float = 0.0
    init_s: float = 0.0
    dvc_add_s: float = 0.0
    git_s: float = 0.0
    push_s: float = 0.0
    baseline_kb: int = 0
    peak_kb: int = 0
    disk_bytes: int = 0
    error: str | None = None

    @property
    def versioning_s(self) -> float:
        return self.dvc_add_s + self.git_s + self.push_s


def _partition_table(features: np.ndarray, ids: np.ndarray, schema: Any) -> Any:
    """Pool rows as an Arrow table of ``schema`` (items-0000's): ``item_id``, then features."""
    import pyarrow as pa

    columns = [pa.array(ids).cast(schema.field(0).type)]
    columns += [
        pa.array(features[:, j]).cast(schema.field(j + 1).type) for j in range(features.shape[1])
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def build_workspace(
    root: Path,
    synthetic: SyntheticPool,
    *,
    size: int,
    partition_rows: int,
    overrides: tuple[str, ...],
) -> tuple[Any, PoolBuild]:
    """Create the workspace of a ``size``-item pool at ``root``, one partition in memory at a
    time. Returns its catalog and the measurements."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows import versioning
    from flows.workspace import init_workspace

    build = PoolBuild(size=size, partitions=-(-size // partition_rows))
    build.baseline_kb = round_bench._status_kb("VmRSS")
    with MON.phase(f"build {size}"):
        t0 = time.perf_counter()
        first = synthetic.get_rows(0, min(size, partition_rows))
        build.generate_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        catalog = init_workspace(
            root,
            pool=first,
            id_column="item_id",
            classes=synthetic.classes,
            label_column="label",
            overrides=overrides,
        )
        build.init_s = time.perf_counter() - t0
        del first
        pool_dir = catalog.path("pool")
        pool_schema = pq.read_schema(pool_dir / "items-0000.parquet")
        truth_path = catalog.path("truth")
        truth_schema = pq.read_schema(truth_path)
        names = np.asarray(synthetic.classes)
        staged = truth_path.with_name(f".{truth_path.name}.partial")
        with pq.ParquetWriter(staged, truth_schema) as truth:
            truth.write_table(pq.read_table(truth_path))  # the first partition's: small
            for number in range(1, build.partitions):
                start = number * partition_rows
                n_rows = min(partition_rows, size - start)
                t0 = time.perf_counter()
                features, codes = synthetic.get_block(start, n_rows)
                ids = np.arange(start, start + n_rows)
                build.generate_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                target = pool_dir / f"items-{number:04d}.parquet"
                table = _partition_table(features, ids, pool_schema)
                pq.write_table(table, target, row_group_size=ROW_GROUP_ROWS)
                del table, features
                labels = pa.Table.from_arrays(
                    [
                        pa.array(ids).cast(truth_schema.field(0).type),
                        pa.array(names[codes]).cast(truth_schema.field(1).type),
                    ],
                    schema=truth_schema,
                )
                truth.write_table(labels)
                build.write_s += time.perf_counter() - t0
        os.replace(staged, truth_path)
        if build.partitions > 1:  # versioned once, as `alloop pool add` versions a partition
            t0 = time.perf_counter()
            versioning.dvc(root, "add", "--quiet", "data/pool", "data/simulation")
            build.dvc_add_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            versioning.git(root, "add", "--", "data/pool.dvc", "data/simulation.dvc")
            versioning.git(
                root,
                "commit",
                "--quiet",
                "-m",
                f"pool add: {size - partition_rows} synthetic items in {build.partitions - 1} "
                "partitions (bench/scale.py)",
            )
            build.git_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            versioning.dvc(root, "push", "--quiet")
            build.push_s = time.perf_counter() - t0
    build.peak_kb = MON.outside_peak_kb[f"build {size}"]
    build.disk_bytes = sum(p.stat().st_size for p in pool_dir.glob("*.parquet"))
    release_memory()  # the rounds' baseline holds no pool data
    return catalog, build


# -- Dask ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def dask_cluster(n_workers: int, one_time: dict[str, float]) -> Iterator[Any]:
    """A client of a new LocalCluster of ``n_workers`` single-threaded processes (None when
    ``n_workers`` is 0); its start is timed into ``one_time``."""
    if n_workers == 0:
        yield None
        return
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    one_time[f"Dask LocalCluster start ({n_workers} workers)"] = time.perf_counter() - t0
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _worker_peak_kb(reset: bool) -> int:
    """This worker's peak RSS (``VmHWM``) in KiB; ``reset``: the high-water mark restarts."""
    from bench.round import _reset_hwm, _status_kb

    peak = _status_kb("VmHWM")
    if reset:
        _reset_hwm()
    return peak


@dataclass
class DaskTaskTime:
    """Where the scoring tasks' time went on the workers, from the scheduler's task stream:
    seconds per action (compute, transfer, deserialize, ...) over every ``score_piece`` task
    of the rounds, and compute seconds per worker."""

    tasks: int = 0
    action_s: dict[str, float] = field(default_factory=dict)
    compute_s: dict[str, float] = field(default_factory=dict)


def start_task_stream(client: Any) -> float:
    """Make the scheduler record its task stream (it does from the first request on);
    returns the time from which to read it."""
    client.get_task_stream(count=1)
    return time.time()


def dask_task_time(client: Any, since: float) -> DaskTaskTime:
    """The :class:`DaskTaskTime` of the scoring tasks recorded since ``since``."""
    spent = DaskTaskTime()
    for task in client.get_task_stream(start=since):
        if not str(task["key"]).startswith("score_piece"):
            continue
        spent.tasks += 1
        for step in task["startstops"]:
            seconds = step["stop"] - step["start"]
            spent.action_s[step["action"]] = spent.action_s.get(step["action"], 0.0) + seconds
            if step["action"] == "compute":
                worker = task["worker"]
                spent.compute_s[worker] = spent.compute_s.get(worker, 0.0) + seconds
    return spent


# -- the margin query ---------------------------------------------------------------------------
class FittedBooster(ClassifierMixin, BaseEstimator):
    """scikit-learn's face of an already fitted LightGBM booster, for modAL and
    scikit-activeml: ``fit`` only records the classes; ``predict_proba`` is alloop's."""

    def __init__(self, booster: Any = None, n_classes: int = 2) -> None:
        self.booster = booster
        self.n_classes = n_classes

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FittedBooster:  # noqa: N803
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        from tasks.model import predict_proba

        return predict_proba(self.booster, X, self.n_classes)

    def __deepcopy__(self, memo: dict) -> FittedBooster:
        # scikit-activeml copies its estimator: the booster is only read, so copies share it
        # (a copied booster would come back through its text form without its num_threads)
        twin = copy.copy(self)
        memo[id(self)] = twin
        return twin


@dataclass
class QueryArm:
    name: str
    #: wall seconds of each repeat
    times: list[float] = field(default_factory=list)
    #: the largest peak extra memory over the repeats (KiB)
    extra_kb: int | None = None
    picked: np.ndarray | None = None
    agreement: str = ""
    skipped: str | None = None

    @property
    def seconds(self) -> float | None:
        """The fastest repeat: the one least slowed by the other work of a shared machine."""
        return min(self.times) if self.times else None

    def measure(self, run: Callable[[], Any]) -> Any:
        result, seconds, extra_kb = _measured(self.name, run)
        self.times.append(seconds)
        self.extra_kb = max(self.extra_kb or 0, extra_kb)
        return result


@dataclass
class QueryComparison:
    rows: int
    train_rows: int
    top: int
    chunk_size: int
    repeats: int = 1
    fit_s: float = 0.0
    arms: list[QueryArm] = field(default_factory=list)

    def arm(self, name: str) -> QueryArm:
        return next(a for a in self.arms if a.name == name)


def get_top_utilities(utilities: np.ndarray, top: int, random_state: int) -> np.ndarray:
    """The positions of the ``top`` highest utilities, as select's active slice picks them:
    highest first, equal utilities in the order of a seeded draw."""
    rng = np.random.default_rng(random_state)
    return np.lexsort((rng.random(utilities.size), -utilities))[:top]


def describe_agreement(picked: np.ndarray, gaps: np.ndarray, top: int) -> str:
    """How ``picked`` compares with the ``top`` smallest margins ``gaps`` (top-1 minus top-2
    probability of each row): the same items, or how many differ and whether by a tie."""
    reference = np.argsort(gaps, kind="stable")[:top]
    missing = np.setdiff1d(reference, picked)
    if missing.size == 0 and len(set(picked.tolist())) == top:
        return f"same {top} items"
    extra = np.setdiff1d(picked, reference)
    boundary = gaps[reference].max()
    tied = np.all(gaps[extra] == boundary) and np.all(gaps[missing] == boundary)
    why = "ties at the boundary margin" if tied else "not ties"
    return f"{missing.size} of {top} differ ({why})"


def release_memory() -> None:
    """Give freed memory back to the system (Python's garbage, Arrow's pool, glibc's heap), so
    that what a step allocates next shows in the RSS instead of reusing resident free pages."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measured(name: str, run: Callable[[], Any]) -> tuple[Any, float, int]:
    """``run()``, its wall seconds, and the peak RSS it added (KiB) over the RSS before it."""
    release_memory()
    before = round_bench._status_kb("VmRSS")
    with MON.phase(f"query {name}"):
        t0 = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - t0
    return result, seconds, max(0, MON.outside_peak_kb[f"query {name}"] - before)


def run_query_comparison(
    synthetic: SyntheticPool,
    *,
    rows: int,
    train_rows: int,
    top: int,
    chunk_size: int,
    random_state: int,
    repeats: int = 1,
) -> QueryComparison:
    """One fitted booster; raw prediction, alloop's, modAL's and scikit-activeml's margin
    query on the same ``rows`` rows, one after the other, ``repeats`` times in turn (see the
    module docstring)."""
    from tasks.model import encode_labels, fit_booster
    from tasks.params import ScoreParams, TrainParams
    from tasks.score import get_pool_scores

    out = QueryComparison(
        rows=rows, train_rows=train_rows, top=top, chunk_size=chunk_size, repeats=repeats
    )
    classes = tuple(synthetic.classes)
    k = len(classes)
    train = synthetic.get_rows(rows, train_rows)  # the rows after the queried ones
    train_x = train[synthetic.feature_names].to_numpy()
    codes = encode_labels(train["label"], classes)
    t0 = time.perf_counter()
    booster = fit_booster(
        train[synthetic.feature_names],
        codes,
        params=TrainParams(),
        n_classes=k,
        random_state=random_state,
    )
    out.fit_s = time.perf_counter() - t0
    features, _ = synthetic.get_block(0, rows)
    frame = pd.DataFrame(features, columns=synthetic.feature_names, copy=False)
    frame.insert(0, "item_id", pd.array(np.arange(rows).astype(str), dtype="string"))
    runs: list[tuple[QueryArm, Callable[[], Any]]] = []

    runs.append((QueryArm("raw Booster.predict"), lambda: booster.predict(features)))

    def alloop() -> np.ndarray:
        params = ScoreParams(strategy="margin", chunk_size=chunk_size)
        chunks = (frame.iloc[i : i + chunk_size] for i in range(0, rows, chunk_size))
        scores, _ = get_pool_scores(
            chunks, booster, classes=classes, params=params, random_state=random_state
        )
        return get_top_utilities(scores["utility"].to_numpy(), top, random_state)

    runs.append((QueryArm("alloop: get_pool_scores (margin), top utilities"), alloop))

    arm = QueryArm("modAL 0.4.2.1: margin_sampling")
    try:
        from modAL.uncertainty import margin_sampling
    except ImportError as exc:
        arm.skipped = f"modAL is not importable ({exc}); see the module docstring"
        runs.append((arm, lambda: None))
    else:
        wrapper = FittedBooster(booster, k)
        runs.append((arm, lambda: margin_sampling(wrapper, features, n_instances=top)[0]))

    arm = QueryArm("scikit-activeml: UncertaintySampling(margin_sampling)")
    try:
        from skactiveml.classifier import SklearnClassifier
        from skactiveml.pool import UncertaintySampling
        from skactiveml.utils import MISSING_LABEL
    except ImportError as exc:
        arm.skipped = f"scikit-activeml is not importable ({exc})"
        runs.append((arm, lambda: None))
    else:
        clf = SklearnClassifier(
            FittedBooster(booster, k),
            classes=np.arange(k),
            missing_label=MISSING_LABEL,
            random_state=random_state,
        ).fit(train_x, codes)
        unlabeled = np.full(rows, MISSING_LABEL)
        strategy = UncertaintySampling(method="margin_sampling", random_state=random_state)
        runs.append(
            (
                arm,
                lambda: strategy.query(features, unlabeled, clf=clf, fit_clf=False, batch_size=top),
            )
        )

    gaps = None
    for _ in range(repeats):
        for arm, run in runs:
            if arm.skipped is not None:
                continue
            result = arm.measure(run)
            if arm is runs[0][0]:  # the raw prediction: the margins every arm is checked by
                top2 = np.partition(np.asarray(result).reshape(rows, k), -2, axis=1)[:, -2:]
                gaps = top2[:, 1] - top2[:, 0]
                arm.picked = np.argsort(gaps, kind="stable")[:top]
            else:
                arm.picked = np.asarray(result)
            del result
    out.arms = [arm for arm, _ in runs]
    for arm in out.arms:
        if arm.picked is not None and gaps is not None:
            arm.agreement = describe_agreement(arm.picked, gaps, top)
    return out


# -- the run ------------------------------------------------------------------------------------
@dataclass
class ScaleRun:
    build: PoolBuild
    pool: PoolRun
    worker_peak_kb: dict[str, int] = field(default_factory=dict)
    dask_time: DaskTaskTime | None = None
    #: the last round's score stage again, alone in a fresh process: wall s and peak RSS (KiB)
    score_alone: tuple[float, int] | None = None


#: Runs ``argv[1:]`` as its child and prints the child's wall seconds and ``ru_maxrss``. The
#: stage must not be this benchmark's own child: Linux counts in a process's ``ru_maxrss``
#: the memory of the process it was forked from, up to its ``exec`` (``exec_mmap`` keeps the
#: old address space's high-water mark), so a child of this process of a gigabyte reports at
#: least a gigabyte. The earlier figures of "score stage alone" (791 and 808 MiB) were this
#: process's size; through this launcher the same stage measured 399 and 412 MiB.
LAUNCHER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
if status:
    sys.exit(child.stderr.read()[-2000:].decode(errors="replace"))
print(time.perf_counter() - t0, usage.ru_maxrss)
"""


def run_score_alone(root: Path) -> tuple[float, int]:
    """The score stage of the workspace's last round, as ``dvc repro`` runs it (``python -m
    flows.stage score``), in a new process: its wall time and peak RSS (its ``ru_maxrss``,
    through :data:`LAUNCHER`). The stage rewrites the same ``scores.parquet`` (scoring is
    deterministic). Unlike the rounds' figures, nothing an earlier stage left in the heap is
    in it: this is the scoring stage's own peak, comparable across pool sizes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stage = [sys.executable, "-m", "flows.stage", "score", "--workspace", str(root)]
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *stage],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m flows.stage score failed: {done.stderr[-2000:]!r}")
    seconds, peak_kb = done.stdout.split()
    return float(seconds), int(peak_kb)


def check_overrides(overrides: tuple[str, ...], classes: list[str]) -> Any:
    """The workspaces' params; refuses, before anything is built, overrides that
    ``init_workspace`` would refuse."""
    import yaml

    from tasks.params import ParamsError, load_params

    # init_workspace's template (flows.workspace.TEMPLATE_ROOT: this checkout), read without
    # importing flows: Prefect must not be imported before its settings are
    template = yaml.safe_load((REPO / "params.yaml").read_text())
    template["project"] = {**template.get("project", {}), "classes": classes}
    try:
        return load_params(template, overrides)
    except ParamsError as exc:
        raise SystemExit(f"the overrides {list(overrides)} are refused: {exc}") from exc


def run_size(
    size: int,
    root: Path,
    synthetic: SyntheticPool,
    overrides: tuple[str, ...],
    client: Any,
    args: argparse.Namespace,
) -> ScaleRun:
    try:
        catalog, build = build_workspace(
            root,
            synthetic,
            size=size,
            partition_rows=args.partition_rows,
            overrides=overrides,
        )
    except Exception as exc:  # report the sizes that worked, and this failure
        build = PoolBuild(size=size, error=f"building the pool: {type(exc).__name__}: {exc}")
        print(f"[{size:,}] {build.error}", file=sys.stderr)
        return ScaleRun(build=build, pool=PoolRun(size=size, root=root, error=build.error))
    print(
        f"[{size:,}] pool built: generate {build.generate_s:.1f} s, write {build.write_s:.1f} s, "
        f"init {build.init_s:.1f} s, versioning {build.versioning_s:.1f} s",
        file=sys.stderr,
    )
    run = ScaleRun(build=build, pool=PoolRun(size=size, root=root, init_s=build.init_s))
    if client is not None:
        client.run(_worker_peak_kb, True)
        since = start_task_stream(client)
    round_bench.run_rounds(run.pool, catalog, args)
    if client is not None:
        run.worker_peak_kb = client.run(_worker_peak_kb, False)
        run.dask_time = dask_task_time(client, since)
    if run.pool.rounds and not run.pool.error:
        run.score_alone = run_score_alone(root)
        print(
            f"[{size:,}] score stage alone: {run.score_alone[0]:.1f} s, peak RSS "
            f"{_mib(run.score_alone[1])} MiB",
            file=sys.stderr,
        )
    return run


# -- report -------------------------------------------------------------------------------------
def _mib(kb: int | None) -> str:
    return round_bench._mib(kb)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def round_peak_kb(record: RoundRecord) -> int:
    return max(record.peak_kb.values(), default=0)


def score_extra_kb(record: RoundRecord) -> int:
    return max(0, record.peak_kb.get("score", 0) - record.baseline_kb)


def versioning_share(record: RoundRecord) -> float:
    return record.outside()["versioning"] / record.wall if record.wall else float("nan")


def goal_lines(runs: list[ScaleRun], query: QueryComparison | None, args: Any) -> list[str]:
    lines = ["| goal | target | measured | met |", "|---|---|---|---|"]
    done = {run.pool.size: run.pool for run in runs if run.pool.rounds}
    for size, pool in done.items():
        last = pool.rounds[-1]
        seconds, gib = ROUND_GOALS.get(size, (None, None))
        where = f"{size:,} items, round {last.round_id}"
        lines.append(
            f"| full round, {where} | "
            + (f"< {seconds:.0f} s" if seconds else "none at this size")
            + f" | {last.wall:.2f} s | {_met(last.wall < seconds if seconds else None)} |"
        )
        lines.append(
            f"| peak RSS of the round, {where} | "
            + (f"< {gib:.0f} GiB" if gib else "none at this size")
            + f" | {_mib(round_peak_kb(last))} MiB | "
            + f"{_met(round_peak_kb(last) < gib * GIB_KB if gib else None)} |"
        )
        later = pool.rounds[1:]
        if later:
            worst = max(later, key=versioning_share)
            lines.append(
                f"| versioning share of a round after the first, {size:,} items (worst: "
                f"round {worst.round_id}) | < {VERSIONING_SHARE:.0%} (goal at 10,000,000) | "
                f"{versioning_share(worst):.1%} ({worst.outside()['versioning']:.2f} s) | "
                f"{_met(versioning_share(worst) < VERSIONING_SHARE)} |"
            )
    for run in runs:
        if run.score_alone is not None:
            seconds, peak = run.score_alone
            lines.append(
                f"| score stage alone in a fresh process (`python -m flows.stage score`), "
                f"{run.pool.size:,} items | (measured) | {seconds:.1f} s, peak RSS "
                f"{_mib(peak)} MiB | n/a |"
            )
    alone = {run.pool.size: run.score_alone for run in runs if run.score_alone is not None}
    if 1_000_000 in alone and 10_000_000 in alone:
        small, large = alone[1_000_000][1], alone[10_000_000][1]
        ratio = large / small
        lines.append(
            "| score stage's peak (alone), 10,000,000 against 1,000,000 | within "
            f"{SCORE_PEAK_TOLERANCE:.0%} | {_mib(large)} vs {_mib(small)} MiB ({ratio:.2f}x) | "
            f"{_met(abs(ratio - 1) <= SCORE_PEAK_TOLERANCE)} |"
        )
    else:
        lines.append(
            "| score stage's peak, 10,000,000 against 1,000,000 | within 10% | not run "
            "(needs both sizes) | n/a |"
        )
    if query is not None:
        raw = query.arms[0]
        ours = query.arm("alloop: get_pool_scores (margin), top utilities")
        ratio = ours.seconds / raw.seconds
        rows = f"{query.rows:,} rows" + ("" if query.rows == 1_000_000 else " (goal: 1,000,000)")
        lines.append(
            f"| margin query against raw predict, {rows} | <= {QUERY_RAW_RATIO}x | "
            f"{ratio:.2f}x ({ours.seconds:.2f} s vs {raw.seconds:.2f} s) | "
            f"{_met(ratio <= QUERY_RAW_RATIO)} |"
        )
        for other in query.arms[2:]:
            measured = (
                f"skipped: {other.skipped}"
                if other.seconds is None
                else f"{ours.seconds:.2f} s vs {other.seconds:.2f} s"
            )
            met = None if other.seconds is None else ours.seconds < other.seconds
            lines.append(
                f"| margin query faster than {other.name.split(':')[0]} | faster | {measured} | "
                f"{_met(met)} |"
            )
    workers = [(run.pool.size, run.worker_peak_kb) for run in runs if run.worker_peak_kb]
    for size, peaks in workers:
        worst = max(peaks.values())
        met = _met(worst < WORKER_PEAK_GIB * GIB_KB)
        lines.append(
            f"| each Dask worker's peak RSS, {size:,} items | < {WORKER_PEAK_GIB:.0f} GiB | "
            f"{_mib(worst)} MiB (worst of {len(peaks)}) | {met} |"
        )
    lines.append(
        "| Dask within 1.5x of local scoring; 2 workers >= 1.6x the rows/s of 1 | | one run "
        f"measures one setting (this one: --dask-workers {args.dask_workers}); compare the "
        "score stage's rows/s of the runs | n/a |"
    )
    return lines


def rounds_lines(runs: list[ScaleRun]) -> list[str]:
    lines = [
        "| pool | round | round s | stages s | score s | score rows/s | versioning s (share) | "
        "RSS before MiB | peak RSS MiB | score peak - before MiB | labeled | batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run.pool.rounds:
            score = r.times["score"]
            lines.append(
                f"| {run.pool.size:,} | {r.round_id} | {r.wall:.2f} | "
                f"{sum(r.times[st] for st in STAGES):.2f} | {score:.2f} | "
                f"{run.pool.size / score:,.0f} | {r.outside()['versioning']:.2f} "
                f"({versioning_share(r):.1%}) | {_mib(r.baseline_kb)} | "
                f"{_mib(round_peak_kb(r))} | {_mib(score_extra_kb(r))} | "
                f"{r.summary['labeled']} | {r.summary['batch']} |"
            )
    return lines


def build_lines(runs: list[ScaleRun]) -> list[str]:
    lines = [
        "| pool | partitions | generate s | write s | init_workspace s | dvc add s | git s | "
        "dvc push s | RSS before MiB | peak RSS MiB | pool on disk MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        b = run.build
        lines.append(
            f"| {b.size:,} | {b.partitions} | {b.generate_s:.1f} | {b.write_s:.1f} | "
            f"{b.init_s:.1f} | {b.dvc_add_s:.1f} | {b.git_s:.1f} | {b.push_s:.1f} | "
            f"{_mib(b.baseline_kb)} | {_mib(b.peak_kb)} | {b.disk_bytes / 2**20:.0f} |"
        )
    return lines


def query_lines(query: QueryComparison) -> list[str]:
    raw = query.arms[0]
    lines = [
        f"One booster (alloop's TrainParams: {query.train_rows:,} labeled rows, fitted in "
        f"{query.fit_s:.2f} s), then on the same {query.rows:,} rows in memory, one after the "
        f"other, {query.repeats} time(s) in turn (s: the fastest; all: every repeat); alloop's "
        f"chunks: {query.chunk_size:,} rows; picks: the top {query.top}, compared with the "
        "smallest margins of the raw prediction. Peak extra: VmHWM during the arm minus the "
        "RSS before it (freed memory given back first), the largest over the repeats.",
        "",
        "| arm | s | x raw predict | all s | peak extra MiB | picks |",
        "|---|---|---|---|---|---|",
    ]
    for arm in query.arms:
        if arm.seconds is None:
            lines.append(f"| {arm.name} | skipped: {arm.skipped} | | | | |")
            continue
        lines.append(
            f"| {arm.name} | {arm.seconds:.2f} | {arm.seconds / raw.seconds:.2f} | "
            + ", ".join(f"{t:.2f}" for t in arm.times)
            + f" | {_mib(arm.extra_kb) if arm.extra_kb else '0'} | {arm.agreement} |"
        )
    return lines


def render(
    runs: list[ScaleRun],
    query: QueryComparison | None,
    args: argparse.Namespace,
    one_time: dict[str, float],
    meta: dict[str, Any],
) -> str:
    m = meta["machine"]
    synthetic = meta["synthetic"]
    lines = [
        "# Benchmark: alloop at scale (bench/scale.py, issue 20)",
        "",
        f"- date: {meta['date']}; machine: nproc {m['nproc']}, {m['cpu']}, {m['mem']} RAM, "
        f"Linux {m['kernel']}, Python {m['python']}; load average at start "
        f"{meta['load_start']}, at end {meta['load_end']} (shared machine)",
        f"- command: `{meta['command']}`",
        f"- git commit of {REPO}: `{meta['commit']}`{meta['dirty']}",
        f"- packages: {meta['versions']}",
        f"- pool: synthetic, {synthetic.n_features} float32 features ({synthetic.informative} "
        f"informative), {synthetic.n_classes} Gaussian classes (centres' sd "
        f"{synthetic.separation}), seed {synthetic.seed}; partitions of "
        f"{args.partition_rows:,} rows (row groups of "
        f"{ROW_GROUP_ROWS:,} rows)",
        "- params: product defaults (params.yaml)"
        + (f" with {meta['overrides']}" if meta["overrides"] else "")
        + f"; {args.rounds} rounds per pool; simulated annotator noise {args.noise}; "
        "al_round(push=True) in this process, Prefect heartbeat off",
        "- one-time costs, not in any round: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in one_time.items()),
        "- peak RSS = this process (VmHWM reset per phase + VmRSS sampled every 10 ms, "
        f"{MON.samples:,} samples), not subprocesses (git, DVC, Prefect's API) nor Dask workers",
        "",
        "## Goals",
        "",
        *goal_lines(runs, query, args),
        "",
        "## Building the pools",
        "",
        *build_lines(runs),
        "",
        "## Rounds",
        "",
        *rounds_lines(runs),
        "",
    ]
    for run in runs:
        if run.worker_peak_kb:
            lines += [
                f"Dask workers' peak RSS, {run.pool.size:,} items: "
                + ", ".join(f"{addr} {_mib(kb)} MiB" for addr, kb in run.worker_peak_kb.items()),
                "",
            ]
        if run.dask_time is not None and run.dask_time.tasks:
            spent = run.dask_time
            score_s = sum(r.times["score"] for r in run.pool.rounds)
            busy = sum(spent.compute_s.values()) / (len(spent.compute_s) * score_s)
            lines += [
                f"Where the scoring time went, {run.pool.size:,} items, all rounds: the score "
                f"stage took {score_s:.2f} s; its {spent.tasks} `score_piece` tasks spent "
                + ", ".join(f"{action} {sec:.2f} s" for action, sec in spent.action_s.items())
                + " on the workers (compute per worker: "
                + ", ".join(f"{addr} {sec:.2f} s" for addr, sec in spent.compute_s.items())
                + f"), so each worker computed {busy:.0%} of the stage's wall time; the rest "
                "is the round's process (reading the results, writing scores.parquet and the "
                "picks) and waiting.",
                "",
            ]
    for run in runs:
        lines += [f"## Pool of {run.pool.size:,} items", ""]
        if run.pool.annotate_s:
            lines += [
                "Answering a batch (not timed in rounds): "
                + ", ".join(f"{s:.2f} s" for s in run.pool.annotate_s)
                + ".",
                "",
            ]
        if run.pool.rounds:
            lines += [*round_bench.pool_table(run.pool), ""]
        if run.pool.error:
            lines += [f"**Failed:** {run.pool.error}", ""]
    if query is not None:
        lines += ["## The margin query", "", *query_lines(query), ""]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,10000000", help="pool sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="rounds per pool (default 3)")
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--informative", type=int, default=5, help="dimensions the classes differ in")
    p.add_argument("--partition-rows", type=int, default=500_000, help="rows per pool file")
    p.add_argument("--dask-workers", type=int, default=0, help="0: local scoring (default)")
    p.add_argument("--query-rows", type=int, default=1_000_000, help="rows of the margin query")
    p.add_argument("--query-train-rows", type=int, default=2000, help="labels of its model")
    p.add_argument("--query-top", type=int, default=100, help="items each query picks")
    p.add_argument(
        "--query-repeats", type=int, default=1, help="times each query arm runs, in turn"
    )
    p.add_argument("--no-query", action="store_true", help="skip the margin-query comparison")
    p.add_argument("--out", type=Path, default=None, help="folder for the workspaces (new)")
    p.add_argument("--keep", action="store_true", help="keep the default temporary folder")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown result file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override for the workspaces (repeatable)",
    )
    p.add_argument("--noise", type=float, default=0.05, help="simulated annotator error rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.rounds < 1 or not args.sizes or min(args.sizes) < 1:
        p.error("--rounds and every size must be >= 1")
    counts = (args.partition_rows, args.features, args.query_rows, args.query_top)
    if min(*counts, args.query_repeats) < 1:
        p.error("--partition-rows, --features and the --query-* counts must be >= 1")
    if args.classes < 2 or args.dask_workers < 0 or args.query_train_rows < args.classes:
        p.error("--classes must be >= 2, --dask-workers >= 0, --query-train-rows >= --classes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    synthetic = SyntheticPool(
        n_features=args.features,
        n_classes=args.classes,
        informative=args.informative,
        seed=args.seed,
    )
    dask_params = ("score.executor=dask", "score.dask_address=tcp://127.0.0.1:8786")
    params = check_overrides(
        (*args.set, *(dask_params if args.dask_workers else ())), synthetic.classes
    )
    out, temporary = round_bench.make_out_folder(args.out)
    roots = {size: out / f"pool-{size}" for size in args.sizes}
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit_start = round_bench._sh("git", "rev-parse", "--short", "HEAD")
    one_time: dict[str, float] = {}
    # Prefect's home: the first workspace
    round_bench.import_pipeline(roots[args.sizes[0]], one_time)

    round_bench.instrument()
    MON.start()
    runs: list[ScaleRun] = []
    query = None
    overrides = tuple(args.set)
    try:
        with dask_cluster(args.dask_workers, one_time) as client:
            if client is not None:
                address = client.scheduler.address
                overrides += ("score.executor=dask", f"score.dask_address={address}")
            with round_bench.prefect_session(one_time):
                for size in args.sizes:
                    runs.append(run_size(size, roots[size], synthetic, overrides, client, args))
        if not args.no_query:
            print(f"margin query on {args.query_rows:,} rows ...", file=sys.stderr)
            query = run_query_comparison(
                synthetic,
                rows=args.query_rows,
                train_rows=args.query_train_rows,
                top=args.query_top,
                chunk_size=params.score.chunk_size,
                random_state=args.seed,
                repeats=args.query_repeats,
            )
    finally:
        MON.halt.set()
        meta = {
            **round_bench.end_meta(commit_start, PACKAGES),
            "command": command,
            "load_start": load_start,
            "synthetic": synthetic,
            "overrides": list(overrides),
        }
        if runs or query is not None:
            text = render(runs, query, args, one_time, meta)
            print(text)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(text + "\n")
            print(f"\nwritten to {args.results}", file=sys.stderr)
        if temporary and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"workspaces kept in {out}", file=sys.stderr)
    return 1 if any(run.pool.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
