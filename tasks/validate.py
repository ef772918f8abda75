"""Stage 1, validate: check every incoming label row; accept it or quarantine it with a reason,
or count it as already consumed.

Rows in = rows accepted + rows quarantined + rows already consumed, for every file and every
round. A row is *already consumed* when the ledger holds the same answer: the same Label Studio
annotation (``source_key``) with the same update time or a later one, or, for any format, a
vote with the same item, annotator, label and time; such a row is counted, never entered
again, so a cumulative export can be dropped in every round. The same annotation twice in one
round is kept once, in its latest version. A Label Studio annotation updated after it was
consumed is accepted (merge makes it a ``relabel``).

The checks are a Great Expectations suite over the rows plus a few derived columns (is the
item in the pool, was it issued, is the time readable); each failing row is mapped back by its
position and given the reason code of the first check it fails, in the order of
:func:`get_checks`. A skip (a Label Studio task the annotator skipped: no label) is checked for
what applies to it (item, batch, annotator, time), never by the label checks
(:data:`LABEL_CHECKS`).

Annotators of Label Studio rows are named by their email when ``labelstudio/users.json``
(``{"<user id>": "<email>"}``) knows it, else ``labelstudio:<user id>``; ``annotator_id``
keeps the id either way, and is who the annotator is for duplicates and conflicts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
from tasks.ledger import get_active_events
from tasks.params import ValidateParams
from tasks.parsing import (
    FIELDS,
    KEY_FIELDS,
    LABELSTUDIO,
    REQUIRED,
    ROW_FIELDS,
    SKIPPED,
    LabelFileError,
    match_classes,
    parse_label_times,
    read_label_file,
)
from tasks.summaries import ValidateSummary

STAGE = StageSpec(
    name="validate",
    module=__name__,
    code=("tasks/parsing.py", "tasks/expectations.py", "tasks/ledger.py"),
    reads=("suite", "pool"),
    writes=("archive", "manifest", "quarantine", "accepted", "rejected", "validate_report"),
    params=(
        "project.classes",
        "project.allow_new_classes",
        "project.task",
        "project.label_separator",
        "validate",
    ),
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
#: The built-in checks of a label: a skip (no label) is never judged by them.
LABEL_CHECKS = ("missing_label", "unknown_class", "conflicting_labels", "duplicate_row")
#: Ledger events that hold an answer an annotator sent (a row that repeats one is consumed).
ANSWERS = ("label", "relabel", "skip")
#: How accepted times are written (and compared with the ledger's).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def get_default_suite() -> dict[str, object]:
    """The suite ``alloop init`` writes to ``gx/expectations/incoming_labels.json``."""
    return get_suite_dict(get_checks())


def _unknown_class_sentence(label: str, classes: Sequence[str]) -> str:
    """Why a label is not a class; several labels in one answer (a Label Studio multi-choice,
    a JSON list) are named as such: this project takes one class per item."""
    try:
        sent = json.loads(label) if str(label).startswith("[") else None
    except json.JSONDecodeError:
        sent = None
    if isinstance(sent, list) and len(sent) > 1:
        return (
            f"{len(sent)} labels {sent} in one answer: this project takes one class per item "
            f"(project.task: multiclass), one of {list(classes)}"
        )
    return f"label {label!r} is not one of the classes {list(classes)}"


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
        "unknown_class": _unknown_class_sentence(row["label"], classes),
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


#: The rows found already consumed, and what each repeats.
CONSUMED = {
    "source_file": "string",
    "source_row": "int64",
    "item_id": "string",
    "annotator": "string",
    "labeled_at": "string",
    "source_key": "string",
    "same_as": "string",  # the ledger event, or the row of this round (file:row), it repeats
}


def get_labelstudio_users(users: object) -> dict[str, str]:
    """The Label Studio users map (``labelstudio/users.json``) checked: ``{user id: email}``;
    None (no file) is an empty map.

    Raises
    ------
    ValueError
        If it is not an object of non-empty texts.
    """
    if users is None:
        return {}
    if not isinstance(users, Mapping):
        raise ValueError(
            f"{get_artifact('labelstudio_users').path} must hold an object "
            f'{{"<user id>": "<email>"}}, got {type(users).__name__}'
        )
    bad = [k for k, v in users.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(
            f"{get_artifact('labelstudio_users').path}: users {bad[:5]} have no email "
            "(expected a non-empty text for each user id)"
        )
    return {str(k).strip(): v.strip() for k, v in users.items()}


def get_annotator_names(frame: pd.DataFrame, users: Mapping[str, str]) -> pd.Series:
    """``annotator`` with a Label Studio user's email where ``users`` knows his id."""
    prefix = f"{LABELSTUDIO}:"
    ids = frame["annotator_id"].astype("string")
    from_tool = ids.str.startswith(prefix).fillna(False).astype(bool)
    emails = ids.where(from_tool).str.removeprefix(prefix).map(dict(users))
    return emails.astype("string").fillna(frame["annotator"].astype("string"))


