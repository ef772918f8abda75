"""The one I/O module: where every file of a workspace lives, and how it is read and written.

Stage functions never touch files; their thin task wrappers call this catalog. Writes are
atomic (a temporary file in the same folder, then ``os.replace``), so a crash never leaves a
half-written table behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from tasks import schema
from tasks.params import Params, load_params

ROUND_FILE = "round.yaml"
PARAMS_FILE = "params.yaml"


def round_name(round_id: int) -> str:
    return f"round-{round_id:04d}"


@dataclass(frozen=True)
class RoundInfo:
    """What ``round.yaml`` says: the round being (or last) run and when it started."""

    round_id: int
    started_at: str  # ISO 8601, UTC; the round's clock, so that reruns judge time alike


@dataclass(frozen=True)
class Catalog:
    """File locations of one workspace (see docs/workspace.md)."""

    root: Path

    # -- layout -------------------------------------------------------------------------
    @property
    def params_file(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def round_file(self) -> Path:
        return self.root / ROUND_FILE

    @property
    def pool_dir(self) -> Path:
        return self.root / "data" / "pool"

    @property
    def incoming_dir(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def archive_dir(self) -> Path:
        return self.root / "data" / "archive"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def outbox_dir(self) -> Path:
        return self.root / "data" / "outbox"

    @property
    def labels_dir(self) -> Path:
        return self.root / "data" / "labels"

    @property
    def interim_dir(self) -> Path:
        return self.root / "data" / "interim"

    @property
    def simulation_dir(self) -> Path:
        return self.root / "data" / "simulation"

    @property
    def ledger(self) -> Path:
        return self.labels_dir / "ledger.parquet"

    @property
    def current(self) -> Path:
        return self.labels_dir / "current.parquet"

    @property
    def issued(self) -> Path:
        return self.labels_dir / "issued.parquet"

    @property
    def flags(self) -> Path:
        return self.labels_dir / "flags.parquet"

    @property
    def accepted(self) -> Path:
        return self.interim_dir / "accepted.parquet"

    @property
    def rejected(self) -> Path:
        return self.interim_dir / "rejected.parquet"

    @property
    def events(self) -> Path:
        return self.interim_dir / "events.parquet"

    @property
    def annotators(self) -> Path:
        return self.labels_dir / "annotators.parquet"

    @property
    def scores(self) -> Path:
        return self.interim_dir / "scores.parquet"

    @property
    def batch(self) -> Path:
        return self.interim_dir / "batch.parquet"

    @property
    def candidate_dir(self) -> Path:
        return self.root / "models" / "candidate"

    @property
    def champion_dir(self) -> Path:
        return self.root / "models" / "champion"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def metrics_file(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def truth_file(self) -> Path:
        return self.simulation_dir / "truth.parquet"

    @property
    def state_dir(self) -> Path:
        """Local run state that is not versioned: Prefect home, MLflow store, DVC remote."""
        return self.root / ".alloop"

    def archive(self, round_id: int) -> Path:
        return self.archive_dir / round_name(round_id)

    def quarantine(self, round_id: int) -> Path:
        return self.quarantine_dir / round_name(round_id)

    def outbox(self, round_id: int) -> Path:
        return self.outbox_dir / round_name(round_id)

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
    def read_table(self, path: Path, table_schema: dict[str, str]) -> pd.DataFrame:
        """Read a table written by :meth:`write_table`; an absent file is an empty table."""
        if not path.exists():
            return schema.empty(table_schema)
        return schema.conform(pd.read_parquet(path), table_schema)

    def write_table(self, path: Path, frame: pd.DataFrame, table_schema: dict[str, str]) -> None:
        table = pa.Table.from_pandas(schema.conform(frame, table_schema), preserve_index=False)
        _atomic(path, lambda tmp: pq.write_table(table, tmp))

    # -- pool ---------------------------------------------------------------------------
    def pool_files(self) -> list[Path]:
        return sorted(self.pool_dir.glob("*.parquet"))

    def _pool_dataset(self) -> ds.Dataset:
        files = self.pool_files()
        if not files:
            raise FileNotFoundError(f"no pool files (*.parquet) in {self.pool_dir}")
        return ds.dataset([str(f) for f in files], format="parquet")

    def read_pool_ids(self) -> pd.Series:
        ids = self._pool_dataset().to_table(columns=[schema.ITEM_ID]).column(0)
        return pd.Series(ids.to_pandas(), name=schema.ITEM_ID).astype("string")

    def read_pool(self, item_ids: pd.Series | None = None) -> pd.DataFrame:
        """Pool rows (``item_id`` plus features), optionally only those in ``item_ids``."""
        dataset = self._pool_dataset()
        flt = None
        if item_ids is not None:
            id_type = dataset.schema.field(schema.ITEM_ID).type
            wanted = pa.array(item_ids.astype(str).tolist(), type=id_type)
            flt = ds.field(schema.ITEM_ID).isin(wanted)
        frame = dataset.to_table(filter=flt).to_pandas()
        frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
        return frame

    def iter_pool(self, chunk_size: int) -> Iterator[pd.DataFrame]:
        """The pool in chunks of at most ``chunk_size`` rows: memory stays bounded."""
        for batch in self._pool_dataset().to_batches(batch_size=chunk_size):
            if batch.num_rows:
                frame = batch.to_pandas()
                frame[schema.ITEM_ID] = frame[schema.ITEM_ID].astype("string")
                yield frame

    # -- models -------------------------------------------------------------------------
    def read_model_text(self, folder: Path) -> str | None:
        path = folder / "model.txt"
        return path.read_text() if path.exists() else None

    def read_json(self, path: Path, default: Any = None) -> Any:
        if not path.exists():
            return default
        return json.loads(path.read_text())


# -- primitives -----------------------------------------------------------------------------
def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
    write_text(path, lines)


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


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """A CSV for people (annotators, auditors): formula-like cells are defused."""
    write_text(path, csv_safe(frame).to_csv(index=False, lineterminator="\n"))


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
