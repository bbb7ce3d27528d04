"""Rows through OpenAI-compatible endpoints on Ray Data: the one caller synth, infer and judge share.

    rows -> Ray Data blocks of `batch_size` -> async actors (each batch's rows in flight at once, several batches
    per actor) -> each actor writes each batch's rows as one parquet file in `out_dir` (a shared path on a
    cluster, as the run dir is) and hands Ray Data only the row count, so no output row passes the driver

It owns what every endpoint stage needs and would otherwise write again: the actor pool's size, one
`EndpointClient` per endpoint in each actor (sharing the run's rate limiter and, if asked, the on-disk call cache),
the progress counter, and the write. The two knobs mean the same in every stage:
    concurrency  rows in flight across all actors (a row is one call, or one conversation of several calls)
    batch_size   rows per Ray Data batch: what one actor takes at once (at most concurrency / actors)
A stage brings only its per-row coroutine: `row_fn(row, clients, state) -> RowOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from sefl_ray.config import SeflConfig
from sefl_ray.durable import write_parquet
from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)


@dataclass
class RowOutcome:
    """One row's result: the output row (None: not made, e.g. over budget), its status and what it cost."""

    row: dict[str, Any] | None
    status: str
    usage: Usage = field(default_factory=Usage)


RowFn = Callable[[dict[str, Any], dict[str, Any], Any], Awaitable[RowOutcome]]
# (input row, reason, the actor's state) -> the stage's failed output row: what an exception in one row becomes
FailedRowFn = Callable[[dict[str, Any], str, Any], dict[str, Any]]


@dataclass
class EndpointBatch:
    """What a stage asks for: its rows' coroutine and schema, the endpoints they call, and the two knobs."""

    label: str                     # the progress line's name
    endpoints: list[str]           # endpoint names the rows call: one client each per actor
    row_fn: RowFn                  # a module-level async function (Ray pickles it by reference)
    failed_row: FailedRowFn        # module-level too: a row that raised, as a failed row with its reason
    schema: pa.Schema
    concurrency: int
    batch_size: int
    num_actors: int | None = None  # None: as few as the endpoints' per-process cap (max_concurrency) allows
    cache_dir: Path | None = None  # answered calls kept here, so a re-run pays for none twice
    setup: Callable[[SeflConfig, dict[str, Any]], Any] | None = None  # per actor, once: (config, context) -> state
    context: dict[str, Any] = field(default_factory=dict)  # what setup gets (actor handles, object refs)


@dataclass(frozen=True)
class PoolSize:
    actors: int
    batch_size: int
    batches_per_actor: int


def pool_size(concurrency: int, batch_size: int, num_actors: int | None, max_per_process: int) -> PoolSize:
    """Actors x rows per batch x batches per actor = `concurrency` (rounded up). A batch holds its slots until its
    slowest row ends, so a batch is never bigger than one actor's share."""
    actors = num_actors or max(1, math.ceil(concurrency / max_per_process))
    batch = max(1, min(batch_size, math.ceil(concurrency / actors)))
    return PoolSize(actors, batch, max(1, math.ceil(concurrency / (actors * batch))))


def run_endpoint_batches(config: SeflConfig, rows: list[dict[str, Any]], job: EndpointBatch, out_dir: Path) -> Path:
    """Run every row; the actors write their outputs as parquet files under `out_dir`, which is returned."""
    import ray

    from sefl_ray.cluster import init_ray
    from sefl_ray.llm.ratelimit import Limit, create_shared_rate_limiter
    from sefl_ray.progress import track_progress

    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:  # nothing to call: no actor pool to start
        return out_dir
    init_ray(config.ray)
    endpoints = [config.endpoint(name) for name in dict.fromkeys(job.endpoints)]
    size = pool_size(job.concurrency, job.batch_size, job.num_actors, min(e.max_concurrency for e in endpoints))
    per_actor = size.batch_size * size.batches_per_actor
    for endpoint in endpoints:
        if per_actor > endpoint.max_concurrency:
            logger.warning("%s: %d rows in flight per actor, but endpoint '%s' allows %d calls per process "
                           "(max_concurrency): raise it or the actor count to reach concurrency=%d", job.label,
                           per_actor, endpoint.name, endpoint.max_concurrency, job.concurrency)
    limits = {e.name: Limit(e.rpm, e.tpm) for e in endpoints if e.rpm or e.tpm}
    limiter = create_shared_rate_limiter(limits) if limits else None
    try:
        with track_progress(job.label, len(rows), config.progress_interval_s) as progress:
            dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size.batch_size)))
            written = dataset.map_batches(
                EndpointWorker,
                fn_constructor_kwargs={"config_json": config.model_dump_json(), "job": job, "limiter": limiter,
                                       "progress": progress, "out_dir": str(out_dir)},
                batch_size=size.batch_size, batch_format="pyarrow",
                # a second batch waits at each actor, so a finished one is replaced at once rather than on the
                # scheduler's next tick; rows in flight stay at `concurrency`
                compute=ray.data.ActorPoolStrategy(size=size.actors,
                                                   max_tasks_in_flight_per_actor=2 * size.batches_per_actor,
                                                   max_concurrent_calls_per_actor=size.batches_per_actor),
                num_cpus=0.1,  # rows wait on the network: an actor must not starve the read task of CPU
            )
            for _ in written.iter_batches(batch_size=None):  # row counts only: drives the pipeline to its end
                pass
    finally:  # the run's helper actor ends with it, also in a long-lived Ray session
        if limiter is not None:
            ray.kill(limiter)
    return out_dir


