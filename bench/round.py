"""Benchmark of one active-learning round (``flows.round.al_round``) on pools of real data.

What it measures
----------------
For each pool size (default 20,000 and 200,000 items built from a real PMLB table, by default
``sleep.parquet``: 105,908 rows x 13 features, 5 classes; the first N rows, the table repeated
row by row when N is larger, ``item_id`` = row position), the script creates a workspace in a
temporary folder (with the true labels, so that the simulated annotator of ``flows.demo`` can
answer) and runs ``--rounds`` rounds of ``al_round(workspace)`` in this one process, exactly as
``alloop round`` runs it (``push=True``, Prefect's heartbeat off). Between two rounds the batch
the round exported is answered with ``flows.demo.annotate_outbox``; that is not timed.

For every round it reports:

* the wall clock of the whole ``al_round`` call;
* each stage (validate, features, merge, flag, train, evaluate, health, score, select,
  export): the wall time and the process CPU time of the stage body (the task's function,
  wrapped here through the Prefect task object's ``fn``), and, as a cross-check, the task
  run's duration from the Prefect API (``end_time - start_time`` of the task runs of the
  flow run);
* peak resident memory (RSS) of this process per stage and per step outside the stages: at every
  phase change the kernel's high-water mark ``VmHWM`` is read and reset (``5`` written to
  ``/proc/self/clear_refs``), and a background thread samples ``VmRSS`` every 10 ms; the larger
  of the two is reported. The process baseline (RSS just before the round) is reported too.
  Subprocesses (git, DVC, the Prefect API server) are not in these numbers;
* the time outside the stages, split into: the Prefect task engine around the 8 stage bodies,
  the code-drift check and ``begin_round`` (git), MLflow (``tracking.log_round`` and
  ``tag_commit``), versioning (``versioning.record_commit``, with each git/DVC command it runs),
  and the rest of the Prefect flow run (the remainder of the wall clock);
* CPU seconds used meanwhile by finished child processes (git, DVC) and by the Prefect API
  server process.

All of this is done by wrapping functions inside this script only (monkeypatching module
attributes and the tasks' ``fn``); the product code is not changed. The first flow run of a
process starts a temporary local Prefect API (15-20 s with a fresh database): a trivial flow is
run first to pay that, and it is reported separately, as are the import times. A CLI round
(``alloop round``, one process per round) pays those one-time costs every time.

Goals compared (last round, 200,000-item pool): the whole round under 60 s on 2 cores, with
orchestration and versioning (everything outside the stage bodies) under 20% of it.

Usage: ``python bench/round.py [--sizes 20000,200000] [--rounds 3] [--dataset PATH]
[--out DIR] [--set section.key=value ...]``. The Markdown result is printed and written to
``bench/results-round.md``. Workspaces go to ``--out`` (default: a temporary folder, deleted
at the end unless ``--keep``); nothing is written inside the repository except the results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results-round.md"
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "sleep.parquet"
#: the pipeline's stages (flows.pipeline.STAGE_NAMES; tests/test_bench.py keeps them equal)
STAGES = (
    "validate",
    "features",
    "merge",
    "flag",
    "train",
    "evaluate",
    "health",
    "score",
    "select",
    "export",
)
GOAL_SIZE = 200_000
GOAL_ROUND_S = 60.0
GOAL_OUTSIDE_SHARE = 0.20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc helpers -----------------------------------------------------------------------------
def _status_kb(field_name: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _live_children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _live_children_cpu_s() -> float:
    return sum(_proc_cpu_s(pid) for pid in _live_children())


def _finished_children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# -- measurement -------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    pool: int
    round_id: int
    wall: float = 0.0
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    peak_kb: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    commands: list[tuple[str, str, float]] = field(default_factory=list)  # parent, cmd, s
    api_task_s: dict[str, float] = field(default_factory=dict)
    api_flow_s: float | None = None
    baseline_kb: int = 0
    cpu_process: float = 0.0
    cpu_finished_children: float = 0.0
    cpu_live_children: float = 0.0
    flow_run_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def outside(self) -> dict[str, float]:
        engine = sum(self.times[f"task:{s}"] - self.times[s] for s in STAGES)
        parts = {
            "engine": engine,
            "begin": self.times["code_drift"] + self.times["begin_round"],
            "mlflow": self.times["log_round"] + self.times["tag_commit"],
            "versioning": self.times["record_commit"],
        }
        inside = sum(self.times[s] for s in STAGES)
        parts["rest"] = self.wall - inside - sum(parts.values())
        return parts


class Monitor(threading.Thread):
    """Phase bookkeeping (times, CPU, peak RSS) plus a 10 ms VmRSS sampler."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.lock = threading.Lock()
        self.stack = ["setup"]
        self.record: RoundRecord | None = None
        self.halt = threading.Event()
        self.samples = 0
        self.hwm_reset = _reset_hwm()
        self.outside_peak_kb: dict[str, int] = defaultdict(int)

    def _peaks(self) -> dict[str, int]:
        return self.record.peak_kb if self.record is not None else self.outside_peak_kb

    def _switch(self) -> None:  # holding the lock: close the running segment of the phase
        if self.hwm_reset:
            key = self.stack[-1]
            peaks = self._peaks()
            peaks[key] = max(peaks[key], _status_kb("VmHWM"))
            _reset_hwm()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            with self.lock:
                key = self.stack[-1]
                peaks = self._peaks()
                peaks[key] = max(peaks[key], _status_kb("VmRSS"))
                self.samples += 1

    @contextlib.contextmanager
    def phase(self, name: str, *, rss: bool = True) -> Iterator[None]:
        if rss:
            with self.lock:
                self._switch()
                self.stack.append(name)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rss:
                with self.lock:
                    self._switch()
                    self.stack.pop()
            if self.record is not None:
                self.record.times[name] += dt
                self.record.cpu[name] += dc

    @contextlib.contextmanager
    def round(self, record: RoundRecord) -> Iterator[None]:
        with self.lock:
            self._switch()
            self.record = record
            self.stack.append("flow")
        try:
            yield
        finally:
            with self.lock:
                self._switch()
                self.stack.pop()
                self.record = None


