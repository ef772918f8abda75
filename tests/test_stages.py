"""Every stage's pure function on small data: what it returns, and that it leaves its inputs
alone (the contract every stage obeys)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import DATASETS

from tasks import schema
from tasks.evaluate import evaluate_models, get_cached_probs, get_classification_metrics
from tasks.export import export_batch, get_round_report
from tasks.features import get_feature_frame
from tasks.flag import (
    append_round,
    find_mislabels,
    find_mislabels_from_probs,
    get_flag_records,
    get_label_probs,
    get_unchecked_reason,
)
from tasks.merge import (
    get_current_labels,
    get_label_events,
    get_resolution_events,
    get_strict_majority,
    get_vote_agreement,
    get_votes,
    resolve_labels,
)
from tasks.model import (
    encode_labels,
    fit_booster,
    get_class_weights,
    get_forest_matrix,
    get_forest_out_of_fold_pred_probs,
    get_lgb_params,
    get_min_child_samples,
    get_out_of_fold_pred_probs,
    predict_proba,
)
from tasks.params import (
    AnnotationParams,
    EvaluateParams,
    ExportParams,
    FlagParams,
    MergeParams,
    ScoreParams,
    SelectParams,
    TrainParams,
    ValidateParams,
)
from tasks.score import (
    ScoringInputs,
    get_chunk_scores,
    get_class_counts,
    get_committee,
    get_embedding,
    get_embedding_stats,
    get_pool_scores,
    needs_predictions,
)
from tasks.selection import (
    add_predictions,
    gather_scores,
    get_batch_sizes,
    get_keep_count,
    get_relabel_candidates,
    select_batch,
)
from tasks.simulate import answer_batch
from tasks.strategies import REGISTRY, get_strategy, get_strategy_info
from tasks.summaries import RoundSummaries
from tasks.train import get_training_weights, train_model
from tasks.validate import validate_labels

AS_OF = pd.Timestamp("2026-06-01T00:00:00Z")


@pytest.fixture(scope="module")
def satimage():
    raw = pd.read_parquet(DATASETS / "satimage.parquet").iloc[:600]
    rows = raw.drop(columns=["label"]).assign(item_id=[str(i) for i in range(len(raw))])
    rows = rows[["item_id", *[c for c in rows.columns if c != "item_id"]]]
    rows["item_id"] = rows["item_id"].astype("string")
    classes = tuple(str(c) for c in sorted(raw["label"].unique()))
    labels = raw["label"].astype(str).reset_index(drop=True).astype("string")
    return rows.reset_index(drop=True), labels, classes


def frozen_copy(*objs):
    return copy.deepcopy(objs)


def assert_unchanged(before, after):
    for a, b in zip(before, after, strict=True):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        elif isinstance(a, pd.Series):
            pd.testing.assert_series_equal(a, b)
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


# -- validate --------------------------------------------------------------------------------
def _rows(records):
    frame = pd.DataFrame(
        records, columns=["item_id", "label", "annotator", "labeled_at", "comment", "malformed"]
    )
    frame.insert(0, "source_row", np.arange(1, len(frame) + 1))
    frame["source_file"] = "f.csv"
    frame["source_sha256"] = "abc"
    return frame.astype({c: "string" for c in frame.columns if c != "source_row"})


def test_validate_accepts_good_rows_and_gives_each_bad_row_its_reason():
    rows = _rows(
        [
            ("1", "a", "ann", "2026-05-01T10:00:00Z", None, None),
            ("1", "a", "ann", "2026-05-01T10:00:00Z", None, None),  # duplicate
            ("2", "b", "ann", "2026-05-01T10:00:00+02:00", "hm", None),
            ("3", "a", "x", "2026-05-01", None, None),
            ("3", "b", "x", "2026-05-01", None, None),  # same annotator, two labels
            ("9", "a", "ann", "2026-05-01T10:00:00Z", None, None),  # not in pool
            ("4", "a", "ann", "2026-05-01T10:00:00Z", None, None),  # never issued
            ("2", "zebra", "bob", "2026-05-01T10:00:00Z", None, None),
            ("2", "a", "eve", "soon", None, None),
            ("2", "a", "max", "2030-01-01T00:00:00Z", None, None),
            ("2", None, "kim", "2026-05-01T10:00:00Z", None, None),
            ("2", "a", "lee", "2026-05-01T10:00:00Z", None, "has 7 fields, the header has 4"),
        ]
    )
    before = frozen_copy(rows)
    result = validate_labels(
        rows,
        pool_ids=pd.Series(["1", "2", "3", "4"], dtype="string"),
        issued_ids=pd.Series(["1", "2", "3"], dtype="string"),
        classes=("a", "b"),
        as_of=AS_OF,
        params=ValidateParams(),
    )
    assert_unchanged(before, (rows,))
    assert len(result.accepted) + len(result.quarantined) == len(rows)
    assert result.accepted["source_row"].tolist() == [1, 3]
    assert result.accepted["labeled_at"].tolist() == [
        "2026-05-01T10:00:00.000000Z",
        "2026-05-01T08:00:00.000000Z",
    ]
    reasons = dict(
        zip(result.quarantined["source_row"], result.quarantined["reason_code"], strict=True)
    )
    assert reasons == {
        2: "duplicate_row",
        4: "conflicting_labels",
        5: "conflicting_labels",
        6: "unknown_item",
        7: "not_issued",
        8: "unknown_class",
        9: "bad_timestamp",
        10: "future_timestamp",
        11: "missing_label",
        12: "malformed_row",
    }
    sentences = dict(
        zip(result.quarantined["source_row"], result.quarantined["reason"], strict=True)
    )
    assert "'zebra'" in sentences[8] and "['a', 'b']" in sentences[8]
    assert "f.csv:1" in sentences[2]


def test_new_classes_are_kept_when_the_project_allows_them():
    rows = _rows([("1", "bird", "ann", "2026-05-01T10:00:00Z", None, None)])
    kwargs = dict(
        pool_ids=pd.Series(["1"], dtype="string"),
        issued_ids=pd.Series(["1"], dtype="string"),
        classes=("a", "b"),
        as_of=AS_OF,
        params=ValidateParams(),
    )
    strict = validate_labels(rows, **kwargs)
    assert strict.quarantined["reason_code"].tolist() == ["unknown_class"]
    lenient = validate_labels(rows, allow_new_classes=True, **kwargs)
    assert lenient.accepted["label"].tolist() == ["bird"]


def test_validate_needs_an_aware_clock():
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_labels(
            _rows([]),
            pool_ids=pd.Series([], dtype="string"),
            issued_ids=pd.Series([], dtype="string"),
            classes=("a", "b"),
            as_of=pd.Timestamp("2026-01-01"),
            params=ValidateParams(),
        )


# -- merge -----------------------------------------------------------------------------------
def _accepted(records):
    frame = pd.DataFrame(records, columns=["item_id", "label", "annotator", "labeled_at"])
    return frame.assign(
        comment=pd.NA,
        source_file="f.csv",
        source_sha256="abc",
        source_row=np.arange(1, len(frame) + 1),
    )


def _issued(pairs):
    return schema.conform(
        pd.DataFrame(
            {
                "item_id": [p[0] for p in pairs],
                "split": [p[1] for p in pairs],
                "round_id": 1,
                "reason": "seed",
                "utility": 0.0,
            }
        ),
        schema.ISSUED,
    )


def _ledger_after(rounds):
    """A ledger built round by round from lists of accepted rows."""
    ledger = schema.empty(schema.LEDGER)
    for round_id, records in rounds:
        events = get_label_events(
            ledger, _accepted(records), schema.empty(schema.QUARANTINED), round_id=round_id
        )
        ledger = append_round(
            ledger,
            schema.number_events(events, round_id=round_id),
            pd.DataFrame(columns=["round_id"]),
            round_id=round_id,
        )
    return ledger


def _majority(ledger, issued):
    votes = get_votes(ledger)
    split = issued.drop_duplicates("item_id").set_index("item_id")["split"]
    consensus = resolve_labels(
        votes,
        split,
        None,
        classes=("a", "b"),
        params=MergeParams(),
        train_params=TrainParams(),
        random_state=0,
    )
    return get_current_labels(
        votes, consensus.labels, split, votes.groupby("item_id")["round_id"].max()
    )


def test_label_events_and_rejections():
    rejected = schema.conform(
        pd.DataFrame(
            [
                {c: pd.NA for c in schema.QUARANTINED}
                | {
                    "source_file": "g.csv",
                    "source_sha256": "x",
                    "source_row": 3,
                    "item_id": "9",
                    "reason_code": "unknown_item",
                    "reason": "not in the pool",
                }
            ]
        ),
        schema.QUARANTINED,
    )
    ledger = _ledger_after([(2, [("1", "a", "ann", "t1")])])
    before = frozen_copy(ledger, rejected)
    events = get_label_events(
        ledger,
        _accepted([("1", "b", "ann", "t2"), ("1", "b", "bob", "t2")]),
        rejected,
        round_id=3,
    )
    assert_unchanged(before, (ledger, rejected))
    assert events["event"].tolist() == ["relabel", "label", "rejected"]
    assert events["outcome"].tolist() == ["accepted", "accepted", "unknown_item"]
    assert set(events["round_id"]) == {3}


def test_appending_a_round_twice_keeps_one_copy():
    ledger = _ledger_after([(2, [("1", "a", "ann", "t1"), ("2", "b", "ann", "t1")])])
    assert ledger["event_id"].tolist() == ["r0002-000001", "r0002-000002"]
    events = schema.number_events(
        get_label_events(
            ledger,
            _accepted([("1", "b", "ann", "t2")]),
            schema.empty(schema.QUARANTINED),
            round_id=3,
        ),
        round_id=3,
    )
    once = append_round(ledger, events, pd.DataFrame(columns=["round_id"]), round_id=3)
    twice = append_round(once, events, pd.DataFrame(columns=["round_id"]), round_id=3)
    pd.testing.assert_frame_equal(once, twice)
    pd.testing.assert_frame_equal(once.iloc[:2], ledger)


def test_current_labels_use_latest_vote_per_annotator_majority_and_latest_tie():
    ledger = _ledger_after(
        [
            (
                2,
                [
                    ("1", "a", "ann", "t"),
                    ("1", "b", "bob", "t"),
                    ("2", "a", "ann", "t"),
                    ("2", "a", "bob", "t"),
                    ("2", "b", "cid", "t"),
                    ("3", "a", "ann", "t"),
                ],
            ),
            (3, [("3", "b", "ann", "t")]),
        ]
    )
    issued = _issued([("1", "train"), ("2", "test"), ("3", "train")])
    before = frozen_copy(ledger, issued)
    current = _majority(ledger, issued)
    assert_unchanged(before, (ledger, issued))
    got = current.set_index("item_id")
    assert got.loc["1", "label"] == "b"  # 1-1 tie: the latest vote wins
    assert got.loc["2", "label"] == "a" and got.loc["2", "agreement"] == pytest.approx(2 / 3)
    assert got.loc["3", "label"] == "b" and got.loc["3", "n_votes"] == 1  # relabel replaced
    assert got.loc["2", "split"] == "test"
    assert set(got["method"]) == {"majority"}


def test_current_labels_refuse_items_never_issued():
    ledger = _ledger_after([(2, [("7", "a", "x", "t")])])
    with pytest.raises(ValueError, match="never issued"):
        _majority(ledger, _issued([("1", "train")]))


def test_vote_agreement_compares_model_and_annotators_with_the_other_votes():
    votes = pd.DataFrame(
        {
            "item_id": ["1", "1", "1", "2", "2", "3", "3", "4"],
            "label": ["a", "a", "b", "a", "a", "a", "b", "b"],
        }
    )
    # references (strict majority of the other votes): item 1's b-vote -> a (its a-votes see
    # a tie: left out); item 2 -> a, a; item 3 -> b, a; item 4 has one vote: left out
    predicted = pd.Series(["a", "a", "a", "b"], index=["1", "2", "3", "4"])
    annotators, model = get_vote_agreement(votes, predicted, classes=("a", "b"))
    assert annotators == pytest.approx(2 / 5)
    assert model == pytest.approx(4 / 5)
    none = get_vote_agreement(votes[votes["item_id"] == "4"], predicted, classes=("a", "b"))
    assert np.isnan(none).all()
    strict = get_strict_majority(votes)
    assert strict.to_dict() == {"1": True, "2": True, "3": False, "4": False}
    with pytest.raises(ValueError, match="not among the classes"):
        get_vote_agreement(votes, predicted, classes=("a", "c"))


def _crowd_votes(truth: pd.Series, accuracy: list[float], seed: int) -> pd.DataFrame:
    """Each annotator votes on every item: right with its accuracy, else another class."""
    rng = np.random.default_rng(seed)
    classes = np.sort(truth.unique())
    rows = []
    for k, acc in enumerate(accuracy):
        for item, label in truth.items():
            wrong = classes[classes != label]
            vote = label if rng.random() < acc else wrong[rng.integers(wrong.size)]
            rows.append((item, f"ann{k}", vote))
    votes = pd.DataFrame(rows, columns=["item_id", "annotator", "label"])
    return votes.assign(order=np.arange(len(votes)), round_id=1)


def _resolve(votes, rows, classes, consensus):
    split = pd.Series("train", index=rows["item_id"].to_numpy())
    return resolve_labels(
        votes,
        split,
        rows,
        classes=classes,
        params=MergeParams(consensus=consensus, crowdlab_min_items=10),
        train_params=TrainParams(num_threads=1),
        random_state=0,
    ).labels.set_index("item_id")


def test_a_model_weaker_than_the_annotators_never_overrules_their_strict_majority(satimage):
    rows, labels, classes = satimage
    rows, truth = rows.iloc[:300], labels.iloc[:300].set_axis(rows["item_id"].iloc[:300])
    votes = _crowd_votes(truth, [0.85, 0.8, 0.75], seed=1)
    noise = np.random.default_rng(0).random((len(rows), 3))
    weak = pd.DataFrame(noise, columns=["n1", "n2", "n3"]).assign(item_id=rows["item_id"])
    strict = get_strict_majority(votes)
    majority = votes.groupby("item_id")["label"].agg(lambda s: s.value_counts().index[0])
    auto = _resolve(votes, weak[["item_id", "n1", "n2", "n3"]], classes, "auto")
    kept = strict[strict].index
    assert (auto.loc[kept, "label"] == majority.loc[kept]).all()
    # what auto prevents: CROWDLAB as it comes overrules some (23 here) with the noise model
    unguarded = _resolve(votes, weak[["item_id", "n1", "n2", "n3"]], classes, "crowdlab")
    assert (unguarded.loc[kept, "label"] != majority.loc[kept]).any()
    assert (auto["label"] == truth.loc[auto.index]).mean() >= (
        majority.loc[auto.index] == truth.loc[auto.index]
    ).mean()


def test_a_class_with_too_few_items_keeps_its_majority_and_crowdlab_weighs_the_rest(satimage):
    rows, labels, classes = satimage
    truth = labels.set_axis(rows["item_id"])
    rare = classes[0]
    keep = ~truth.eq(rare).to_numpy()
    keep[np.flatnonzero(truth.eq(rare).to_numpy())[:2]] = True  # 2 items of the first class
    rows, truth = rows[keep].reset_index(drop=True), truth[keep]
    votes = _crowd_votes(truth, [1.0, 1.0, 0.7], seed=2)  # majority = truth
    majority = votes.groupby("item_id")["label"].agg(lambda s: s.value_counts().index[0])
    resolved = _resolve(votes, rows, classes, "crowdlab")
    # before, one class under merge.cv_folds items sent every item to majority vote
    assert (resolved["method"] == "crowdlab").any()
    few = majority.index[majority == rare]
    assert 1 <= len(few) < MergeParams().cv_folds
    assert (resolved.loc[few, "method"] == "majority").all()
    assert (resolved.loc[few, "label"] == rare).all()


def test_a_model_better_than_the_annotators_may_overrule_a_majority(satimage):
    rows, labels, classes = satimage
    truth = labels.set_axis(rows["item_id"])
    votes = _crowd_votes(truth, [0.55, 0.5, 0.45], seed=2)
    strict = get_strict_majority(votes)
    majority = votes.groupby("item_id")["label"].agg(lambda s: s.value_counts().index[0])
    auto = _resolve(votes, rows, classes, "auto")
    overruled = strict & (auto["label"] != majority).reindex(strict.index)
    assert overruled.any()
    majority_right = (majority == truth.loc[majority.index]).mean()
    assert (auto["label"] == truth.loc[auto.index]).mean() > majority_right


def test_resolution_and_consensus_events():
    ledger = _ledger_after([(2, [("1", "a", "ann", "t"), ("2", "a", "ann", "t")])])
    issued = _issued([("1", "train"), ("2", "train")])
    flags = get_flag_records(
        pd.DataFrame(
            {
                "item_id": ["1"],
                "given_label": ["a"],
                "suggested_label": ["b"],
                "label_quality": [0.05],
            }
        ),
        round_id=2,
        params=FlagParams(),
    )
    first = get_resolution_events(
        ledger[ledger["event"] == "__none__"],
        flags.iloc[:0],
        ledger,
        _majority(ledger, issued),
        round_id=2,
    )
    assert first["event"].tolist() == ["consensus", "consensus"]
    prior = append_round(
        ledger,
        schema.number_events(first, round_id=2, start=3),
        pd.DataFrame(columns=["round_id"]),
        round_id=2,
    )
    later = _ledger_after(
        [
            (2, [("1", "a", "ann", "t"), ("2", "a", "ann", "t")]),
            (3, [("1", "b", "bob", "t"), ("1", "b", "cid", "t")]),
        ]
    )
    new_votes = later[later["round_id"] == 3]
    events = get_resolution_events(prior, flags, new_votes, _majority(later, issued), round_id=3)
    got = events.set_index("event")
    assert got.loc["resolved", "outcome"] == "changed"
    assert "changed to 'b'" in got.loc["resolved", "detail"]
    assert got.loc["consensus", "detail"].startswith("'a' -> 'b'")


# -- model, flag, train ----------------------------------------------------------------------
@pytest.mark.parametrize(("n", "expected"), [(20, 2), (300, 3), (2_000, 20), (10**6, 20)])
def test_min_child_samples_scales_with_labels(n, expected):
    assert get_min_child_samples(TrainParams(), n) == expected


def test_balanced_class_weights_equalise_class_mass():
    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = get_class_weights(labels, 4, "balanced")
    mass = np.bincount(labels, weights=weights, minlength=4)
    assert mass[:3] == pytest.approx([2.0, 2.0, 2.0]) and mass[3] == 0


def test_a_few_dozen_labels_are_enough_to_split(satimage):
    rows, labels, classes = satimage
    booster, why = train_model(
        rows.iloc[:30],
        labels.iloc[:30],
        np.ones(30),
        classes=classes,
        params=TrainParams(num_boost_round=20),
        random_state=0,
    )
    assert why == ""
    assert booster.num_trees() > 0
    assert any(
        t["tree_structure"].get("split_index") is not None
        for t in booster.dump_model()["tree_info"]
    )


def test_train_is_deterministic_and_leaves_inputs_alone(satimage):
    rows, labels, classes = satimage
    weights = np.ones(len(rows))
    weights[:10] = 0.0
    before = frozen_copy(rows, labels, weights)
    fit = [
        train_model(
            rows,
            labels,
            weights,
            classes=classes,
            params=TrainParams(num_boost_round=30),
            random_state=3,
        )[0]
        for _ in range(2)
    ]
    assert_unchanged(before, (rows, labels, weights))
    assert fit[0].model_to_string() == fit[1].model_to_string()


def test_train_says_why_when_one_class_only(satimage):
    rows, labels, classes = satimage
    one = labels[labels == labels.iloc[0]].index[:5]
    booster, why = train_model(
        rows.loc[one],
        labels.loc[one],
        np.ones(5),
        classes=classes,
        params=TrainParams(),
        random_state=0,
    )
    assert booster is None and "fewer than two classes" in why


def test_training_weights_come_from_this_rounds_flags():
    flags = get_flag_records(
        pd.DataFrame(
            {
                "item_id": ["2"],
                "given_label": ["a"],
                "suggested_label": ["b"],
                "label_quality": [0.01],
            }
        ),
        round_id=4,
        params=FlagParams(handling="downweight", downweight=0.25),
    )
    train = pd.DataFrame({"item_id": ["1", "2", "3"]})
    assert get_training_weights(train, flags, round_id=4).tolist() == [1.0, 0.25, 1.0]
    assert get_training_weights(train, flags, round_id=5).tolist() == [1.0, 1.0, 1.0]


def test_flag_finds_injected_label_errors(satimage):
    rows, labels, classes = satimage
    rng = np.random.default_rng(0)
    noisy = labels.copy()
    wrong = rng.choice(len(noisy), size=24, replace=False)
    for i in wrong:
        noisy.iloc[i] = next(c for c in classes if c != labels.iloc[i])
    before = frozen_copy(rows, noisy)

    def find(**kw):
        return find_mislabels(
            rows,
            noisy,
            classes=classes,
            params=FlagParams(max_fraction=0.1),
            train_params=TrainParams(num_boost_round=50),
            random_state=0,
            **kw,
        )

    found, why = find()
    assert_unchanged(before, (rows, noisy))
    assert why == ""
    assert 0 < len(found) <= 60
    hits = set(found["item_id"]) & {rows["item_id"].iloc[i] for i in wrong}
    assert len(hits) / len(found) >= 0.5  # most flags are real errors (4% of labels wrong)
    assert found["label_quality"].is_monotonic_increasing
    assert not found["confirmed"].any()
    # the same labels, now confirmed by a second opinion: still doubted, never flagged
    confirmed = found["item_id"].head(5)
    again, _ = find(confirmed_ids=confirmed)
    assert set(again.loc[again["confirmed"], "item_id"]) == set(confirmed)
    records = get_flag_records(again, round_id=4, params=FlagParams())
    assert not set(records["item_id"]) & set(confirmed)
    assert len(records) == len(found) - len(confirmed)  # 34 found (22 of the 24 wrong)


def test_flag_skips_with_a_reason_on_too_few_labels(satimage):
    rows, labels, classes = satimage
    found, why = find_mislabels(
        rows.iloc[:20],
        labels.iloc[:20],
        classes=classes,
        params=FlagParams(),
        train_params=TrainParams(),
        random_state=0,
    )
    assert found.empty and "fewer than flag.min_labels" in why


def test_label_probs_are_out_of_fold_one_column_per_class(satimage):
    rows, labels, classes = satimage
    missing = classes[-1]  # no training label of the last class
    keep = (labels != missing).to_numpy()
    rows, labels = rows[keep].reset_index(drop=True), labels[keep].reset_index(drop=True)
    before = frozen_copy(rows, labels)
    probs, why = get_label_probs(
        rows,
        labels,
        classes=classes,
        params=FlagParams(),
        train_params=TrainParams(num_threads=1),
        random_state=0,
    )
    assert_unchanged(before, (rows, labels))
    assert why == ""
    assert probs.columns.tolist() == ["item_id", *classes]
    assert probs["item_id"].tolist() == rows["item_id"].tolist()
    np.testing.assert_allclose(probs[list(classes)].sum(axis=1), 1.0)
    assert (probs[missing] == 0).all()
    # out of fold: each item is predicted by a model that never saw it, so some disagree
    predicted = probs[list(classes)].idxmax(axis=1)
    assert 0.5 < (predicted == labels).mean() < 1.0
    empty, why = get_label_probs(
        rows.head(20),
        labels.head(20),
        classes=classes,
        params=FlagParams(),
        train_params=TrainParams(num_threads=1),
        random_state=0,
    )
    assert empty.empty and empty.columns.tolist() == ["item_id", *classes]
    assert "fewer than flag.min_labels" in why


def test_a_class_with_too_few_labels_is_left_unchecked_and_the_others_are_checked(satimage):
    rows, labels, classes = satimage
    rare = classes[0]
    # keep 1 label of the first class and 3 of the second: before, one class with a single
    # label stopped the check of every label
    keep = np.ones(len(labels), dtype=bool)
    keep[np.flatnonzero(labels == rare)[1:]] = False
    keep[np.flatnonzero(labels == classes[1])[3:]] = False
    rows, labels = rows[keep].reset_index(drop=True), labels[keep].reset_index(drop=True)
    noisy = labels.copy()
    common = np.flatnonzero(~labels.isin([rare, classes[1]]).to_numpy())
    wrong = np.random.default_rng(0).choice(common, size=20, replace=False)
    for i in wrong:  # 20 wrong labels among the common classes
        noisy.iloc[i] = next(c for c in classes[2:] if c != labels.iloc[i])
    params = FlagParams(max_fraction=1.0)
    probs, why = get_label_probs(
        rows,
        noisy,
        classes=classes,
        params=params,
        train_params=TrainParams(num_threads=1),
        random_state=0,
    )
    assert why == ""
    unchecked = probs[list(classes)].isna().all(axis=1).to_numpy()
    assert unchecked.tolist() == noisy.isin([rare, classes[1]]).tolist()  # 1 and 3 labels
    np.testing.assert_allclose(probs.loc[~unchecked, list(classes)].sum(axis=1), 1.0)
    assert (probs.loc[~unchecked, rare] == 0).all()
    found = find_mislabels_from_probs(probs, noisy, classes=classes, params=params)
    assert not set(rows["item_id"][unchecked]) & set(found["item_id"])
    hits = set(rows["item_id"].iloc[wrong]) & set(found["item_id"])
    assert len(hits) >= 10 and len(hits) / len(found) >= 0.5
    assert get_unchecked_reason(probs, noisy, classes=classes, params=params) == (
        "4 labels of classes with fewer than flag.cv_folds=5 training labels "
        f"('{rare}' 1, '{classes[1]}' 3)"
    )
    # fewer than two classes with enough labels: nothing is checked, and why
    few = np.concatenate(
        [
            np.flatnonzero((noisy == classes[2]).to_numpy())[:20],
            np.flatnonzero((noisy == classes[1]).to_numpy()),  # 3
            np.flatnonzero((noisy == rare).to_numpy()),  # 1
        ]
    )
    empty, why = get_label_probs(
        rows.iloc[few],
        noisy.iloc[few],
        classes=classes,
        params=FlagParams(min_labels=10),
        train_params=TrainParams(num_threads=1),
        random_state=0,
    )
    assert why == "a single class has flag.cv_folds=5 training labels or more"
    assert empty.empty


def test_forest_matrix_keeps_numbers_category_codes_and_missing_values():
    frame = pd.DataFrame(
        {
            "x": [1.5, np.nan, 3.0],
            "flag": [True, False, True],
            "kind": pd.Categorical(["b", None, "a"]),
        }
    )
    matrix = get_forest_matrix(frame)
    np.testing.assert_array_equal(
        matrix, np.array([[1.5, 1.0, 1.0], [np.nan, 0.0, np.nan], [3.0, 1.0, 0.0]])
    )
    assert get_forest_matrix(frame[[]]).shape == (3, 0)


def test_label_probs_are_the_mean_of_lightgbm_and_a_forest_on_the_same_folds(satimage):
    rows, labels, classes = satimage
    train = TrainParams(num_threads=1)
    codes = encode_labels(labels, classes)
    features = get_feature_frame(rows)
    settings = {"n_classes": len(classes), "n_folds": 5, "random_state": 3}
    unweighted = train.model_copy(update={"class_weight": "none"})  # as flag fits it
    lightgbm = get_out_of_fold_pred_probs(features, codes, train_params=unweighted, **settings)
    forest = get_forest_out_of_fold_pred_probs(features, codes, n_trees=20, n_jobs=1, **settings)
    np.testing.assert_allclose(forest.sum(axis=1), 1.0)
    assert 0.5 < (forest.argmax(axis=1) == codes).mean() < 1.0  # out of fold

    def probs(trees: int, below: int = 3000) -> np.ndarray:
        frame, why = get_label_probs(
            rows,
            labels,
            classes=classes,
            params=FlagParams(forest_trees=trees, forest_below_labels=below),
            train_params=train,
            random_state=3,
        )
        assert why == ""
        return frame[list(classes)].to_numpy()

    np.testing.assert_allclose(probs(0), lightgbm)
    np.testing.assert_allclose(probs(20), (lightgbm + forest) / 2)
    # from flag.forest_below_labels labels on, LightGBM's alone
    np.testing.assert_allclose(probs(20, below=len(labels)), lightgbm)


def test_the_forest_cuts_the_flags_cleanlabs_count_adds_for_lightgbms_errors():
    """At 10% wrong labels cleanlab's count on LightGBM's probabilities alone overshoots
    (bench/README, "Flags: a forest beside LightGBM"); beside a forest, the flags are fewer and
    more of them are wrong labels, on a sample of satimage."""
    raw = pd.read_parquet(DATASETS / "satimage.parquet").sample(1500, random_state=0)
    classes = tuple(str(c) for c in sorted(raw["label"].unique()))
    true = np.searchsorted(classes, raw["label"].astype(str).to_numpy())
    rng = np.random.default_rng(0)
    given = true.copy()
    wrong = rng.random(true.size) < 0.1
    given[wrong] = (true[wrong] + rng.integers(1, len(classes), wrong.sum())) % len(classes)
    rows = raw.drop(columns=["label"]).reset_index(drop=True)
    rows.insert(0, "item_id", pd.array([str(i) for i in range(len(rows))], dtype="string"))
    labels = pd.Series(np.take(classes, given), dtype="string")

    def flags(trees: int) -> tuple[int, float]:
        found, why = find_mislabels(
            rows,
            labels,
            classes=classes,
            params=FlagParams(forest_trees=trees),
            train_params=TrainParams(num_threads=1),
            random_state=0,
        )
        assert why == ""
        hits = wrong[found["item_id"].astype(int).to_numpy()].sum()
        return len(found), hits / len(found)

    (alone, alone_precision), (both, both_precision) = flags(0), flags(100)
    assert alone > 1.2 * wrong.sum() and alone_precision < 0.75
    assert both < alone and both_precision > alone_precision + 0.1


def _confident_probs(true: np.ndarray, k: int, seed: int) -> pd.DataFrame:
    """Probabilities putting 0.6-0.95 on the true class of each row."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.6, 0.95, true.size)
    probs = np.repeat(((1 - top) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(true.size), true] = top
    names = [f"c{j}" for j in range(k)]
    frame = pd.DataFrame(probs, columns=names)
    frame.insert(0, "item_id", [str(i) for i in range(true.size)])
    return frame


def test_flag_count_follows_cleanlabs_own_estimate():
    from cleanlab.count import num_label_issues

    k, n = 4, 400
    classes = tuple(f"c{j}" for j in range(k))
    true = np.resize(np.arange(k), n)
    probs = _confident_probs(true, k, seed=0)
    given = true.copy()
    wrong = np.arange(0, n, 10)  # 10% of the labels
    given[wrong] = (true[wrong] + 1) % k
    labels = pd.Series(np.take(classes, given), dtype="string")
    before = frozen_copy(probs, labels)
    found = find_mislabels_from_probs(
        probs, labels, classes=classes, params=FlagParams(max_fraction=1.0)
    )
    assert_unchanged(before, (probs, labels))
    estimate = num_label_issues(given, probs[list(classes)].to_numpy())
    assert len(found) == estimate > 0
    assert set(found["item_id"]) <= {str(i) for i in wrong}  # the lowest qualities are wrong
    assert found["label_quality"].is_monotonic_increasing
    assert (found["suggested_label"] == np.take(classes, true[found["item_id"].astype(int)])).all()
    # the bound keeps the most doubtful
    capped = find_mislabels_from_probs(
        probs, labels, classes=classes, params=FlagParams(max_fraction=0.05)
    )
    assert len(capped) == 20 and capped["item_id"].tolist() == found["item_id"].head(20).tolist()
    # the older filters still work, and a clean label set gives few flags
    older = find_mislabels_from_probs(
        probs, labels, classes=classes, params=FlagParams(filter_by="prune_by_noise_rate")
    )
    assert set(older["item_id"]) <= {str(i) for i in wrong}
    clean = pd.Series(np.take(classes, true), dtype="string")
    assert find_mislabels_from_probs(probs, clean, classes=classes, params=FlagParams()).empty


# -- evaluate --------------------------------------------------------------------------------
def test_metrics_average_over_classes_present_in_the_test_labels():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    metrics = get_classification_metrics(np.array([0, 1, 1]), probs, ("a", "b", "c"))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert "f1_c" not in metrics


def test_gate_promotes_only_a_candidate_at_least_as_good(satimage):
    rows, labels, classes = satimage

    def fit(n):
        return fit_booster(
            rows.iloc[:n].drop(columns="item_id"),
            np.searchsorted(classes, labels.iloc[:n]),
            params=TrainParams(num_boost_round=30),
            n_classes=len(classes),
            random_state=0,
        )

    strong, weak = fit(400), fit(40)
    test_rows, test_labels = rows.iloc[400:], labels.iloc[400:]
    before = frozen_copy(test_rows, test_labels)
    up = evaluate_models(
        test_rows,
        test_labels,
        candidate=strong,
        champion=weak,
        classes=classes,
        params=EvaluateParams(),
    )
    down = evaluate_models(
        test_rows,
        test_labels,
        candidate=weak,
        champion=strong,
        classes=classes,
        params=EvaluateParams(),
    )
    assert_unchanged(before, (test_rows, test_labels))
    assert up.promote and not down.promote
    assert up.candidate["macro_f1"] > up.champion["macro_f1"]
    first = evaluate_models(
        test_rows,
        test_labels,
        candidate=weak,
        champion=None,
        classes=classes,
        params=EvaluateParams(),
    )
    assert first.promote and first.champion is None


# -- score, select, export, simulate ----------------------------------------------------------
def test_chunk_scores_without_a_model_are_random_and_seeded(satimage):
    rows, _, classes = satimage
    a = get_chunk_scores(rows, None, classes=classes, strategy="margin", random_state=1)
    b = get_chunk_scores(rows, None, classes=classes, strategy="margin", random_state=1)
    pd.testing.assert_frame_equal(a, b)
    assert a["predicted_label"].isna().all() and a["utility"].between(0, 1).all()


def test_chunk_scores_with_a_model(satimage):
    rows, labels, classes = satimage
    booster = fit_booster(
        rows.drop(columns="item_id"),
        np.searchsorted(classes, labels),
        params=TrainParams(num_boost_round=20),
        n_classes=len(classes),
        random_state=0,
    )
    before = frozen_copy(rows)
    scores = get_chunk_scores(rows, booster, classes=classes, strategy="margin", random_state=0)
    assert_unchanged(before, (rows,))
    assert scores["item_id"].tolist() == rows["item_id"].tolist()
    assert set(scores["predicted_label"]) <= set(classes)
    assert scores["utility"].between(-1, 0).all() and scores["confidence"].between(0, 1).all()


@pytest.fixture(scope="module")
def scoring(satimage):
    """A champion on the first 300 rows, and every input a strategy's view is built from."""
    rows, labels, classes = satimage
    train_rows, train_labels = rows.iloc[:300], labels.iloc[:300]
    train_params = TrainParams(num_boost_round=15, num_threads=1)
    champion = fit_booster(
        train_rows.drop(columns="item_id"),
        np.searchsorted(classes, train_labels),
        params=train_params,
        n_classes=len(classes),
        random_state=0,
    )
    committee = get_committee(
        train_rows,
        train_labels,
        np.ones(300),
        classes=classes,
        train_params=train_params,
        params=ScoreParams(committee_size=3),
        random_state=0,
    )
    inputs = ScoringInputs(
        committee=committee,
        embedding_stats=get_embedding_stats(train_rows),
        class_counts=get_class_counts(train_labels, classes),
        annotation=AnnotationParams(),
        batch_size=20,
    )
    return rows, classes, champion, inputs


def test_committee_members_differ_by_seed_and_bagging_and_are_reproducible(satimage, scoring):
    rows, labels, classes = satimage
    _, _, _, inputs = scoring
    texts = [member.model_to_string() for member in inputs.committee]
    assert len(texts) == 3 and len(set(texts)) == 3
    assert "bagging_fraction: 0.8" in texts[0] and "bagging_freq: 1" in texts[0]
    again = get_committee(
        rows.iloc[:300],
        labels.iloc[:300],
        np.ones(300),
        classes=classes,
        train_params=TrainParams(num_boost_round=15, num_threads=1),
        params=ScoreParams(committee_size=3),
        random_state=0,
    )
    assert [member.model_to_string() for member in again] == texts
    one_class = get_committee(
        rows.iloc[:5],
        pd.Series([classes[0]] * 5),
        np.ones(5),
        classes=classes,
        train_params=TrainParams(num_boost_round=2),
        params=ScoreParams(committee_size=2),
        random_state=0,
    )
    assert one_class == ()


def test_bagging_is_off_unless_asked():
    plain = get_lgb_params(TrainParams(), n_labels=100, n_classes=3, random_state=0)
    assert "bagging_fraction" not in plain
    bagged = get_lgb_params(
        TrainParams(),
        n_labels=100,
        n_classes=3,
        random_state=0,
        bagging_fraction=0.5,
        bagging_freq=2,
    )
    assert bagged["bagging_fraction"] == 0.5 and bagged["bagging_freq"] == 2
    with pytest.raises(ValueError, match="together"):
        get_lgb_params(TrainParams(), n_labels=1, n_classes=3, random_state=0, bagging_freq=1)


def test_embedding_is_standardized_with_the_training_rows(satimage):
    rows, labels, classes = satimage
    stats = get_embedding_stats(rows.iloc[:300])
    embedding = get_embedding(rows.iloc[:300], stats)
    assert embedding.shape == (300, rows.shape[1] - 1)
    np.testing.assert_allclose(embedding.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(embedding.std(axis=0), 1.0, atol=1e-9)
    text = rows.iloc[:4].assign(colour=["red", "blue", "red", None], flat=1.0)
    text_stats = get_embedding_stats(text)
    assert "colour" not in text_stats.index and text_stats.loc["flat", "std"] == 1.0
    counts = get_class_counts(pd.Series(["b", "a", "b", "z"]), ("a", "b", "c"))
    np.testing.assert_array_equal(counts, [1.0, 2.0, 0.0])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pool_scores_with_every_strategy(scoring, name):
    rows, classes, champion, inputs = scoring
    chunks = [rows.iloc[i : i + 250] for i in range(0, len(rows), 250)]
    issued = rows["item_id"].iloc[[0, 299, 500]]
    before = frozen_copy(rows, issued)
    scores, n_chunks = get_pool_scores(
        chunks,
        champion,
        classes=classes,
        params=ScoreParams(strategy=name),
        random_state=3,
        inputs=inputs,
        exclude_ids=issued,
        keep_ids=issued.iloc[[1]],
    )
    assert_unchanged(before, (rows, issued))
    assert n_chunks == 3 and scores["item_id"].tolist() == rows["item_id"].tolist()
    assert scores["utility"].isna().tolist() == rows["item_id"].isin(issued).tolist()
    # issued items are predicted only when kept (relabel candidates: select exports them)
    unpredicted = rows["item_id"].isin(issued.iloc[[0, 2]])
    assert scores["confidence"].isna().tolist() == unpredicted.tolist()
    assert scores["predicted_label"].isna().tolist() == unpredicted.tolist()
    again, _ = get_pool_scores(
        chunks,
        champion,
        classes=classes,
        params=ScoreParams(strategy=name),
        random_state=3,
        inputs=inputs,
        exclude_ids=issued,
        keep_ids=issued.iloc[[1]],
    )
    pd.testing.assert_frame_equal(scores, again)


def test_a_spreading_strategy_picks_one_batch_whatever_the_chunks(scoring):
    rows, classes, champion, inputs = scoring
    params = ScoreParams(strategy="diversity")
    kwargs = dict(classes=classes, params=params, random_state=1, inputs=inputs)
    chunked, n_chunks = get_pool_scores([rows.iloc[:200], rows.iloc[200:]], champion, **kwargs)
    whole, _ = get_pool_scores([rows], champion, **kwargs)
    small, _ = get_pool_scores(
        [rows.iloc[i : i + 7] for i in range(0, len(rows), 7)], champion, **kwargs
    )
    # equal margins are ordered by a per-item key, so the cut into chunks changes nothing
    assert n_chunks == 2
    pd.testing.assert_frame_equal(chunked, whole)
    pd.testing.assert_frame_equal(small, whole)
    picked = chunked["utility"] > 0
    assert picked.sum() == inputs.batch_size  # one pick set, not one a chunk
    # the picks are among the diversity_factor * batch_size most uncertain items, and every
    # other item keeps its margin utility
    margin = get_strategy("margin")(
        predict_proba(champion, rows.drop(columns="item_id"), len(classes)), random_state=0
    )
    cutoff = np.sort(margin)[::-1][params.diversity_factor * inputs.batch_size - 1]
    assert (margin[picked.to_numpy()] >= cutoff).all()
    np.testing.assert_allclose(chunked.loc[~picked, "utility"], margin[~picked.to_numpy()])


def test_a_strategy_that_reads_no_probabilities_scores_without_predicting(scoring):
    rows, classes, champion, inputs = scoring
    issued = rows["item_id"].iloc[[0, 7]]
    kwargs = dict(classes=classes, params=ScoreParams(strategy="random"), random_state=5)
    predicted, _ = get_pool_scores([rows], champion, exclude_ids=issued, **kwargs)
    unpredicted, _ = get_pool_scores([rows], champion, exclude_ids=issued, predict=False, **kwargs)
    # the same utilities, NaN on the issued items, and no prediction at all
    pd.testing.assert_series_equal(predicted["utility"], unpredicted["utility"])
    assert unpredicted["utility"].isna().sum() == 2
    assert unpredicted["predicted_label"].isna().all() and unpredicted["confidence"].isna().all()
    assert needs_predictions(get_strategy_info("random"), SelectParams(test_fraction=0.0)) is False
    # a stratified test slice, or any strategy that reads the probabilities, needs them
    assert needs_predictions(get_strategy_info("random"), SelectParams(test_fraction=0.2))
    for name in ("margin", "cost_aware", "diversity"):
        assert needs_predictions(get_strategy_info(name), SelectParams(test_fraction=0.0))
    with pytest.raises(ValueError, match="'margin' reads the predictions"):
        get_chunk_scores(
            rows, champion, classes=classes, strategy="margin", random_state=0, predict=False
        )


def test_select_predicts_the_batch_items_score_left_unpredicted(scoring):
    rows, classes, champion, _ = scoring
    batch = schema.conform(
        pd.DataFrame(
            {
                "item_id": rows["item_id"].iloc[[4, 2, 9]].to_numpy(),
                "split": "train",
                "reason": "active",
                "utility": [0.9, 0.8, 0.7],
                "predicted_label": [pd.NA, "kept", pd.NA],
                "confidence": [np.nan, 0.5, np.nan],
            }
        ),
        schema.BATCH,
    )
    before = frozen_copy(batch, rows)
    filled = add_predictions(batch, rows.iloc[::-1], champion, classes)
    assert_unchanged(before, (batch, rows))
    probs = champion.predict(rows.iloc[[4, 9]].drop(columns="item_id"))
    assert filled["item_id"].tolist() == batch["item_id"].tolist()
    assert filled["predicted_label"].tolist() == [
        classes[probs[0].argmax()],
        "kept",
        classes[probs[1].argmax()],
    ]
    np.testing.assert_allclose(filled["confidence"], [probs[0].max(), 0.5, probs[1].max()])
    with pytest.raises(ValueError, match="not in the pool rows"):
        add_predictions(batch, rows.iloc[:3], champion, classes)


def _scores(n, with_model=True, seed=0):
    rng = np.random.default_rng(seed)
    return schema.conform(
        pd.DataFrame(
            {
                "item_id": [f"i{k}" for k in range(n)],
                "predicted_label": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])
                if with_model
                else pd.NA,
                "confidence": rng.random(n),
                "utility": rng.random(n),
            }
        ),
        schema.SCORES,
    )


