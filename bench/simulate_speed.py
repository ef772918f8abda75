"""Speed of ``alloop simulate``: issue 5's letter campaign (30 rounds of 50 after 100 random
labels, 10 seeds, two strategies) timed end to end on this machine.

    .venv/bin/python bench/simulate_speed.py [--dataset ../shared/data/letter.parquet]
        [--strategies default,random] [--seeds 10] [--initial 100] [--batch 50]
        [--rounds 30] [--jobs 2] [--out bench/results/simulate_speed]

The wall time covers everything ``alloop simulate`` does: loading the data, the full-data
reference model, every campaign (``--jobs`` processes) and the outputs. Prints one line of
results and writes ``simulate_speed.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update({"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})

from flows.simulate import SimulationSpec, simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared" / "data" / "letter.parquet"
    )
    parser.add_argument("--strategies", default="default,random")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of --batch after --initial")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "simulate_speed")
    args = parser.parse_args()
    spec = SimulationSpec(
        dataset=args.dataset,
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        seeds=args.seeds,
        initial=args.initial,
        batch=args.batch,
        budget=args.initial + args.rounds * args.batch,
        jobs=args.jobs,
    )
    started = time.perf_counter()
    result = simulate(spec, args.out)
    wall = time.perf_counter() - started
    trainings = len(result.curves)
    line = (
        f"{args.dataset.name}: {len(result.campaigns)} campaigns "
        f"({', '.join(sorted(result.campaigns['strategy'].unique()))} x {args.seeds} seeds), "
        f"{trainings} trained rounds, labels {args.initial} to {spec.budget}, "
        f"--jobs {args.jobs}: {wall:.0f} s wall ({wall / 60:.1f} min), "
        f"{wall * args.jobs / trainings:.2f} core-s per round"
    )
    print(line)
    (args.out / "simulate_speed.md").write_text(f"# simulate speed\n\n{line}\n")


if __name__ == "__main__":
    main()
