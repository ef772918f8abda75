"""A stage's declaration, and what its ``run`` receives: artifacts by name, params, the round.

No orchestrator here: a stage module imports pandas, numpy and its own libraries, nothing of
Prefect. ``flows/`` wraps each stage's ``run`` in a Prefect task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.catalog import ARTIFACTS, Catalog, PoolPiece, RoundInfo, get_artifact
from tasks.params import Params


@dataclass(frozen=True)
class StageSpec:
    """A stage as the catalog and ``dvc.yaml`` know it.

    ``reads`` are artifacts of this round (what earlier stages wrote, or the round's inputs:
    the pool, the expectation suite); they become the stage's deps in ``dvc.yaml``. ``writes``
    are the artifacts it writes; each one's role in the catalog says whether it is an out, a
    persistent out, a metric or a plot. Reads of what an *earlier round* left behind are
    declared on the artifact (``read_later_by``), see :attr:`reads_before`. ``code`` lists the
    source files besides the stage's own module; ``params`` are keys of ``params.yaml``.
    """

    name: str
    module: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    params: tuple[str, ...]
    code: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.reads, *self.writes):
            get_artifact(name)  # an undeclared name fails when the spec is made

    @property
    def reads_before(self) -> tuple[str, ...]:
        """Artifacts this stage reads as earlier rounds left them (declared in the catalog)."""
        return tuple(a.name for a in ARTIFACTS.values() if self.name in a.read_later_by)

    @property
    def source_files(self) -> tuple[str, ...]:
        return (f"{self.module.replace('.', '/')}.py", *self.code)


class UndeclaredArtifact(RuntimeError):
    """A stage read or wrote an artifact its spec does not declare."""


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``run`` gets: the workspace's artifacts, the params, the round.

    Loads and saves go through :meth:`load`, :meth:`load_before` and :meth:`save`, which refuse
    any artifact the stage's spec does not declare: the declaration cannot drift from the code.
    """

    catalog: Catalog
    params: Params
    round: RoundInfo
    #: the stage being run (``for_stage``); without one, nothing can be loaded or saved
    spec: StageSpec | None = field(default=None, compare=False)

    @property
    def round_id(self) -> int:
        return self.round.round_id

    def for_stage(self, spec: StageSpec) -> StageContext:
        return StageContext(self.catalog, self.params, self.round, spec)

    def random_state(self, stage: str) -> int:
        """A seed for ``stage`` in this round: fixed by the project seed, round and stage.

        Identical inputs give identical results, and no two rounds or stages share a stream.
        """
        key = [self.params.project.random_state, self.round.round_id, *stage.encode()]
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    # -- artifacts ------------------------------------------------------------------------
    def _check(self, name: str, access: str) -> None:
        """Refuse ``access`` (reads, reads from earlier rounds, writes) to an artifact the
        stage's spec does not declare for it."""
        if self.spec is None:
            raise UndeclaredArtifact(
                f"a context of no stage {access} {name!r}: give it the stage (ctx.for_stage)"
            )
        allowed = {
            "reads": (*self.spec.reads, *self.spec.writes),
            "reads from earlier rounds": self.spec.reads_before,
            "writes": self.spec.writes,
        }[access]
        if name not in allowed:
            raise UndeclaredArtifact(
                f"stage {self.spec.name!r} {access} {name!r}, which its spec does not declare "
                f"(declared: {list(allowed)})"
            )

    def load(self, name: str) -> Any:
        """This round's ``name`` (per-round artifacts: this round's part)."""
        self._check(name, "reads")
        return self.catalog.load(name, self._round_of(name))

    def load_before(self, name: str) -> Any:
        """``name`` as earlier rounds left it: the rows of rounds before this one, for a table
        with a ``round_id`` column; ``{round_id: value}`` of earlier rounds, for a per-round
        artifact; the whole artifact otherwise (the stage itself tells what "before" means
        for it, e.g. the champion before this round's promotion)."""
        self._check(name, "reads from earlier rounds")
        if get_artifact(name).per_round:  # {round_id: value} of every earlier round
            return self.catalog.load_rounds(name, before_round=self.round_id)
        value = self.catalog.load(name)
        if isinstance(value, pd.DataFrame) and "round_id" in value.columns:
            value = value[value["round_id"] < self.round_id].reset_index(drop=True)
        return value

    def save(self, name: str, value: Any) -> None:
        self._check(name, "writes")
        self.catalog.save(name, value, self._round_of(name))

    def save_chunks(self, name: str, frames: Iterable[pd.DataFrame]) -> int:
        """Write a table from frames one at a time (see :meth:`Catalog.save_chunks`)."""
        self._check(name, "writes")
        return self.catalog.save_chunks(name, frames, self._round_of(name))

    def iter_table(self, name: str) -> Iterator[pd.DataFrame]:
        """This round's table ``name``, one row group at a time (to read or rewrite a table
        of the pool's size in a pass)."""
        self._check(name, "reads")
        return self.catalog.iter_table(name, self._round_of(name))

    def take_incoming(self) -> None:
        """Move the files waiting in ``incoming`` into this round's archive."""
        self._check("archive", "writes")
        self.catalog.take_incoming(self.round_id)

    def _round_of(self, name: str) -> int | None:
        return self.round_id if get_artifact(name).per_round else None

    # -- the pool (read, never written, by stages) -----------------------------------------
    def _check_pool(self) -> None:
        self._check("pool", "reads")

    def pool_ids_at(
        self, positions: np.ndarray, *, partitions: Iterable[str] | None = None
    ) -> pd.Series:
        """The pool's ids at ``positions`` (ascending, in pool order; counted over
        ``partitions`` only, if given). A stage never reads every pool id: it samples by
        position (:func:`tasks.catalog.get_sample_positions`) or looks ids up."""
        self._check_pool()
        return self.catalog.read_pool_ids_at(positions, partitions=partitions)

    def pool_ids_among(self, item_ids: pd.Series) -> pd.Series:
        """Those of ``item_ids`` that are pool items, read a row group at a time."""
        self._check_pool()
        return self.catalog.read_pool_ids_among(item_ids)

    def pool_partitions(self) -> dict[str, int]:
        """Each pool partition (one per arrival) and its rows."""
        self._check_pool()
        return self.catalog.pool_partition_sizes()

    def pool_head(self, n: int) -> pd.DataFrame:
        """The first ``n`` pool rows: the pool's columns and types, without a scan."""
        self._check_pool()
        return self.catalog.read_pool_head(n)

    def pool_rows(self, item_ids: pd.Series, *, ordered: bool = True) -> pd.DataFrame:
        """Pool rows of ``item_ids``: in that order, or in pool order when not ``ordered``."""
        self._check_pool()
        if ordered:
            return self.catalog.read_pool_rows(item_ids)
        return self.catalog.read_pool(item_ids)

    def pool_pieces(self, chunk_size: int) -> list[PoolPiece]:
        """The pool's units of work (row groups of its partitions), from the footers."""
        self._check_pool()
        return self.catalog.pool_pieces(chunk_size)
