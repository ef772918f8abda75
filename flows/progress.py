"""Which stages of an unfinished round have completed, so that a resumed round continues
after them instead of starting over.

After each stage, the flow records the stage's summary and a digest of every file the stage
writes (its outs, metrics and plots). A resumed round skips a stage only when it completed, its
outputs still have those digests, every stage before it was skipped too, and the round's inputs
(params, round clock, code, suite, pool) are those the progress was recorded with. Anything
else reruns the stage, which is always safe: stages are idempotent. Skipping is a saving, never
a condition of correctness.

The record lives in ``.alloop/progress.json``: local run state, never versioned.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.pipeline import get_stage_outputs
from tasks.catalog import Catalog, RoundInfo, write_json
from tasks.context import StageSpec
from tasks.summaries import SUMMARIES, Summary

log = logging.getLogger(__name__)

#: What a round's stages read besides each other's outputs.
INPUTS = ("params.yaml", "round.yaml", "dvc.yaml", "flows", "tasks", "gx", "data/pool")


def digest_path(path: Path) -> str | None:
    """sha256 over a file, or over a folder's file names and contents; None when missing."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if "__pycache__" in file.parts:
            continue
        h.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        h.update(b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def get_inputs_digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        h.update(f"{name}={digest_path(root / name)}\n".encode())
    return h.hexdigest()


@dataclass
class RoundProgress:
    """The completed stages of one round (see the module docstring)."""

    path: Path
    round_id: int
    started_at: str
    inputs: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, catalog: Catalog, info: RoundInfo, *, resumed: bool) -> RoundProgress:
        """The progress of a resumed round, or a fresh record for a round that starts now."""
        path = catalog.state_dir / "progress.json"
        inputs = get_inputs_digest(catalog.root)
        fresh = cls(path, info.round_id, info.started_at, inputs)
        if not resumed:
            fresh.save()
            return fresh
        saved = json.loads(path.read_text()) if path.exists() else {}
        same_round = (saved.get("round_id"), saved.get("started_at")) == (
            info.round_id,
            info.started_at,
        )
        if not same_round:
            fresh.save()
            return fresh
        if saved.get("inputs") != inputs:
            log.warning(
                "params, code, suite or pool changed since the round was interrupted: "
                "every stage runs again"
            )
            fresh.save()
            return fresh
        return cls(path, info.round_id, info.started_at, inputs, saved.get("stages", {}))

    def save(self) -> None:
        write_json(
            self.path,
            {
                "round_id": self.round_id,
                "started_at": self.started_at,
                "inputs": self.inputs,
                "stages": self.stages,
            },
        )

    def get_completed(self, root: Path, spec: StageSpec) -> Summary | None:
        """The stage's summary if it completed and its outputs are still what it wrote."""
        done = self.stages.get(spec.name)
        if done is None:
            return None
        for rel, digest in done["outputs"].items():
            if digest_path(root / rel) != digest:
                log.info("%s: %s changed after the stage completed", spec.name, rel)
                return None
        return SUMMARIES[spec.name].from_dict(done["summary"])

    def record(self, root: Path, spec: StageSpec, summary: Summary) -> Summary:
        """Record the stage as completed; returns its summary as a skipped stage would give it
        (through JSON), so that what follows never depends on whether the stage was skipped."""
        outputs = {rel: digest_path(root / rel) for rel in get_stage_outputs(spec)}
        stored = json.loads(json.dumps(summary.to_dict(), default=str))
        self.stages[spec.name] = {"summary": stored, "outputs": outputs}
        self.save()
        return SUMMARIES[spec.name].from_dict(stored)
