"""The catalog: the one declaration of every artifact of a workspace, and the one I/O module.

Every file a round reads or writes is declared once in :data:`ARTIFACTS`: its name, path,
kind, schema, how DVC versions it, whether it only ever grows (append-only), and which stages
read it in a later round. ``dvc.yaml``, the audit tables, rollback's restore list and the
architecture document are derived from these declarations; stages load and save artifacts by
name (see :class:`tasks.context.StageContext`), never by path.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves a half-written table behind, and they honour the user's umask.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from tasks import schema
from tasks.params import Params, load_params

ROUND_FILE = "round.yaml"
PARAMS_FILE = "params.yaml"
#: Local run state that is not versioned: Prefect home, MLflow store, the embedded DVC remote.
STATE_DIR = ".alloop"
#: Placeholder of a per-round path: ``data/archive/{round}`` -> ``data/archive/round-0003``.
ROUND = "{round}"


def round_name(round_id: int) -> str:
    return f"round-{round_id:04d}"


Kind = Literal["pool", "folder", "table", "json", "csv", "text", "model"]
#: How an artifact is versioned. ``out``: a DVC out the stage rewrites whole; ``persist``: a DVC
#: out carried from round to round (the stage rewrites its own round's part); ``metric`` and
#: ``plot``: small files in git that ``dvc metrics`` / ``dvc plots`` read; ``source``: tracked
#: by its own ``.dvc`` file or by git, an input of the round; ``local``: not versioned.
Role = Literal["out", "persist", "metric", "plot", "source", "local"]


@dataclass(frozen=True)
class Artifact:
    """One file or folder of a workspace, declared once.

    ``dvc_path`` is what DVC tracks when it differs from ``path`` (a per-round file lives in a
    folder that is one persistent out). ``append_only`` artifacts record what happened: a
    rollback keeps them, and a stage only adds to them. ``read_later_by`` names the stages that
    read this artifact as an earlier round left it: reads that ``dvc.yaml`` cannot declare as
    deps (they would make the stage graph a cycle), so they are declared here.
    """

    name: str
    path: str
    kind: Kind
    role: Role
    doc: str
    table_schema: Mapping[str, str] | None = None
    dvc_path: str | None = None
    append_only: bool = False
    read_later_by: tuple[str, ...] = ()
    plot: Mapping[str, str] = field(default_factory=dict)
    #: one of the label tables an auditor reads (``alloop audit``, ``alloop history``)
    audited: bool = False

    @property
    def per_round(self) -> bool:
        return ROUND in self.path

    def path_of(self, round_id: int | None = None) -> str:
        """The path, relative to the workspace; a per-round artifact needs the round."""
        if not self.per_round:
            return self.path
        if round_id is None:
            raise ValueError(f"artifact {self.name!r} is kept per round: pass round_id")
        return self.path.replace(ROUND, round_name(round_id))

    @property
    def tracked_path(self) -> str:
        """The path DVC (or git) tracks for this artifact."""
        return self.dvc_path or self.path


def _declare(*artifacts: Artifact) -> dict[str, Artifact]:
    declared: dict[str, Artifact] = {}
    for artifact in artifacts:
        if artifact.name in declared:
            raise ValueError(f"artifact {artifact.name!r} is declared twice")
        declared[artifact.name] = artifact
    return declared


#: Every artifact of a workspace. Adding one is one entry here (and a stage that writes it).
ARTIFACTS: dict[str, Artifact] = _declare(
    # -- inputs of a round ---------------------------------------------------------------
    Artifact("pool", "data/pool", "pool", "source", "the unlabeled items, parquet partitions"),
    Artifact(
        "suite",
        "gx/expectations/incoming_labels.json",
        "json",
        "source",
        "the Great Expectations suite that checks incoming labels (git)",
    ),
    Artifact("incoming", "data/incoming", "folder", "local", "label files dropped by annotators"),
    Artifact(
        "labelstudio_users",
        "labelstudio/users.json",
        "json",
        "source",
        "Label Studio's users, {user id: email}, as the last pull found them (git); "
        "validate names a Label Studio annotator by his email",
        # written before the round by the Label Studio pull, and optional (no Label Studio,
        # no file): so not a DVC dep of validate, which `dvc repro` would require to exist
        read_later_by=("validate",),
    ),
    Artifact(
        "labelstudio_config",
        "labelstudio/config.xml",
        "text",
        "source",
        "the Label Studio project's labeling config (git): written from the classes by "
        "`alloop labelstudio connect`, the team's to edit",
    ),
    Artifact(
        "labelstudio_record",
        "reports/labelstudio.json",
        "json",
        "source",
        "what the round's Label Studio pull and push did, and the batches not yet in the "
        "project (git): the next round retries them",
        # written by the flow when the round starts (the pull), read by export for the report
        read_later_by=("export",),
    ),
    Artifact(
        "labelstudio_state",
        ".alloop/labelstudio-state.json",
        "json",
        "local",
        "the last Label Studio pull and push, idle rounds' too (not versioned): `alloop status`",
    ),
    Artifact(
        "truth",
        "data/simulation/truth.parquet",
        "table",
        "source",
        "true labels of a simulated campaign (simulations and demos only)",
    ),
    # -- validate -------------------------------------------------------------------------
    Artifact(
        "archive",
        f"data/archive/{ROUND}",
        "folder",
        "persist",
        "the label files a round consumed, exactly as received",
        dvc_path="data/archive",
        append_only=True,
    ),
    Artifact(
        "manifest",
        f"data/archive/{ROUND}/manifest.json",
        "json",
        "persist",
        "per file of a round: hash, format, encoding, rows read, accepted, quarantined, already "
        "consumed",
        dvc_path="data/archive",
        append_only=True,
        read_later_by=("validate",),
    ),
    Artifact(
        "quarantine",
        f"data/quarantine/{ROUND}/rejected.csv",
        "csv",
        "persist",
        "the rows a round refused, each with a reason code and a sentence",
        table_schema=schema.QUARANTINED,
        dvc_path="data/quarantine",
        append_only=True,
    ),
    Artifact(
        "accepted",
        "data/interim/accepted.parquet",
        "table",
        "out",
        "the round's accepted label rows",
        table_schema=schema.ACCEPTED,
    ),
    Artifact(
        "rejected",
        "data/interim/rejected.parquet",
        "table",
        "out",
        "the round's refused rows and files",
        table_schema=schema.QUARANTINED,
    ),
    Artifact("validate_report", "reports/validate.json", "json", "metric", "validate's summary"),
    # -- features -------------------------------------------------------------------------
    Artifact(
        "feature_space",
        "models/features",
        "folder",
        "persist",
        "the feature space fitted on the pool (text columns' vocabularies); for a tabular pool "
        "a space.json that says so",
        read_later_by=("features",),
    ),
    Artifact("features_report", "reports/features.json", "json", "metric", "features' summary"),
    # -- merge ----------------------------------------------------------------------------
    Artifact(
        "current",
        "data/labels/current.parquet",
        "table",
        "out",
        "the resolved label and split of every labeled item",
        table_schema=schema.CURRENT,
        audited=True,
    ),
    Artifact(
        "events",
        "data/interim/events.parquet",
        "table",
        "out",
        "the round's label, relabel, rejected, resolved and consensus events",
        table_schema=schema.LEDGER,
    ),
    Artifact(
        "annotators",
        "data/labels/annotators.parquet",
        "table",
        "persist",
        "per round: each annotator's votes, agreement and CROWDLAB quality",
        table_schema=schema.ANNOTATORS,
        read_later_by=("merge",),
        audited=True,
    ),
    Artifact("merge_report", "reports/merge.json", "json", "metric", "merge's summary"),
    # -- flag -----------------------------------------------------------------------------
    Artifact(
        "flags",
        "data/labels/flags.parquet",
        "table",
        "persist",
        "every likely mislabel found, by round, with its handling",
        table_schema=schema.FLAGS,
        read_later_by=("merge", "flag"),
        audited=True,
    ),
    Artifact(
        "ledger",
        "data/labels/ledger.parquet",
        "table",
        "persist",
        "append-only label events: the audit trail",
        table_schema=schema.LEDGER,
        append_only=True,
        # validate: an answer the ledger already holds is not entered again
        read_later_by=("validate", "merge", "flag"),
        audited=True,
    ),
    Artifact(
        "label_probs",
        "data/interim/label_probs.parquet",
        "table",
        "out",
        "out-of-fold class probabilities of the training items (one column per class)",
    ),
    Artifact("flag_report", "reports/flag.json", "json", "metric", "flag's summary"),
    # -- train ----------------------------------------------------------------------------
    Artifact("candidate", "models/candidate", "model", "out", "the model trained this round"),
    Artifact("train_report", "reports/train.json", "json", "metric", "train's summary"),
    # -- evaluate -------------------------------------------------------------------------
    Artifact(
        "champion",
        "models/champion",
        "model",
        "persist",
        "the promoted model, its test probabilities, and the one it replaced",
        read_later_by=("evaluate",),
    ),
    Artifact(
        "metrics",
        "reports/metrics.json",
        "json",
        "metric",
        "the candidate and the champion on the test items, and the gate's verdict",
    ),
    Artifact(
        "test_predictions",
        "reports/test_predictions.csv",
        "csv",
        "plot",
        "the candidate's class for each test item (a confusion matrix in dvc plots)",
        plot={"template": "confusion", "x": "actual", "y": "predicted"},
    ),
    # -- health ---------------------------------------------------------------------------
    Artifact(
        "stop_set",
        "data/labels/stop_set.parquet",
        "table",
        "persist",
        "the pool items drawn once, at random, on which each round's model predicts",
        table_schema=schema.STOP_SET,
        read_later_by=("health",),
    ),
    Artifact(
        "stop_predictions",
        "data/labels/stop_predictions.parquet",
        "table",
        "persist",
        "each round's model's predictions on the stop set",
        table_schema=schema.STOP_PREDICTIONS,
        append_only=True,
        read_later_by=("health",),
    ),
    Artifact(
        "arrivals",
        "data/labels/arrivals.parquet",
        "table",
        "persist",
        "each pool partition, the round that first saw it, and its drift against the pool",
        table_schema=schema.ARRIVALS,
        append_only=True,
        read_later_by=("health",),
    ),
    Artifact(
        "health_models",
        "models/health",
        "folder",
        "out",
        "the balance classifier select draws its rebalance slice with, and a listing",
    ),
    Artifact(
        "health_detail",
        "reports/health_detail.json",
        "json",
        "out",
        "the rating's evidence: per-class F1, the stop signal's rounds, drift per feature",
        read_later_by=("health",),
    ),
    Artifact(
        "health_history",
        "reports/health_history.csv",
        "csv",
        "plot",
        "one row per round: the rating, its factors and the stop signal",
        table_schema=schema.HEALTH_HISTORY,
        plot={"x": "round_id", "y": "rating", "template": "linear"},
        read_later_by=("health",),
    ),
    Artifact("health_report", "reports/health.json", "json", "metric", "health's summary"),
    # -- score ----------------------------------------------------------------------------
    Artifact(
        "scores",
        "data/interim/scores.parquet",
        "table",
        "out",
        "prediction and utility of every pool item (a spreading strategy's: uncertainty)",
        table_schema=schema.SCORES,
    ),
    Artifact(
        "picks",
        "data/interim/picks.parquet",
        "table",
        "out",
        "a spreading strategy's batch among its candidates, and the utility each pick takes",
        table_schema=schema.PICKS,
    ),
    Artifact("score_report", "reports/score.json", "json", "metric", "score's summary"),
    # -- select ---------------------------------------------------------------------------
    Artifact(
        "batch",
        "data/interim/batch.parquet",
        "table",
        "out",
        "the items chosen this round",
        table_schema=schema.BATCH,
    ),
    Artifact(
        "issued",
        "data/labels/issued.parquet",
        "table",
        "persist",
        "every item ever handed to annotators, with its split and why",
        table_schema=schema.ISSUED,
        append_only=True,
        read_later_by=("validate", "merge", "health", "score", "select"),
        audited=True,
    ),
    Artifact("select_report", "reports/select.json", "json", "metric", "select's summary"),
    # -- export ---------------------------------------------------------------------------
    Artifact(
        "outbox",
        f"data/outbox/{ROUND}",
        "folder",
        "persist",
        "the batch handed to annotators: batch.csv, batch.jsonl, tasks.json",
        dvc_path="data/outbox",
        append_only=True,
    ),
    Artifact("round_report", "reports/round.md", "text", "out", "the round report for people"),
    Artifact(
        "round_page",
        "reports/round.html",
        "text",
        "out",
        "the round report as one self-contained HTML page (plots inline, opens offline)",
    ),
    Artifact(
        "history",
        "reports/history.csv",
        "csv",
        "plot",
        "one row per round: labels, test macro-F1, flags, batch (the trend in dvc plots)",
        table_schema=schema.HISTORY,
        plot={"x": "round_id", "y": "test_macro_f1", "template": "linear"},
        read_later_by=("export",),
    ),
    Artifact("export_report", "reports/export.json", "json", "metric", "export's summary"),
)


def get_artifact(name: str) -> Artifact:
    """The declaration of ``name``; an unknown name is an error that lists the known ones."""
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise KeyError(
            f"no artifact {name!r} is declared in tasks/catalog.py; declared: {sorted(ARTIFACTS)}"
        ) from None


def get_append_only() -> tuple[str, ...]:
    """The tracked paths that record what happened: never rolled back, never rewritten."""
    return tuple(dict.fromkeys(a.tracked_path for a in ARTIFACTS.values() if a.append_only))


def get_restored_outs() -> tuple[str, ...]:
    """The DVC outs a rollback brings back: every stage's, minus the append-only ones."""
    outs = (a.tracked_path for a in ARTIFACTS.values() if a.role in ("out", "persist"))
    return tuple(p for p in dict.fromkeys(outs) if p not in get_append_only())


