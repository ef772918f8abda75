"""Stage 1, validate: check every incoming label row; accept it or quarantine it with a reason.

Rows in = rows accepted + rows quarantined, for every file and every round. The checks are a
Great Expectations suite over the rows plus a few derived columns (is the item in the pool,
was it issued, is the time readable); each failing row is mapped back by its position and
given the reason code of the first check it fails, in the order of :func:`get_checks`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from tasks import schema
from tasks.catalog import get_artifact, round_name, sha256_bytes
from tasks.context import StageContext, StageSpec
from tasks.expectations import (
    Check,
    find_failing_rows,
    get_check_order,
    get_suite_dict,
)
from tasks.faults import crash_point
from tasks.params import ValidateParams
from tasks.parsing import (
    FIELDS,
    REQUIRED,
    LabelFileError,
    match_classes,
    parse_label_times,
    read_label_file,
)
from tasks.summaries import ValidateSummary

STAGE = StageSpec(
    name="validate",
    module=__name__,
    code=("tasks/parsing.py", "tasks/expectations.py"),
    reads=("suite", "pool"),
    writes=("archive", "manifest", "quarantine", "accepted", "rejected", "validate_report"),
    params=("project.classes", "project.allow_new_classes", "validate"),
)

log = logging.getLogger(__name__)

#: where the suite lives in a workspace (the catalog's declaration)
SUITE_FILE = get_artifact("suite").path


def _holds(name: str, column: str) -> Check:
    """A check that the derived boolean ``column`` is true."""
    return Check(name, "ExpectColumnValuesToBeInSet", {"column": column, "value_set": [True]})


def get_checks() -> tuple[Check, ...]:
    """The built-in checks, in priority order: a row failing several gets the first's reason.

    The allowed classes are the suite parameter ``classes`` (``project.classes``).
    """
    return (
        Check("malformed_row", "ExpectColumnValuesToBeNull", {"column": "malformed"}),
        *(
            Check(f"missing_{name}", "ExpectColumnValuesToNotBeNull", {"column": name})
            for name in REQUIRED
        ),
        _holds("unknown_item", "_known"),
        _holds("not_issued", "_issued"),
        Check(
            "unknown_class",
            "ExpectColumnValuesToBeInSet",
            {"column": "label", "value_set": {"$PARAMETER": "classes"}},
        ),
        _holds("bad_timestamp", "_time_ok"),
        _holds("future_timestamp", "_past"),
        _holds("conflicting_labels", "_consistent"),
        _holds("duplicate_row", "_first"),
    )


BUILT_IN = tuple(check.name for check in get_checks())


def get_default_suite() -> dict[str, object]:
    """The suite ``alloop init`` writes to ``gx/expectations/incoming_labels.json``."""
    return get_suite_dict(get_checks())


def _sentence(code: str, row: pd.Series, classes: Sequence[str], as_of: pd.Timestamp) -> str:
    if code == "malformed_row":
        return f"row cannot be read: {row['malformed']}"
    if code.startswith("missing_"):
        return f"field {code.removeprefix('missing_')!r} is missing or empty"
    return {
        "unknown_item": f"item {row['item_id']!r} is not in the pool",
        "not_issued": (
            f"item {row['item_id']!r} is not in any open batch (never issued, or its batch "
            "has closed)"
        ),
        "unknown_class": f"label {row['label']!r} is not one of the classes {list(classes)}",
        "bad_timestamp": (
            row["_time_problem"]
            if isinstance(row.get("_time_problem"), str)
            else f"labeled_at {row['labeled_at']!r} is not a time in a known form"
        ),
        "future_timestamp": (
            f"labeled_at {row['labeled_at']!r} is after the round started ({as_of.isoformat()})"
        ),
        "conflicting_labels": (
            f"annotator {row['annotator']!r} gave item {row['item_id']!r} different labels "
            "in the same round"
        ),
        "duplicate_row": (
            f"repeats an earlier row with the same item, annotator and label "
            f"(kept: {row['_first_source']})"
        ),
    }.get(code, f"fails the check {code!r} of the expectation suite")


def _parse_times(frame: pd.DataFrame, date_order: str) -> tuple[pd.Series, pd.Series]:
    """Label times as UTC (NaT if unreadable or ambiguous) and why each unread one was not
    read; the forms accepted are :func:`tasks.parsing.parse_label_times`'s. An ambiguous
    day/month is told by the other dates of the same file."""
    groups = frame["source_file"] if "source_file" in frame else None
    times, problems = parse_label_times(frame["labeled_at"], groups=groups, date_order=date_order)
    return times, problems


@dataclass(frozen=True)
class Validation:
    accepted: pd.DataFrame  # schema ACCEPTED
    quarantined: pd.DataFrame  # schema QUARANTINED


def validate_labels(
    rows: pd.DataFrame,
    *,
    pool_ids: pd.Series,
    issued_ids: pd.Series,
    classes: Sequence[str],
    as_of: pd.Timestamp,
    params: ValidateParams,
    suite: Mapping[str, object] | None = None,
    allow_new_classes: bool = False,
) -> Validation:
    """Split parsed label rows into accepted and quarantined.

    Parameters
    ----------
    rows : pd.DataFrame
        Rows of :func:`tasks.parsing.parse_label_file` from all files of the round, in the
        order received, plus ``source_file`` and ``source_sha256``.
    pool_ids, issued_ids : pd.Series of str
        Items in the pool; items issued to annotators in earlier rounds.
    as_of : pd.Timestamp
        The round's clock (UTC): a label time after it, beyond the allowed skew, is refused.
    suite : dict, optional
        The expectation suite (the workspace's file); the built-in suite when omitted. Its
        order is the priority of the reasons; checks of its own must name their columns.

    Returns
    -------
    Validation
        ``len(accepted) + len(quarantined) == len(rows)``, always.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    frame = rows.reset_index(drop=True).copy()
    for name in (*FIELDS, "malformed"):
        frame[name] = frame[name].astype("string").str.strip().replace("", pd.NA)
    # "Benign" is the class benign: the declared spelling is what is checked and stored
    frame["label"] = match_classes(frame["label"], classes)
    times, time_problems = _parse_times(frame, params.date_order)
    limit = as_of + pd.Timedelta(seconds=params.max_clock_skew_seconds)
    key = frame["item_id"].fillna("") + "\x1f" + frame["annotator"].fillna("")
    labels_per_key = frame.groupby(key)["label"].transform("nunique")
    triple = key + "\x1f" + frame["label"].fillna("")
    first_position = frame.groupby(triple).cumcount() == 0
    first_source = (
        frame.groupby(triple)["source_file"].transform("first")
        + ":"
        + (frame.groupby(triple)["source_row"].transform("first").astype(str))
    )
    frame = frame.assign(
        _known=schema.is_in(frame["item_id"], pool_ids),
        _issued=schema.is_in(frame["item_id"], issued_ids),
        _time_ok=times.notna() | frame["labeled_at"].isna(),
        _time_problem=time_problems,
        _past=times.isna() | (times <= limit),  # unreadable times have their own check
        _consistent=labels_per_key <= 1,
        _first=first_position,
        _first_source=first_source,
    )
    suite = suite if suite is not None else get_default_suite()
    allowed = list(classes)
    if allow_new_classes:  # any non-empty label is a class, known or new
        allowed += sorted(set(frame["label"].dropna()) - set(classes))
    failing = find_failing_rows(frame, suite, parameters={"classes": allowed}, required=BUILT_IN)
    order = get_check_order(suite)
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    for name, _ in reversed(order):  # the first check in the suite's order wins
        reason.iloc[failing[name]] = name
    custom = dict(order)
    bad = reason.notna().to_numpy()
    quarantined = frame[bad].assign(reason_code=reason[bad])
    quarantined = quarantined.assign(
        reason=[
            custom.get(code) or _sentence(code, row, classes, as_of)
            for code, (_, row) in zip(
                quarantined["reason_code"], quarantined.iterrows(), strict=True
            )
        ]
    )
    accepted = frame[~bad].assign(
        labeled_at=times[~bad].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").astype("string")
    )
    return Validation(
        accepted=schema.conform(accepted, schema.ACCEPTED),
        quarantined=schema.conform(quarantined, schema.QUARANTINED),
    )


def get_file_rejection(name: str, digest: str, message: str) -> pd.DataFrame:
    row = {column: pd.NA for column in schema.QUARANTINED}
    row.update(
        source_file=name,
        source_sha256=digest,
        source_row=0,
        reason_code="unreadable_file",
        reason=f"the whole file was refused: {message}",
    )
    return schema.conform(pd.DataFrame([row]), schema.QUARANTINED)


def get_consumed_hashes(manifests: Mapping[int, list[dict[str, object]]]) -> dict[str, str]:
    """sha256 -> ``round-NNNN/file`` of every file consumed by the rounds of ``manifests``
    (earlier rounds' intake manifests, by round)."""
    seen: dict[str, str] = {}
    for round_id, manifest in sorted(manifests.items()):
        for entry in manifest:
            if entry.get("status") != "already_consumed":
                seen.setdefault(str(entry["sha256"]), f"{round_name(round_id)}/{entry['file']}")
    return seen


@dataclass(frozen=True)
class Intake:
    """The label files of a round, read: one manifest entry per file, the rows of the files
    that could be read, and a rejection row for each file that could not."""

    manifest: list[dict[str, object]]
    rows: pd.DataFrame
    file_rejections: pd.DataFrame


#: the columns of the parsed rows of a round's files
ROW_COLUMNS = ("source_row", *FIELDS, "malformed", "source_file", "source_sha256")


def read_label_files(
    files: Mapping[str, bytes], *, consumed: Mapping[str, str], archive_name: str
) -> Intake:
    """Read every file of a round's archive (name -> bytes, in name order).

    A file with the same bytes as one an earlier round consumed (``consumed``: sha256 -> where)
    is skipped and recorded as such, never merged twice; so is a second copy within the round.
    """
    consumed = dict(consumed)
    manifest: list[dict[str, object]] = []
    parsed: list[pd.DataFrame] = []
    file_rejections: list[pd.DataFrame] = []
    for name, content in sorted(files.items()):
        digest = sha256_bytes(content)
        entry: dict[str, object] = {"file": name, "sha256": digest, "bytes": len(content)}
        if digest in consumed:
            log.info(
                "%s: the same bytes as %s, consumed before; skipped, not merged twice",
                name,
                consumed[digest],
            )
            entry.update(status="already_consumed", same_as=consumed[digest], rows_read=0)
            manifest.append(entry)
            continue
        consumed[digest] = f"{archive_name}/{name}"
        try:
            read_as, rows = read_label_file(content)
        except LabelFileError as exc:
            entry.update(status="unreadable", error=str(exc), rows_read=0)
            file_rejections.append(get_file_rejection(name, digest, str(exc)))
            manifest.append(entry)
            continue
        entry.update(status="read", **read_as.as_manifest(), rows_read=int(len(rows)))
        parsed.append(rows.assign(source_file=name, source_sha256=digest))
        manifest.append(entry)
    rows = pd.concat(parsed, ignore_index=True) if parsed else pd.DataFrame(columns=ROW_COLUMNS)
    rows = rows.astype({c: "string" for c in ROW_COLUMNS if c != "source_row"})
    rejections = (
        pd.concat(file_rejections, ignore_index=True)
        if file_rejections
        else schema.empty(schema.QUARANTINED)
    )
    return Intake(manifest, rows, rejections)


def get_open_batches(issued: pd.DataFrame, *, round_id: int, ttl: int | None) -> pd.DataFrame:
    """The issued rows whose batch is still open in ``round_id``: issued by an earlier round,
    and at most ``ttl`` rounds ago (``None``: batches never close)."""
    first_open = round_id - ttl if ttl is not None else 0
    return issued[(issued["round_id"] < round_id) & (issued["round_id"] >= first_open)]


def get_manifest(intake: Intake, result: Validation) -> list[dict[str, object]]:
    """The intake manifest with each read file's accepted and quarantined rows.

    Raises
    ------
    RuntimeError
        If a file's rows read are not its accepted plus its quarantined rows: a bug, never
        a property of the input.
    """
    accepted = result.accepted["source_file"].value_counts()
    quarantined = result.quarantined["source_file"].value_counts()
    manifest = []
    for entry in intake.manifest:
        entry = dict(entry)
        if entry["status"] == "read":
            name = entry["file"]
            entry.update(
                accepted=int(accepted.get(name, 0)), quarantined=int(quarantined.get(name, 0))
            )
            if entry["accepted"] + entry["quarantined"] != entry["rows_read"]:
                raise RuntimeError(f"row accounting broken for {entry['file']}: {entry}")
        manifest.append(entry)
    return manifest


def get_validate_summary(
    manifest: list[dict[str, object]],
    rows: pd.DataFrame,
    result: Validation,
    quarantined: pd.DataFrame,
) -> ValidateSummary:
    by_reason = quarantined["reason_code"].value_counts().sort_index()
    return ValidateSummary(
        files=len(manifest),
        files_already_consumed=sum(e["status"] == "already_consumed" for e in manifest),
        files_unreadable=sum(e["status"] == "unreadable" for e in manifest),
        rows_read=int(len(rows)),
        rows_accepted=int(len(result.accepted)),
        rows_quarantined=int(len(result.quarantined)),
        quarantined_by_reason={str(k): int(v) for k, v in by_reason.items()},
    )


def run(ctx: StageContext) -> ValidateSummary:
    ctx.take_incoming()
    crash_point("during:validate")
    suite = ctx.load("suite")
    if suite is None:
        raise FileNotFoundError(
            f"{ctx.catalog.path('suite')} is missing: the expectation suite is part of the "
            "workspace (restore it from git, or write the default with `alloop suite --write`)"
        )
    intake = read_label_files(
        ctx.load("archive"),
        consumed=get_consumed_hashes(ctx.load_before("manifest")),
        archive_name=round_name(ctx.round_id),
    )
    as_of = pd.Timestamp(ctx.round.started_at)
    result = validate_labels(
        intake.rows,
        pool_ids=ctx.pool_ids(),
        issued_ids=get_open_batches(
            ctx.load_before("issued"),
            round_id=ctx.round_id,
            ttl=ctx.params.validate_.batch_ttl_rounds,
        )["item_id"],
        classes=ctx.params.project.classes,
        as_of=as_of if as_of.tzinfo else as_of.tz_localize("UTC"),
        params=ctx.params.validate_,
        suite=suite,
        allow_new_classes=ctx.params.project.allow_new_classes,
    )
    quarantined = pd.concat([intake.file_rejections, result.quarantined], ignore_index=True)
    ctx.save("manifest", get_manifest(intake, result))
    ctx.save("quarantine", quarantined)
    ctx.save("accepted", result.accepted)
    ctx.save("rejected", quarantined)
    summary = get_validate_summary(intake.manifest, intake.rows, result, quarantined)
    ctx.save("validate_report", summary.to_dict())
    return summary