def test_batch_has_its_parts_no_duplicates_and_skips_issued_items():
    scores = _scores(500)
    issued = _issued([(f"i{k}", "train") for k in range(50)])
    relabel = pd.Series(["i3", "i7", "i3"], dtype="string")
    params = SelectParams(batch_size=100, test_fraction=0.2, qc_fraction=0.1)
    before = frozen_copy(scores, issued, relabel)
    batch = select_batch(scores, issued, relabel, has_model=True, params=params, random_state=0)
    assert_unchanged(before, (scores, issued, relabel))
    assert batch["item_id"].is_unique and len(batch) == 100
    counts = batch["reason"].value_counts().to_dict()
    assert counts == {"relabel": 2, "test": 20, "qc": 10, "active": 68}
    fresh = batch[batch["reason"] != "relabel"]
    assert not fresh["item_id"].isin(issued["item_id"]).any()
    assert set(batch.loc[batch["reason"] == "test", "split"]) == {"test"}
    active = batch[batch["reason"] == "active"]
    rest = scores[
        ~scores["item_id"].isin(batch["item_id"]) & ~scores["item_id"].isin(issued["item_id"])
    ]
    assert active["utility"].min() >= rest["utility"].max()  # the top utilities were taken
    again = select_batch(scores, issued, relabel, has_model=True, params=params, random_state=0)
    pd.testing.assert_frame_equal(batch, again)


