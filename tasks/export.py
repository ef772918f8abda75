"""Stage 8, export: the batch for annotators (CSV, JSONL, Label Studio tasks) and the report.

Annotators see the item and the model's suggestion, never the split or why an item was
chosen: a test item must be labeled exactly like any other. Items are grouped by predicted
class, so that an annotator switches context less often; the report gives the batch's
expected annotation time (:mod:`tasks.annotation_time`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tasks import schema
from tasks.annotation_time import get_batch_seconds
from tasks.catalog import round_name, write_csv, write_json, write_jsonl, write_text
from tasks.context import StageContext, StageSpec, stage_task
from tasks.faults import crash_point
from tasks.params import ExportParams

MAX_FILES_LISTED = 20
REPORTS = ("validate", "merge", "flag", "train", "metrics", "score", "select")

STAGE = StageSpec(
    name="export",
    deps=(
        "tasks/export.py",
        "tasks/annotation_time.py",
        "data/interim/batch.parquet",
        "data/pool",
        "data/archive",
        *(f"reports/{name}.json" for name in REPORTS),
    ),
    params=("export", "annotation"),
    outs=("reports/round.md",),
    persist=("data/outbox",),
    metrics=("reports/export.json",),
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
    batch: pd.DataFrame, pool_rows: pd.DataFrame, *, round_id: int, params: ExportParams
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[dict[str, Any]]]:
    """The batch in the three annotator formats.

    Parameters
    ----------
    batch : pd.DataFrame
        Schema :data:`tasks.schema.BATCH`.
    pool_rows : pd.DataFrame
        Pool rows (``item_id`` plus features) of at least the batch's items.

    Returns
    -------
    (pd.DataFrame, list of dict, list of dict)
        The CSV table (item, suggestion, features, blank answer columns), the JSONL records,
        and the Label Studio import tasks with the suggestion as a pre-annotation.
    """
    missing = set(batch["item_id"]) - set(pool_rows["item_id"])
    if missing:
        raise ValueError(f"batch items {sorted(missing)[:5]} are not in the pool")
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
                "predicted_label": suggestion,
                "confidence": confidence,
                "data": data,
            }
        )
        task_: dict[str, Any] = {"data": data}
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
                            "value": {"choices": [suggestion]},
                        }
                    ],
                }
            ]
        tasks.append(task_)
    return table, records, tasks


def get_round_report(
    round_id: int,
    reports: dict[str, dict[str, Any]],
    files: list[dict[str, Any]],
    *,
    batch_seconds: float | None = None,
) -> str:
    """The round report in Markdown, from every stage's summary and the intake manifest.

    ``batch_seconds``: the batch's expected annotation time, if known.
    """
    v, m, f, t = (reports.get(k, {}) for k in ("validate", "merge", "flag", "train"))
    ev, s = reports.get("metrics", {}), reports.get("select", {})
    cand = ev.get("candidate") or {}
    champ = ev.get("champion") or {}

    def num(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, int | float) else "n/a"

    lines = [
        f"# {round_name(round_id)}",
        "",
        "## Labels in",
        f"- files read: {v.get('files', 0)} (skipped as already consumed: "
        f"{v.get('files_already_consumed', 0)})",
        f"- rows read: {v.get('rows_read', 0)} = accepted {v.get('rows_accepted', 0)} "
        f"+ quarantined {v.get('rows_quarantined', 0)}",
    ]
    for code, count in sorted((v.get("quarantined_by_reason") or {}).items()):
        lines.append(f"  - {code}: {count}")
    shown = files[:MAX_FILES_LISTED]
    for entry in shown:
        detail = {
            "read": f"{entry.get('rows_read', 0)} rows = {entry.get('accepted', 0)} accepted + "
            f"{entry.get('quarantined', 0)} quarantined",
            "unreadable": f"refused whole: {entry.get('error', '')}",
            "already_consumed": f"skipped: same content as {entry.get('same_as', '')}",
        }.get(str(entry.get("status")), str(entry.get("status")))
        lines.append(f"  - file `{entry.get('file')}` ({entry.get('format', '-')}): {detail}")
    if len(files) > len(shown):
        lines.append(
            f"  - ... and {len(files) - len(shown)} more files: "
            f"data/archive/{round_name(round_id)}/manifest.json lists every one"
        )
    lines += [
        f"- ledger: {f.get('ledger_events', 0)} events (+{f.get('ledger_events_added', 0)}: "
        f"{m.get('events_label', 0)} labels, {m.get('events_relabel', 0)} relabels, "
        f"{m.get('events_rejected', 0)} rejected, {m.get('events_resolved', 0)} flags resolved, "
        f"{m.get('events_consensus', 0)} consensus changes)",
        f"- consensus: {m.get('consensus_method', 'n/a')}; items in disagreement: "
        f"{m.get('items_in_disagreement', 0)}",
        f"- labeled items: {m.get('labeled_items', 0)} (train {m.get('train_items', 0)}, "
        f"test {m.get('test_items', 0)})",
        "",
        "## Label issues",
        f"- flagged: {f.get('flagged', 0)} of {f.get('checked', 0)} checked "
        f"(handling: {f.get('handling', 'n/a')}) {f.get('skipped_because', '')}".rstrip(),
        "",
        "## Model",
        f"- trained: {t.get('trained', False)} on {t.get('n_used', 0)} labels "
        f"({t.get('n_excluded', 0)} excluded)",
        f"- test items: {ev.get('n_test', 0)}; candidate macro-F1 {num(cand.get('macro_f1'))}, "
        f"accuracy {num(cand.get('accuracy'))}; champion macro-F1 {num(champ.get('macro_f1'))}",
        f"- promoted: {ev.get('promoted', False)} ({ev.get('gate', '')})",
        "",
        "## Next batch",
        f"- {s.get('batch_size', 0)} items: "
        + ", ".join(f"{k[2:]} {s[k]}" for k in sorted(s) if k.startswith("n_") and s[k]),
        f"- files: data/outbox/{round_name(round_id)}/ (batch.csv, batch.jsonl, tasks.json)",
    ]
    if batch_seconds is not None:
        lines.append(
            f"- expected annotation time: {batch_seconds / 60:.1f} min ({batch_seconds:.0f} s; "
            "confirming a right suggestion, assigning by hand, switching class)"
        )
    lines.append("")
    return "\n".join(lines)


@stage_task("export")
def run(ctx: StageContext) -> dict[str, object]:
    cat = ctx.catalog
    batch = cat.read_table(cat.batch, schema.BATCH)
    pool_rows = cat.read_pool(batch["item_id"])
    table, records, tasks = export_batch(
        batch, pool_rows, round_id=ctx.round_id, params=ctx.params.export
    )
    outbox = cat.outbox(ctx.round_id)
    write_csv(outbox / "batch.csv", table)
    crash_point("during:export")
    write_jsonl(outbox / "batch.jsonl", records)
    write_json(outbox / "tasks.json", tasks)
    reports = {
        name: cat.read_json(cat.reports_dir / f"{name}.json", default={}) for name in REPORTS
    }
    files = cat.read_json(cat.archive(ctx.round_id) / "manifest.json", default=[])
    # in the order the annotators work through the batch: grouped by suggestion
    batch_seconds = get_batch_seconds(
        table["predicted_label"], table["confidence"].to_numpy(), params=ctx.params.annotation
    )
    report = get_round_report(ctx.round_id, reports, files, batch_seconds=batch_seconds)
    write_text(cat.reports_dir / "round.md", report)
    summary: dict[str, object] = {
        "exported_items": int(len(table)),
        "expected_annotation_seconds": batch_seconds,
    }
    write_json(cat.reports_dir / "export.json", summary)
    return summary
