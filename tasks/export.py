"""Stage 8, export: the batch for annotators (CSV, JSONL, Label Studio tasks) and the report.

Annotators see the item and the model's suggestion, never the split or why an item was
chosen: a test item must be labeled exactly like any other. Items are grouped by predicted
class, so that an annotator switches context less often; the report gives the batch's
expected annotation time (:mod:`tasks.annotation_time`). The report comes twice: as Markdown
(``reports/round.md``, what ``alloop round`` prints) and as one self-contained HTML page with
plots (``reports/round.html``, :mod:`tasks.report_page`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from tasks import schema
from tasks.annotation_time import get_batch_seconds
from tasks.catalog import csv_text, json_text, jsonl_text, round_name
from tasks.context import StageContext, StageSpec
from tasks.faults import crash_point
from tasks.labelstudio import ITEM_FIELD, get_shown_columns, get_text_field
from tasks.params import ExportParams, StopParams
from tasks.report_page import RoundPageData, render_round_page
from tasks.summaries import (
    SUMMARIES,
    ExportSummary,
    RoundSummaries,
    format_counts,
    read_round_summaries,
)

log = logging.getLogger(__name__)

MAX_FILES_LISTED = 20
#: the stages whose summaries the report and the history row read (all before export)
REPORTED = tuple(stage for stage in SUMMARIES if stage != "export")
#: a rating factor under this gets its action spelled out in the round report
LOW_FACTOR = 70.0

#: what the round page shows besides the summaries and the history (any may be absent: an
#: older workspace, health disabled, a first round)
PAGE_READS = ("test_predictions", "health_history", "health_detail", "annotators")

STAGE = StageSpec(
    name="export",
    module=__name__,
    code=(
        "tasks/annotation_time.py",
        "tasks/summaries.py",
        "tasks/report_page.py",
        "tasks/svg_plots.py",
    ),
    reads=(
        "batch",
        "pool",
        "manifest",
        *(SUMMARIES[stage].report for stage in REPORTED),
        *PAGE_READS,
    ),
    writes=("outbox", "round_report", "round_page", "history", "export_report"),
    params=("export", "annotation", "project", "stop"),
)

#: Columns an annotator fills in; the returned CSV is the plain incoming label format.
ANSWER_COLUMNS = ("label", "annotator", "labeled_at", "comment")


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (NaN and pandas' NA become None)."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def export_batch(
    batch: pd.DataFrame,
    pool_rows: pd.DataFrame,
    *,
    round_id: int,
    params: ExportParams,
    text_columns: Sequence[str] = (),
    label_separator: str | None = None,
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[dict[str, Any]]]:
    """The batch in the three annotator formats.

    Parameters
    ----------
    batch : pd.DataFrame
        Schema :data:`tasks.schema.BATCH`.
    pool_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of at least the batch's items.
    text_columns : sequence of str
        The pool's text columns (the features stage's): a Label Studio task shows each as
        text (``data.text_<i>``, :func:`tasks.labelstudio.get_label_config`), not in the
        item's table.
    label_separator : str, optional
        A multilabel project's: a suggestion is a set, written as its text in the CSV, as a
        list in the JSONL records (the form a JSONL answer takes), and pre-annotated in Label
        Studio as one choice per label.

    Returns
    -------
    (pd.DataFrame, list of dict, list of dict)
        The CSV table (item, suggestion, features, blank answer columns), the JSONL records,
        and the Label Studio import tasks with the suggestion as a pre-annotation.
    """
    missing = set(batch["item_id"]) - set(pool_rows["item_id"])
    if missing:
        raise ValueError(f"batch items {sorted(missing)[:5]} are not in the pool")
    if params.blind_second_opinion:  # no suggestion on a second opinion: see ExportParams
        blind = (batch["reason"] == "relabel").to_numpy()
        batch = batch.assign(
            predicted_label=batch["predicted_label"].mask(blind),
            confidence=batch["confidence"].mask(blind),
        )
    ordered = batch.assign(_group=batch["predicted_label"].fillna("")).sort_values(
        ["_group", "item_id"], kind="stable"
    )
    features = pool_rows.set_index("item_id").loc[ordered["item_id"]].reset_index()
    feature_names = [c for c in features.columns if c != "item_id"]
    table = pd.concat(
        [
            ordered[["item_id", "predicted_label", "confidence"]].reset_index(drop=True),
            features[feature_names],
        ],
        axis=1,
    )
    for column in ANSWER_COLUMNS:
        table[column] = ""
    model_version = round_name(round_id)
    shown_columns, shown_texts = get_shown_columns(
        feature_names, params=params, text_columns=text_columns
    )
    records: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    for row, feats in zip(
        ordered.itertuples(index=False), features[feature_names].to_dict("records"), strict=True
    ):
        data = {"item_id": row.item_id, **{k: _plain(v) for k, v in feats.items()}}
        suggestion = _plain(row.predicted_label)
        confidence = _plain(row.confidence)
        records.append(
            {
                "item_id": row.item_id,
                "predicted_label": suggestion.split(label_separator)
                if label_separator and suggestion is not None
                else suggestion,
                "confidence": confidence,
                "data": data,
            }
        )
        shown = {k: data[k] for k in shown_columns}
        task_: dict[str, Any] = {
            "data": {
                "item_id": row.item_id,
                "round_id": round_id,
                ITEM_FIELD: shown,
                **{get_text_field(i): data[k] for i, k in enumerate(shown_texts)},
            }
        }
        if suggestion is not None:
            task_["predictions"] = [
                {
                    "model_version": model_version,
                    "score": confidence,
                    "result": [
                        {
                            "from_name": params.labelstudio_from_name,
                            "to_name": params.labelstudio_to_name,
                            "type": "choices",
                            "value": {
                                "choices": suggestion.split(label_separator)
                                if label_separator
                                else [suggestion]
                            },
                        }
                    ],
                }
            ]
        tasks.append(task_)
    return table, records, tasks


def get_round_report(
    round_id: int,
    reports: RoundSummaries,
    files: list[dict[str, Any]],
    *,
    batch_seconds: float | None = None,
    labelstudio: dict[str, Any] | None = None,
) -> str:
    """The round report in Markdown, from every stage's summary and the intake manifest.

    ``labelstudio``: the round's Label Studio pull (``reports/labelstudio.json`` as the round
    found it when it started), when the workspace is connected.

    ``batch_seconds``: the batch's expected annotation time, if known.
    """
    v, m, f, t = reports.validate, reports.merge, reports.flag, reports.train
    ev, s = reports.evaluate, reports.select

    def num(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, int | float) else "n/a"

    lines = [f"# {round_name(round_id)}", ""]
    if reports.health is not None:  # the morning's questions first: is labeling paying?
        h = reports.health
        rating, *rest = (f"- {line}" for line in h.describe())
        actions = [
            f"  - to raise {factor.replace('_', ' ')}: {action}"
            for factor, action in h.actions.items()
            if (h.factors.get(factor) is not None and h.factors[factor] < LOW_FACTOR)
        ]
        lines += ["## Is labeling paying?", rating, *actions, *rest]
        lines += [
            "- details: reports/round.html (the rating and the stop signal over rounds), "
            "reports/health.json",
            "",
        ]
    lines += ["## Labels in"]
    if v is not None:
        lines += [
            f"- files read: {v.files} (skipped as already consumed: {v.files_already_consumed})",
            f"- rows read: {v.rows_read} = accepted {v.rows_accepted} "
            f"+ quarantined {v.rows_quarantined}"
            + (
                f" + already consumed {v.rows_already_consumed} (answers the ledger holds: "
                "not entered again)"
                if v.rows_already_consumed
                else ""
            ),
        ]
        lines += [f"  - {code}: {n}" for code, n in sorted(v.quarantined_by_reason.items())]
    if labelstudio is not None and labelstudio.get("pull_ok") is not None:
        if not labelstudio["pull_ok"]:
            pulled = (
                f"the pull FAILED: {labelstudio.get('pull_error')}; the round went on with what "
                "it had, the next one pulls again"
            )
        elif labelstudio.get("pull_files"):
            pulled = (
                f"{labelstudio.get('pulled_tasks', 0)} tasks with new answers pulled into "
                + ", ".join(f"`{name}`" for name in labelstudio["pull_files"])
            )
        else:
            pulled = "nothing new in the project"
        lines.append(f"- Label Studio (project {labelstudio.get('project_id')}): {pulled}")
    shown = files[:MAX_FILES_LISTED]
    for entry in shown:
        detail = {
            "read": f"{entry.get('rows_read', 0)} rows = {entry.get('accepted', 0)} accepted + "
            f"{entry.get('quarantined', 0)} quarantined"
            + (
                f" + {entry['already_consumed']} already consumed"
                if entry.get("already_consumed")
                else ""
            ),
            "unreadable": f"refused whole: {entry.get('error', '')}",
            "already_consumed": f"skipped: same content as {entry.get('same_as', '')}",
        }.get(str(entry.get("status")), str(entry.get("status")))
        lines.append(f"  - file `{entry.get('file')}` ({entry.get('format', '-')}): {detail}")
    if len(files) > len(shown):
        lines.append(
            f"  - ... and {len(files) - len(shown)} more files: "
            f"data/archive/{round_name(round_id)}/manifest.json lists every one"
        )
    if m is not None and f is not None:
        lines += [
            f"- ledger: {f.ledger_events} events (+{f.ledger_events_added}: "
            f"{m.events_label} labels, {m.events_relabel} relabels, {m.events_skip} skips, "
            f"{m.events_rejected} rejected, {m.events_resolved} flags resolved, "
            f"{m.events_consensus} consensus labels set or changed, "
            f"{f.flagged + f.confirmed_kept} flags)",
        ]
    if m is not None:
        lines += [
            f"- consensus: {m.consensus_method}; items in disagreement: {m.items_in_disagreement}",
            f"- labeled items: {m.labeled_items} (train {m.train_items}, test {m.test_items})",
        ]
    if f is not None:
        lines += [
            "",
            "## Label issues",
            f"- flagged: {f.flagged} of {f.checked} checked (handling: {f.handling})"
            + (f"; not checked: {f.skipped_because}" if f.skipped_because else ""),
        ]
        if f.confirmed_kept:
            lines.append(
                f"- doubted again but kept: {f.confirmed_kept} labels a second opinion had "
                "confirmed (they stay confirmed until a new vote arrives)"
            )
    lines += ["", "## Model"]
    if reports.features is not None and reports.features.describe():
        lines.append(f"- features: {reports.features.describe()}")
    if t is not None:
        lines.append(f"- trained: {t.trained} on {t.n_used} labels ({t.n_excluded} excluded)")
    if ev is not None:
        cand, champ = ev.candidate or {}, ev.champion or {}
        lines += [
            (
                f"- test items: {ev.n_test}; candidate MAP {num(cand.get('map'))}, micro-F1 "
                f"{num(cand.get('micro_f1'))}, macro-F1 {num(cand.get('macro_f1'))}; champion "
                f"MAP {num(champ.get('map'))}"
                if "map" in cand
                else f"- test items: {ev.n_test}; candidate macro-F1 "
                f"{num(cand.get('macro_f1'))}, accuracy {num(cand.get('accuracy'))}; champion "
                f"macro-F1 {num(champ.get('macro_f1'))}"
            ),
            f"- promoted: {ev.promoted} ({ev.gate})",
        ]
    lines += ["", "## Next batch"]
    if s is not None:
        lines.append(f"- {s.batch_size} items: {format_counts(s.parts)}")
    lines.append(
        f"- files: data/outbox/{round_name(round_id)}/ (batch.csv, batch.jsonl, tasks.json)"
    )
    if batch_seconds is not None:
        lines.append(
            f"- expected annotation time: {batch_seconds / 60:.1f} min ({batch_seconds:.0f} s; "
            "confirming a right suggestion, assigning by hand, switching class)"
        )
    if s is not None:
        lines.append(
            f"- unlabeled items left in the pool: {s.unlabeled_left}"
            + (
                " (the pool is exhausted: every item has been issued; add new items with "
                "`alloop pool add FILE`)"
                if s.unlabeled_left == 0
                else ""
            )
        )
    lines.append("")
    return "\n".join(lines)


def get_history_row(round_id: int, reports: RoundSummaries) -> pd.DataFrame:
    """One row of ``reports/history.csv``: the round's trend figures."""
    v, m, f, ev, s = (
        reports.validate,
        reports.merge,
        reports.flag,
        reports.evaluate,
        reports.select,
    )
    champion_f1 = (ev.champion or {}).get("macro_f1") if ev is not None else None
    if ev is not None and ev.promoted:
        champion_f1 = ev.candidate_macro_f1
    row = {
        "round_id": round_id,
        "labeled_items": m.labeled_items if m else 0,
        "train_items": m.train_items if m else 0,
        "test_items": m.test_items if m else 0,
        "rows_accepted": v.rows_accepted if v else 0,
        "rows_quarantined": v.rows_quarantined if v else 0,
        "flagged": f.flagged if f else 0,
        "test_macro_f1": ev.candidate_macro_f1 if ev else None,
        "champion_macro_f1": champion_f1,
        "promoted": ev.promoted if ev else False,
        "batch_size": s.batch_size if s else 0,
        "unlabeled_left": s.unlabeled_left if s else 0,
    }
    return schema.conform(pd.DataFrame([row]), schema.HISTORY)