def test_the_batch_is_the_same_however_the_scores_are_cut():
    scores = _scores(2000, seed=3)
    scores.loc[::7, "utility"] = 0.5  # many equal utilities: ordered by a seeded key
    scores.loc[::11, "utility"] = np.nan  # not selectable
    issued = _issued([(f"i{k}", "train") for k in range(0, 400, 3)])
    relabel = pd.Series(["i3", "i9"], dtype="string")
    params = SelectParams(batch_size=150, test_fraction=0.2, qc_fraction=0.1)
    whole = select_batch(scores, issued, relabel, has_model=True, params=params, random_state=4)
    assert whole["reason"].value_counts().to_dict() == {
        "active": 103,
        "test": 30,
        "qc": 15,
        "relabel": 2,
    }
    for size in (7, 64, 2000):
        view = gather_scores(
            (scores.iloc[i : i + size] for i in range(0, len(scores), size)),
            issued["item_id"],
            keep=get_keep_count(params, has_model=True),
            keep_ids=pd.concat([issued["item_id"], relabel]),
            random_state=4,
        )
        assert len(view.rows) <= 3 * 150 + 2 * 150  # per class, QC and top: not the pool
        assert view.n_unissued == 2000 - len(issued)
        batch = select_batch(view, issued, relabel, has_model=True, params=params, random_state=4)
        pd.testing.assert_frame_equal(batch, whole)
    other = select_batch(scores, issued, relabel, has_model=True, params=params, random_state=5)
    assert set(other["item_id"]) != set(whole["item_id"])  # the seed draws the slices


