"""Rollbacks in the append-only ledger.

A rollback never deletes a ledger row. It appends a ``rollback`` event whose ``detail`` names
the round made current again and the complete set of rounds whose events no longer count
("inactive"); merge reads only the active events. The last rollback event decides, so rolling
back to a round that an earlier rollback had undone makes its events count again, exactly as
they did in that round's state.
"""

from __future__ import annotations

import json

import pandas as pd

from tasks import schema

ROLLBACK = "rollback"


def get_inactive_rounds(ledger: pd.DataFrame) -> frozenset[int]:
    """Rounds whose events an earlier rollback undid (empty when there was none)."""
    rollbacks = ledger[ledger["event"] == ROLLBACK]
    if rollbacks.empty:
        return frozenset()
    return frozenset(int(r) for r in json.loads(rollbacks["detail"].iloc[-1])["inactive_rounds"])


def get_active_events(ledger: pd.DataFrame) -> pd.DataFrame:
    """The ledger without rollback events and without the events of undone rounds."""
    inactive = get_inactive_rounds(ledger)
    keep = (ledger["event"] != ROLLBACK) & ~ledger["round_id"].isin(list(inactive))
    return ledger[keep]


def get_rollback_event(
    ledger: pd.DataFrame,
    *,
    ledger_at_target: pd.DataFrame,
    from_round: int,
    to_round: int,
    operator: str,
    at: str,
) -> pd.DataFrame:
    """The ledger row that rolls the workspace back from ``from_round`` to ``to_round``.

    Parameters
    ----------
    ledger : the current ledger (state of ``from_round``).
    ledger_at_target : the ledger as it was in ``to_round``'s state.
    operator, at : who rolled back (user@host) and when (ISO 8601).
    """
    if not 1 <= to_round < from_round:
        raise ValueError(
            f"can only roll back to an earlier round than {from_round}, not {to_round}"
        )
    inactive = sorted(
        get_inactive_rounds(ledger_at_target) | set(range(to_round + 1, from_round + 1))
    )
    n = int((ledger["event"] == ROLLBACK).sum()) + 1
    detail = {
        "to_round": to_round,
        "from_round": from_round,
        "inactive_rounds": inactive,
        "operator": operator,
    }
    row = pd.DataFrame(
        {
            "event_id": [f"r{from_round:04d}-rollback-{n:03d}"],
            "round_id": [from_round],
            "event": [ROLLBACK],
            "labeled_at": [at],
            "outcome": [f"round-{to_round:04d}"],
            "detail": [json.dumps(detail, sort_keys=True)],
        }
    )
    return schema.conform(row.reindex(columns=list(schema.LEDGER)), schema.LEDGER)
