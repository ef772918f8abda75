"""ActiveLab's relabel-or-label-new plan (tasks/activelab.py) on small, known cases."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from tasks.activelab import RelabelPlan, get_relabel_plan

CLASSES = ("a", "b", "c")
NONE = pd.Series([], dtype="string")


def _probs(true: np.ndarray, confidence: float) -> np.ndarray:
    """Rows putting ``confidence`` on the class of ``true``, the rest shared evenly."""
    probs = np.full((true.size, len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1))
    probs[np.arange(true.size), true] = confidence
    return probs


def _label_probs(ids: list[str], probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(probs, columns=list(CLASSES)).assign(item_id=ids)[["item_id", *CLASSES]]


@pytest.fixture
def labeled():
    """60 training items, each with one vote from annotator x that the model agrees with at
    0.95, except item i0, whose vote says b where the model is sure of a."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, len(CLASSES), 60)
    true[0] = 0
    ids = [f"i{k}" for k in range(true.size)]
    votes = pd.DataFrame({"item_id": ids, "annotator": "x", "label": np.take(CLASSES, true)})
    votes.loc[0, "label"] = "b"
    return votes, _label_probs(ids, _probs(true, 0.95)), true


def _plan(votes, label_probs, candidates, **kw) -> RelabelPlan:
    options = {"classes": CLASSES, "n_places": 10, "max_relabel": 5, "exclude": NONE, **kw}
    return get_relabel_plan(votes, label_probs, candidates, **options)


def test_a_vote_against_a_confident_model_goes_back_and_agreed_items_do_not(labeled):
    votes, label_probs, _ = labeled
    candidates = _probs(np.arange(20) % 3, 0.7)  # new items the model is fairly sure of
    before = copy.deepcopy((votes, label_probs, candidates))
    plan = _plan(votes, label_probs, candidates)
    assert plan.relabel_ids.tolist() == ["i0"]
    assert plan.n_new == 9
    scores = plan.scores_labeled
    assert len(scores) == 60 and scores.between(0, 1).all()
    assert scores.idxmin() == "i0"
    assert scores.drop("i0").min() > plan.threshold > scores["i0"]
    # inputs untouched
    pd.testing.assert_frame_equal(votes, before[0])
    pd.testing.assert_frame_equal(label_probs, before[1])
    np.testing.assert_array_equal(candidates, before[2])


def test_all_places_go_to_new_items_when_the_labels_are_clean(labeled):
    votes, label_probs, true = labeled
    votes = votes.assign(label=np.take(CLASSES, true))
    plan = _plan(votes, label_probs, _probs(np.arange(20) % 3, 0.7))
    assert plan.relabel_ids.empty and plan.n_new == 10
    assert plan.threshold is not None and plan.threshold < plan.scores_labeled.min()


def test_excluded_items_are_scored_but_never_sent_back(labeled):
    votes, label_probs, _ = labeled
    plan = _plan(votes, label_probs, _probs(np.arange(20) % 3, 0.7), exclude=pd.Series(["i0"]))
    assert plan.relabel_ids.empty and plan.n_new == 10
    assert "i0" in plan.scores_labeled.index


def test_relabels_are_capped_lowest_score_first(labeled):
    votes, label_probs, _ = labeled
    wrong = ["i0", "i1", "i2", "i3"]
    flipped = votes["item_id"].isin(wrong)
    shift = {"a": "b", "b": "c", "c": "a"}
    votes = votes.assign(label=votes["label"].where(~flipped, votes["label"].map(shift)))
    votes.loc[0, "label"] = "b"
    plan = _plan(votes, label_probs, _probs(np.arange(20) % 3, 0.7), max_relabel=2)
    assert len(plan.relabel_ids) == 2 and set(plan.relabel_ids) <= set(wrong)
    scores = plan.scores_labeled.loc[plan.relabel_ids.tolist()]
    assert scores.is_monotonic_increasing
    assert plan.n_new == 8
    none = _plan(votes, label_probs, _probs(np.arange(20) % 3, 0.7), max_relabel=0)
    assert none.relabel_ids.empty and none.n_new == 10


