"""``alloop demo``: a workspace on a bundled real dataset, and rounds answered by a simulated
annotator that drops its files into ``data/incoming/`` as a person's would arrive."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from flows.round import RoundResult, al_round
from flows.workspace import TEMPLATE_ROOT, init_workspace
from tasks.catalog import Catalog, round_name, write_csv
from tasks.simulate import answer_batch

DATASETS = TEMPLATE_ROOT / "data" / "datasets"
DEFAULT_DATASET = DATASETS / "pendigits.parquet"
# Larger batches and test slices than the defaults: the test set grows faster, so each
# round's macro-F1 is measured on enough items for the round-on-round trend to show.
DEMO_OVERRIDES = ("select.seed_size=300", "select.batch_size=200", "select.test_fraction=0.3")


@dataclass(frozen=True)
class DemoRound:
    round_id: int
    labels: int
    macro_f1: float | None
    flagged: int
    seconds: float


def load_pmlb(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A PMLB table with the row position as ``item_id``, and its classes in numeric order."""
    raw = pd.read_parquet(path)
    if "label" not in raw.columns:
        raise ValueError(f"{path} has no 'label' column")
    raw.insert(0, "item_id", np.arange(len(raw)))
    classes = [str(c) for c in sorted(raw["label"].unique())]
    return raw, classes


def annotate_outbox(catalog: Catalog, round_id: int, *, noise: float, seed: int) -> Path:
    """Answer round ``round_id``'s batch and drop the file into ``data/incoming/``.

    Each round's answers come from one of three simulated annotators in turn, so an item sent
    back for relabeling gets its second opinion from someone else.
    """
    batch = pd.read_csv(catalog.path("outbox", round_id) / "batch.csv", dtype={"item_id": str})
    truth = pd.read_parquet(catalog.path("truth"))
    annotator = f"sim-annotator-{round_id % 3 + 1}"
    answers = answer_batch(
        batch["item_id"],
        truth,
        classes=catalog.read_params().project.classes,
        noise=noise,
        annotator=annotator,
        labeled_at=datetime.now(UTC).isoformat(timespec="seconds"),
        random_state=seed + round_id,
    )
    target = catalog.path("incoming") / f"{annotator}-{round_name(round_id)}.csv"
    write_csv(target, answers)
    return target


def run_demo(
    path: Path,
    *,
    rounds: int,
    noise: float,
    dataset: Path = DEFAULT_DATASET,
    seed: int = 0,
    on_round: Callable[[DemoRound], None] = lambda _: None,
) -> list[DemoRound]:
    """Create the workspace and run ``rounds`` rounds; the last batch stays out, unanswered."""
    raw, classes = load_pmlb(dataset)
    catalog = init_workspace(
        path,
        pool=raw,
        id_column="item_id",
        classes=classes,
        label_column="label",
        overrides=(f"project.random_state={seed}", *DEMO_OVERRIDES),
    )
    done = []
    for _ in range(rounds):
        started = time.perf_counter()
        result: RoundResult = al_round(str(catalog.root))
        if len(done) < rounds - 1:
            annotate_outbox(catalog, result.round_id, noise=noise, seed=seed)
        s = result.summaries
        row = DemoRound(
            round_id=result.round_id,
            labels=s.merge.labeled_items,
            macro_f1=s.evaluate.candidate_macro_f1,
            flagged=s.flag.flagged,
            seconds=time.perf_counter() - started,
        )
        done.append(row)
        on_round(row)
    return done
