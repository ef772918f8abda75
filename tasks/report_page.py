"""The round report as one self-contained HTML page: figures, tables and inline SVG plots.

Pure: :func:`render_round_page` turns already-loaded frames and summaries
(:class:`RoundPageData`) into text; the export stage loads and saves. The page needs nothing
from the network (no script, no web font, no image file: plots are SVG written here, and a
Content-Security-Policy forbids any fetch), so it looks the same opened from a laptop, an
archive or an MLflow run. Every text that comes from users (class names, annotator names,
feature names, reasons) is escaped.

Intervals. Macro-F1 has no closed-form interval. The current round's is a percentile
bootstrap over its test predictions: the confusion matrix is resampled as a multinomial over
its cells (the same as resampling the test items with replacement), macro-F1 computed on each
resample as evaluate computes it. Earlier rounds' predictions are not kept, so their band is a
Wilson score interval that treats macro-F1 as a proportion over the round's test items: a
guide to how much the test-set size alone allows, which understates the spread when classes
have few test items (the bootstrap shows by how much, for this round).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from tasks.catalog import round_name
from tasks.summaries import HealthSummary, RoundSummaries
from tasks.svg_plots import (
    Line,
    Mark,
    escape,
    finite,
    is_missing,
    svg_bar_chart,
    svg_heatmap,
    svg_line_chart,
)

#: the level of every interval on the page
INTERVAL_LEVEL = 0.95
#: bootstrap resamples of the round's confusion matrix: drawing them costs O(resamples x k^2),
#: whatever the test-set size (13 ms); at 2000 the interval's ends vary between seeds with a
#: standard deviation of about 0.001 (measured: 202 test items, 10 classes, 50 seeds)
BOOTSTRAP_RESAMPLES = 2000
#: rows of a long table shown before the rest is folded away
TABLE_ROWS = 25
FACTOR_NAMES = {
    "balance": "balance",
    "coverage": "coverage",
    "all_labels": "all labels",
    "worst_labels": "worst labels",
}
REASONS = {
    "seed": "random, before there is a model",
    "active": "chosen by the query strategy",
    "qc": "random, quality control",
    "test": "random, grows the test set",
    "relabel": "a second opinion on a doubted label",
    "explore": "random, from classes the model misses",
    "rebalance": "from where the labels do not look like the pool",
}


@dataclass(frozen=True, eq=False)
class RoundPageData:
    """Everything the page shows, already loaded (frames as their schemas in
    :mod:`tasks.schema` give them; None or an empty frame: not there).

    ``history``: :data:`~tasks.schema.HISTORY`, every round up to this one;
    ``health_history``: :data:`~tasks.schema.HEALTH_HISTORY`; ``health_detail``: the health
    stage's evidence (per class, stop rounds, class balance, drift); ``test_predictions``:
    columns ``actual`` and ``predicted``; ``annotators``: :data:`~tasks.schema.ANNOTATORS`;
    ``batch``: :data:`~tasks.schema.BATCH`; ``batch_seconds``: its expected annotation time.
    ``stop_kappa`` and ``stop_window``: the stop signal's threshold and window (params).
    ``random_state`` seeds the bootstrap.
    """

    round_id: int
    classes: tuple[str, ...] = ()
    started_at: str = ""
    summaries: RoundSummaries = field(default_factory=RoundSummaries)
    history: pd.DataFrame | None = None
    health_history: pd.DataFrame | None = None
    health_detail: Mapping[str, Any] | None = None
    test_predictions: pd.DataFrame | None = None
    annotators: pd.DataFrame | None = None
    batch: pd.DataFrame | None = None
    batch_seconds: float | None = None
    stop_kappa: float | None = None
    stop_window: int | None = None
    random_state: int = 0


# -- scores ---------------------------------------------------------------------------------
def get_confusion_matrix(
    actual: pd.Series, predicted: pd.Series, classes: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Counts of (actual, predicted) pairs over ``classes``, then any other class that occurs.

    Pairs with a missing side are left out.

    Returns
    -------
    (np.ndarray of int, shape (k, k), tuple of str)
        ``matrix[i, j]``: test items of class ``i`` predicted as ``j``; and the k classes.
    """
    pairs = pd.DataFrame({"a": actual.astype("string"), "p": predicted.astype("string")})
    pairs = pairs.dropna()
    seen = sorted(set(pairs["a"]) | set(pairs["p"]))
    names = tuple(dict.fromkeys([*map(str, classes), *seen]))
    code = {name: i for i, name in enumerate(names)}
    k = len(names)
    cells = pairs["a"].map(code).to_numpy(dtype=int) * k + pairs["p"].map(code).to_numpy(dtype=int)
    return np.bincount(cells, minlength=k * k).reshape(k, k), names


