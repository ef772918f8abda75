"""What Label Studio adds to a round: the push of a batch and the pull of its answers, timed
against a real local server (issue 18's goal: under 2 s for a 500-item batch).

What it does
------------
Starts a Label Studio server from ``make labelstudio``'s build (tests/labelstudio_server.py),
creates a workspace on the bundled satimage pool (6,435 items, 36 features) whose batches are
``--batch`` items, connects it (``flows.labelstudio.connect``), and runs ``--rounds`` rounds of
``al_round`` in this process. Between two rounds every task of the last batch is answered
through the API, as annotators would (two users, each half of the tasks; not timed). For each
round it reports the wall time of the round, of its pull (``flows.labelstudio.pull``: the
tasks changed since the last pull, their JSON export, the users, the file written) and of its
push (``flows.labelstudio.push``: the project's tasks listed, the batch imported), measured by
wrapping those two functions here; the product code is not changed. Round 1 has nothing to
pull (its pull is the empty project's); the rounds after it pull one batch of answers each.

Usage: ``.venv/bin/python bench/labelstudio.py [--batch 500] [--rounds 3] [--keep]``. Nothing is
written inside the repository. The Markdown result is printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500, help="items per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from labelstudio_server import LabelStudioServer, available

    ok, why = available()
    if not ok:
        sys.exit(f"no Label Studio to run against: {why}")
    work = Path(tempfile.mkdtemp(prefix="alloop-bench-labelstudio-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"

    import pandas as pd
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    import flows.labelstudio as ls
    from flows.demo import load_pmlb
    from flows.round import al_round
    from flows.workspace import init_workspace

    timings: dict[str, list[float]] = {"pull": [], "push": []}

    def timed(name: str, func):  # noqa: ANN001, ANN202
        @functools.wraps(func)
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                timings[name].append(time.perf_counter() - started)

        return wrapper

    ls.pull = timed("pull", ls.pull)
    ls.push = timed("push", ls.push)

    rows = []
    try:
        with LabelStudioServer(work / "server") as server:
            os.environ["ALLOOP_LABELSTUDIO_TOKEN"] = server.token
            raw, classes = load_pmlb(HERE / "data" / "datasets" / "satimage.parquet")
            root = work / "ws"
            catalog = init_workspace(
                root,
                pool=raw,
                id_column="item_id",
                classes=classes,
                label_column="label",
                overrides=(f"select.seed_size={args.batch}", f"select.batch_size={args.batch}"),
            )
            truth = pd.read_parquet(catalog.path("truth")).set_index("item_id")["label"]
            ls.connect(root, url=server.url)
            project_id = catalog.read_params().labelstudio.project_id
            second = server.create_user("bench@alloop.example", "a-long-password-1")
            answered: set[int] = set()
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                for round_id in range(1, args.rounds + 1):
                    started = time.perf_counter()
                    result = al_round(str(root))
                    wall = time.perf_counter() - started
                    record = ls.read_record(catalog)
                    rows.append(
                        {
                            "round": round_id,
                            "round s": wall,
                            "pull s": timings["pull"][-1],
                            "push s": timings["push"][-1],
                            "pulled tasks": record.pulled_tasks,
                            "pushed tasks": sum(c["sent"] for c in record.pushed.values()),
                            "ok": bool(record.pull_ok and record.push_ok),
                            "skipped": result.skipped or "",
                        }
                    )
                    body = server.request(
                        "GET",
                        "/api/tasks/",
                        params={"project": project_id, "page_size": 100_000},
                    )
                    todo = [t for t in body["tasks"] if t["id"] not in answered]
                    for n, task in enumerate(todo):
                        label = str(truth[str(task["data"]["item_id"])])
                        server.annotate(task["id"], label, token=second if n % 2 else None)
                        answered.add(task["id"])
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    print(f"# Label Studio push and pull, batch of {args.batch}\n")
    print(
        f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f}\n"
    )
    print(
        "| round | round s | pull s | push s | pull + push s | tasks pulled | tasks pushed | ok |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['round']} | {r['round s']:.2f} | {r['pull s']:.2f} | {r['push s']:.2f} | "
            f"{r['pull s'] + r['push s']:.2f} | {r['pulled tasks']} | {r['pushed tasks']} | "
            f"{'yes' if r['ok'] else 'no'} |"
        )


if __name__ == "__main__":
    main()