def get_git_state() -> tuple[str, ...]:
    """The files in git (not DVC) that are part of a round's state: the params, the suite,
    the folders of the metrics and plots, and the pool's ``.dvc`` file."""
    reports = (a.path.rsplit("/", 1)[0] for a in ARTIFACTS.values() if a.role in ("metric", "plot"))
    return (
        PARAMS_FILE,
        ARTIFACTS["suite"].path,
        *dict.fromkeys(reports),
        f"{ARTIFACTS['pool'].path}.dvc",
    )


def get_audit_tables() -> dict[str, Artifact]:
    """The label tables an auditor reads, by name."""
    return {a.name: a for a in ARTIFACTS.values() if a.audited}


@dataclass(frozen=True)
class RoundInfo:
    """What ``round.yaml`` says: the round being (or last) run and when it started."""

    round_id: int
    started_at: str  # ISO 8601, UTC; the round's clock, so that reruns judge time alike


@dataclass(frozen=True)
class SavedModel:
    """A model folder: the booster's text, its metadata, the test probabilities cached with it
    (see :func:`tasks.evaluate.get_cached_probs`), and for the champion the model it replaced
    in the round that promoted it (so that a rerun of that round compares against the same
    model)."""

    text: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    test_probs: pd.DataFrame | None = None
    previous: SavedModel | None = None
    #: the feature space the model was trained in (:meth:`tasks.features.FeatureSpace.to_files`;
    #: empty: the tabular space)
    features: Mapping[str, bytes] = field(default_factory=dict)


