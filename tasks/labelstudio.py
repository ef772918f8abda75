"""Label Studio, the pure part: the labeling config, the tasks a round sends, and what a
project already holds. The HTTP calls live in :mod:`flows.labelstudio`.

A task carries the item as Label Studio's own table template expects it, a ``{column:
value}`` object under ``data.item``, beside ``data.item_id`` and ``data.round_id``: the round
and the item identify a task, so pushing a round again finds the tasks it already sent. The
model's suggestion travels as a prediction (a pre-annotation) of ``model_version``
``round-NNNN``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from tasks.params import ExportParams

#: The object tag that shows the item: a table of its columns.
ITEM_FIELD = "item"


def get_text_field(position: int) -> str:
    """The task data key of the ``position``-th text column (``text_0``, ``text_1``, ...):
    a document is shown as text, not squeezed into a table cell, under a key that cannot
    collide with ``item_id``, ``round_id`` or ``item`` whatever the column is called."""
    return f"text_{position}"


def get_label_config(
    classes: Sequence[str],
    *,
    params: ExportParams,
    text_columns: Sequence[str] = (),
    multiple: bool = False,
) -> str:
    """The labeling config of a project: the item's columns as a table, each text column
    (:mod:`tasks.features`) as a ``Text`` under its name, one choice per class (with
    ``multiple``, a multilabel project's, any number of them, at least one).

    Each ``Choice`` value is the class exactly as ``project.classes`` spells it (Label Studio
    sends back the value, and validates nothing: a class spelled differently would be
    quarantined as unknown).
    """
    if not classes:
        raise ValueError("classes is empty: a labeling config needs at least one class")
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    texts = "".join(
        f'  <Header value={quoteattr(str(name))} size="5"/>\n'
        f'  <Text name="{get_text_field(i)}" value="${get_text_field(i)}"/>\n'
        for i, name in enumerate(text_columns)
    )
    return (
        "<View>\n"
        '  <Header value="Item $item_id"/>\n'
        f'  <Table name={quoteattr(params.labelstudio_to_name)} value="${ITEM_FIELD}"/>\n'
        f"{texts}"
        f"  <Choices name={quoteattr(params.labelstudio_from_name)} "
        f"toName={quoteattr(params.labelstudio_to_name)} "
        f'choice="{"multiple" if multiple else "single"}" '
        'showInline="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def get_task_key(task: Mapping[str, Any]) -> tuple[str, int] | None:
    """``(item_id, round_id)`` of a task alloop sent, or None for a task of someone else's."""
    data = task.get("data")
    if not isinstance(data, Mapping) or data.get("item_id") is None:
        return None
    try:
        round_id = int(data.get("round_id"))
    except (TypeError, ValueError):
        return None
    return str(data["item_id"]), round_id


def get_tasks_to_push(
    tasks: Sequence[Mapping[str, Any]], existing: Iterable[tuple[str, int]]
) -> list[Mapping[str, Any]]:
    """The round's ``tasks`` the project does not hold yet (``existing``: the keys of its
    tasks, :func:`get_task_key`), in order; a task listed twice is sent once."""
    seen = set(existing)
    missing = []
    for task in tasks:
        key = get_task_key(task)
        if key is None:
            raise ValueError(f"task {dict(task)!r} has no data.item_id and data.round_id")
        if key not in seen:
            seen.add(key)
            missing.append(task)
    return missing


#: How a time is written where Label Studio's data manager filters by it (and the cursor).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def get_utc_time(text: str) -> str | None:
    """``text`` (ISO 8601) in UTC as :data:`TIME_FORMAT`, in which text order is time order;
    None when it is not a time (a time without an offset is UTC)."""
    try:
        moment = datetime.fromisoformat(str(text).strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def get_latest_update(export: Sequence[Mapping[str, Any]]) -> str | None:
    """The latest ``updated_at`` (or ``created_at``) of any annotation in a JSON export, as
    :data:`TIME_FORMAT`; None if it has none."""
    times = [
        get_utc_time(a.get("updated_at") or a.get("created_at"))
        for task in export
        if isinstance(task, Mapping)
        for a in task.get("annotations") or []
        if isinstance(a, Mapping) and (a.get("updated_at") or a.get("created_at"))
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def get_users_map(users: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{user id: email}`` from Label Studio's ``/api/users/`` (users without an email are
    left out: they stay known by their id)."""
    return {
        str(u["id"]): str(u["email"])
        for u in users
        if isinstance(u, Mapping) and u.get("id") is not None and u.get("email")
    }


def get_shown_columns(
    feature_names: Sequence[str], *, params: ExportParams, text_columns: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The pool columns a task shows (``export.labelstudio_columns``; empty: all of them):
    those shown in the item's table, and the text columns shown as text, in that order.

    Raises
    ------
    ValueError
        If ``export.labelstudio_columns`` names a column the pool does not have.
    """
    wanted = list(params.labelstudio_columns) or list(feature_names)
    unknown = [c for c in wanted if c not in feature_names]
    if unknown:
        raise ValueError(
            f"export.labelstudio_columns names {unknown}, which the pool does not have; its "
            f"columns are {list(feature_names)[:20]}"
        )
    texts = set(text_columns)
    return [c for c in wanted if c not in texts], [c for c in wanted if c in texts]