def get_round_page_data(
    load: Callable[[str], Any],
    *,
    round_id: int,
    started_at: str,
    reports: RoundSummaries,
    classes: tuple[str, ...],
    stop: StopParams | None,
    batch_seconds: float | None,
    random_state: int,
) -> RoundPageData:
    """What the round page shows, read by artifact name (``load``: a name -> its value, None
    or an empty table when absent; the history as this round left it). ``stop`` None: the
    stop signal's threshold is not known (a past round's params this alloop cannot read)."""

    def shown(name: str) -> Any:
        # a file another alloop wrote in another shape leaves its part of the page out: the
        # page is for people, it never stops a round
        try:
            return load(name)
        except (ValueError, KeyError) as exc:
            log.warning("the round page leaves out %s: %s", name, exc)
            return None

    return RoundPageData(
        round_id=round_id,
        classes=tuple(classes),
        started_at=started_at,
        summaries=reports,
        history=load("history"),
        health_history=shown("health_history"),
        health_detail=shown("health_detail"),
        test_predictions=shown("test_predictions"),
        annotators=shown("annotators"),
        batch=load("batch"),
        batch_seconds=batch_seconds,
        stop_kappa=stop.kappa if stop is not None else None,
        stop_window=stop.window if stop is not None else None,
        random_state=random_state,
    )