MODEL_FILE = "model.txt"
META_FILE = "meta.json"
PROBS_FILE = "test_probs.parquet"
PREVIOUS = "previous"
FEATURES = "features"


@dataclass(frozen=True)
class Catalog:
    """The artifacts of one workspace, loaded and saved by name (see :data:`ARTIFACTS`)."""

    root: Path

    # -- places that are not artifacts --------------------------------------------------
    @property
    def params_file(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def round_file(self) -> Path:
        return self.root / ROUND_FILE

    @property
    def state_dir(self) -> Path:
        """Local run state that is not versioned: Prefect home, MLflow store, DVC remote."""
        return self.root / STATE_DIR

    # -- artifacts by name --------------------------------------------------------------
    def path(self, name: str, round_id: int | None = None) -> Path:
        """Where ``name`` lives; a per-round artifact needs the round."""
        return self.root / get_artifact(name).path_of(round_id)

    def load(self, name: str, round_id: int | None = None) -> Any:
        """The artifact as its kind reads: a table as a conformed DataFrame (empty when absent),
        JSON as its value (None when absent), text as str (None when absent), a model folder
        as :class:`SavedModel`, a folder as ``{file name: bytes}``."""
        artifact = get_artifact(name)
        path = self.path(name, round_id)
        if artifact.kind == "table":
            return self._read_table(path, artifact.table_schema)
        if artifact.kind == "csv":
            return _read_csv(path, artifact.table_schema)
        if artifact.kind == "json":
            return json.loads(path.read_text()) if path.exists() else None
        if artifact.kind == "text":
            return path.read_text() if path.exists() else None
        if artifact.kind == "model":
            self.recover_model(name)
            return _read_model(path)
        if artifact.kind == "folder":
            if not path.is_dir():
                return {}
            # a file declared as an artifact of its own (an archive's manifest) is not listed
            inner = {self.path(a.name, round_id) for a in _inside(artifact)}
            return {
                p.name: p.read_bytes()
                for p in sorted(path.iterdir())
                if p.is_file() and p not in inner
            }
        raise TypeError(f"artifact {name!r} of kind {artifact.kind!r} is read through the pool")

    def save(self, name: str, value: Any, round_id: int | None = None) -> None:
        """Write the artifact atomically, as its kind writes (the inverse of :meth:`load`).

        A folder artifact is given ``{file name: bytes or str}`` and is replaced whole; a model
        folder is swapped in by renames, so a crash leaves either the old or the new one.
        """
        artifact = get_artifact(name)
        path = self.path(name, round_id)
        if artifact.kind == "table":
            self._write_table(path, value, artifact.table_schema)
        elif artifact.kind == "csv":
            frame = (
                value
                if artifact.table_schema is None
                else schema.conform(value, _schema_of(artifact))
            )
            write_csv(path, frame)
        elif artifact.kind == "json":
            write_json(path, value)
        elif artifact.kind == "text":
            write_text(path, value)
        elif artifact.kind == "model":
            self._replace_folder(path, lambda staged: _write_model(staged, value))
        elif artifact.kind == "folder":
            self._replace_folder(path, lambda staged: _write_files(staged, value))
        else:
            raise TypeError(f"artifact {name!r} of kind {artifact.kind!r} cannot be saved")

    def save_chunks(
        self, name: str, frames: Iterable[pd.DataFrame], round_id: int | None = None
    ) -> int:
        """Write a table artifact from ``frames``, one row group each, atomically, holding one
        frame at a time (a table the size of the pool). Returns the rows written.

        The item ids, one per row and all different, get neither a dictionary nor min/max
        statistics: Parquet's default tries both on every column, and on the 1,000,000 ids of
        a pool's scores the write took 0.63 s against 0.13 s without them, in a file 29% larger."""
        artifact = get_artifact(name)
        if artifact.kind != "table":
            raise TypeError(f"artifact {name!r} of kind {artifact.kind!r} is not a table")
        table_schema = artifact.table_schema

        def write(tmp: str) -> None:
            nonlocal rows
            writer = None
            try:
                for frame in frames:
                    conformed = (
                        frame if table_schema is None else schema.conform(frame, dict(table_schema))
                    )
                    table = pa.Table.from_pandas(
                        conformed,
                        preserve_index=False,
                        schema=None if writer is None else writer.schema,
                    )
                    if writer is None:
                        encoded = [n for n in table.schema.names if n != schema.ITEM_ID]
                        writer = pq.ParquetWriter(
                            tmp, table.schema, use_dictionary=encoded, write_statistics=encoded
                        )
                    writer.write_table(table)
                    rows += len(table)
                if writer is None:  # no frame: an empty table of the artifact's columns
                    empty = schema.empty(dict(table_schema or {}))
                    pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), tmp)
            finally:
                if writer is not None:
                    writer.close()

        rows = 0
        _atomic(self.path(name, round_id), write)
        return rows

    def iter_table(self, name: str, round_id: int | None = None) -> Iterator[pd.DataFrame]:
        """A table artifact one row group at a time (as :meth:`save_chunks` wrote it)."""
        artifact = get_artifact(name)
        file = pq.ParquetFile(self.path(name, round_id))
        for group in range(file.metadata.num_row_groups):
            frame = file.read_row_group(group).to_pandas()
            yield (
                frame
                if artifact.table_schema is None
                else schema.conform(frame, dict(artifact.table_schema))
            )

    def _replace_folder(self, target: Path, write: Callable[[Path], None]) -> None:
        """Write a folder beside ``target``, then swap it in by renames; see
        :meth:`recover_model` for what a crash between the renames leaves."""
        staged = target.with_name(f".{target.name}.tmp")
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)  # mkdir honours the umask; only mkstemp's files need help
        write(staged)
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired, ignore_errors=True)

    def recover_model(self, name: str) -> bool:
        """Finish a folder swap that a crash interrupted between its two renames: the old
        folder stands. Returns whether there was anything to recover."""
        target = self.path(name)
        retired = target.with_name(f".{target.name}.old")
        if retired.exists() and not target.exists():
            retired.rename(target)
            return True
        return False

    # -- params and round state ---------------------------------------------------------
    def read_params(self, overrides: tuple[str, ...] = ()) -> Params:
        return load_params(read_yaml(self.params_file), overrides)

    def read_round(self) -> RoundInfo:
        if not self.round_file.exists():
            return RoundInfo(round_id=0, started_at="")
        raw = read_yaml(self.round_file)
        return RoundInfo(round_id=int(raw["round_id"]), started_at=str(raw["started_at"]))

    def write_round(self, info: RoundInfo) -> None:
        text = yaml.safe_dump(
            {"round_id": info.round_id, "started_at": info.started_at}, sort_keys=False
        )
        write_text(self.round_file, text)

    # -- tables -------------------------------------------------------------------------
    def _read_table(self, path: Path, table_schema: Mapping[str, str] | None) -> pd.DataFrame:
        """Read a parquet table; an absent file is an empty table. A table whose columns
        depend on the project (one per class) declares no schema and is read as written."""
        if table_schema is None:
            return pd.read_parquet(path) if path.exists() else pd.DataFrame()
        if not path.exists():
            return schema.empty(dict(table_schema))
        return schema.conform(pd.read_parquet(path), dict(table_schema))

    def _write_table(
        self, path: Path, frame: pd.DataFrame, table_schema: Mapping[str, str] | None
    ) -> None:
        conformed = frame if table_schema is None else schema.conform(frame, dict(table_schema))
        table = pa.Table.from_pandas(conformed, preserve_index=False)
        _atomic(path, lambda tmp: pq.write_table(table, tmp))

    # -- incoming files -----------------------------------------------------------------
    def take_incoming(self, round_id: int) -> None:
        """Move every file dropped in ``incoming`` into the round's archive, exactly as
        received.

        The archive copy is written (atomically) before the incoming file is removed, so a
        crash in between leaves the file in both places, never in neither. A different file of
        the same name already in the archive is kept, and the new one gets a numbered name.
        """
        incoming, archive = self.path("incoming"), self.path("archive", round_id)
        archive.mkdir(parents=True, exist_ok=True)
        incoming.mkdir(parents=True, exist_ok=True)
        dropped = sorted(
            p for p in incoming.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        for path in dropped:
            target = archive / path.name
            if target.exists() and target.read_bytes() != path.read_bytes():
                stem, suffix = path.stem, path.suffix
                n = 2
                while (archive / f"{stem}.{n}{suffix}").exists():
                    n += 1
                target = archive / f"{stem}.{n}{suffix}"
            if not target.exists():
                write_bytes(target, path.read_bytes())
            path.unlink()

    def list_incoming(self) -> list[str]:
        """Names of the label files waiting in ``incoming``."""
        incoming = self.path("incoming")
        if not incoming.is_dir():
            return []
        return sorted(
            p.name for p in incoming.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def load_rounds(self, name: str, *, before_round: int) -> dict[int, Any]:
        """A per-round artifact of every round before ``before_round`` that has it."""
        artifact = get_artifact(name)
        parent = self.root / artifact.path.split(ROUND)[0]
        found = {}
        for folder in sorted(parent.glob("round-*")):
            round_id = int(folder.name.removeprefix("round-"))
            if round_id < before_round and self.path(name, round_id).exists():
                found[round_id] = self.load(name, round_id)
        return found

    # -- pool ---------------------------------------------------------------------------
    def pool_files(self) -> list[Path]:
        return sorted(self.path("pool").glob("*.parquet"))

    def _pool_dataset(self) -> ds.Dataset:
        files = self.pool_files()
        if not files:
            raise FileNotFoundError(f"no pool files (*.parquet) in {self.path('pool')}")
        return ds.dataset([str(f) for f in files], format="parquet")

    def pool_partition_sizes(self) -> dict[str, int]:
        """Each pool partition's file name and rows, from the parquet footers (no data read)."""
        return {f.name: pq.ParquetFile(f).metadata.num_rows for f in self.pool_files()}

    def read_pool_ids(self) -> pd.Series:
        """Every pool id, in pool order: for tests and small tools; a stage reads ids by
        position (:meth:`read_pool_ids_at`) or looks given ids up (:meth:`read_pool_ids_among`)."""
        ids = self._pool_dataset().to_table(columns=[schema.ITEM_ID]).column(0)
        return pd.Series(ids.to_pandas(), name=schema.ITEM_ID).astype("string")

    def read_pool(self, item_ids: pd.Series | None = None) -> pd.DataFrame:
        """Pool rows (``item_id`` plus features), optionally only those in ``item_ids``.

        With ``item_ids``, one row group at a time: its ids are read first, and its other
        columns only when it holds a wanted item, so memory is a row group and the rows found
        (Arrow's filtered scan held 550-1,360 MB of a 10-million-item pool to return 3,000
        rows, whatever its read-ahead)."""
        if item_ids is None:
            frame = self._pool_dataset().to_table().to_pandas()
            frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
            return frame
        found = [
            parquet.read_row_group(group).filter(mask)
            for parquet, group, mask in self._find_pool_ids(item_ids)
        ]
        files = self.pool_files()
        table = pa.concat_tables(found) if found else pq.read_schema(files[0]).empty_table()
        frame = table.to_pandas()
        frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
        return frame

    def read_pool_ids_at(
        self, positions: np.ndarray, *, partitions: Iterable[str] | None = None
    ) -> pd.Series:
        """The ids at ``positions`` (ascending, 0-based, in pool order), reading only the row
        groups that hold one, a row group at a time. With ``partitions`` (file names in
        ``data/pool``), the positions count the rows of those partitions only, in pool order.

        Raises
        ------
        IndexError
            If a position is outside the pool (or the partitions) or the positions are not
            ascending.
        KeyError
            If a named partition is not in the pool.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions[0] < 0 or (np.diff(positions) < 0).any()):
            raise IndexError("pool positions must be ascending and not negative")
        files = self.pool_files()
        if partitions is not None:
            names = set(partitions)
            missing = sorted(names - {f.name for f in files})
            if missing:
                raise KeyError(f"no pool partition {missing} in {self.path('pool')}")
            files = [f for f in files if f.name in names]
        found = []
        start = 0
        for file in files:
            parquet = pq.ParquetFile(file)
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                lo, hi = np.searchsorted(positions, [start, start + rows])
                if hi > lo:
                    ids = parquet.read_row_group(group, columns=[schema.ITEM_ID]).column(0)
                    found.append(ids.take(pa.array(positions[lo:hi] - start)))
                start += rows
        if positions.size and positions[-1] >= start:
            where = "the pool's" if partitions is None else "those partitions'"
            raise IndexError(f"pool position {int(positions[-1])} is past {where} {start} items")
        ids = pa.chunked_array(found).to_pandas() if found else []
        return pd.Series(ids, name=schema.ITEM_ID, dtype="string")

    def read_pool_ids_among(self, item_ids: pd.Series) -> pd.Series:
        """Those of ``item_ids`` that are pool items (each once, in pool order), reading the
        pool's ids a row group at a time: a check of a few ids against a pool of millions
        holds a row group's ids, not the pool's."""
        found = [
            parquet.read_row_group(group, columns=[schema.ITEM_ID]).column(0).filter(mask)
            for parquet, group, mask in self._find_pool_ids(item_ids)
        ]
        ids = pa.chunked_array(found).to_pandas() if found else []
        return pd.Series(ids, name=schema.ITEM_ID, dtype="string")

    def _find_pool_ids(
        self, item_ids: pd.Series
    ) -> Iterator[tuple[pq.ParquetFile, int, pa.BooleanArray]]:
        """Each row group of the pool holding any of ``item_ids``: its file, its number, and
        which of its rows are wanted (the ids are read first, one row group at a time)."""
        files = self.pool_files()
        if not files:
            raise FileNotFoundError(f"no pool files (*.parquet) in {self.path('pool')}")
        id_type = pq.read_schema(files[0]).field(schema.ITEM_ID).type
        wanted = pa.array(item_ids.dropna().astype(str).tolist(), type=id_type)
        if not len(wanted):  # nothing to find: no row group is read
            return
        for file in files:
            parquet = pq.ParquetFile(file)
            for group in range(parquet.metadata.num_row_groups):
                ids = parquet.read_row_group(group, columns=[schema.ITEM_ID]).column(0)
                mask = pc.is_in(ids, value_set=wanted)
                if pc.any(mask).as_py():
                    yield parquet, group, mask

    def read_pool_head(self, n: int) -> pd.DataFrame:
        """The first ``n`` pool rows (an example of the pool's columns and types), read
        without scanning the pool."""
        first = pq.ParquetFile(self.pool_files()[0])
        frame = next(first.iter_batches(batch_size=n)).to_pandas()
        frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
        return frame

    def read_pool_rows(self, item_ids: pd.Series) -> pd.DataFrame:
        """Pool rows of ``item_ids``, in that order (each id must be in the pool)."""
        rows = self.read_pool(item_ids).set_index(schema.ITEM_ID)
        return rows.loc[item_ids.to_numpy()].reset_index()

    def pool_pieces(self, chunk_size: int) -> list[PoolPiece]:
        """The pool as units of work: one per row group of each partition, in pool order (see
        :class:`PoolPiece`). Read from the parquet footers only."""
        pieces: list[PoolPiece] = []
        first_chunk = 0
        for file in self.pool_files():
            meta = pq.ParquetFile(file).metadata
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if rows:
                    piece = PoolPiece(str(file), group, rows, first_chunk, chunk_size)
                    pieces.append(piece)
                    first_chunk += piece.n_chunks
        return pieces


def get_sample_positions(
    n_pool: int, *, size: int, random_state: int | np.random.Generator
) -> np.ndarray:
    """Positions in pool order (ascending) of ``size`` of ``n_pool`` items drawn uniformly at
    random (all of them, if the pool has fewer), for :meth:`Catalog.read_pool_ids_at`: a
    stage samples the pool by position, so that it never holds every pool id. A generator
    given as ``random_state`` is drawn from (several samples from one seed)."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.permutation(n_pool)[: min(size, n_pool)])


#: Rows per row group of the pool partitions alloop writes: a row group is what a reader
#: holds at once and what one Dask task scores (50 float features: about 26 MB).
POOL_ROW_GROUP = 65_536


@dataclass(frozen=True)
class PoolPiece:
    """One row group of one pool partition: the unit the score stage hands an executor.

    It is cut into chunks of ``chunk_size`` rows; chunk ``j`` of the piece is chunk
    ``first_chunk + j`` of the pool, so a chunk's number (and the seed it is scored with)
    does not depend on where or in which order pieces are scored.
    """

    path: str
    row_group: int
    n_rows: int
    first_chunk: int
    chunk_size: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_size)

    def chunks(self, rows: pd.DataFrame) -> Iterator[pd.DataFrame]:
        """``rows`` (the piece's, from :func:`read_pool_piece`) cut into its chunks."""
        for start in range(0, len(rows), self.chunk_size):
            yield rows.iloc[start : start + self.chunk_size].reset_index(drop=True)


def read_pool_piece(piece: PoolPiece) -> pd.DataFrame:
    """The rows of one pool piece (``item_id`` as string). A module function, not a method
    of the catalog: a Dask worker reads its piece itself, from the path."""
    frame = pq.ParquetFile(piece.path).read_row_group(piece.row_group).to_pandas()
    if len(frame) != piece.n_rows:
        raise ValueError(
            f"pool partition {piece.path} changed while it was scored: row group "
            f"{piece.row_group} has {len(frame)} rows, {piece.n_rows} expected"
        )
    frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
    return frame


def write_pool_partition(table: pa.Table, path: Path) -> None:
    """Write a pool partition atomically, in row groups of :data:`POOL_ROW_GROUP` rows."""
    _atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=POOL_ROW_GROUP))