MON = Monitor()


def instrument() -> None:
    """Wrap the stages and the steps around them; product code is untouched."""
    from prefect.context import FlowRunContext

    import flows.round
    import flows.tracking
    import flows.versioning
    from flows.pipeline import STAGE_MODULES

    for module in STAGE_MODULES:
        name = module.STAGE.name
        body = module.run

        @functools.wraps(body)
        def timed_body(*args: Any, _body: Callable[..., Any] = body, _name: str = name, **kw: Any):
            ctx = FlowRunContext.get()
            if MON.record is not None and ctx is not None and ctx.flow_run is not None:
                MON.record.flow_run_id = str(ctx.flow_run.id)
            with MON.phase(_name):
                return _body(*args, **kw)

        module.run = timed_body

    run_stage = flows.round.run_stage

    def timed_task(spec: Any, ctx: Any, _run: Any = run_stage) -> Any:
        with MON.phase(f"task:{spec.name}"):
            return _run(spec, ctx)

    flows.round.run_stage = timed_task

    def wrap(owner: Any, attr: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kw: Any) -> Any:
            with MON.phase(attr):
                return original(*args, **kw)

        setattr(owner, attr, timed)

    wrap(flows.round, "code_drift")
    wrap(flows.round, "begin_round")
    wrap(flows.tracking, "log_round")
    wrap(flows.tracking, "tag_commit")
    wrap(flows.versioning, "record_commit")

    def wrap_cli(tool: str) -> None:
        original = getattr(flows.versioning, tool)

        @functools.wraps(original)
        def timed(root: Path, *args: str, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(root, *args, **kw)
            finally:
                if MON.record is not None:
                    words = [a for a in args if not a.startswith("-")][:1]
                    MON.record.commands.append(
                        (MON.stack[-1], " ".join([tool, *words]), time.perf_counter() - t0)
                    )

        setattr(flows.versioning, tool, timed)

    wrap_cli("git")
    wrap_cli("dvc")


def read_prefect_api(record: RoundRecord, timeout: float = 30.0) -> None:
    """Task-run and flow-run durations as the Prefect API recorded them."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if record.flow_run_id is None:
        return
    uid = UUID(record.flow_run_id)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # task-run states reach the API asynchronously, through events
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uid]))
            )
            done = {
                r.name.rsplit("-", 1)[0]: (r.end_time - r.start_time).total_seconds()
                for r in runs
                if r.start_time is not None and r.end_time is not None
            }
            flow = client.read_flow_run(uid)
            if (set(STAGES) <= done.keys() and flow.end_time) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    record.api_task_s = done
    if flow.start_time is not None and flow.end_time is not None:
        record.api_flow_s = (flow.end_time - flow.start_time).total_seconds()


# -- pools and rounds --------------------------------------------------------------------------
def build_pool(raw: Any, size: int) -> Any:
    """The first ``size`` rows of ``raw``, the table repeated when needed; ``item_id`` = row."""
    import numpy as np

    pool = raw.iloc[np.resize(np.arange(len(raw)), size)].reset_index(drop=True)
    pool.insert(0, "item_id", np.arange(size))
    return pool


@dataclass
class PoolRun:
    size: int
    root: Path
    init_s: float = 0.0
    annotate_s: list[float] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    error: str | None = None


def run_pool(
    size: int, raw: Any, classes: list[str], root: Path, args: argparse.Namespace
) -> PoolRun:
    from flows.workspace import init_workspace

    out = PoolRun(size=size, root=root)
    pool = build_pool(raw, size)
    t0 = time.perf_counter()
    catalog = init_workspace(
        root,
        pool=pool,
        id_column="item_id",
        classes=classes,
        label_column="label",
        overrides=tuple(args.set),
    )
    out.init_s = time.perf_counter() - t0
    del pool
    print(f"[{size:,}] workspace ready in {out.init_s:.1f} s: {root}", file=sys.stderr)
    run_rounds(out, catalog, args)
    return out


def run_rounds(out: PoolRun, catalog: Any, args: argparse.Namespace) -> PoolRun:
    """``args.rounds`` rounds of ``al_round`` in ``out.root``, each measured into ``out.rounds``;
    between two rounds the exported batch is answered (``args.noise``, ``args.seed``), untimed.
    A failing round ends the loop and is kept in ``out.error``."""
    from flows.demo import annotate_outbox
    from flows.round import al_round

    size, root = out.size, out.root
    for r in range(1, args.rounds + 1):
        record = RoundRecord(pool=size, round_id=r)
        record.baseline_kb = _status_kb("VmRSS")
        c0, f0, l0 = time.process_time(), _finished_children_cpu_s(), _live_children_cpu_s()
        try:
            with MON.round(record):
                t0 = time.perf_counter()
                result = al_round(str(root))
                record.wall = time.perf_counter() - t0
        except Exception as exc:  # report what was measured, then the failure
            out.error = f"round {r}: {type(exc).__name__}: {exc}"
            print(f"[{size:,}] {out.error}", file=sys.stderr)
            break
        record.cpu_process = time.process_time() - c0
        record.cpu_finished_children = _finished_children_cpu_s() - f0
        record.cpu_live_children = _live_children_cpu_s() - l0
        read_prefect_api(record)
        s = result.summaries
        record.summary = {
            "labeled": s.merge.labeled_items,
            "batch": s.select.batch_size,
            "flagged": s.flag.flagged,
            "macro_f1": s.evaluate.candidate_macro_f1,
        }
        out.rounds.append(record)
        o = record.outside()
        print(
            f"[{size:,}] round {r}: {record.wall:.2f} s, stages "
            f"{sum(record.times[st] for st in STAGES):.2f} s, versioning "
            f"{o['versioning']:.2f} s",
            file=sys.stderr,
        )
        if r < args.rounds:
            t0 = time.perf_counter()
            annotate_outbox(catalog, result.round_id, noise=args.noise, seed=args.seed)
            out.annotate_s.append(time.perf_counter() - t0)
    return out


# -- report ------------------------------------------------------------------------------------
def _sh(*cmd: str) -> str:
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = _status_kb_file("/proc/meminfo", "MemTotal") / 2**20
    return {
        # the cores this process may use (``nproc`` would answer OMP_NUM_THREADS, set to 1 here)
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "mem": f"{mem_gib:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _status_kb_file(path: str, key: str) -> int:
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


PACKAGES = ("prefect", "dvc", "mlflow", "lightgbm", "cleanlab", "great-expectations", "pandas")


def _versions(names: tuple[str, ...] = PACKAGES) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mib(kb: int | None) -> str:
    return f"{kb / 1024:.0f}" if kb else "n/a"


def pool_table(run: PoolRun) -> list[str]:
    rs = run.rounds
    last = rs[-1]
    rcols = [f"r{r.round_id} s" for r in rs]
    head = ["step", *rcols, f"r{last.round_id} CPU s", f"r{last.round_id} Prefect API s"]
    head.append(f"r{last.round_id} peak RSS MiB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, values: list[float], cpu: str = "", api: str = "", rss: str = "") -> None:
        lines.append("| " + " | ".join([label, *(_f(v) for v in values), cpu, api, rss]) + " |")

    def peak(*keys: str) -> str:
        return _mib(max((last.peak_kb.get(k, 0) for k in keys), default=0))

    for st in STAGES:
        row(
            st,
            [r.times[st] for r in rs],
            _f(last.cpu[st]),
            _f(last.api_task_s.get(st)),
            peak(st),
        )
    row(
        "**stages total**",
        [sum(r.times[st] for st in STAGES) for r in rs],
        _f(sum(last.cpu[st] for st in STAGES)),
        _f(sum(last.api_task_s.values()) if last.api_task_s else None),
        peak(*STAGES),
    )
    outs = [r.outside() for r in rs]
    row(
        "Prefect task engine (8 task calls, beyond the stage bodies)",
        [o["engine"] for o in outs],
        rss=peak(*(f"task:{s}" for s in STAGES)),
    )
    row(
        "code-drift check + begin_round (git)",
        [o["begin"] for o in outs],
        rss=peak("code_drift", "begin_round"),
    )
    row(
        "MLflow: log_round + tag_commit",
        [o["mlflow"] for o in outs],
        _f(last.cpu["log_round"] + last.cpu["tag_commit"]),
        rss=peak("log_round", "tag_commit"),
    )
    row(
        "versioning: record_commit",
        [o["versioning"] for o in outs],
        _f(last.cpu["record_commit"]),
        rss=peak("record_commit"),
    )
    labels = []
    for r in rs:
        for parent, cmd, _ in r.commands:
            if parent == "record_commit" and cmd not in labels:
                labels.append(cmd)
    for cmd in labels:
        row(
            f"&nbsp;&nbsp;↳ `{cmd}`",
            [sum(s for p, c, s in r.commands if p == "record_commit" and c == cmd) for r in rs],
        )
    row(
        "Prefect flow run, rest (engine, API calls, logging)",
        [o["rest"] for o in outs],
        rss=peak("flow"),
    )
    row(
        "**round, wall clock**",
        [r.wall for r in rs],
        _f(last.cpu_process),
        _f(last.api_flow_s),
        _mib(max(last.peak_kb.values(), default=0)),
    )
    share = [(r.wall - sum(r.times[st] for st in STAGES)) / r.wall for r in rs]
    lines.append(
        "| **outside the stages (orchestration + versioning), share** | "
        + " | ".join(
            f"{r.wall - sum(r.times[st] for st in STAGES):.2f} ({s:.0%})"
            for r, s in zip(rs, share, strict=True)
        )
        + " | | | |"
    )
    lines.append("")
    lines.append(
        f"Process RSS before round {last.round_id} (baseline): {_mib(last.baseline_kb)} MiB. "
        f"CPU during round {last.round_id} besides this process: git/DVC subprocesses "
        f"{last.cpu_finished_children:.2f} s, running child processes (Prefect's API server; "
        f"a local Dask cluster's workers) {last.cpu_live_children:.2f} s."
    )
    return lines


def render(
    runs: list[PoolRun], args: argparse.Namespace, one_time: dict[str, float], meta: dict[str, Any]
) -> str:
    m = meta["machine"]
    lines = [
        "# Benchmark: one `al_round` (bench/round.py)",
        "",
        f"- date: {meta['date']}; machine: nproc {m['nproc']}, {m['cpu']}, {m['mem']} RAM, "
        f"Linux {m['kernel']}, Python {m['python']}; load average at start "
        f"{meta['load_start']}, at end {meta['load_end']} (shared machine)",
        f"- command: `{meta['command']}`",
        f"- git commit of {REPO}: `{meta['commit']}`{meta['dirty']}",
        f"- packages: {meta['versions']}",
        f"- dataset: `{args.dataset}` ({meta['rows']:,} rows x {meta['features']} features, "
        f"{len(meta['classes'])} classes {meta['classes']}); a pool of N items = its first N "
        "rows, the table repeated row by row when N is larger; item_id = row position",
        "- params: product defaults (params.yaml)"
        + (f" with {list(args.set)}" if args.set else "")
        + f"; {args.rounds} rounds per pool; simulated annotator noise {args.noise}; "
        "al_round(push=True) in one process, Prefect heartbeat off",
        "- one-time costs per process, not in any round: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in one_time.items()),
        "- stage time = wall time of the stage body (the task's fn); Prefect API s = task run "
        "end_time - start_time from the API; peak RSS = this process (VmHWM reset per phase + "
        f"VmRSS sampled every 10 ms, {MON.samples:,} samples), not subprocesses",
        "",
    ]
    goal_run = next((r for r in runs if r.size == GOAL_SIZE and r.rounds), None)
    if goal_run is not None:
        last = goal_run.rounds[-1]
        outside = last.wall - sum(last.times[st] for st in STAGES)
        share = outside / last.wall
        lines += [
            f"## Goals (round {last.round_id}, {GOAL_SIZE:,}-item pool, {m['nproc']} cores)",
            "",
            "| goal | target | measured | met |",
            "|---|---|---|---|",
            f"| full round | < {GOAL_ROUND_S:.0f} s | {last.wall:.2f} s | "
            f"{'yes' if last.wall < GOAL_ROUND_S else 'no'} |",
            f"| orchestration + versioning share | < {GOAL_OUTSIDE_SHARE:.0%} | "
            f"{share:.1%} ({outside:.2f} s) | {'yes' if share < GOAL_OUTSIDE_SHARE else 'no'} |",
            "",
        ]
    else:
        lines += [f"## Goals: not evaluated ({GOAL_SIZE:,}-item pool not run)", ""]
    lines += [
        "## Rounds",
        "",
        "| pool | round | round s | stages s | outside s (share) | versioning s | MLflow s | "
        "Prefect s | labeled | batch | flagged | macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run.rounds:
            o = r.outside()
            inside = sum(r.times[st] for st in STAGES)
            lines.append(
                f"| {run.size:,} | {r.round_id} | {r.wall:.2f} | {inside:.2f} | "
                f"{r.wall - inside:.2f} ({(r.wall - inside) / r.wall:.0%}) | "
                f"{o['versioning']:.2f} | {o['mlflow']:.2f} | "
                f"{o['engine'] + o['rest']:.2f} | {r.summary['labeled']} | {r.summary['batch']} | "
                f"{r.summary['flagged']} | {_f(r.summary['macro_f1'], 4)} |"
            )
    lines.append("")
    for run in runs:
        lines += [f"## Pool of {run.size:,} items", ""]
        lines.append(
            f"Workspace init (pool parquet, git + DVC add, commit, push): {run.init_s:.1f} s; "
            "answering a batch (not timed in rounds): "
            + (", ".join(f"{s:.2f} s" for s in run.annotate_s) or "n/a")
            + "."
        )
        lines.append("")
        if run.rounds:
            lines += pool_table(run)
            lines.append("")
        if run.error:
            lines += [f"**Failed:** {run.error}", ""]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,200000", help="pool sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="rounds per pool (default 3)")
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="parquet with 'label'")
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
    return args


def make_out_folder(out: Path | None) -> tuple[Path, bool]:
    """The folder for the workspaces, created, and whether it is a temporary one. Refused
    inside the repository, or when given and not empty."""
    temporary = out is None
    folder = Path(tempfile.mkdtemp(prefix="alloop-bench-")) if out is None else out.resolve()
    if folder == REPO or REPO in folder.parents:
        raise SystemExit(f"--out {folder} is inside the repository; choose a folder outside it")
    if not temporary and folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"--out {folder} exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    return folder, temporary


def import_pipeline(workspace: Path, one_time: dict[str, float]) -> None:
    """Configure Prefect (its home: ``workspace``), then import alloop's flows and the
    libraries its stages import on first use, timing both into ``one_time``."""
    # Prefect reads settings at import: configure first
    from flows import runtime

    runtime.configure(workspace)
    t0 = time.perf_counter()
    import flows.demo  # noqa: F401  (imports flows.round, the stages, LightGBM, cleanlab)

    one_time["import prefect + alloop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import great_expectations  # noqa: F401  (validate imports it on first use)
    import mlflow  # noqa: F401  (tracking imports it on first use)

    one_time["import great_expectations + mlflow"] = time.perf_counter() - t0


@contextlib.contextmanager
def prefect_session(one_time: dict[str, float]) -> Iterator[None]:
    """Flow runs as ``alloop round`` runs them (heartbeat off), after a trivial flow run that
    starts the temporary Prefect API (timed into ``one_time``)."""
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @flow(name="bench-warmup", persist_result=False)
    def warmup() -> int:
        return 1

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        t0 = time.perf_counter()
        warmup()
        one_time["Prefect temporary API start (fresh database) + first flow run"] = (
            time.perf_counter() - t0
        )
        yield


def end_meta(commit_start: str, packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """What the report says of the run at its end: date, machine, load, commit, packages."""
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": commit_start,
        "versions": _versions(packages),
    }
    changed = [ln for ln in _sh("git", "status", "--porcelain").splitlines() if ln.strip()]
    meta["dirty"] = (
        f" (working tree: {len(changed)} uncommitted changes, others' work in progress)"
        if changed
        else ""
    )
    commit_end = _sh("git", "rev-parse", "--short", "HEAD")
    if commit_end != commit_start:
        meta["dirty"] += f"; HEAD moved to `{commit_end}` during the run"
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    out, temporary = make_out_folder(args.out)
    roots = {size: out / f"pool-{size}" for size in args.sizes}
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit_start = _sh("git", "rev-parse", "--short", "HEAD")

    one_time: dict[str, float] = {}
    # Prefect's home: the first workspace
    import_pipeline(roots[args.sizes[0]], one_time)
    import pandas as pd

    raw = pd.read_parquet(args.dataset)
    if "label" not in raw.columns:
        raise SystemExit(f"{args.dataset} has no 'label' column")
    classes = [str(c) for c in sorted(raw["label"].unique())]
    meta: dict[str, Any] = {
        "rows": len(raw),
        "features": raw.shape[1] - 1,
        "classes": classes,
        "command": command,
        "load_start": load_start,
        "commit_start": commit_start,
    }

    instrument()
    MON.start()
    runs: list[PoolRun] = []
    try:
        with prefect_session(one_time):
            for size in args.sizes:
                runs.append(run_pool(size, raw, classes, roots[size], args))
    finally:
        MON.halt.set()
        meta.update(end_meta(commit_start))
        if runs:
            text = render(runs, args, one_time, meta)
            print(text)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(text + "\n")
            print(f"\nwritten to {args.results}", file=sys.stderr)
        if temporary and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"workspaces kept in {out}", file=sys.stderr)
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