def test_test_slice_is_stratified_by_predicted_class():
    scores = _scores(3000, seed=2)
    batch = select_batch(
        scores,
        _issued([]),
        pd.Series([], dtype="string"),
        has_model=True,
        params=SelectParams(batch_size=250, test_fraction=0.4, qc_fraction=0.0),
        random_state=0,
    )
    test = batch[batch["split"] == "test"]
    share = test["predicted_label"].value_counts(normalize=True)
    pool_share = scores["predicted_label"].value_counts(normalize=True)
    assert (share - pool_share).abs().max() < 0.01


def test_seed_batch_before_any_model():
    sizes = get_batch_sizes(SelectParams(seed_size=200), has_model=False, n_relabel_candidates=0)
    assert sizes == {"test": 40, "relabel": 0, "qc": 0, "explore": 0, "rebalance": 0, "active": 160}
    batch = select_batch(
        _scores(1000, with_model=False),
        _issued([]),
        pd.Series([], dtype="string"),
        has_model=False,
        params=SelectParams(seed_size=200),
        random_state=0,
    )
    assert batch["reason"].value_counts().to_dict() == {"seed": 160, "test": 40}


def test_relabel_candidates_go_back_once():
    flags = get_flag_records(
        pd.DataFrame(
            {
                "item_id": ["1", "2", "3"],
                "given_label": "a",
                "suggested_label": "b",
                "label_quality": [0.3, 0.1, 0.2],
            }
        ),
        round_id=5,
        params=FlagParams(),
    )
    current = pd.DataFrame({"item_id": ["1", "2", "3"], "n_votes": [1, 2, 1]})
    issued = _issued([("1", "train")]).assign(reason="relabel", round_id=3)
    current = current.assign(agreement=[1.0, 1.0, 1.0])
    got = get_relabel_candidates(
        flags, current, issued, round_id=5, params=FlagParams(), min_agreement=0.6
    )
    assert got.tolist() == ["3"]  # 2 has two votes already, 1 was sent back before
    split = current.assign(item_id=["1", "2", "4"], agreement=[1.0, 0.5, 0.5])
    got = get_relabel_candidates(
        flags.iloc[:0], split, issued, round_id=5, params=FlagParams(), min_agreement=0.6
    )
    assert got.tolist() == ["2", "4"]  # votes split: another opinion, any split


