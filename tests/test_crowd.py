"""Real crowd labels (Abt-Buy product matching: 8,315 pairs, 3 votes each from 176 workers)
fed through rounds as annotators' files: the consensus must agree with the gold labels at
least as often as the plain majority vote does.

The data has no licence to ship, so it is read from ../shared/data and the test skips when
that folder is absent.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SHARED_DATA

from flows.round import al_round
from flows.workspace import init_workspace

CROWD = SHARED_DATA / "multiannotator"
pytestmark = pytest.mark.skipif(
    not (CROWD / "product_matching_annotations.parquet").exists(),
    reason="the crowd-labeled set is not shipped (no licence); it lives in ../shared/data",
)


@pytest.fixture(scope="module")
def crowd(prefect_api, tmp_path_factory):
    items = pd.read_parquet(CROWD / "product_matching_items.parquet")
    votes = pd.read_parquet(CROWD / "product_matching_annotations.parquet")
    features = [c for c in items.columns if c.startswith("f_")]
    root = tmp_path_factory.mktemp("crowd") / "ws"
    catalog = init_workspace(
        root,
        pool=items[["item_id", *features]],
        id_column="item_id",
        classes=["0", "1"],
        # every pair goes out in the first batch, as a labeling campaign of a fixed set would
        overrides=(f"select.seed_size={len(items)}", "select.test_fraction=0.0"),
    )
    al_round(str(root))
    votes = votes.assign(
        order=votes.groupby("item_id").cumcount(),
        labeled_at="2026-01-01T00:00:00Z",
        label=votes["annotator_label"].astype(str),
    )
    # the first vote of every item arrives in one round, the other two in the next
    for wave in (votes[votes["order"] == 0], votes[votes["order"] > 0]):
        for annotator, rows in wave.groupby("annotator"):
            rows[["item_id", "label", "annotator", "labeled_at"]].to_csv(
                catalog.path("incoming") / f"worker-{annotator}.csv", index=False
            )
        al_round(str(root))
    return {"catalog": catalog, "items": items, "votes": votes}


def test_consensus_beats_or_matches_majority_vote(crowd):
    items = crowd["items"].set_index("item_id")
    current = pd.read_parquet(crowd["catalog"].path("current")).set_index("item_id")
    assert len(current) == len(items)
    consensus_acc = (current["label"] == items.loc[current.index, "label"].astype(str)).mean()
    majority_acc = (items["mv_label"] == items["label"]).mean()
    assert majority_acc == pytest.approx(0.897, abs=0.001)
    assert set(current["method"]) == {"crowdlab"}
    assert consensus_acc >= majority_acc, (consensus_acc, majority_acc)


def test_every_vote_is_in_the_ledger_and_every_annotator_scored(crowd):
    ledger = pd.read_parquet(crowd["catalog"].path("ledger"))
    votes = ledger[ledger["event"].isin(["label", "relabel"])]
    assert len(votes) == len(crowd["votes"])
    assert (ledger["event"] == "rejected").sum() == 0
    stats = pd.read_parquet(crowd["catalog"].path("annotators"))
    last = stats[stats["round_id"] == stats["round_id"].max()]
    assert len(last) == crowd["votes"]["annotator"].nunique() == 176
    assert last["quality"].between(0, 1).all()


@pytest.mark.parametrize("model", ["features", "noise"])
def test_consensus_never_below_majority_with_a_strong_or_a_useless_model(model):
    """merge's consensus on Abt-Buy's votes, each item keeping 1-3 of its votes, with the
    model on the f_* features or on a feature of pure noise (bench/crowd.py, consensus)."""
    import numpy as np

    from tasks.merge import get_majority_labels, resolve_labels
    from tasks.params import MergeParams, TrainParams

    items = pd.read_parquet(CROWD / "product_matching_items.parquet")
    votes = pd.read_parquet(CROWD / "product_matching_annotations.parquet")
    rng = np.random.default_rng(0)
    kept = pd.Series(rng.integers(1, 4, len(items)), index=items["item_id"])
    votes = votes[votes.groupby("item_id").cumcount().to_numpy() < votes["item_id"].map(kept)]
    votes = votes.assign(label=votes["annotator_label"].astype(str)).reset_index(drop=True)
    votes = votes.assign(order=np.arange(len(votes)), round_id=1)
    features = [c for c in items.columns if c.startswith("f_")]
    rows = (
        items[["item_id", *features]]
        if model == "features"
        else items[["item_id"]].assign(f_noise=rng.random(len(items)))
    )
    truth = items.set_index("item_id")["label"].astype(str)
    consensus = resolve_labels(
        votes,
        pd.Series("train", index=items["item_id"]),
        rows,
        classes=("0", "1"),
        params=MergeParams(),
        train_params=TrainParams(num_threads=1),
        random_state=0,
    ).labels.set_index("item_id")["label"]
    majority = get_majority_labels(votes).set_index("item_id")["label"]
    right = (consensus == truth.loc[consensus.index]).mean()
    assert right >= (majority == truth.loc[majority.index]).mean()