def _read_csv(path: Path, table_schema: Mapping[str, str] | None) -> pd.DataFrame:
    """A CSV alloop wrote; conformed to its schema when it has one (absent: empty)."""
    if not path.exists():
        return schema.empty(dict(table_schema or {}))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False).replace("", pd.NA)
    if table_schema is None:
        return frame
    # numbers and flags come back from text
    for column, dtype in table_schema.items():
        if column in frame and dtype != "string":
            frame[column] = (
                pd.to_numeric(frame[column])
                if dtype != "boolean"
                else frame[column].map({"True": True, "False": False})
            )
    return schema.conform(frame, dict(table_schema))


def _inside(folder: Artifact) -> list[Artifact]:
    """Artifacts declared inside the folder artifact ``folder``."""
    prefix = folder.path.rstrip("/") + "/"
    return [a for a in ARTIFACTS.values() if a.path.startswith(prefix)]


def _schema_of(artifact: Artifact) -> dict[str, str]:
    if artifact.table_schema is None:
        raise TypeError(f"artifact {artifact.name!r} declares no schema")
    return dict(artifact.table_schema)


# -- model folders --------------------------------------------------------------------------
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_model(folder: Path) -> SavedModel:
    """A model folder; cached test probabilities only if they are this model's."""
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    model_path = folder / MODEL_FILE
    text = model_path.read_text() if model_path.exists() else None
    probs_of = meta.pop("test_probs_of", None)
    probs_path = folder / PROBS_FILE
    probs = None
    if text is not None and probs_path.exists() and probs_of == _digest(text):
        probs = pd.read_parquet(probs_path)
    previous = _read_model(folder / PREVIOUS) if (folder / PREVIOUS).is_dir() else None
    space = folder / FEATURES
    features = (
        {p.name: p.read_bytes() for p in sorted(space.iterdir()) if p.is_file()}
        if space.is_dir()
        else {}
    )
    return SavedModel(text=text, meta=meta, test_probs=probs, previous=previous, features=features)


