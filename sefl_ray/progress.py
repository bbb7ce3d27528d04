"""Progress that moves: items done, failed and total, tokens, cost and an ETA for synth, infer and judge.

Ray Data counts blocks, and a small run is one block, so its own bar sits at "0/1" until the end. Here each worker
tallies its rows as they finish and sends the tally to a tiny counter actor about once a second (fire and forget,
no round trip), and the driver reads the counter every `interval_s`: a tqdm bar on a terminal, one log line per interval elsewhere (a Ray job's log, CI).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    skipped: int = 0  # rows a budget stopped before they started: finished, without output
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # calls without a known price (Usage's rule: their cost is not in cost_usd)


@ray.remote(num_cpus=0)
class ProgressCounter:
    """The run's tally, added to by every worker."""

    def __init__(self):
        self.counts = Counts()

    def add(self, counts: Counts) -> None:
        for field in ("done", "failed", "skipped", "tokens", "cost_usd", "unpriced"):
            setattr(self.counts, field, getattr(self.counts, field) + getattr(counts, field))

    def snapshot(self) -> Counts:
        return self.counts


class RowTally:
    """A worker's side of the counter: rows are tallied here and sent at most once per `flush_s`, so thousands of
    rows a second cost a few calls, not one each. A row that finishes after a quiet second is sent at once; rows
    within a second of the last send wait for the next row or the end of their batch. Never waits, never fails a
    row."""

    def __init__(self, counter: Any, flush_s: float = 1.0):
        self.counter, self.flush_s = counter, flush_s
        self.pending = Counts()
        self.last_flush = time.monotonic()

    def add(self, status: str, usage: Usage | None = None) -> None:
        """One finished row (`status`: ok, failed or skipped) and what its calls used."""
        self.pending.done += 1
        self.pending.failed += status not in ("ok", "skipped")
        self.pending.skipped += status == "skipped"
        if usage is not None:
            self.pending.tokens += usage.tokens
            self.pending.cost_usd += usage.cost_usd
            self.pending.unpriced += usage.unpriced_calls
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.counter is None or not self.pending.done:
            return
        pending, self.pending = self.pending, Counts()
        try:
            self.counter.add.remote(pending)
        except Exception:  # a counter that is gone (the driver ended) costs the rows nothing
            logger.debug("progress counter unreachable", exc_info=True)


def format_line(label: str, counts: Counts, total: int, elapsed_s: float) -> str:
    rate = counts.done / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - counts.done) / rate if rate > 0 else None
    cost = Usage(cost_usd=counts.cost_usd, unpriced_calls=counts.unpriced).cost_text()
    skipped = f", {counts.skipped} skipped by budget" if counts.skipped else ""
    return (f"{label}: {counts.done}/{total} done, {counts.failed} failed{skipped}, {counts.tokens} tokens, {cost}, "
            f"{rate:.2f}/s, elapsed {_clock(elapsed_s)}, ETA {_clock(eta) if eta is not None else '?'}")


@contextlib.contextmanager
def track_progress(label: str, total: int, interval_s: float = 5.0) -> Iterator[Any]:
    """Yields the counter handle to pass to the workers; shows progress until the block ends, then a last line.

    Ray Data's own block bars are switched off meanwhile (for the datasets made inside the block: a dataset keeps
    the context it was made with), so there is one progress display, the one that counts rows."""
    from ray.data import DataContext

    counter = ProgressCounter.remote()
    context = DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    ray_data_progress = logging.getLogger("ray.data._internal.progress")
    ray_data_level = ray_data_progress.level
    ray_data_progress.setLevel(logging.ERROR)  # no "Progress bars disabled. To enable, ..." for what we replace
    started = time.monotonic()
    stop = threading.Event()
    display = _Display(label, total, sys.stderr.isatty())
    thread = threading.Thread(target=_poll, args=(counter, display, started, stop, interval_s), daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join()
        display.show(_snapshot(counter), time.monotonic() - started, final=True)
        context.enable_progress_bars = bars
        ray_data_progress.setLevel(ray_data_level)
        ray.kill(counter)


def _poll(counter: Any, display: _Display, started: float, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        display.show(_snapshot(counter), time.monotonic() - started)


def _snapshot(counter: Any) -> Counts | None:
    try:
        return ray.get(counter.snapshot.remote(), timeout=10)
    except Exception:  # a slow or lost counter must not stop the stage: the last counts stay on show
        logger.debug("progress counter did not answer", exc_info=True)
        return None


class _Display:
    """A tqdm bar on a terminal, log lines elsewhere."""

    def __init__(self, label: str, total: int, terminal: bool):
        self.label, self.total = label, total
        self.last = Counts()
        self.bar = None
        if terminal:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit="row", dynamic_ncols=True)

    def show(self, counts: Counts | None, elapsed_s: float, final: bool = False) -> None:
        counts = self.last = counts or self.last
        if self.bar is None:
            logger.info(format_line(self.label, counts, self.total, elapsed_s))
            return
        self.bar.update(counts.done - self.bar.n)
        self.bar.set_postfix(failed=counts.failed, tokens=counts.tokens, usd=round(counts.cost_usd, 4),
                             refresh=False)
        self.bar.refresh()
        if final:
            self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