def new_parts_dir(parent: Path, prefix: str = "attempt") -> Path:
    """A fresh folder per run: a killed run's files stay readable beside the next run's."""
    return parent / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def write_part(table: pa.Table, out_dir: Path) -> Path:
    """One batch's rows as one file, renamed into place once whole: a killed actor leaves no half file behind."""
    return write_parquet(out_dir / f"part-{uuid.uuid4().hex}.parquet", table)


def read_parts(parts_dir: Path, schema: pa.Schema, key: str) -> pa.Table:
    """The table the actors wrote (empty, with `schema`, when no row was written), one row per `key`. An actor
    killed after writing its batch but before reporting it has that batch retried, so a row can be there twice:
    an ok copy wins over a failed one."""
    import pyarrow.parquet as pq

    files = sorted(parts_dir.glob("*.parquet")) if parts_dir.is_dir() else []
    if not files:
        return schema.empty_table()
    table = pa.concat_tables([pq.read_table(path).cast(schema) for path in files])
    best: dict[Any, int] = {}
    statuses = table["status"].to_pylist()
    for index, row_key in enumerate(table[key].to_pylist()):
        if row_key not in best or (statuses[index] == "ok" and statuses[best[row_key]] != "ok"):
            best[row_key] = index
    return table if len(best) == table.num_rows else table.take(sorted(best.values()))


class EndpointWorker:
    """A Ray Data actor: each batch's rows concurrently on its event loop, through one client per endpoint."""

    def __init__(self, config_json: str, job: EndpointBatch, limiter, progress=None, out_dir: str = "."):
        from sefl_ray.progress import RowTally

        self.config = SeflConfig.model_validate_json(config_json)
        self.job, self.limiter, self.out_dir = job, limiter, Path(out_dir)
        self.progress = RowTally(progress)
        self.state = job.setup(self.config, job.context) if job.setup else self.config
        self.clients: dict[str, Any] | None = None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.clients is None:  # built on the actor's event loop, where they are used
            from sefl_ray.llm.cache import CallCache
            from sefl_ray.llm.client import EndpointClient

            cache = CallCache(self.job.cache_dir) if self.job.cache_dir else None
            self.clients = {name: EndpointClient(self.config.endpoint(name), self.config.retry, limiter=self.limiter,
                                                 cache=cache) for name in dict.fromkeys(self.job.endpoints)}
        rows = batch.to_pylist()
        outcomes = await asyncio.gather(*(self._one(row) for row in rows))
        self.progress.flush()
        table = self._table([(row, outcome.row) for row, outcome in zip(rows, outcomes) if outcome.row is not None])
        if table.num_rows:
            write_part(table, self.out_dir)
        return pa.table({"rows": [table.num_rows]})

    async def _one(self, row: dict[str, Any]) -> RowOutcome:
        """One row; whatever it raises (a dead helper actor, a reply no parser expected) fails this row alone."""
        try:
            outcome = await self.job.row_fn(row, self.clients, self.state)
        except Exception as exc:
            logger.warning("%s: a row raised %s; it is recorded as failed", self.job.label, type(exc).__name__,
                           exc_info=True)
            outcome = RowOutcome(self.job.failed_row(row, failure_reason(exc), self.state), "failed")
        self.progress.add(outcome.status, outcome.usage)
        return outcome

    def _table(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> pa.Table:
        """The batch's output rows; one that does not fit the schema (text that is not valid Unicode, a wrong
        type) becomes a failed row instead of losing the batch."""
        try:
            return pa.Table.from_pylist([output for _, output in pairs], schema=self.job.schema)
        except (pa.ArrowException, ValueError, TypeError, UnicodeError):
            pass
        outputs = []
        for row, output in pairs:
            try:
                pa.Table.from_pylist([output], schema=self.job.schema)
            except (pa.ArrowException, ValueError, TypeError, UnicodeError) as exc:
                output = self.job.failed_row(row, f"the row could not be stored: {failure_reason(exc)}", self.state)
            outputs.append(output)
        return pa.Table.from_pylist(outputs, schema=self.job.schema)


def failure_reason(exc: BaseException) -> str:
    """One line, short enough for a table cell: the exception's type and the first line of its message."""
    first_line = next(iter(str(exc).strip().splitlines()), "")[:300]
    first_line = first_line.encode("utf-8", "backslashreplace").decode("utf-8")  # storable, whatever it quotes
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