def test_several_annotators_and_several_votes(labeled):
    """Items with two or three votes: votes that agree with a confident model make an item
    surer than one vote does; an item whose two votes disagree goes back first."""
    votes, label_probs, true = labeled
    votes = votes.assign(label=np.take(CLASSES, true))
    second = votes.iloc[1:40].assign(annotator="y")
    third = votes.iloc[20:40].assign(annotator="z")
    votes.loc[50, "label"] = CLASSES[(true[50] + 1) % 3]  # x is wrong on i50, y is right
    split = pd.DataFrame({"item_id": ["i50"], "annotator": ["y"], "label": [CLASSES[true[50]]]})
    every = pd.concat([votes, second, third, split], ignore_index=True)
    plan = _plan(every, label_probs, np.empty((0, 3)), n_places=1)
    scores = plan.scores_labeled
    assert scores.idxmin() == "i50"
    assert plan.relabel_ids.tolist() == ["i50"]
    assert scores.loc[["i25", "i30"]].min() > scores.loc[["i45", "i55"]].max()
    # with several votes, the model's and annotators' weights are estimated: new items the
    # model is fairly sure of still score below every item whose votes agree with it
    plan = _plan(every, label_probs, _probs(np.arange(20) % 3, 0.9), n_places=5)
    assert plan.threshold < scores.drop("i50").min()


def test_a_single_annotator_with_no_candidates_fills_places_with_relabels(labeled):
    votes, label_probs, _ = labeled
    plan = _plan(votes, label_probs, np.empty((0, 3)), n_places=3)
    assert plan.relabel_ids.tolist()[0] == "i0"
    assert len(plan.relabel_ids) == 3 and plan.n_new == 0


def test_a_class_nobody_predicted_and_nan_probabilities(labeled):
    votes, label_probs, true = labeled
    # the model never predicts c (probability exactly 0), yet i0's vote says c
    ab = np.where(true == 2, 0, true)
    probs = np.zeros((ab.size, 3))
    probs[np.arange(ab.size), ab] = 0.95
    probs[np.arange(ab.size), 1 - ab] = 0.05
    label_probs = _label_probs(label_probs["item_id"].tolist(), probs)
    label_probs.loc[5, ["a", "b", "c"]] = np.nan  # an item flag could not score
    votes = votes.assign(label=np.take(CLASSES, ab))
    votes.loc[0, "label"] = "c"
    candidates = _probs(np.arange(20) % 2, 0.7)
    candidates[3] = np.nan
    plan = _plan(votes, label_probs, candidates)
    assert np.isfinite(plan.scores_labeled).all()
    assert "i5" not in plan.scores_labeled.index and len(plan.scores_labeled) == 59
    assert plan.relabel_ids.tolist() == ["i0"]
    assert np.isfinite(plan.threshold)


def test_votes_for_unknown_classes_and_items_without_probabilities_are_left_out(labeled):
    votes, label_probs, _ = labeled
    extra = pd.DataFrame(
        {"item_id": ["i1", "new-item"], "annotator": ["y", "x"], "label": ["zebra", "a"]}
    )
    plan = _plan(pd.concat([votes, extra]), label_probs, _probs(np.arange(20) % 3, 0.7))
    assert "new-item" not in plan.scores_labeled.index
    assert plan.relabel_ids.tolist() == ["i0"]


def test_nothing_labeled_or_nothing_at_all():
    empty_votes = pd.DataFrame(columns=["item_id", "annotator", "label"])
    empty_probs = pd.DataFrame(columns=["item_id", *CLASSES])
    plan = _plan(empty_votes, empty_probs, _probs(np.arange(4) % 3, 0.7), n_places=3)
    assert plan.relabel_ids.empty and plan.n_new == 3 and plan.scores_labeled.empty
    plan = _plan(empty_votes, empty_probs, np.empty((0, 3)), n_places=3)
    assert plan.n_new == 3 and plan.threshold is None
    assert _plan(empty_votes, empty_probs, np.empty((0, 3)), n_places=0).threshold is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_places": -1}, "n_places"),
        ({"max_relabel": 1.5}, "max_relabel"),
        ({"candidate_probs": np.ones((2, 2))}, "candidate_probs"),
        ({"classes": ("a",)}, "classes"),
        ({"label_probs": "drop_c"}, "label_probs"),
        ({"votes": "duplicate"}, "votes"),
    ],
)
def test_bad_arguments_are_named(labeled, change, message):
    votes, label_probs, _ = labeled
    args = {
        "votes": votes,
        "label_probs": label_probs,
        "candidate_probs": _probs(np.arange(4) % 3, 0.7),
        "classes": CLASSES,
        "n_places": 3,
        "max_relabel": 1,
        "exclude": NONE,
    }
    args.update(change)
    if change.get("label_probs") == "drop_c":
        args["label_probs"] = label_probs.drop(columns=["c"])
    if change.get("votes") == "duplicate":
        args["votes"] = pd.concat([votes, votes.head(1)])
    with pytest.raises(ValueError, match=message):
        get_relabel_plan(
            args.pop("votes"), args.pop("label_probs"), args.pop("candidate_probs"), **args
        )
