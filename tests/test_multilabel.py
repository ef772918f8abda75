"""Label sets (issue 19, the model's half): reading and checking a set, one booster per label,
the multi-label metrics and strategies, on small data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.features import fit_feature_space
from tasks.multilabel import (
    DUPLICATE_LABEL,
    EMPTY_SET,
    UNKNOWN_LABEL,
    OneVsRestModel,
    check_label_set,
    fit_one_vs_rest,
    get_label_matrix,
    get_multilabel_metrics,
    get_predicted_sets,
    get_set_confidence,
    split_label_set,
    to_label_text,
)
from tasks.params import TextParams, TrainParams
from tasks.strategies import PoolView, check_strategy_task, get_strategy

CLASSES = ("earn", "grain", "wheat", "crude")


def test_a_set_is_read_from_a_list_or_from_text_split_by_the_separator():
    assert split_label_set("grain| wheat |", separator="|") == ["grain", "wheat"]
    assert split_label_set(["grain", " wheat"], separator="|") == ["grain", "wheat"]
    assert split_label_set(np.array(["earn"], dtype=object), separator="|") == ["earn"]
    assert split_label_set(None, separator="|") == [] and split_label_set("", separator="|") == []
    assert split_label_set(float("nan"), separator="|") == []
    assert split_label_set("grain|grain", separator="|") == ["grain", "grain"]  # kept: judged


@pytest.mark.parametrize(
    ("labels", "reason", "named"),
    [
        ([], EMPTY_SET, "empty"),
        (["grain", "barley"], UNKNOWN_LABEL, "['barley']"),
        (["grain", "wheat", "grain"], DUPLICATE_LABEL, "['grain'] more than once"),
    ],
)
def test_a_bad_set_is_refused_with_its_reason_and_what_is_wrong(labels, reason, named):
    code, sentence = check_label_set(labels, CLASSES)
    assert code == reason and named in sentence


def test_a_good_set_has_one_spelling_in_the_order_of_the_classes():
    assert check_label_set(["wheat", "grain"], CLASSES) is None
    text = to_label_text(["wheat", "grain"], CLASSES, separator="|")
    assert text == "grain|wheat" == to_label_text(["grain", "wheat"], CLASSES, separator="|")
    matrix = get_label_matrix([text, "earn"], CLASSES, separator="|")
    np.testing.assert_array_equal(matrix, [[0, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="'barley'"):
        get_label_matrix(["barley"], CLASSES, separator="|")


def _stories(n, seed):
    """Stories with one to three of the topics, each topic adding its words."""
    rng = np.random.default_rng(seed)
    words = {
        "earn": ["profit", "dividend", "quarter"],
        "grain": ["harvest", "tonnes", "crop"],
        "wheat": ["wheat", "durum", "flour"],
        "crude": ["barrel", "opec", "refinery"],
    }
    background = [f"w{i}" for i in range(200)]
    matrix = np.zeros((n, len(CLASSES)), dtype=int)
    bodies = []
    for i in range(n):
        topics = rng.choice(len(CLASSES), size=rng.integers(1, 3), replace=False)
        matrix[i, topics] = 1
        text = [*rng.choice(background, size=25)]
        for k in topics:
            text += [*rng.choice(words[CLASSES[k]], size=2)]
        rng.shuffle(text)
        bodies.append(" ".join(text))
    rows = pd.DataFrame({"item_id": [str(i) for i in range(n)], "body": bodies})
    return rows, matrix


def test_one_booster_per_label_learns_each_label_and_reads_back_the_same():
    rows, matrix = _stories(500, seed=0)
    space = fit_feature_space(
        rows, text_columns=("body",), params=TextParams(), fingerprint="", random_state=0
    )
    features = space.transform(rows)
    matrix[:, 3] = 0  # no training story is about crude: a constant, not a booster
    model = fit_one_vs_rest(
        features[:350], matrix[:350], params=TrainParams(num_boost_round=40), random_state=0
    )
    assert model.boosters[3] == 0.0
    probs = model.predict(features[350:])
    assert probs.shape == (150, 4) and probs.min() >= 0.0 and probs.max() <= 1.0
    assert (probs[:, 3] == 0.0).all()
    metrics = get_multilabel_metrics(matrix[350:], probs, CLASSES, threshold=0.5)
    assert metrics["map"] > 0.9 and "ap_crude" not in metrics  # no test story has it
    again = OneVsRestModel.from_string(model.model_to_string())
    np.testing.assert_array_equal(again.predict(features[350:]), probs)
    with pytest.raises(ValueError, match="shape"):
        fit_one_vs_rest(features, matrix[:10], params=TrainParams(), random_state=0)
    with pytest.raises(ValueError, match="not a alloop-one-vs-rest model"):
        OneVsRestModel.from_string('{"format": "other"}')


def test_the_labels_share_one_binned_dataset_and_get_the_boosters_fitted_alone():
    from tasks.model import fit_booster

    rows, matrix = _stories(400, seed=1)
    rows["city"] = pd.Categorical(np.random.default_rng(1).choice(["a", "b", "c"], size=400))
    space = fit_feature_space(
        rows, text_columns=("body",), params=TextParams(), fingerprint="", random_state=0
    )
    features = space.transform(rows)
    weights = np.where(np.arange(400) % 7 == 0, 0.5, 1.0)  # some flagged, down-weighted
    params = TrainParams(num_boost_round=20)
    model = fit_one_vs_rest(
        features,
        matrix,
        params=params,
        random_state=3,
        categorical=space.categorical,
        sample_weight=weights,
    )
    assert space.categorical  # the category column is in the shared dataset too
    for k, booster in enumerate(model.boosters):
        alone = fit_booster(
            features,
            matrix[:, k],
            params=params,
            n_classes=2,
            random_state=3 + k,
            categorical=space.categorical,
            sample_weight=weights,
        )
        assert booster.model_to_string() == alone.model_to_string()


def test_the_metrics_have_their_known_values():
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    perfect = get_multilabel_metrics(truth, truth * 0.9 + 0.05, ("a", "b", "c"), threshold=0.5)
    assert perfect["map"] == perfect["micro_f1"] == perfect["macro_f1"] == 1.0
    # label b ranked exactly backwards: AP = mean precision at its two positives (1/3, 2/4)
    probs = np.array([[0.9, 0.8, 0.9], [0.1, 0.1, 0.1], [0.9, 0.2, 0.1], [0.1, 0.7, 0.9]])
    metrics = get_multilabel_metrics(truth, probs, ("a", "b", "c"), threshold=0.5)
    assert metrics["ap_a"] == 1.0 and metrics["ap_c"] == 1.0
    assert metrics["ap_b"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert metrics["map"] == pytest.approx((2 + (1 / 3 + 2 / 4) / 2) / 3)
    with pytest.raises(ValueError, match="must both be"):
        get_multilabel_metrics(truth, probs[:, :2], ("a", "b", "c"), threshold=0.5)


def test_the_confidence_of_a_set_is_the_probability_that_the_whole_set_is_right():
    probs = np.array([[0.9, 0.8, 0.1, 0.0], [0.3, 0.2, 0.1, 0.0], [np.nan] * 4])
    sets = get_predicted_sets(probs, CLASSES, separator="|")
    assert sets[0] == "earn|grain" and sets[1] == "earn" and sets[2] is pd.NA
    # {earn, grain}: 0.9 * 0.8 * 0.9 * 1.0; {earn} alone (none reaches 0.5): 0.3 * 0.8 * 0.9
    np.testing.assert_allclose(get_set_confidence(probs)[:2], [0.648, 0.216])
    assert np.isnan(get_set_confidence(probs)[2])


def test_label_set_strategies_rank_the_set_the_model_is_least_sure_of_first():
    probs = np.array([[0.99, 0.01, 0.02], [0.5, 0.01, 0.02], [0.5, 0.5, 0.5], [np.nan] * 3])
    mean = get_strategy("ml_mean_uncertainty")(probs, random_state=0)
    most = get_strategy("ml_max_uncertainty")(probs, random_state=0)
    assert np.argsort(-mean[:3]).tolist() == [2, 1, 0] and np.isnan(mean[3])
    assert most[1] == most[2] == 1.0 > most[0]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        get_strategy("ml_mean_uncertainty")(np.array([[1.5, 0.0]]), random_state=0)


def test_the_label_set_diversity_strategy_spreads_its_picks_over_the_embedding():
    rng = np.random.default_rng(0)
    probs = np.full((40, 3), 0.5) + rng.uniform(-0.05, 0.05, size=(40, 3))
    embedding = np.r_[rng.normal(0, 0.1, size=(20, 2)), rng.normal(10, 0.1, size=(20, 2))]
    view = PoolView(embedding=embedding, batch_size=2)
    utilities = get_strategy("ml_diversity")(probs, random_state=0, view=view)
    picks = np.argsort(-utilities)[:2]
    assert sorted(p // 20 for p in picks) == [0, 1]  # one from each cluster


def test_a_strategy_of_the_other_task_is_refused_with_the_ones_that_fit():
    assert check_strategy_task("margin", "multiclass").name == "margin"
    with pytest.raises(ValueError, match=r"'ml_mean_uncertainty'.*multilabel.*'margin'"):
        check_strategy_task("ml_mean_uncertainty", "multiclass")
    with pytest.raises(ValueError, match="ml_diversity"):
        check_strategy_task("margin", "multilabel")


def test_a_simulation_refuses_a_strategy_or_metric_of_the_other_task(tmp_path):
    from flows.simulate import SimulationSpec
    from flows.workspace import WorkspaceError

    path = tmp_path / "x.parquet"
    with pytest.raises(WorkspaceError, match="--strategies: query strategy 'ml_diversity'"):
        SimulationSpec(dataset=path, strategies=("ml_diversity",)).check()
    with pytest.raises(WorkspaceError, match="--metric map does not score multiclass"):
        SimulationSpec(dataset=path, metric="map").check()
    with pytest.raises(WorkspaceError, match="differs from --task multiclass"):
        SimulationSpec(dataset=path, overrides=("project.task=multilabel",)).check()
    with pytest.raises(WorkspaceError, match="--target must be in"):
        SimulationSpec(dataset=path, task="multilabel", target=1.5).check()
    spec = SimulationSpec(dataset=path, task="multilabel", strategies=("default", "random"))
    spec.check()
    # the default diversity runs in its label-set form
    assert spec.resolved().strategies == ("ml_diversity", "random")
    assert spec.score_metric == "map"


def test_a_wrong_set_answer_swaps_one_label_and_keeps_the_size():
    from tasks.simulate import answer_batch

    truth = pd.DataFrame({"item_id": ["1", "2", "3"], "label": ["earn|grain", "crude", "earn"]})
    answers = answer_batch(
        truth["item_id"],
        truth,
        classes=CLASSES,
        noise=1.0,
        annotator="sim",
        labeled_at="2026-01-01T00:00:00Z",
        random_state=0,
        separator="|",
    )
    for given, right in zip(answers["label"], truth["label"], strict=True):
        got, want = set(given.split("|")), set(right.split("|"))
        assert len(got) == len(want) and len(got - want) == 1 and got <= set(CLASSES)
        assert given == to_label_text(sorted(got), CLASSES, separator="|")  # one spelling


# -- label sets at intake ---------------------------------------------------------------------
def _label_rows(labels):
    frame = pd.DataFrame(
        {
            "source_row": np.arange(1, len(labels) + 1),
            "item_id": [str(i) for i in range(1, len(labels) + 1)],
            "label": labels,
            "annotator": "ann",
            "labeled_at": "2026-05-01T10:00:00Z",
            "comment": None,
            "malformed": None,
            "source_file": "sets.csv",
            "source_sha256": "abc",
        }
    )
    return frame.astype({c: "string" for c in frame.columns if c != "source_row"})


def test_each_bad_label_set_is_quarantined_with_its_reason_and_the_rest_accepted():
    from tasks.params import ValidateParams
    from tasks.validate import validate_labels

    labels = [
        "wheat|Grain",  # a set, in any order and case: accepted as grain|wheat
        '["earn"]',  # a JSON list (JSONL, Label Studio multi-choice)
        "grain|barley",  # a label outside the classes
        "[]",  # an empty set
        "wheat|grain|wheat",  # a label twice
        "crude",
        None,  # no label at all: missing, as for one class
    ]
    rows = _label_rows(labels)
    result = validate_labels(
        rows,
        pool_ids=pd.Series([str(i) for i in range(1, 8)], dtype="string"),
        issued_ids=pd.Series([str(i) for i in range(1, 8)], dtype="string"),
        classes=CLASSES,
        as_of=pd.Timestamp("2026-06-01T00:00:00Z"),
        params=ValidateParams(),
        task="multilabel",
        separator="|",
    )
    assert result.accepted["label"].tolist() == ["grain|wheat", "earn", "crude"]
    assert result.accepted["source_row"].tolist() == [1, 2, 6]
    quarantined = result.quarantined.set_index("source_row")
    assert quarantined["reason_code"].to_dict() == {
        3: "unknown_class",
        4: "empty_label_set",
        5: "duplicate_label",
        7: "missing_label",
    }
    assert "['barley']" in quarantined.loc[3, "reason"]
    assert "more than once" in quarantined.loc[5, "reason"]
    assert quarantined.loc[3, "label"] == "grain|barley"  # what was sent, for the person
    # the same file in a project of one class per item: a set is not a class
    single = validate_labels(
        rows.iloc[[0]],
        pool_ids=pd.Series(["1"], dtype="string"),
        issued_ids=pd.Series(["1"], dtype="string"),
        classes=CLASSES,
        as_of=pd.Timestamp("2026-06-01T00:00:00Z"),
        params=ValidateParams(),
    )
    assert single.quarantined["reason_code"].tolist() == ["unknown_class"]


def test_a_label_studio_multi_choice_arrives_as_a_set_and_a_single_class_project_names_it():
    import json

    from tasks.params import ValidateParams
    from tasks.parsing import read_label_file
    from tasks.validate import validate_labels

    export = [
        {
            "id": 1,
            "data": {"item_id": "1"},
            "annotations": [
                {
                    "id": 11,
                    "completed_by": 1,
                    "updated_at": "2026-05-01T10:00:00Z",
                    "result": [{"type": "choices", "value": {"choices": ["wheat", "grain"]}}],
                }
            ],
        }
    ]
    _, rows = read_label_file(json.dumps(export).encode())
    assert (
        json.loads(rows["label"].iloc[0]) == ["wheat", "grain"] and rows["malformed"].isna().all()
    )
    rows = rows.assign(source_file="ls.json", source_sha256="abc")
    kwargs = {
        "pool_ids": pd.Series(["1"], dtype="string"),
        "issued_ids": pd.Series(["1"], dtype="string"),
        "classes": CLASSES,
        "as_of": pd.Timestamp("2026-06-01T00:00:00Z"),
        "params": ValidateParams(),
    }
    sets = validate_labels(rows, task="multilabel", **kwargs)
    assert sets.accepted["label"].tolist() == ["grain|wheat"]
    single = validate_labels(rows, **kwargs)
    assert single.quarantined["reason_code"].tolist() == ["unknown_class"]
    assert "2 labels ['wheat', 'grain'] in one answer" in single.quarantined["reason"].iloc[0]


# -- label sets through real rounds ------------------------------------------------------------
def _answer(catalog, round_id, truth, *, annotator, extra=()):
    """Answer round ``round_id``'s batch with the true sets of ``truth`` (CSV, ``|``-joined;
    None: no answer but ``extra``), plus ``extra`` rows ``(item_id, label)``."""
    batch = pd.read_csv(catalog.path("outbox", round_id) / "batch.csv", dtype={"item_id": str})
    rows = [(i, truth[i]) for i in batch["item_id"]] if truth is not None else []
    rows += list(extra)
    frame = pd.DataFrame(rows, columns=["item_id", "label"])
    frame["annotator"] = annotator
    frame["labeled_at"] = f"2026-01-0{round_id}T10:00:00Z"
    path = catalog.path("incoming") / f"{annotator}-{round_id}.csv"
    frame.to_csv(path, index=False)
    return batch


@pytest.fixture(scope="module")
def set_rounds(prefect_api, tmp_path_factory):
    """Three rounds on 900 stories whose items carry one or two topics."""
    from flows.round import al_round
    from flows.workspace import init_workspace

    rows, matrix = _stories(900, seed=4)
    truth = pd.Series(
        ["|".join(c for c, k in zip(CLASSES, row, strict=True) if k) for row in matrix],
        index=rows["item_id"],
    )
    root = tmp_path_factory.mktemp("sets") / "ws"
    catalog = init_workspace(
        root,
        pool=rows,
        id_column="item_id",
        classes=CLASSES,
        overrides=(
            "project.task=multilabel",
            "select.seed_size=150",
            "select.batch_size=100",
            "flag.min_labels=50",
        ),
    )
    al_round(str(root))
    first = _answer(catalog, 1, truth, annotator="ann")
    ids = first["item_id"].tolist()
    bad = [(ids[0], "[]"), (ids[1], "grain|grain"), (ids[2], "barley")]
    # a second annotator disagrees on one label of one item: two votes, a tie on that label
    _answer(catalog, 1, None, annotator="bea", extra=[*bad, (ids[3], "crude|earn")])
    al_round(str(root))
    reports = {"validate": json.loads((root / "reports/validate.json").read_text())}
    _answer(catalog, 2, truth, annotator="ann")
    al_round(str(root))
    return {"root": root, "catalog": catalog, "truth": truth, "ids": ids, "round2": reports}


def test_label_sets_reach_the_ledger_in_one_spelling_and_bad_sets_are_quarantined(set_rounds):
    catalog, truth = set_rounds["catalog"], set_rounds["truth"]
    validate = set_rounds["round2"]["validate"]
    assert validate["quarantined_by_reason"] == {
        "duplicate_label": 1,
        "empty_label_set": 1,
        "unknown_class": 1,
    }
    ledger = catalog.load("ledger")
    votes = ledger[ledger["event"] == "label"]
    assert set(votes["label"]) <= set(truth) | {"crude|earn"}
    current = catalog.load("current").set_index("item_id")
    assert (current["label"].str.split("|").map(len) >= 1).all()
    # the item with two votes: labels by majority, the tie on a label to the latest vote
    disputed = set_rounds["ids"][3]
    assert current.loc[disputed, "n_votes"] == 2


def test_the_model_is_one_booster_per_label_and_is_judged_by_map(set_rounds):
    root = set_rounds["root"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["candidate"]["map"] > 0.8 and "micro_f1" in metrics["candidate"]
    assert "accuracy" not in metrics["candidate"]
    assert (root / "models/champion/model.txt").read_text().startswith('{"format": "alloop-one')
    report = (root / "reports/round.md").read_text()
    assert "candidate MAP" in report
    flag = json.loads((root / "reports/flag.json").read_text())
    assert flag["checked"] > 0 and not flag["skipped_because"]


def test_a_label_set_round_is_rated_and_its_stop_signal_compares_the_sets(set_rounds):
    root = set_rounds["root"]
    health = json.loads((root / "reports/health.json").read_text())
    assert not health["not_rated_because"] and 0 <= health["rating"] <= 100
    for factor in ("coverage", "all_labels", "worst_labels"):
        assert 0 <= health[factor] <= 100, factor
    # round 3's model against round 2's on the stop set, label by label
    assert -1 <= health["kappa"] <= 1 and 0 <= health["changed_share"] <= 1
    assert not health["stop_advised"]
    assert set(health["worst_classes"]) <= set(CLASSES)
    predictions = pd.read_parquet(root / "data/labels/stop_predictions.parquet")
    assert set(predictions["round_id"]) == {2, 3}
    sets = predictions["predicted_label"].str.split("|")
    assert sets.map(lambda labels: set(labels) <= set(CLASSES)).all()
    assert predictions["entropy"].between(0, 1).all()
    detail = json.loads((root / "reports/health_detail.json").read_text())
    assert {row["class"] for row in detail["per_class"]} == set(CLASSES)
    assert set(detail["class_balance"]["labels"]) <= set(CLASSES)  # labels, not sets


def test_a_fired_stop_rule_is_held_back_for_label_sets():
    from tasks.health import StopEvidence, get_stop_decision
    from tasks.params import StopParams

    stable = (0.99, 0.995, 0.999)
    one_class = get_stop_decision(StopEvidence(kappas=stable), params=StopParams())
    assert one_class.advised and one_class.criterion == "threshold"
    sets = get_stop_decision(StopEvidence(kappas=stable, label_sets=True), params=StopParams())
    assert not sets.advised and sets.criterion == "threshold" and sets.held == "label sets"
    assert "one class per item" in sets.reason and "would advise stopping" in sets.reason


def test_the_label_set_measures_have_their_known_values():
    from tasks.health import get_per_label, get_set_coverage, get_set_entropy, get_set_kappas

    first = ["earn|grain", "earn", "crude", "wheat"]
    kappa, by_label = get_set_kappas(first, first, CLASSES, separator="|")
    assert kappa == 1.0 and by_label == dict.fromkeys(sorted(CLASSES), 1.0)
    second = ["earn", "earn", "crude", "wheat"]  # one of 16 decisions differs
    kappa, by_label = get_set_kappas(first, second, CLASSES, separator="|")
    # observed 15/16; expected from the shares of yes (5/16, 4/16)
    expected = (5 / 16) * (4 / 16) + (11 / 16) * (12 / 16)
    assert kappa == pytest.approx((15 / 16 - expected) / (1 - expected))
    assert by_label["grain"] == 0.0 and by_label["earn"] == 1.0
    entropy = get_set_entropy(np.array([[0.5, 0.5], [1.0, 0.0]]))
    np.testing.assert_allclose(entropy, [1, 0], atol=1e-9)
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    probs = np.array([[0.9, 0.8, 0.1, 0.1], [0.9, 0.7, 0.1, 0.1], [0.1, 0.1, 0.9, 0.1]])
    per_label = get_per_label(
        truth,
        probs,
        classes=CLASSES,
        label_counts=pd.Series({"earn": 3, "grain": 1}),
        pool_probs=probs,
        threshold=0.5,
    ).set_index("class")
    assert per_label.loc["earn", "f1"] == 1.0 and per_label.loc["grain", "precision"] == 0.5
    assert (
        per_label.loc["grain", "test_items"] == 1 and per_label.loc["earn", "label_share"] == 0.75
    )
    assert per_label.loc["grain", "predicted_share"] == pytest.approx(2 / 3)
    # set confidences 0.5832 (right), 0.5103 (wrong: grain predicted), 0.6561 (right): the cut
    # falls above the wrong one, and two of the three pool items clear it
    coverage, cut = get_set_coverage(probs, truth, probs, threshold=0.5, precision=0.95)
    assert cut == pytest.approx(0.9 * 0.8 * 0.9 * 0.9) and coverage == pytest.approx(2 / 3)


def test_the_next_batch_goes_out_with_predicted_sets(set_rounds):
    root = set_rounds["root"]
    score = json.loads((root / "reports/score.json").read_text())
    assert score["strategy"] == "ml_diversity"
    batch = pd.read_csv(root / "data/outbox/round-0003/batch.csv", dtype=str)
    suggested = batch["predicted_label"].dropna()
    assert (
        len(suggested) > 0
        and suggested.str.split("|").map(set).map(lambda s: s <= set(CLASSES)).all()
    )
    tasks = json.loads((root / "data/outbox/round-0003/tasks.json").read_text())
    choices = [
        t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks if t.get("predictions")
    ]
    assert choices and all(set(c) <= set(CLASSES) for c in choices)
    assert any(len(c) > 1 for c in choices)


def test_the_registered_label_set_model_predicts_sets(set_rounds):
    import mlflow

    from flows.runtime import mlflow_uri

    root = set_rounds["root"]
    mlflow.set_tracking_uri(mlflow_uri(root))
    model = mlflow.pyfunc.load_model("models:/alloop@champion")
    rows, _ = _stories(20, seed=9)
    out = model.predict(rows.drop(columns=["item_id"]))
    assert list(out.columns) == [*CLASSES, "label"]
    assert out["label"].str.split("|").map(lambda s: set(s) <= set(CLASSES)).all()


def test_a_rerun_of_a_label_set_round_is_exact(set_rounds):
    from flows.rerun import al_rerun

    result = al_rerun(str(set_rounds["root"]), 3)
    assert result.identical, result.differences


def test_status_and_the_report_page_work_on_a_label_set_workspace(set_rounds):
    from conftest import run_cli

    root = set_rounds["root"]
    done = run_cli(["alloop", "status", "-w", str(root)], root)
    assert done.returncode == 0, done.stderr
    assert "MAP" in done.stdout
    page = run_cli(["alloop", "report", "-w", str(root)], root)
    assert page.returncode == 0, page.stderr
    assert (root / "reports/round.html").read_text().count("<svg") >= 1


def test_a_simulation_of_label_sets_runs_rounds_to_an_absolute_map_target(tmp_path):
    from flows.simulate import SimulationSpec, simulate

    rows, matrix = _stories(700, seed=5)
    data = rows.drop(columns=["item_id"]).assign(
        topics=[[c for c, k in zip(CLASSES, row, strict=True) if k] for row in matrix],
        split=np.where(np.arange(len(rows)) % 4 == 0, "test", "train"),
    )
    data.to_parquet(tmp_path / "stories.parquet")  # the sets as parquet lists
    spec = SimulationSpec(
        dataset=tmp_path / "stories.parquet",
        label_column="topics",
        split_column="split",
        task="multilabel",
        metric="map",
        target=0.8,
        strategies=("default", "random"),
        seeds=2,
        initial=40,
        batch=30,
        budget=130,
        noise=0.1,
        jobs=2,
    )
    result = simulate(spec, tmp_path / "out")
    assert result.target == 0.8 and result.reference_score > 0.9
    assert set(result.curves["strategy"]) == {"ml_diversity", "random"}
    curves = result.curves
    assert curves["map"].between(0, 1).all() and curves["accuracy"].isna().all()
    last = curves.sort_values("labels").groupby(["strategy", "seed"]).tail(1)
    # relabels of flagged sets (noise 0.1) take places in batches: the budget is passed, not hit
    assert (last["labels"] >= 130).all() and (last["map"] > 0.7).all()
    # labels to the target are read off the MAP curve
    for row in result.campaigns.itertuples():
        curve = curves[(curves["strategy"] == row.strategy) & (curves["seed"] == row.seed)]
        reached = curve.loc[curve["map"] >= 0.8, "labels"]
        assert row.labels_to_target == (reached.min() if len(reached) else np.inf)
    # the seed batch goes out with no suggestion: each set by hand, 7 s for its first label and
    # 2 s for each further one (annotation defaults), the labels of the true set counted
    sizes = pd.Series(matrix.sum(axis=1), index=rows["item_id"])
    for (strategy, seed), issued in result.issued.groupby(["strategy", "seed"]):
        seed_ids = issued.loc[issued["round_id"] == 1, "item_id"].astype(str)
        first = curves[(curves["strategy"] == strategy) & (curves["seed"] == seed)]
        hand = (7.0 + 2.0 * (sizes.loc[seed_ids] - 1)).sum()
        assert first["seconds"].iloc[0] == pytest.approx(hand) and hand > 7.0 * len(seed_ids)
    report = (tmp_path / "out" / "simulation.md").read_text()
    assert "Label sets" in report and "MAP" in report and "target (given) 0.8000" in report
    meta = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert meta["metric"] == "map" and meta["target"] == 0.8


def test_label_sets_go_out_in_jsonl_as_lists_and_come_back_as_lists(prefect_api, tmp_path):
    from flows.round import al_round
    from flows.workspace import init_workspace

    rows, matrix = _stories(400, seed=7)
    truth = {
        item: [c for c, k in zip(CLASSES, row, strict=True) if k]
        for item, row in zip(rows["item_id"], matrix, strict=True)
    }
    root = tmp_path / "ws"
    catalog = init_workspace(
        root,
        pool=rows,
        id_column="item_id",
        classes=CLASSES,
        overrides=("project.task=multilabel", "select.seed_size=80", "select.batch_size=40"),
    )
    for round_id in (1, 2):
        al_round(str(root))
        outbox = catalog.path("outbox", round_id)
        records = [json.loads(line) for line in (outbox / "batch.jsonl").read_text().splitlines()]
        if round_id == 2:  # a model now: each suggestion a list of classes
            suggested = [r["predicted_label"] for r in records if r["predicted_label"]]
            assert suggested and all(isinstance(s, list) for s in suggested)
            assert all(set(s) <= set(CLASSES) and s for s in suggested)
        # the annotator fills in each record's set, as a list in its own order
        answers = [
            {
                "item_id": r["item_id"],
                "label": truth[r["item_id"]][::-1],
                "annotator": "jo",
                "labeled_at": f"2026-01-0{round_id}T10:00:00Z",
            }
            for r in records
        ]
        path = catalog.path("incoming") / f"answers-{round_id}.jsonl"
        path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    al_round(str(root))
    ledger = catalog.load("ledger")
    # round 2's batch may ask again about a flagged set (a relabel): 120 answers either way
    votes = ledger[ledger["event"].isin(["label", "relabel"])]
    assert len(votes) == 120 and votes["round_id"].isin([2, 3]).all()
    spelled = {item: "|".join(labels) for item, labels in truth.items()}
    assert (votes["label"].to_numpy() == votes["item_id"].map(spelled).to_numpy()).all()
