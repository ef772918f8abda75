"""Speed of ``alloop simulate``: issue 5's letter campaign (30 rounds of 50 after 100 random
labels, 10 seeds, two strategies) timed end to end on this machine.

    .venv/bin/python bench/simulate_speed.py [--dataset ../shared/data/letter.parquet]
        [--strategies default,random] [--seeds 10] [--initial 100] [--batch 50]
        [--rounds 30] [--jobs 2] [-S train.num_boost_round=200] [--out DIR]

The wall time covers everything ``alloop simulate`` does: loading the data, the full-data
reference model, every campaign (``--jobs`` processes; 1: this process only) and the outputs.
``-S section.key=value`` overrides a param of the campaigns. Progress goes to stderr as each
campaign finishes; prints one line of results and writes ``simulate_speed.md`` under
``--out`` (default: a new folder under the system's temporary folder, never the checkout).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})

from flows.simulate import SimulationSpec, simulate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "letter.parquet"
    )
    parser.add_argument("--strategies", default="default,random")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of --batch after --initial")
    parser.add_argument("--jobs", type=int, default=2, help="processes (1: this one only)")
    parser.add_argument(
        "--set",
        "-S",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a param of the campaigns (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: a new temporary one)"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="alloop-simulate-speed-"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flows.simulate").setLevel(logging.INFO)
    logging.getLogger("flows.simulate").info("results in %s", args.out)
    spec = SimulationSpec(
        dataset=args.dataset,
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        seeds=args.seeds,
        initial=args.initial,
        batch=args.batch,
        budget=args.initial + args.rounds * args.batch,
        overrides=tuple(args.set),
        jobs=args.jobs,
    )
    started = time.perf_counter()
    result = simulate(spec, args.out)
    wall = time.perf_counter() - started
    trainings = len(result.curves)
    overrides = "".join(f" -S {o}" for o in args.set)
    line = (
        f"{args.dataset.name}: {len(result.campaigns)} campaigns "
        f"({', '.join(sorted(result.campaigns['strategy'].unique()))} x {args.seeds} seeds), "
        f"{trainings} trained rounds, labels {args.initial} to {spec.budget}, "
        f"--jobs {args.jobs}{overrides}: {wall:.0f} s wall ({wall / 60:.1f} min), "
        f"{wall * args.jobs / trainings:.2f} core-s per round"
    )
    print(line, flush=True)
    (args.out / "simulate_speed.md").write_text(f"# simulate speed\n\n{line}\n")


if __name__ == "__main__":
    main()
