"""Start-up cost of the ``alloop`` commands, each run as an operator runs it: a fresh process.

What it measures
----------------
On a workspace of ``--items`` items (default 10,000: the first rows of the bundled UCI
pen-digits table, ``data/datasets/pendigits.parquet``, made with ``flows.demo.load_pmlb`` and
``flows.workspace.init_workspace``, with the true labels so that the simulated annotator of
``flows.demo`` can answer), every command below runs as its own process
(``python -m flows.cli ...``, the same entry point as ``alloop``), and the script reports its
wall time and the CPU time of the process and its children:

* ``status``, ``history ITEM``, ``audit``, ``audit --at round-0001`` (``--repeat`` times each;
  the median and the worst are shown);
* ``round`` 1 (the seed batch, on a fresh workspace: Prefect's database does not exist yet),
  ``round`` 2 and 3 (real rounds: labels answered in between, untimed), and ``round`` with
  nothing to do (``--repeat`` times).

It also runs ``python -X importtime -c "import flows.cli"`` and the import of what a round
command imports before its flow starts, and lists the slowest top-level packages.

``--code DIR`` runs another checkout of alloop (e.g. a ``git worktree`` of an older commit,
through ``PYTHONPATH``) against the same dataset, to compare before and after. Nothing is
written inside the repository: workspaces go to a temporary folder (kept with ``--keep``).

Usage: ``python bench/startup.py [--items 10000] [--repeat 3] [--code DIR] [--keep]``.
The Markdown result is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

MAKE_WORKSPACE = """
import sys
from pathlib import Path
from flows.demo import load_pmlb
from flows.workspace import init_workspace
raw, classes = load_pmlb(Path(sys.argv[1]))
raw = raw.iloc[: int(sys.argv[3])]
init_workspace(Path(sys.argv[2]), pool=raw, id_column="item_id", classes=classes,
               label_column="label")
"""

ANSWER = """
import sys
from pathlib import Path
from flows.demo import annotate_outbox
from tasks.catalog import Catalog
catalog = Catalog(Path(sys.argv[1]))
annotate_outbox(catalog, catalog.read_round().round_id, noise=0.05, seed=0)
"""


def _env(code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(code)
    env["COLUMNS"] = "200"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def timed(args: list[str], code: Path, cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (the process and its children), exit code, last output line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        args, cwd=cwd, env=_env(code), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return wall, cpu, done.returncode, (lines[-1] if lines else "")[:100]


def import_profile(code: Path, statement: str, top: int = 12) -> tuple[float, list[str]]:
    """``-X importtime`` of ``statement``: total seconds and the slowest top-level packages."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        cwd=code,
        env=_env(code),
        capture_output=True,
        text=True,
        check=False,
    )
    per_package: dict[str, int] = {}
    total = 0
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        self_us, cumulative, indent, name = match.groups()
        top_name = name.split(".")[0]
        per_package[top_name] = per_package.get(top_name, 0) + int(self_us)
        if len(indent) == 1:
            total += int(cumulative)
    ranked = sorted(per_package.items(), key=lambda kv: -kv[1])[:top]
    return total / 1e6, [f"{name} {us / 1e6:.2f} s" for name, us in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--code", type=Path, default=HERE, help="the alloop checkout to run")
    parser.add_argument("--dataset", type=Path, default=HERE / "data/datasets/pendigits.parquet")
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    opts = parser.parse_args()
    code = opts.code.resolve()
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="alloop-startup-"))
    ws = tmp / "ws"
    cli = [sys.executable, "-m", "flows.cli"]
    rows: list[tuple[str, list[tuple[float, float, int, str]]]] = []
    try:
        subprocess.run(
            [sys.executable, "-c", MAKE_WORKSPACE, str(opts.dataset), str(ws), str(opts.items)],
            cwd=tmp,
            env=_env(code),
            check=True,
        )

        def run(name: str, args: list[str], times: int = 1) -> None:
            rows.append((name, [timed([*cli, *args], code, tmp) for _ in range(times)]))
            print(f"{name}: {[f'{r[0]:.2f}' for r in rows[-1][1]]} {rows[-1][1][-1][3]}")

        def answer() -> None:
            subprocess.run(
                [sys.executable, "-c", ANSWER, str(ws)], cwd=tmp, env=_env(code), check=True
            )

        w = ["-w", str(ws)]
        run("status (round 0)", ["status", *w], opts.repeat)
        run("round 1 (seed batch, fresh Prefect database)", ["round", *w])
        answer()
        run("round 2", ["round", *w])
        item = subprocess.run(
            [
                sys.executable,
                "-c",
                "import pandas as pd, sys; print(pd.read_parquet(sys.argv[1])['item_id'].iloc[0])",
                str(ws / "data/labels/issued.parquet"),
            ],
            cwd=tmp,
            env=_env(code),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        run("round with nothing to do", ["round", *w], opts.repeat)
        run("status", ["status", *w], opts.repeat)
        run(f"history {item}", ["history", item, *w], opts.repeat)
        run("audit", ["audit", *w], opts.repeat)
        run("audit --at round-0001", ["audit", "--at", "round-0001", *w], opts.repeat)
        answer()
        run("round 3", ["round", *w])
        cli_import = import_profile(code, "import flows.cli")
        round_import = import_profile(
            code, "import flows.cli, flows.workspace, flows.recovery, tasks.catalog"
        )
        flow_import = import_profile(code, "import flows.round")
    finally:
        if opts.keep:
            print(f"workspace kept at {ws}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"alloop at {commit or code}, {opts.items:,} items, {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| command | wall s (median) | wall s (worst) | CPU s (median) | exit |")
    print("|---|---|---|---|---|")
    for name, results in rows:
        walls = [r[0] for r in results]
        cpus = [r[1] for r in results]
        print(
            f"| `{name}` | {statistics.median(walls):.2f} | {max(walls):.2f} | "
            f"{statistics.median(cpus):.2f} | {results[-1][2]} |"
        )
    print()
    for label, (total, ranked) in (
        ("import flows.cli", cli_import),
        ("import flows.cli + what a round checks before its flow", round_import),
        ("import flows.round (the flow, with every stage)", flow_import),
    ):
        print(f"- `{label}`: {total:.2f} s; by package (self time): {', '.join(ranked[:8])}")


if __name__ == "__main__":
    main()