def test_export_formats_carry_the_suggestion_and_hide_the_split(satimage):
    rows, _, _ = satimage
    batch = schema.conform(
        pd.DataFrame(
            {
                "item_id": ["5", "1", "9"],
                "split": ["test", "train", "train"],
                "reason": ["test", "active", "qc"],
                "utility": [0.1, 0.9, 0.2],
                "predicted_label": ["b", "a", pd.NA],
                "confidence": [0.6, 0.51, np.nan],
            }
        ),
        schema.BATCH,
    )
    before = frozen_copy(batch, rows)
    table, records, tasks = export_batch(batch, rows, round_id=7, params=ExportParams())
    assert_unchanged(before, (batch, rows))
    assert table["item_id"].tolist() == ["9", "1", "5"]  # grouped by predicted class
    assert "split" not in table.columns and "reason" not in table.columns
    assert {"label", "annotator", "labeled_at"} <= set(table.columns)
    assert records[1] == {**records[1], "item_id": "1", "predicted_label": "a"}
    assert "predictions" not in tasks[0]  # no model suggestion, no pre-annotation
    prediction = tasks[1]["predictions"][0]
    assert prediction["model_version"] == "round-0007"
    assert prediction["result"][0]["value"] == {"choices": ["a"]}
    assert tasks[1]["data"]["item_id"] == "1"


