"""The round page (tasks/report_page.py) and its SVG plots (tasks/svg_plots.py): every
section whatever is missing, user text escaped, plots well-formed XML, intervals that hold."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from tasks import schema
from tasks.report_page import (
    SECTIONS,
    RoundPageData,
    get_confusion_matrix,
    get_macro_f1,
    get_macro_f1_interval,
    get_per_class_scores,
    get_wilson_interval,
    render_round_page,
)
from tasks.summaries import (
    EvaluateSummary,
    HealthSummary,
    MergeSummary,
    RoundSummaries,
    SelectSummary,
)
from tasks.svg_plots import Line, Mark, svg_bar_chart, svg_heatmap, svg_line_chart

SVG = "{http://www.w3.org/2000/svg}"
#: names a user may give a class, an annotator or a feature, that would break a careless page
HOSTILE = "<script>alert('x')</script>"
CLASSES = ("cat", "dog & wolf", HOSTILE, 'say "hi"')


def make_page_data(round_id: int = 4, *, classes: tuple[str, ...] = CLASSES) -> RoundPageData:
    """A page's data with the shapes the stages write (schemas, health_detail's JSON), for
    four rounds, hostile names included."""
    rng = np.random.default_rng(0)
    rounds = list(range(1, round_id + 1))
    history = schema.conform(
        pd.DataFrame(
            {
                "round_id": rounds,
                "labeled_items": [150 * r for r in rounds],
                "train_items": [120 * r for r in rounds],
                "test_items": [0] + [30 * r for r in rounds[1:]],
                "rows_accepted": [0] + [150] * (round_id - 1),
                "rows_quarantined": [0] + [2] * (round_id - 1),
                "flagged": [0] + [5] * (round_id - 1),
                "test_macro_f1": [np.nan] + [0.6 + 0.05 * r for r in rounds[1:]],
                "champion_macro_f1": [np.nan] + [0.6 + 0.04 * r for r in rounds[1:]],
                "promoted": [False] + [True] * (round_id - 1),
                "batch_size": [150] + [100] * (round_id - 1),
                "unlabeled_left": [1000 - 100 * r for r in rounds],
            }
        ),
        schema.HISTORY,
    )
    health_rows = [
        {
            "round_id": r,
            "train_items": 120 * r,
            "rating": None if r == 1 else 50 + 5 * r,
            "balance": None if r == 1 else 60.0,
            "coverage": None if r == 1 else 40 + 10 * r,
            "all_labels": None if r == 1 else 70.0,
            "worst_labels": None if r == 1 else 30.0 + r,
            "balance_auc": None if r == 1 else 0.7,
            "kappa": None if r <= 2 else 0.9 + 0.01 * r,
            "kappa_mean": None if r <= 2 else 0.9,
            "changed_share": None if r <= 2 else 0.05,
            "mean_entropy": 0.3,
            "stop_advised": False,
            "explore_fraction": 0.0,
            "rebalance_fraction": 0.2,
            "drift_warning": r == round_id,
        }
        for r in rounds
    ]
    health_history = pd.DataFrame(health_rows, columns=list(schema.HEALTH_HISTORY))
    n_test = 30 * (round_id - 1)
    actual = rng.choice(classes, size=n_test)
    predicted = np.where(rng.random(n_test) < 0.75, actual, rng.choice(classes, size=n_test))
    test_predictions = pd.DataFrame(
        {"item_id": [f"t{i}" for i in range(n_test)], "actual": actual, "predicted": predicted}
    )
    health = HealthSummary(
        round_id=round_id,
        model_round=round_id,
        rating=72.0,
        balance=55.0,
        coverage=80.0,
        all_labels=85.0,
        worst_labels=40.0,
        balance_auc=0.72,
        random_share=0.4,
        coverage_threshold=0.81,
        worst_classes={HOSTILE: 0.4},
        actions={"balance": "label where the pool <differs>", "worst_labels": f"explore {HOSTILE}"},
        stop_set_size=2000,
        kappa=0.93,
        kappa_mean=0.91,
        changed_share=0.04,
        mean_entropy=0.3,
        stop_reason="kappa's 3-round mean 0.91 is under 0.99",
        rebalance_fraction=0.2,
        plan_reasons=("balance 55 < 70: a rebalance slice",),
        drift_new_items=120,
        drift_checked=True,
        drift_warning=True,
        drift_auc=0.71,
        drift_p_value=0.001,
        drift_features=("x1", HOSTILE),
    )
    detail = {
        "per_class": [
            {
                "class": c,
                "test_items": int((actual == c).sum()),
                "f1": 0.5 + 0.1 * i,
                "precision": 0.6,
                "recall": None if i == 0 else 0.5,
                "label_share": 0.25,
                "predicted_share": 0.2 + 0.05 * i,
            }
            for i, c in enumerate(classes)
        ],
        "stop_rounds": [
            {k: row[k] for k in ("round_id", "kappa", "kappa_mean", "changed_share")}
            | {"mean_entropy": 0.3}
            for row in health_rows
        ],
        "class_balance": {
            "labels": {c: 30 + 10 * i for i, c in enumerate(classes)},
            "predicted": {c: 0.25 for c in classes},
        },
        "random_only_macro_f1": 0.7,
        "random_training_labels": 200,
        "drift": {
            "n_reference": 5000,
            "n_new": 120,
            "features": [
                {
                    "feature": f,
                    "kind": "numeric",
                    "ks_statistic": 0.3 if f == HOSTILE else 0.05,
                    "p_value": 0.0001 if f == HOSTILE else 0.6,
                    "psi": 0.4 if f == HOSTILE else 0.01,
                    "shifted": f == HOSTILE,
                }
                for f in ("x1", "x2", HOSTILE)
            ],
            "auc": 0.71,
            "p_value": 0.001,
            "classifier_features": ["x1", HOSTILE],
            "prediction_ks": 0.2,
            "prediction_p_value": 0.01,
            "prediction_shift": True,
            "warning": True,
            "reasons": [f"feature {HOSTILE} shifted (KS 0.30)"],
        },
    }
    annotators = schema.conform(
        pd.DataFrame(
            {
                "round_id": [round_id - 1, round_id, round_id],
                "annotator": ["old", "ann-1", HOSTILE],
                "n_labels": [10, 80, 20],
                "agreement": [1.0, 0.95, 0.6],
                "quality": [np.nan, 0.9, 0.5],
                "method": ["crowdlab"] * 3,
            }
        ),
        schema.ANNOTATORS,
    )
    batch = schema.conform(
        pd.DataFrame(
            {
                "item_id": [f"i{i}" for i in range(10)],
                "split": ["train"] * 8 + ["test"] * 2,
                "reason": ["active"] * 6 + ["qc"] * 2 + ["test"] * 2,
                "utility": rng.random(10),
                "predicted_label": [classes[i % len(classes)] for i in range(10)],
                "confidence": rng.random(10),
            }
        ),
        schema.BATCH,
    )
    summaries = RoundSummaries(
        merge=MergeSummary(9, 0, 1, 0, 9, "crowdlab", "", 600, 480, n_test, 3, 2),
        evaluate=EvaluateSummary(
            round_id,
            n_test,
            480,
            {"macro_f1": 0.8, "accuracy": 0.8},
            {"macro_f1": 0.76},
            True,
            "candidate beats champion",
            round_id - 1,
        ),
        health=health,
        select=SelectSummary(10, 0, 6, 2, 2, 0, 600, 400),
    )
    return RoundPageData(
        round_id=round_id,
        classes=classes,
        started_at="2026-11-30T02:00:00+00:00",
        summaries=summaries,
        history=history,
        health_history=health_history,
        health_detail=detail,
        test_predictions=test_predictions,
        annotators=annotators,
        batch=batch,
        batch_seconds=754.0,
        stop_kappa=0.99,
        stop_window=3,
        random_state=7,
    )


def get_svgs(page: str) -> list[ET.Element]:
    """Every inline SVG of the page, parsed as XML (fails if one is not well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


class _Checker(HTMLParser):
    """Tags and elements of a page: script and external references are looked for."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(attributes["id"])
        for name in ("src", "href", "xlink:href"):
            if attributes.get(name):
                self.refs.append(attributes[name])


def _check(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    return checker


# -- scores ---------------------------------------------------------------------------------
def test_confusion_matrix_and_macro_f1_agree_with_scikit_learn():
    from sklearn.metrics import f1_score

    actual = pd.Series(["a", "a", "b", "b", "c", "c", "c"])
    predicted = pd.Series(["a", "b", "b", "b", "c", "a", "d"])
    matrix, names = get_confusion_matrix(actual, predicted, ("a", "b", "c"))
    assert names == ("a", "b", "c", "d")
    assert matrix.sum() == 7 and matrix[0, 0] == 1 and matrix[2, 3] == 1
    expected = f1_score(actual, predicted, labels=["a", "b", "c"], average="macro")
    assert get_macro_f1(matrix) == pytest.approx(expected)
    scores = get_per_class_scores(matrix, names).set_index("class")
    assert scores.loc["d", "test_items"] == 0 and np.isnan(scores.loc["d", "recall"])
    assert scores.loc["b", "recall"] == 1.0 and scores.loc["b", "precision"] == pytest.approx(2 / 3)


def test_confusion_matrix_leaves_out_pairs_with_a_missing_side():
    matrix, _ = get_confusion_matrix(pd.Series(["a", "b"]), pd.Series(["a", pd.NA]), ("a", "b"))
    assert matrix.sum() == 1


def test_bootstrap_interval_holds_the_estimate_narrows_with_n_and_is_seeded():
    small = np.array([[8, 2], [3, 7]])
    large = small * 50
    low_s, high_s = get_macro_f1_interval(small, random_state=1)
    low_l, high_l = get_macro_f1_interval(large, random_state=1)
    assert low_s <= get_macro_f1(small) <= high_s
    assert low_l <= get_macro_f1(large) <= high_l
    assert high_l - low_l < (high_s - low_s) / 4
    assert get_macro_f1_interval(small, random_state=1) == (low_s, high_s)
    assert get_macro_f1_interval(np.zeros((2, 2), dtype=int)) is None
    with pytest.raises(ValueError, match="level"):
        get_macro_f1_interval(small, level=1.5)


def test_bootstrap_matches_resampling_the_test_items():
    """The multinomial over cells is the bootstrap over items: same interval, within noise."""
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 3, 300)
    predicted = np.where(rng.random(300) < 0.7, actual, rng.integers(0, 3, 300))
    matrix, _ = get_confusion_matrix(
        pd.Series(actual.astype(str)), pd.Series(predicted.astype(str)), ("0", "1", "2")
    )
    values = []
    for _ in range(2000):
        idx = rng.integers(0, 300, 300)
        cells = np.bincount(actual[idx] * 3 + predicted[idx], minlength=9).reshape(3, 3)
        values.append(get_macro_f1(cells))
    by_items = np.quantile(values, [0.025, 0.975])
    by_cells = get_macro_f1_interval(matrix, random_state=0)
    assert np.allclose(by_items, by_cells, atol=0.01)


def test_wilson_interval():
    low, high = get_wilson_interval(0.8, 100)
    assert low < 0.8 < high and low == pytest.approx(0.7112, abs=1e-3)
    assert high == pytest.approx(0.8666, abs=1e-3)
    assert get_wilson_interval(1.0, 10)[1] == 1.0
    assert get_wilson_interval(None, 10) is None and get_wilson_interval(0.5, 0) is None
    assert get_wilson_interval(float("nan"), 10) is None


# -- plots ----------------------------------------------------------------------------------
def test_line_chart_is_well_formed_with_gaps_bands_rules_and_marks():
    svg = svg_line_chart(
        [1, 2, 3, 4],
        [
            Line(
                "a <b>",
                [None, 0.5, 0.6, None],
                lower=[None, 0.4, 0.5, None],
                upper=[None, 0.6, 0.7, None],
                notes=["", "n=3", "n=4", ""],
            ),
            Line("c", [0.2, None, 0.3, 0.4], dashed=True),
        ],
        rules=[(0.99, "threshold & more")],
        marks=[Mark("boot", 3, 0.6, 0.55, 0.65)],
        title="t & <t>",
        x_label="round",
        y_label="y",
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.find(f"{SVG}title").text == "t & <t>"
    assert len(root.findall(f"{SVG}polygon")) == 1  # one band, one run
    assert len(root.findall(f"{SVG}path")) == 2  # each line's points
    assert len(root.findall(f"{SVG}circle")) == 5  # a point per value
    assert "a <b>" in [t.text for t in root.iter(f"{SVG}text")]


def test_line_chart_of_one_round_and_of_nothing():
    ET.fromstring(svg_line_chart([3], [Line("a", [0.5])], title="t", x_label="x", y_label="y"))
    ET.fromstring(svg_line_chart([], [Line("a", [])], title="t", x_label="x", y_label="y"))
    with pytest.raises(ValueError, match="has 1 values"):
        svg_line_chart([1, 2], [Line("a", [0.5])], title="t", x_label="x", y_label="y")


def test_bar_chart_and_heatmap_are_well_formed_and_escape_names():
    bars = ET.fromstring(
        svg_bar_chart(
            [HOSTILE, "b"],
            {"F1": [0.5, None], "x": [1.0, 0.2]},
            title="bars",
            value_label="F1",
            highlight=[HOSTILE],
        )
    )
    assert len(bars.findall(f"{SVG}rect")) == 3  # the missing value has no bar
    heat = ET.fromstring(
        svg_heatmap(
            np.array([[3, 1], [0, 4]]),
            [HOSTILE, "b"],
            [HOSTILE, "b"],
            title="cm",
            row_label="actual",
            column_label="predicted",
        )
    )
    cells = heat.findall(f"{SVG}rect")
    assert len(cells) == 4 and cells[0].get("class") == "diagonal"
    with pytest.raises(ValueError, match="shape"):
        svg_heatmap(
            np.zeros((2, 3)), ["a", "b"], ["a", "b"], title="t", row_label="r", column_label="c"
        )


def test_a_long_name_is_shortened_in_a_plot_and_whole_in_its_tooltip():
    name = "a-very-long-class-name-" * 3
    svg = svg_bar_chart([name], {"F1": [0.5]}, title="t", value_label="F1")
    root = ET.fromstring(svg)
    texts = [t for t in root.iter(f"{SVG}text") if t.find(f"{SVG}title") is not None]
    tooltip = texts[0].find(f"{SVG}title")
    assert tooltip.text == name
    assert tooltip.tail.endswith("…") and len(tooltip.tail) < len(name)


# -- the page -------------------------------------------------------------------------------
def test_the_full_page_has_every_section_and_plot_and_nothing_external():
    page = render_round_page(make_page_data())
    checker = _check(page)
    assert [a for a, _ in SECTIONS] == [i for i in checker.ids if i in dict(SECTIONS)]
    assert "script" not in checker.tags and "img" not in checker.tags and "link" not in checker.tags
    assert all(ref.startswith("#") for ref in checker.refs), checker.refs
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    svgs = get_svgs(page)
    titles = [s.find(f"{SVG}title").text for s in svgs]
    assert titles == [
        "Macro-F1 on the test items, by round",
        "Labels and flags, by round",
        "F1 per class on the test items",
        "Confusion matrix of the candidate on the test items",
        "Class balance: labels against the model's predictions on the pool",
        "Model rating and its factors, by round",
        "Agreement of successive models on the stop set (Cohen's kappa)",
    ]
    assert all(len(list(s.iter())) > 5 for s in svgs)


def test_the_page_says_what_matters_first():
    page = render_round_page(make_page_data())
    text = re.sub(r"<[^>]+>", " ", page)
    assert "72/100" in text and "go on" in text
    assert "kappa 0.930" in text and "3-round mean 0.910 &lt; 0.99" in text
    assert "Drift warning" in text and "120 new items" in text
    assert "12.6 min" in text  # 754 s
    assert "active" in text and "chosen by the query strategy" in text
    # the interval of this round is the bootstrap's, and the page says which is which
    assert "percentile bootstrap" in text and "Wilson" in text


def test_user_text_is_escaped_everywhere():
    page = render_round_page(make_page_data())
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert 'say "hi"' not in page and "say &quot;hi&quot;" in page
    assert "dog & wolf" not in page and "dog &amp; wolf" in page
    assert "<script" not in page.lower()


def test_a_first_round_page_renders_every_section_and_says_what_is_missing():
    page = render_round_page(RoundPageData(round_id=1))
    ids = _check(page).ids
    assert all(anchor in ids for anchor, _ in SECTIONS)
    assert get_svgs(page) == []  # no empty plot: a sentence instead
    for sentence in (
        "No round history yet",
        "No per-class scores yet",
        "the health stage has not run",
        "No annotator statistics yet",
        "No batch this round",
    ):
        assert sentence in page, sentence


@pytest.mark.parametrize(
    "missing",
    ["history", "health_history", "health_detail", "test_predictions", "annotators", "batch"],
)
def test_each_missing_input_leaves_a_page(missing):
    data = make_page_data()
    kwargs = {f: getattr(data, f) for f in data.__dataclass_fields__}
    kwargs[missing] = None
    page = render_round_page(RoundPageData(**kwargs))
    assert all(anchor in _check(page).ids for anchor, _ in SECTIONS)
    get_svgs(page)


def test_an_older_workspace_without_health_and_with_an_empty_predictions_file():
    data = make_page_data()
    page = render_round_page(
        RoundPageData(
            round_id=4,
            classes=CLASSES,
            summaries=RoundSummaries(evaluate=data.summaries.evaluate),
            history=data.history,
            test_predictions=pd.DataFrame(),  # what the catalog loads for an absent CSV
            annotators=schema.empty(schema.ANNOTATORS),
            batch=schema.empty(schema.BATCH),
        )
    )
    assert "Not there yet" in page and "Macro-F1 on the test items" in page


def test_a_round_without_a_model_and_health_not_rated():
    data = make_page_data(round_id=1)
    predictions = pd.DataFrame({"item_id": ["a"], "actual": ["cat"], "predicted": [pd.NA]})
    page = render_round_page(
        RoundPageData(
            round_id=1,
            classes=CLASSES,
            summaries=RoundSummaries(
                health=HealthSummary(round_id=1, not_rated_because="no model trained this round")
            ),
            history=data.history,
            health_detail={"stop_rounds": [{"round_id": 1, "kappa": None, "kappa_mean": None}]},
            test_predictions=predictions,
        )
    )
    assert "no model trained this round" in page
    assert "No kappa yet" in page and "No confusion matrix yet" in page


def test_the_page_is_deterministic():
    assert render_round_page(make_page_data()) == render_round_page(make_page_data())


def test_the_page_of_a_workspace_without_health_artifacts(tmp_path):
    """What the catalog loads for files an older workspace lacks (None, empty tables) is
    rendered, by the export stage's own reader."""
    from tasks.catalog import Catalog
    from tasks.export import get_round_page_data
    from tasks.params import StopParams

    data = get_round_page_data(
        Catalog(tmp_path).load,
        round_id=3,
        started_at="",
        reports=RoundSummaries(),
        classes=CLASSES,
        stop=StopParams(),
        batch_seconds=None,
        random_state=0,
    )
    assert data.health_detail is None and data.test_predictions.empty
    page = render_round_page(data)
    assert all(anchor in _check(page).ids for anchor, _ in SECTIONS)
    assert "Not there yet" in page


def test_a_band_of_one_round_is_drawn():
    root = ET.fromstring(
        svg_line_chart(
            [1, 2],
            [Line("a", [None, 0.5], lower=[None, 0.4], upper=[None, 0.6])],
            title="t",
            x_label="x",
            y_label="y",
        )
    )
    assert len(root.findall(f"{SVG}rect")) == 2  # the frame and the band's bar


def test_a_page_input_in_another_shape_is_left_out_not_fatal(tmp_path, caplog):
    from tasks.catalog import Catalog
    from tasks.export import get_round_page_data
    from tasks.params import StopParams

    catalog = Catalog(tmp_path)
    (tmp_path / "reports").mkdir()
    catalog.path("health_history").write_text("round_id,rating\n1,50\n")  # an older shape
    catalog.path("health_detail").write_text("{not json")
    data = get_round_page_data(
        catalog.load,
        round_id=1,
        started_at="",
        reports=RoundSummaries(),
        classes=CLASSES,
        stop=StopParams(),
        batch_seconds=None,
        random_state=0,
    )
    assert data.health_history is None and data.health_detail is None
    assert "leaves out health_history" in caplog.text
    render_round_page(data)