def _answer_key(frame: pd.DataFrame, annotator: pd.Series, labeled_at: pd.Series) -> pd.Series:
    return (
        frame["item_id"].fillna("")
        + "\x1f"
        + annotator.fillna("")
        + "\x1f"
        + frame["label"].fillna("")
        + "\x1f"
        + labeled_at.fillna("")
    )


def find_already_consumed(
    frame: pd.DataFrame, times: pd.Series, answers: pd.DataFrame
) -> pd.Series:
    """What each row repeats, when it is an answer already consumed; NA for the others.

    Parameters
    ----------
    frame : pd.DataFrame
        The round's rows, cleaned (``annotator`` as it will be recorded, ``label`` in the
        declared spelling, empty for a skip), with ``source_key`` and ``annotator_id``.
    times : pd.Series
        Their label times (UTC; NaT when unreadable), indexed like ``frame``.
    answers : pd.DataFrame
        The ledger's answers (``label``, ``relabel`` and ``skip`` events that count).

    Returns
    -------
    pd.Series of str, indexed like ``frame``
        The ledger's ``event_id`` (or ``file:row`` of an earlier row of this round) of the
        answer a row repeats: a row with the ``source_key`` of a ledger answer whose time is
        the same or later; a row whose ``source_key`` an other row of the round has with a
        later time (or the same time, earlier); a row whose item, annotator, label and time
        are a ledger answer's (any format; a Label Studio row's annotator also as the bare
        user id, as alloop recorded it before it knew Label Studio's ids).
    """
    same_as = pd.Series(pd.NA, index=frame.index, dtype="string")
    keys = frame["source_key"].astype("string")
    keyed = keys.notna() & times.notna()
    # 1. the ledger holds this annotation, in this version or a later one
    known = answers[answers["source_key"].notna()]
    if len(known) and keyed.any():
        known = known.assign(
            _time=pd.to_datetime(known["labeled_at"], utc=True, format="ISO8601", errors="coerce")
        )
        latest = known.sort_values("_time", kind="stable").drop_duplicates(
            "source_key", keep="last"
        )
        latest = latest.set_index("source_key")
        consumed_at = pd.to_datetime(keys.map(latest["_time"]), utc=True)
        hit = keyed & consumed_at.notna() & (times <= consumed_at)
        same_as[hit] = keys[hit].map(latest["event_id"]).astype("string")
    # 2. the same annotation earlier in this round, or in a later version
    rest = keyed & same_as.isna()
    if rest.any():
        order = pd.DataFrame({"key": keys[rest], "time": times[rest]}).assign(
            position=range(int(rest.sum()))
        )
        order = order.sort_values(["key", "time", "position"], ascending=[True, False, True])
        kept = order.drop_duplicates("key", keep="first")
        where = frame["source_file"].astype("string") + ":" + frame["source_row"].astype("string")
        repeat = order.index.difference(kept.index)
        same_as[repeat] = keys[repeat].map(
            pd.Series(where[kept.index].to_numpy(), index=kept["key"].to_numpy())
        )
    # 3. the same item, annotator, label and time as an answer in the ledger
    rest = same_as.isna()
    if len(answers) and rest.any():
        stamps = times.dt.strftime(TIME_FORMAT).astype("string")
        ledger = answers.assign(
            _key=_answer_key(answers, answers["annotator"], answers["labeled_at"])
        )
        event_of = ledger.drop_duplicates("_key", keep="last").set_index("_key")["event_id"]
        bare = frame["annotator_id"].astype("string").str.removeprefix(f"{LABELSTUDIO}:")
        for annotator in (frame["annotator"], bare):
            found = _answer_key(frame, annotator, stamps).map(event_of).astype("string")
            same_as = same_as.fillna(found.where(rest & times.notna()))
    return same_as