def _f1_of(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and whether each class has test items, for one or a stack of matrices
    (shape (..., k, k)); F1 = 2 TP / (2 TP + FP + FN), 0 when that is 0/0."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(float)
    actual = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    denominator = actual + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1, actual > 0


def get_macro_f1(confusion: np.ndarray) -> float | None:
    """Macro-F1 over the classes with test items, as evaluate computes it (None: no items)."""
    f1, present = _f1_of(confusion)
    return float(f1[present].mean()) if present.any() else None


def get_per_class_scores(confusion: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Per class: test items, precision, recall and F1 (NaN where undefined)."""
    tp = np.diagonal(confusion).astype(float)
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(actual > 0, tp / actual, np.nan)
    f1, present = _f1_of(confusion)
    return pd.DataFrame(
        {
            "class": list(classes),
            "test_items": actual.astype(int),
            "f1": np.where(present | (predicted > 0), f1, np.nan),
            "precision": precision,
            "recall": recall,
        }
    )


def get_macro_f1_interval(
    confusion: np.ndarray,
    *,
    level: float = INTERVAL_LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    random_state: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of macro-F1 over the test items behind ``confusion``.

    Resampling n test items with replacement draws the confusion matrix's cells from a
    multinomial with the observed cell shares, so this draws the matrices directly.

    Parameters
    ----------
    confusion : np.ndarray of int, shape (k, k)
    level : float in (0, 1)

    Returns
    -------
    (float, float) or None
        The interval's ends in [0, 1], lower first; None without test items.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = int(confusion.sum())
    if n == 0:
        return None
    k = confusion.shape[0]
    rng = np.random.default_rng(random_state)
    draws = rng.multinomial(n, confusion.ravel() / n, size=n_resamples).reshape(-1, k, k)
    f1, present = _f1_of(draws)
    macro = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(macro, [tail, 1.0 - tail])
    return float(low), float(high)


def get_wilson_interval(
    share: float | None, n: int | None, *, level: float = INTERVAL_LEVEL
) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``share`` observed on ``n`` items (None when
    either is missing or ``n`` is 0)."""
    if share is None or n is None or not math.isfinite(share) or n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = min(max(share, 0.0), 1.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# -- text -----------------------------------------------------------------------------------
class Html(str):
    """Markup this module wrote: put in a page as it is, never escaped again."""


def _num(value: Any, digits: int = 3) -> str:
    if is_missing(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    number = float(value)
    if digits >= 2 and number != 0 and abs(number) < 10.0**-digits:  # a p-value: not 0.000
        return f"{number:.1e}"
    return f"{number:.{digits}f}"


def _cell(value: Any) -> str:
    if isinstance(value, Html):
        return value
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, float | np.floating) and not is_missing(value):
        return _num(value)
    return escape(_num(value))


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "") -> str:
    """An HTML table; long tables show their first rows and fold the rest away."""

    def body(part: Sequence[Sequence[Any]]) -> str:
        return "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in part)

    head = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr>"
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    shown = f"<table>{cap}<thead>{head}</thead><tbody>{body(rows[:TABLE_ROWS])}</tbody></table>"
    if len(rows) <= TABLE_ROWS:
        return shown
    rest = f"<table><thead>{head}</thead><tbody>{body(rows[TABLE_ROWS:])}</tbody></table>"
    return f"{shown}<details><summary>{len(rows) - TABLE_ROWS} more rows</summary>{rest}</details>"


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


# -- the page's sections --------------------------------------------------------------------
def _frame(frame: pd.DataFrame | None, *columns: str) -> pd.DataFrame | None:
    """The frame if it has rows and ``columns``, else None."""
    if frame is None or frame.empty or any(c not in frame.columns for c in columns):
        return None
    return frame


def _values(column: pd.Series) -> list[float | None]:
    return [None if is_missing(v) else float(v) for v in column.astype("Float64").tolist()]


def _interval_text(interval: tuple[float, float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "–"


@dataclass(frozen=True)
class _Scores:
    """The current round's test scores, computed once for every section."""

    confusion: np.ndarray | None
    classes: tuple[str, ...]
    macro_f1: float | None
    n_test: int
    bootstrap: tuple[float, float] | None
    wilson: tuple[float, float] | None


def _get_scores(data: RoundPageData) -> _Scores:
    evaluate = data.summaries.evaluate
    predictions = _frame(data.test_predictions, "actual", "predicted")
    confusion, classes, bootstrap = None, tuple(data.classes), None
    if predictions is not None and predictions["predicted"].notna().any():
        confusion, classes = get_confusion_matrix(
            predictions["actual"], predictions["predicted"], data.classes
        )
        bootstrap = get_macro_f1_interval(confusion, random_state=data.random_state)
    macro_f1 = evaluate.candidate_macro_f1 if evaluate is not None else None
    if macro_f1 is None and confusion is not None:
        macro_f1 = get_macro_f1(confusion)
    n_test = int(confusion.sum()) if confusion is not None else 0
    if evaluate is not None and evaluate.n_test:
        n_test = evaluate.n_test
    return _Scores(
        confusion=confusion,
        classes=classes,
        macro_f1=macro_f1,
        n_test=n_test,
        bootstrap=bootstrap,
        wilson=get_wilson_interval(macro_f1, n_test),
    )


def _tile(label: str, value: str, note: str = "", *, tone: str = "") -> str:
    tone_class = f" {tone}" if tone else ""
    return (
        f'<div class="tile{tone_class}"><div class="label">{escape(label)}</div>'
        f'<div class="value">{escape(value)}</div><div class="note">{escape(note)}</div></div>'
    )


def _stop_words(health: HealthSummary | None) -> tuple[str, str]:
    """The stop advice in a word or two, and a tone for it."""
    if health is None or health.kappa is None:
        return "no signal yet", ""
    return ("stop advised", "good") if health.stop_advised else ("go on", "")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _summary_section(data: RoundPageData, scores: _Scores) -> str:
    s = data.summaries
    ev, health, merge, select = s.evaluate, s.health, s.merge, s.select
    tiles = []
    if scores.macro_f1 is not None:
        interval = scores.bootstrap or scores.wilson
        tiles.append(
            _tile(
                "candidate macro-F1",
                f"{scores.macro_f1:.3f}",
                f"{INTERVAL_LEVEL:.0%} interval {_interval_text(interval)} on "
                f"{scores.n_test} test items",
            )
        )
    else:
        tiles.append(_tile("candidate macro-F1", "–", "no model or no test labels yet"))
    if ev is not None:
        champion = (ev.champion or {}).get("macro_f1")
        verdict = "promoted" if ev.promoted else "kept"
        tiles.append(
            _tile(
                "champion",
                verdict,
                f"before: macro-F1 {_num(champion)}; {ev.gate}",
                tone="good" if ev.promoted else "",
            )
        )
    if health is not None and health.rating is not None:
        tiles.append(_tile("model rating", f"{health.rating:.0f}/100", "see the rating below"))
    else:
        why = health.not_rated_because if health is not None else "no health report yet"
        tiles.append(_tile("model rating", "not rated", why))
    word, tone = _stop_words(health)
    kappa_note = (
        f"kappa {_num(health.kappa)}, mean {_num(health.kappa_mean)}"
        if health is not None and health.kappa is not None
        else "needs two rounds of models"
    )
    tiles.append(_tile("stop signal", word, kappa_note, tone=tone))
    if merge is not None:
        tiles.append(
            _tile(
                "labeled items",
                f"{merge.labeled_items:,}",
                f"train {merge.train_items:,}, test {merge.test_items:,}",
            )
        )
    if select is not None:
        minutes = (
            f"about {data.batch_seconds / 60:.0f} min of annotation"
            if data.batch_seconds is not None
            else ""
        )
        tiles.append(_tile("next batch", f"{select.batch_size:,} items", minutes))
    if health is not None and health.drift_warning:
        tiles.append(_tile("drift", "warning", f"{health.drift_new_items} new items", tone="bad"))
    return _section("summary", "At a glance", f'<div class="tiles">{"".join(tiles)}</div>')


def _trend_section(data: RoundPageData, scores: _Scores) -> str:
    history = _frame(data.history, "round_id", "test_macro_f1", "test_items")
    if history is None:
        return _section("trend", "Over all rounds", _missing("No round history yet."))
    history = history.sort_values("round_id")
    rounds = history["round_id"].astype(int).tolist()
    candidate = _values(history["test_macro_f1"])
    champion = _values(history["champion_macro_f1"])
    tests = history["test_items"].astype(int).tolist()
    bands = [get_wilson_interval(f, n) for f, n in zip(candidate, tests, strict=True)]
    parts = []
    if finite(candidate) or finite(champion):
        marks = []
        if scores.bootstrap is not None and scores.macro_f1 is not None:
            marks.append(
                Mark(
                    f"round {data.round_id} bootstrap {INTERVAL_LEVEL:.0%}",
                    data.round_id,
                    scores.macro_f1,
                    *scores.bootstrap,
                )
            )
        parts.append(
            svg_line_chart(
                rounds,
                [
                    Line(
                        "candidate",
                        candidate,
                        lower=[b[0] if b else None for b in bands],
                        upper=[b[1] if b else None for b in bands],
                        notes=[f"{n} test items" for n in tests],
                    ),
                    Line("champion", champion, dashed=True),
                ],
                marks=marks,
                title="Macro-F1 on the test items, by round",
                x_label="round",
                y_label="macro-F1",
                y_range=(None, 1.0),
            )
        )
        parts.append(
            f'<p class="note">The band is a {INTERVAL_LEVEL:.0%} Wilson interval from each '
            "round's test-set size, treating macro-F1 as a proportion: it understates the "
            "spread when classes have few test items. The bar on this round is a percentile "
            f"bootstrap over its test predictions ({BOOTSTRAP_RESAMPLES} resamples): "
            f"{_interval_text(scores.bootstrap)}, against {_interval_text(scores.wilson)} from "
            "the test-set size alone.</p>"
        )
    else:
        parts.append(_missing("No macro-F1 yet: the first model needs test labels."))
    counts = {
        "labeled items": "labeled_items",
        "train": "train_items",
        "test": "test_items",
        "flagged": "flagged",
    }
    present = {name: col for name, col in counts.items() if col in history.columns}
    parts.append(
        svg_line_chart(
            rounds,
            [Line(name, _values(history[col])) for name, col in present.items()],
            title="Labels and flags, by round",
            x_label="round",
            y_label="items",
            y_range=(0.0, None),
            digits=0,
        )
    )
    rows = []
    for row, band in zip(history.itertuples(index=False), bands, strict=True):
        rows.append(
            [
                int(row.round_id),
                getattr(row, "labeled_items", None),
                getattr(row, "test_items", None),
                row.test_macro_f1,
                Html(escape(_interval_text(band))),
                getattr(row, "champion_macro_f1", None),
                getattr(row, "promoted", None),
                getattr(row, "flagged", None),
                getattr(row, "rows_quarantined", None),
                getattr(row, "batch_size", None),
            ]
        )
    parts.append(
        "<details><summary>The rounds as a table</summary>"
        + _table(
            [
                "round",
                "labeled",
                "test items",
                "candidate macro-F1",
                f"{INTERVAL_LEVEL:.0%} (Wilson)",
                "champion macro-F1",
                "promoted",
                "flagged",
                "quarantined",
                "batch",
            ],
            rows[::-1],
        )
        + "</details>"
    )
    return _section("trend", "Over all rounds", "".join(parts))


def _per_class_frame(data: RoundPageData, scores: _Scores) -> pd.DataFrame | None:
    detail = (data.health_detail or {}).get("per_class")
    if detail:
        frame = pd.DataFrame(list(detail))
        if "class" in frame.columns:
            return frame
    if scores.confusion is None:
        return None
    return get_per_class_scores(scores.confusion, scores.classes)


def _classes_section(data: RoundPageData, scores: _Scores) -> str:
    per_class = _per_class_frame(data, scores)
    health = data.summaries.health
    worst = list((health.worst_classes if health is not None else {}) or {})
    parts = []
    if per_class is None or "f1" not in per_class.columns:
        parts.append(_missing("No per-class scores yet: they need a model and test labels."))
    else:
        names = [str(c) for c in per_class["class"]]
        parts.append(
            svg_bar_chart(
                names,
                {"F1": _values(per_class["f1"])},
                title="F1 per class on the test items",
                value_label="F1 on the test items",
                value_max=1.0,
                highlight=worst,
            )
        )
        if worst:
            parts.append(
                '<p class="note">◆ the worst labels factor\'s classes: '
                + ", ".join(escape(c) for c in worst)
                + "</p>"
            )
        optional = ["precision", "recall", "label_share", "predicted_share"]
        columns = ["class", "test_items", "f1", *[c for c in optional if c in per_class]]
        parts.append(
            _table(
                [c.replace("_", " ") for c in columns],
                [[row[c] for c in columns] for row in per_class.to_dict("records")],
            )
        )
    if scores.confusion is not None and scores.confusion.sum():
        parts.append("<h3>Confusion matrix</h3>")
        parts.append(
            svg_heatmap(
                scores.confusion,
                scores.classes,
                scores.classes,
                title="Confusion matrix of the candidate on the test items",
                row_label="actual",
                column_label="predicted",
            )
        )
        parts.append(
            "<p class=\"note\">Rows are the test items' labels, columns the candidate's "
            "classes; a cell is shaded by its share of the row (the diagonal is recall).</p>"
        )
    else:
        parts.append(_missing("No confusion matrix yet: no test predictions this round."))
    return _section("classes", "Per class", "".join(parts))


def _balance_section(data: RoundPageData) -> str:
    balance = (data.health_detail or {}).get("class_balance") or {}
    labels = {str(k): float(v) for k, v in (balance.get("labels") or {}).items()}
    predicted = {str(k): float(v) for k, v in (balance.get("predicted") or {}).items()}
    if not labels and not predicted:
        return _section(
            "balance",
            "Class balance",
            _missing("Not there yet: the health stage compares the labels with the pool."),
        )
    total = sum(labels.values())
    names = list(dict.fromkeys([*data.classes, *labels, *predicted]))
    names = [c for c in names if c in labels or c in predicted]
    label_share = [labels.get(c, 0.0) / total if total else None for c in names]
    groups = {
        "share of the labels": label_share,
        "share of the model's predictions on the pool": [predicted.get(c) for c in names],
    }
    chart = svg_bar_chart(
        names,
        groups,
        title="Class balance: labels against the model's predictions on the pool",
        value_label="share",
        digits=3,
    )
    rows = [
        [c, int(labels.get(c, 0)), share, predicted.get(c)]
        for c, share in zip(names, label_share, strict=True)
    ]
    note = (
        '<p class="note">Predictions are on the stop set, a random sample of the pool drawn '
        "once: a class far more common there than among the labels is under-labeled.</p>"
    )
    table = _table(["class", "labels", "share of labels", "share of predictions"], rows)
    return _section("balance", "Class balance", chart + note + table)


def _rating_section(data: RoundPageData) -> str:
    health = data.summaries.health
    history = _frame(data.health_history, "round_id", "rating")
    parts = []
    if health is None:
        parts.append(_missing("Not there yet: the health stage has not run in this workspace."))
    elif health.rating is None:
        parts.append(_missing(f"Not rated this round: {health.not_rated_because or 'no reason'}"))
    else:
        parts.append(f'<p class="headline">Model rating <b>{health.rating:.0f}</b>/100</p>')
    if health is not None:
        evidence = {
            "balance": "a classifier telling the training items from the pool: AUC "
            f"{_num(health.balance_auc)} (100 at 0.5, 0 at 1)",
            "coverage": "the share of the pool whose top probability clears "
            f"{_num(health.coverage_threshold)}, the threshold with the target precision on "
            "the test items",
            "all_labels": "macro-F1 on the test items",
            "worst_labels": "mean F1 of the worst classes: "
            + (
                ", ".join(f"{name} ({_num(f1)})" for name, f1 in health.worst_classes.items())
                or "–"
            ),
        }
        rows = [
            [FACTOR_NAMES[name], _num(value, 0), evidence[name], health.actions.get(name, "")]
            for name, value in health.factors.items()
        ]
        parts.append(_table(["factor", "score", "evidence", "what would raise it"], rows))
        detail = data.health_detail or {}
        if detail.get("random_only_macro_f1") is not None:
            parts.append(
                f'<p class="note">A model on the {_num(detail.get("random_training_labels"))} '
                "training labels chosen at random alone scores macro-F1 "
                f"{_num(detail['random_only_macro_f1'])} on the test items (share of random "
                f"labels: {_num(health.random_share)}): the actively chosen labels pay when "
                "the candidate does better.</p>"
            )
        plan = []
        if health.explore_fraction:
            classes = ", ".join(health.explore_classes) or "any class"
            plan.append(f"explore slice: {health.explore_fraction:.0%} of the batch ({classes})")
        if health.rebalance_fraction:
            plan.append(f"rebalance slice: {health.rebalance_fraction:.0%} of the batch")
        plan += list(health.plan_reasons)
        if plan:
            parts.append(
                "<h3>What select does about it</h3><ul>"
                + "".join(f"<li>{escape(p)}</li>" for p in plan)
                + "</ul>"
            )
    if history is not None:
        history = history.sort_values("round_id")
        lines = [Line("rating", _values(history["rating"]))]
        lines += [
            Line(FACTOR_NAMES[name], _values(history[name]), dashed=True)
            for name in FACTOR_NAMES
            if name in history.columns
        ]
        parts.append(
            svg_line_chart(
                history["round_id"].astype(int).tolist(),
                lines,
                title="Model rating and its factors, by round",
                x_label="round",
                y_label="0-100, higher is better",
                y_range=(0.0, 100.0),
                digits=0,
            )
        )
    return _section("rating", "Model rating", "".join(parts))


def _mean_name(window: int | None) -> str:
    return f"{window}-round mean" if window else "mean"


def _stop_section(data: RoundPageData) -> str:
    health = data.summaries.health
    rounds = (data.health_detail or {}).get("stop_rounds")
    frame = pd.DataFrame(list(rounds)) if rounds else data.health_history
    frame = _frame(frame, "round_id", "kappa")
    threshold, mean_name = data.stop_kappa, _mean_name(data.stop_window)
    parts = []
    if health is None:
        parts.append(_missing("Not there yet: the health stage has not run in this workspace."))
    else:
        word, _ = _stop_words(health)
        compare = ""
        if health.kappa_mean is not None and threshold is not None:
            compare = f" {'≥' if health.kappa_mean >= threshold else '<'} {threshold:g}"
        parts.append(
            f'<p class="headline">Stop: <b>{escape(word)}</b> (kappa {_num(health.kappa)}, '
            f"{escape(mean_name)} {_num(health.kappa_mean)}{escape(compare)})</p>"
        )
        if health.stop_reason:
            parts.append(f"<p>{escape(health.stop_reason)}</p>")
        parts.append(
            _table(
                ["stop set items", "kappa", mean_name, "threshold", "changed share", "entropy"],
                [
                    [
                        health.stop_set_size,
                        health.kappa,
                        health.kappa_mean,
                        threshold,
                        health.changed_share,
                        health.mean_entropy,
                    ]
                ],
            )
        )
    kappas = finite(frame["kappa"].tolist()) if frame is not None else []
    if frame is not None and kappas:
        frame = frame.sort_values("round_id")
        lines = [Line("kappa", _values(frame["kappa"]))]
        if "kappa_mean" in frame.columns:
            lines.append(Line(mean_name, _values(frame["kappa_mean"]), dashed=True))
        parts.append(
            svg_line_chart(
                frame["round_id"].astype(int).tolist(),
                lines,
                rules=[(threshold, f"threshold {threshold:g}")] if threshold is not None else [],
                title="Agreement of successive models on the stop set (Cohen's kappa)",
                x_label="round",
                y_label="kappa",
                y_range=(None, 1.0),
            )
        )
        parts.append(
            '<p class="note">Kappa compares this round\'s predictions on the stop set (pool '
            "items drawn at random once) with the previous round's; when the mean over the "
            "last rounds reaches the threshold, more labels barely change the model.</p>"
        )
    elif health is not None:
        parts.append(_missing("No kappa yet: it compares two rounds' models on the stop set."))
    return _section("stop", "Stop signal", "".join(parts))


def _drift_section(data: RoundPageData) -> str:
    health = data.summaries.health
    drift = (data.health_detail or {}).get("drift")
    if health is None and data.health_detail is None:
        body = _missing("Not there yet: the health stage has not run in this workspace.")
        return _section("drift", "Drift", body)
    if not drift:
        new = health.drift_new_items if health is not None else 0
        text = (
            f"{new} items arrived, too few to compare with the pool."
            if new
            else "No items arrived since the last round: nothing to compare."
        )
        return _section("drift", "Drift", f"<p>{escape(text)}</p>")
    warning = bool(drift.get("warning"))
    head = (
        f'<p class="headline {"bad" if warning else ""}">'
        f"{'Drift warning' if warning else 'No drift found'}: {_num(drift.get('n_new'))} new "
        f"items against {_num(drift.get('n_reference'))} of the pool</p>"
    )
    facts = [
        f"classifier AUC (new items against the pool): {_num(drift.get('auc'))}, "
        f"p-value {_num(drift.get('p_value'), 4)}",
        "features the classifier used: "
        + (", ".join(str(f) for f in drift.get("classifier_features") or ()) or "–"),
        f"the model's predictions: KS {_num(drift.get('prediction_ks'))}, p-value "
        f"{_num(drift.get('prediction_p_value'), 4)}, shifted: "
        f"{_num(drift.get('prediction_shift'))}",
    ]
    facts += [str(r) for r in drift.get("reasons") or ()]
    body = head + "<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>"
    features = pd.DataFrame(list(drift.get("features") or ()))
    if not features.empty and "feature" in features.columns:
        order = [c for c in ("shifted", "ks_statistic") if c in features.columns]
        if order:
            features = features.sort_values(order, ascending=False, kind="stable")
        columns = [
            c
            for c in ("feature", "kind", "ks_statistic", "p_value", "psi", "shifted")
            if c in features.columns
        ]
        body += _table(
            [c.replace("_", " ") for c in columns],
            [[row[c] for c in columns] for row in features.to_dict("records")],
        )
    return _section("drift", "Drift", body)


def _annotators_section(data: RoundPageData) -> str:
    annotators = _frame(data.annotators, "round_id", "annotator")
    if annotators is None:
        return _section("annotators", "Annotators", _missing("No annotator statistics yet."))
    rounds = annotators["round_id"]
    last = int(
        rounds[rounds <= data.round_id].max() if (rounds <= data.round_id).any() else rounds.max()
    )
    mine = annotators[annotators["round_id"] == last].sort_values("annotator")

    def bar(value: Any) -> Html:
        if is_missing(value):
            return Html("–")
        share = min(max(float(value), 0.0), 1.0)
        return Html(
            f'<span class="bar"><span style="width:{share * 100:.0f}%"></span></span> {share:.3f}'
        )

    rows = [
        [r["annotator"], r.get("n_labels"), bar(r.get("agreement")), r.get("quality"), r["method"]]
        for r in mine.to_dict("records")
    ]
    note = (
        f'<p class="note">As of round {last}: agreement is the share of an annotator\'s votes '
        "that agree with the consensus; quality is CROWDLAB's estimate (empty under "
        "majority vote).</p>"
    )
    table = _table(["annotator", "labels", "agreement", "quality", "method"], rows)
    return _section("annotators", "Annotators", note + table)


def _batch_section(data: RoundPageData) -> str:
    batch = _frame(data.batch, "reason")
    select = data.summaries.select
    parts = []
    if batch is None:
        parts.append(_missing("No batch this round."))
    else:
        counts = batch["reason"].astype("string").fillna("?").value_counts()
        rows = [[reason, int(n), REASONS.get(str(reason), "")] for reason, n in counts.items()]
        parts.append(_table(["part", "items", "how chosen"], rows))
        if "predicted_label" in batch.columns:
            suggested = batch["predicted_label"].astype("string").fillna("(no suggestion)")
            by_class = suggested.value_counts()
            parts.append(
                "<details><summary>By the model's suggestion</summary>"
                + _table(["suggested class", "items"], [[c, int(n)] for c, n in by_class.items()])
                + "</details>"
            )
    facts = []
    if data.batch_seconds is not None:
        facts.append(
            f"expected annotation time: {data.batch_seconds / 60:.1f} min "
            f"({data.batch_seconds:.0f} s: confirming right suggestions, assigning by hand, "
            "switching class)"
        )
    facts.append(
        f"files for annotators: data/outbox/{round_name(data.round_id)}/ "
        "(batch.csv, batch.jsonl, tasks.json)"
    )
    if select is not None:
        facts.append(f"pool items never issued: {select.unlabeled_left:,}")
    parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in facts) + "</ul>")
    return _section("batch", "Next batch", "".join(parts))


SECTIONS = (
    ("summary", "At a glance"),
    ("trend", "Over all rounds"),
    ("classes", "Per class"),
    ("balance", "Class balance"),
    ("rating", "Model rating"),
    ("stop", "Stop signal"),
    ("drift", "Drift"),
    ("annotators", "Annotators"),
    ("batch", "Next batch"),
)

STYLE = """
:root{color-scheme:light;--ink:#1b1f24;--muted:#5b6470;--line:#d9dee4;--bg:#fff;--tile:#f5f7fa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--ink);background:var(--bg);margin:0 auto;max-width:1040px;padding:20px 24px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px;padding-top:8px;
border-top:1px solid var(--line)}h3{font-size:15px;margin:18px 0 6px}
nav a{margin-right:12px;color:#0a58a8;text-decoration:none}nav{margin:8px 0 4px}
.sub{color:var(--muted);margin:0}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:10px}
.tile{background:var(--tile);border-radius:8px;padding:10px 12px;border-left:4px solid #9aa5b1}
.tile.good{border-left-color:#009E73}.tile.bad{border-left-color:#D55E00}
.tile .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .value{font-size:22px;font-weight:600}.tile .note{color:var(--muted);font-size:12px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left;vertical-align:top}
th{font-weight:600;background:var(--tile)}
.missing{color:var(--muted);font-style:italic}.note{color:var(--muted);font-size:13px}
.headline{font-size:16px}.bad{color:#b34700}
.bar{display:inline-block;width:80px;height:9px;background:#e4e8ee;border-radius:2px}
.bar span{display:block;height:100%;background:#0072B2;border-radius:2px}
svg.plot{display:block;max-width:100%;height:auto;margin:10px 0}
svg .frame{fill:none;stroke:#c5ccd4}svg .grid{stroke:#eceff3}
svg .tick,svg .value,svg .legend{font-size:11px;fill:#3d4550}svg .count{font-size:11px}
svg .axis{font-size:12px;fill:#1b1f24}svg .rule{stroke:#D55E00;stroke-dasharray:4 3}
svg .mark line{stroke:#222;stroke-width:1.6}svg .diagonal{stroke:#1b1f24;stroke-width:1}
details summary{cursor:pointer;color:#0a58a8;margin:6px 0}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"""

#: nothing may be fetched: no script, no font, no image, no connection (inline SVG is markup)
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'"
)


def render_round_page(data: RoundPageData) -> str:
    """The round report as one self-contained HTML page.

    Every section is present; what is not there yet (no model, no health stage, an older
    workspace) says so instead of failing.
    """
    scores = _get_scores(data)
    name = round_name(data.round_id)
    nav = "".join(f'<a href="#{anchor}">{escape(title)}</a>' for anchor, title in SECTIONS)
    started = f" · started {data.started_at}" if data.started_at else ""
    body = [
        _summary_section(data, scores),
        _trend_section(data, scores),
        _classes_section(data, scores),
        _balance_section(data),
        _rating_section(data),
        _stop_section(data),
        _drift_section(data),
        _annotators_section(data),
        _batch_section(data),
    ]
    footer = (
        f"<footer>Written by alloop's export stage for {name} from reports/history.csv, "
        "reports/metrics.json, reports/test_predictions.csv, reports/health.json, "
        "reports/health_history.csv, reports/health_detail.json, "
        "data/labels/annotators.parquet and the batch. Intervals: "
        f"{INTERVAL_LEVEL:.0%}; this round's macro-F1 by a percentile bootstrap over its test "
        "predictions, earlier rounds' by a Wilson interval from their test-set size.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>alloop {name}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>alloop {name}</h1>"
        f'<p class="sub">The round report{escape(started)}</p><nav>{nav}</nav></header>'
        f"<main>{''.join(body)}</main>{footer}</body></html>\n"
    )
