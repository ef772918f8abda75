"""What a stage's task wrapper receives, and the declaration of a stage for ``dvc.yaml``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.catalog import Catalog, RoundInfo
from tasks.params import Params


@dataclass(frozen=True)
class StageSpec:
    """A stage as ``dvc.yaml`` declares it; a test keeps the two in step.

    ``params`` are keys of ``params.yaml``; ``round.yaml`` (the round id and its clock) is a
    params dependency of every stage. ``persist`` outs carry state from round to round: the
    stage rewrites only the current round's part of them, so rerunning it is idempotent.
    """

    name: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    #: path -> DVC plot options (x, y, template); written in git, like metrics
    plots: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    catalog: Catalog
    params: Params
    round: RoundInfo
    stage_seeds: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def round_id(self) -> int:
        return self.round.round_id

    def random_state(self, stage: str) -> int:
        """A seed for ``stage`` in this round: fixed by the project seed, round and stage.

        Identical inputs give identical results, and no two rounds or stages share a stream.
        """
        key = [self.params.project.random_state, self.round.round_id, *stage.encode()]
        return int(np.random.SeedSequence(key).generate_state(1)[0])


def stage_task(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The thin Prefect task around a stage's wrapper.

    No Prefect caching: a stage's real output is files, and after a rollback a cached task
    would be skipped while its files are stale. DVC's hashes decide what is stale. No retries:
    a stage only touches local files, and a failure there is a bug to see, not to repeat.
    """
    return task(name=name, cache_policy=NO_CACHE, persist_result=False)
