"""Final writes, grouped (group commit): no added latency, fewer commands under load.

A run's final write, when no flush is in flight, is flushed at once, alone (a single `update`,
as when the queue is nearly empty; made by its caller when no other run could end meanwhile).
Writes that come while a flush is in flight are queued and flushed together when it returns
(one `bulk_write`). Each write keeps its own compare-and-set filter, so grouping changes
nothing about who wins a race (see `JobStore.end_runs`).
"""

from __future__ import annotations

import asyncio

from ..storage.jobs import EndItem, EndWrite, JobStore


class FinalWrites:
    def __init__(self, jobs: JobStore, budget: float) -> None:
        self.jobs = jobs
        self.budget = budget
        self._queue: list[tuple[EndItem, asyncio.Future[EndWrite]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inline = False
        """A write alone is being made by its caller (see `write`)."""
        self.flushes = 0
        """How many flushes (commands, mostly) were made: for benchmarks and tests."""

    async def write(self, item: EndItem, alone: bool = False) -> EndWrite:
        """Write `item` (grouped with others waiting), return what it did; raises that write's
        own error (a transient error once `budget` is spent, or e.g. DocumentTooLarge).

        `alone`: no other run of this worker could end meanwhile (it runs one job). Then, with
        no flush in flight, the write is made here by the caller (the worker's shielded
        `_finish`): no task and no future. Otherwise the flush starts on the loop's next turn,
        so that writes ending in the same turn go with it."""
        if alone and self._flusher is None and not self._inline:
            self._inline = True
            self.flushes += 1
            try:
                (result,) = await self.jobs.end_runs([item], self.budget)
            finally:
                self._inline = False
                if self._queue:  # queued meanwhile: flushed together now
                    self._flusher = asyncio.create_task(self._flush(), name="final-writes")
            if isinstance(result, Exception):
                raise result
            return result
        future: asyncio.Future[EndWrite] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None and not self._inline:
            self._flusher = asyncio.create_task(self._flush(), name="final-writes")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self.flushes += 1
                try:
                    results = await self.jobs.end_runs([item for item, _ in batch], self.budget)
                except Exception as exc:  # transient, past the budget: each caller decides
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None