def get_outbox_files(
    table: pd.DataFrame, records: list[dict[str, Any]], tasks: list[dict[str, Any]]
) -> dict[str, str]:
    """The outbox's files: the batch as CSV, JSONL and Label Studio tasks."""
    return {
        "batch.csv": csv_text(table),
        "batch.jsonl": jsonl_text(records),
        "tasks.json": json_text(tasks),
    }


def run(ctx: StageContext) -> ExportSummary:
    batch = ctx.load("batch")
    project = ctx.params.project
    separator = project.label_separator if project.task == "multilabel" else None
    reports = read_round_summaries(ctx.load, stages=REPORTED)
    table, records, tasks = export_batch(
        batch,
        ctx.pool_rows(batch["item_id"], ordered=False),
        round_id=ctx.round_id,
        params=ctx.params.export,
        text_columns=reports.features.text_columns if reports.features else (),
        label_separator=separator,
    )
    ctx.save("outbox", get_outbox_files(table, records, tasks))
    crash_point("during:export")
    # in the order the annotators work through the batch: grouped by suggestion
    batch_seconds = get_batch_seconds(
        table["predicted_label"],
        table["confidence"].to_numpy(),
        params=ctx.params.annotation,
        separator=separator,
    )
    ctx.save(
        "round_report",
        get_round_report(
            ctx.round_id,
            reports,
            ctx.load("manifest") or [],
            batch_seconds=batch_seconds,
            labelstudio=ctx.load_before("labelstudio_record"),
        ),
    )
    history = ctx.load_before("history")
    ctx.save("history", pd.concat([history, get_history_row(ctx.round_id, reports)]))
    page = get_round_page_data(
        ctx.load,
        round_id=ctx.round_id,
        started_at=ctx.round.started_at,
        reports=reports,
        classes=ctx.params.project.classes,
        stop=ctx.params.stop,
        batch_seconds=batch_seconds,
        random_state=ctx.random_state("export"),
    )
    ctx.save("round_page", render_round_page(page))
    summary = ExportSummary(
        exported_items=int(len(table)), expected_annotation_seconds=batch_seconds
    )
    ctx.save("export_report", summary.to_dict())
    return summary
