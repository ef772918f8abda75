"""Where the score stage's pieces run: in this process, or on a Dask cluster.

An executor maps a function over the pool's pieces (:class:`tasks.catalog.PoolPiece`) with one
shared argument (the booster and everything else the pieces are scored with) and yields the
results in piece order, so the stage writes the same table whichever executor ran it.

``local`` runs the pieces one after the other in this process. ``dask`` sends them to the
workers of a running ``dask.distributed`` scheduler (``score.dask_address``, or ``alloop round
--dask-address``): the shared argument goes to the cluster once, as a task of its own whose
value the workers fetch from each other, each task reads its piece from the pool partition's
path itself (the workers must see the workspace's ``data/pool`` at the same path), and at most
``window`` tasks are in flight, so neither the scheduler nor this process ever holds more than
a few pieces' results. A worker that dies mid-task is replaced and its tasks run again
elsewhere (the scheduler's own recovery): a piece's result depends only on the piece and the
shared argument, so the table is the same.

The workers run the scoring code they import, not this process's: before anything is sent,
the digest of the scoring modules' source on every worker must equal this process's, or the
round stops with an error naming the workers that differ.
"""

from __future__ import annotations

import hashlib
import importlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

Item = TypeVar("Item")
Shared = TypeVar("Shared")
Result = TypeVar("Result")

#: The modules whose code decides a piece's scores, checked equal on every Dask worker.
SCORING_MODULES = (
    "tasks.score",
    "tasks.strategies",
    "tasks.model",
    "tasks.features",
    "tasks.multilabel",
    "tasks.catalog",
    "tasks.annotation_time",
    "tasks.schema",
)


class ExecutorError(RuntimeError):
    """The Dask cluster cannot be reached or cannot be used (the user's to fix)."""


class Executor(Protocol):
    def map(
        self, fn: Callable[[Item, Shared], Result], items: Iterable[Item], shared: Shared
    ) -> Iterator[Result]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The pieces one after the other, in this process."""

    name = "local"

    def map(
        self, fn: Callable[[Item, Shared], Result], items: Iterable[Item], shared: Shared
    ) -> Iterator[Result]:
        for item in items:
            yield fn(item, shared)

    def close(self) -> None:
        pass


def get_code_digest() -> str:
    """SHA-256 of the source of :data:`SCORING_MODULES`, as this interpreter imports them."""
    digest = hashlib.sha256()
    for name in SCORING_MODULES:
        module = importlib.import_module(name)
        digest.update(name.encode())
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


class DaskExecutor:
    """The pieces on the workers of the Dask scheduler at ``address``."""

    name = "dask"

    def __init__(self, address: str, *, timeout_seconds: float = 30.0, window: int | None = None):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a dependency of alloop
            raise ExecutorError(f"score.executor dask needs dask.distributed: {exc}") from exc
        try:
            self.client = Client(address, timeout=timeout_seconds, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {address!r} within {timeout_seconds:g} s "
                f"({type(exc).__name__}: {exc}); check score.dask_address or --dask-address"
            ) from exc
        self.address = address
        try:
            threads = sum(self.client.nthreads().values())
            if threads == 0:
                raise ExecutorError(f"the Dask scheduler at {address!r} has no workers")
            self._check_code()
        except BaseException:
            self.client.close()
            raise
        # enough tasks in flight to keep every worker thread busy while a result is written
        self.window = window or 2 * threads

    def _check_code(self) -> None:
        mine = get_code_digest()
        theirs = self.client.run(get_code_digest)
        differ = sorted(worker for worker, digest in theirs.items() if digest != mine)
        if differ:
            raise ExecutorError(
                f"Dask workers {differ} run other scoring code than this alloop (digest of "
                f"{', '.join(SCORING_MODULES)}); install this alloop on the workers"
            )

    def map(
        self, fn: Callable[[Item, Shared], Result], items: Iterable[Item], shared: Shared
    ) -> Iterator[Result]:
        """``fn(item, shared)`` for each item on the cluster, yielded in the items' order."""
        # a task, not scattered data: the scheduler's memory manager keeps one copy of a value
        # no task is waiting for, and a scattered value whose last copy dies with its worker
        # is lost for good (seen here: "lose scattered data"), while a task's value is
        # computed again from the graph
        shared_future = self.client.submit(_identity, shared, pure=False)
        pending: deque[Any] = deque()
        todo = iter(items)
        try:
            for item in todo:
                pending.append(self.client.submit(fn, item, shared_future, pure=False))
                if len(pending) >= self.window:
                    yield self._next(pending)
            while pending:
                yield self._next(pending)
        finally:
            for future in pending:
                future.cancel()
            shared_future.release()

    def map_unordered(
        self, fn: Callable[[Item], Result], items: Iterable[Item]
    ) -> Iterator[tuple[Item, Result]]:
        """``(item, fn(item))`` for each item on the cluster, as each task ends (whole
        simulation campaigns: few, long, independent)."""
        from distributed import as_completed

        futures = {self.client.submit(fn, item, pure=False): item for item in items}
        try:
            for future in as_completed(list(futures), loop=self.client.loop):
                result = future.result()
                future.release()
                yield futures[future], result
        finally:
            for future in futures:
                future.cancel()

    @staticmethod
    def _next(pending: deque[Any]) -> Any:
        future = pending.popleft()
        result = future.result()
        future.release()
        return result

    def close(self) -> None:
        self.client.close()


def _identity(value: Any) -> Any:
    return value


def get_executor_overrides(dask_address: str | None) -> tuple[str, ...]:
    """The params overrides that score one round on the Dask scheduler at ``dask_address``
    (``alloop round --dask-address``)."""
    if not dask_address:
        return ()
    return ("score.executor=dask", f"score.dask_address={dask_address}")


def get_executor(kind: str, address: str | None, *, timeout_seconds: float = 30.0) -> Executor:
    """The executor ``score.executor`` names; ``dask`` needs the scheduler's address."""
    if kind == "local":
        return LocalExecutor()
    if kind == "dask":
        if not address:
            raise ExecutorError(
                "score.executor is dask but no scheduler address is set: give "
                "score.dask_address in params.yaml or alloop round --dask-address"
            )
        return DaskExecutor(address, timeout_seconds=timeout_seconds)
    raise ExecutorError(f"unknown score.executor {kind!r}; the executors are local and dask")