def _write_model(folder: Path, model: SavedModel) -> None:
    """``model.txt``, ``meta.json``, the cached test probabilities and ``previous/``."""
    meta = dict(model.meta)
    if model.text is not None:
        write_text(folder / MODEL_FILE, model.text)
        if model.test_probs is not None:
            buffer = io.BytesIO()
            model.test_probs.to_parquet(buffer, index=False)
            write_bytes(folder / PROBS_FILE, buffer.getvalue())
            meta["test_probs_of"] = _digest(model.text)
    if model.previous is not None:
        _write_model(folder / PREVIOUS, model.previous)
    if model.features:
        (folder / FEATURES).mkdir(parents=True, exist_ok=True)
        _write_files(folder / FEATURES, model.features)
    write_json(folder / META_FILE, meta)


def _write_files(folder: Path, files: Mapping[str, bytes | str]) -> None:
    for name, content in files.items():
        write_bytes(folder / name, content.encode("utf-8") if isinstance(content, str) else content)


# -- primitives -----------------------------------------------------------------------------
@cache
def _umask() -> int:
    """The process's umask (read once: files are created with the user's permissions)."""
    try:  # Linux: readable without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600: give the file the permissions any other write would have, so
        # teammates and annotators on other accounts can read what the umask lets them
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_text(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def jsonl_text(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json_text(payload))


#: A cell starting with one of these is run as a formula by spreadsheet programs.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula get a leading ``'`` (OWASP's
    advice against CSV injection); numbers are left alone. Parsing strips it again."""
    safe = frame.copy()
    for name in safe.columns:
        column = safe[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue
        text = column.astype("string")
        risky = text.str.startswith(FORMULA_START).fillna(False).to_numpy(dtype=bool)
        if risky.any():
            safe[name] = text.where(~risky, "'" + text)
    return safe


def csv_text(frame: pd.DataFrame) -> str:
    """A CSV for people (annotators, auditors): formula-like cells are defused."""
    return csv_safe(frame).to_csv(index=False, lineterminator="\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, csv_text(frame))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is this an alloop workspace?")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