@dataclass(frozen=True)
class Validation:
    accepted: pd.DataFrame  # schema ACCEPTED
    quarantined: pd.DataFrame  # schema QUARANTINED
    #: rows that repeat an answer already consumed: neither accepted nor quarantined
    already_consumed: pd.DataFrame = field(default_factory=lambda: schema.empty(CONSUMED))


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
    ledger: pd.DataFrame | None = None,
    users: Mapping[str, str] | None = None,
    task: str = "multiclass",
    separator: str = "|",
) -> Validation:
    """Split parsed label rows into accepted, quarantined and already consumed.

    Parameters
    ----------
    rows : pd.DataFrame
        Rows of :func:`tasks.parsing.parse_label_file` from all files of the round, in the
        order received, plus ``source_file`` and ``source_sha256``. ``source_key``,
        ``annotator_id`` and ``skipped`` may be left out (none: no key, not a skip).
    pool_ids, issued_ids : pd.Series of str
        Items in the pool (at least those among the rows': the stage passes only those);
        items issued to annotators in earlier rounds.
    as_of : pd.Timestamp
        The round's clock (UTC): a label time after it, beyond the allowed skew, is refused.
    suite : dict, optional
        The expectation suite (the workspace's file); the built-in suite when omitted. Its
        order is the priority of the reasons; checks of its own must name their columns (and
        judge skips too).
    ledger : pd.DataFrame, optional
        The ledger's events of earlier rounds that count (schema LEDGER, after rollbacks):
        a row repeating one of its answers is already consumed (:func:`find_already_consumed`).
    users : dict, optional
        Label Studio's ``{user id: email}``: the annotator of a Label Studio row is his email.
    task, separator : str
        ``"multilabel"``: each label is a set (:func:`tasks.multilabel.read_label_sets`; a
        text joined by ``separator``, or a JSON list), stored as its one spelling; a refused
        set is quarantined as ``empty_label_set``, ``unknown_class`` or ``duplicate_label``,
        the rest of the file accepted.

    Returns
    -------
    Validation
        ``len(accepted) + len(quarantined) + len(already_consumed) == len(rows)``, always.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got {as_of!r}")
    frame = rows.reset_index(drop=True).copy()
    for name in (*FIELDS, "malformed", *KEY_FIELDS):
        if name not in frame.columns:
            frame[name] = pd.NA
        frame[name] = frame[name].astype("string").str.strip().replace("", pd.NA)
    skipped = (
        frame[SKIPPED].astype("string").str.lower().eq("true").fillna(False).astype(bool)
        if SKIPPED in frame.columns  # a flag, or its text when the caller made rows text
        else pd.Series(False, index=frame.index)
    )
    frame[SKIPPED] = skipped
    frame["annotator"] = get_annotator_names(frame, users or {})
    # "Benign" is the class benign: the declared spelling is what is checked and stored
    set_code = pd.Series(pd.NA, index=frame.index, dtype="string")
    set_problem = set_code.copy()
    if task == "multilabel":
        from tasks.multilabel import read_label_sets  # LightGBM: loaded only for label sets

        sets, set_code, set_problem = read_label_sets(
            frame["label"], classes, separator=separator, allow_new_classes=allow_new_classes
        )
        # a refused set keeps what was sent (the quarantine shows it), and fails unknown_class
        frame["label"] = sets.where(set_code.isna(), frame["label"])
    else:
        frame["label"] = match_classes(frame["label"], classes)
    frame["label"] = frame["label"].mask(skipped)  # a skip: no label
    times, time_problems = _parse_times(frame, params.date_order)
    answers = schema.empty(schema.LEDGER) if ledger is None else ledger
    answers = schema.conform(answers[answers["event"].isin(ANSWERS)], schema.LEDGER)
    same_as = find_already_consumed(frame, times, answers)
    repeats = same_as.notna().to_numpy()
    already_consumed = frame[repeats].assign(
        labeled_at=times[repeats].dt.strftime(TIME_FORMAT).astype("string"),
        same_as=same_as[repeats],
    )
    new = ~repeats
    set_code = set_code[new].reset_index(drop=True)
    set_problem = set_problem[new].reset_index(drop=True)
    frame = frame[new].reset_index(drop=True)
    times = times[new].reset_index(drop=True)
    time_problems = time_problems[new].reset_index(drop=True)
    skipped = frame[SKIPPED]
    limit = as_of + pd.Timedelta(seconds=params.max_clock_skew_seconds)
    key = frame["item_id"].fillna("") + "\x1f" + schema.get_annotator_key(frame).fillna("")
    labels_per_key = frame.groupby(key)["label"].transform("nunique")  # a skip's is not counted
    triple = key + "\x1f" + frame["label"].fillna("")
    first_position = (frame.groupby(triple).cumcount() == 0) | skipped
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
    if task == "multilabel":  # every set read well (its spelling), none refused
        allowed = sorted(set(frame.loc[set_code.isna(), "label"].dropna()))
    elif allow_new_classes:  # any non-empty label is a class, known or new
        allowed += sorted(set(frame["label"].dropna()) - set(classes))
    failing = find_failing_rows(frame, suite, parameters={"classes": allowed}, required=BUILT_IN)
    order = get_check_order(suite)
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    is_skip = skipped.to_numpy(dtype=bool)
    for name, _ in reversed(order):  # the first check in the suite's order wins
        positions = failing[name]
        if name in LABEL_CHECKS:
            positions = positions[~is_skip[positions]]
        reason.iloc[positions] = name
    # a refused label set: the set's own reason where the class check caught it
    refused = set_code.notna() & reason.eq("unknown_class").fillna(False)
    reason[refused] = set_code[refused]
    custom = dict(order)
    bad = reason.notna().to_numpy()
    quarantined = frame[bad].assign(reason_code=reason[bad])
    quarantined = quarantined.assign(
        reason=[
            custom.get(code)
            or (set_problem[i] if refused[i] else _sentence(code, row, classes, as_of))
            for code, (i, row) in zip(
                quarantined["reason_code"], quarantined.iterrows(), strict=True
            )
        ]
    )
    accepted = frame[~bad].assign(labeled_at=times[~bad].dt.strftime(TIME_FORMAT).astype("string"))
    return Validation(
        accepted=schema.conform(accepted, schema.ACCEPTED),
        quarantined=schema.conform(quarantined, schema.QUARANTINED),
        already_consumed=schema.conform(already_consumed, CONSUMED),
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
ROW_COLUMNS = (*ROW_FIELDS, "source_file", "source_sha256")


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
    text = {c: "string" for c in ROW_COLUMNS if c not in ("source_row", SKIPPED)}
    rows = rows.astype({**text, SKIPPED: "boolean"})
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
    """The intake manifest with each read file's accepted, quarantined and already consumed
    rows.

    Raises
    ------
    RuntimeError
        If a file's rows read are not its accepted plus quarantined plus already consumed
        rows: a bug, never a property of the input.
    """
    accepted = result.accepted["source_file"].value_counts()
    quarantined = result.quarantined["source_file"].value_counts()
    consumed = result.already_consumed["source_file"].value_counts()
    manifest = []
    for entry in intake.manifest:
        entry = dict(entry)
        if entry["status"] == "read":
            name = entry["file"]
            entry.update(
                accepted=int(accepted.get(name, 0)),
                quarantined=int(quarantined.get(name, 0)),
                already_consumed=int(consumed.get(name, 0)),
            )
            if (
                entry["accepted"] + entry["quarantined"] + entry["already_consumed"]
                != entry["rows_read"]
            ):
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
        rows_already_consumed=int(len(result.already_consumed)),
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
    # the pool's ids among those sent (validate_labels strips them), not the pool's millions
    sent = intake.rows.get("item_id", pd.Series([], dtype="string"))
    result = validate_labels(
        intake.rows,
        pool_ids=ctx.pool_ids_among(sent.astype("string").str.strip()),
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
        ledger=get_active_events(ctx.load_before("ledger")),
        users=get_labelstudio_users(ctx.load_before("labelstudio_users")),
        task=ctx.params.project.task,
        separator=ctx.params.project.label_separator,
    )
    quarantined = pd.concat([intake.file_rejections, result.quarantined], ignore_index=True)
    manifest = get_manifest(intake, result)
    for entry in manifest:
        if entry.get("already_consumed"):
            log.info(
                "%s: %d of its %d rows already consumed (the ledger holds the same answers); "
                "not entered again",
                entry["file"],
                entry["already_consumed"],
                entry["rows_read"],
            )
    ctx.save("manifest", manifest)
    ctx.save("quarantine", quarantined)
    ctx.save("accepted", result.accepted)
    ctx.save("rejected", quarantined)
    summary = get_validate_summary(intake.manifest, intake.rows, result, quarantined)
    ctx.save("validate_report", summary.to_dict())
    return summary