def test_round_report_gives_the_expected_annotation_time():
    report = get_round_report(3, RoundSummaries(), [], batch_seconds=750.0)
    assert "expected annotation time: 12.5 min (750 s" in report
    assert "annotation time" not in get_round_report(3, RoundSummaries(), [])


def test_simulated_annotator_makes_the_asked_share_of_mistakes():
    truth = pd.DataFrame(
        {"item_id": [str(i) for i in range(4000)], "label": np.resize(["a", "b", "c"], 4000)}
    )
    ids = truth["item_id"].iloc[::2]
    answers = answer_batch(
        ids,
        truth,
        classes=("a", "b", "c"),
        noise=0.1,
        annotator="sim",
        labeled_at="2026-01-01T00:00:00Z",
        random_state=0,
    )
    wrong = (answers["label"].to_numpy() != truth.set_index("item_id").loc[ids, "label"]).mean()
    assert 0.08 < wrong < 0.12
    assert list(answers.columns) == ["item_id", "label", "annotator", "labeled_at"]


def test_cached_test_probs_are_reused_only_for_the_same_item_and_features(scoring):
    rows, classes, champion, _ = scoring
    k = len(classes)
    test = rows.iloc[300:400].reset_index(drop=True)
    probs, cache = get_cached_probs(champion, test["item_id"], get_feature_frame(test), k)
    np.testing.assert_array_equal(probs, predict_proba(champion, get_feature_frame(test), k))
    assert cache.columns.tolist() == ["item_id", "row_hash", *[f"p{i}" for i in range(k)]]
    # a cache of uniform probabilities shows which rows were read from it, not predicted
    uniform = cache.assign(**{f"p{i}": 1.0 / k for i in range(k)})
    changed = test.copy()
    changed.iloc[5, 1] = changed.iloc[5, 1] + 1.0  # one item's features moved
    later = pd.concat([changed, rows.iloc[400:410]], ignore_index=True)  # and new test items
    features = get_feature_frame(later)
    got, table = get_cached_probs(champion, later["item_id"], features, k, uniform)
    predicted = predict_proba(champion, features, k)
    from_cache = np.arange(len(later)) < 100
    from_cache[5] = False
    np.testing.assert_array_equal(got[from_cache], 1.0 / k)
    np.testing.assert_array_equal(got[~from_cache], predicted[~from_cache])
    assert table["item_id"].tolist() == later["item_id"].tolist()
    # a cache of another number of classes is ignored
    again, _ = get_cached_probs(
        champion, later["item_id"], features, k, uniform.drop(columns=f"p{k - 1}")
    )
    np.testing.assert_array_equal(again, predicted)
