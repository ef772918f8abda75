"""Fault injection for crash tests: ``ALLOOP_CRASH_AT=<point>`` kills the process there.

Points are named ``before:<stage>`` (a stage boundary, in the flow), ``during:<stage>`` (inside
a stage, after it has written part of its outputs), and a few around the recording of a round
(see ``flows/round.py``). Unset, a crash point is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "ALLOOP_CRASH_AT"


def crash_point(name: str) -> None:
    """A named point of a round where a crash test may kill the process (see CRASH_ENV)."""
    if os.environ.get(CRASH_ENV) == name:
        # the whole process group, as a power cut would: Prefect's API server dies too
        os.killpg(os.getpgid(0), signal.SIGKILL)
