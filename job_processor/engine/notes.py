"""A running job's progress and log lines, written coalesced: `RunNotes` is the `NoteSink` a
worker gives each job it runs.

`report_progress` and `job.log` only record in memory. What is pending goes out with the run's
next checkpoint or its final write (merged into that one update), or, when neither comes within
a second, in one write of its own: at most one extra write per second per running job, whatever
the call rate, and the last progress is always written. A write that cannot be made (MongoDB
unreachable past a short budget) keeps its lines for the next one, which first asks whether it
landed after all (a lost reply, then the outage: its lines are pushed once); a run that no
longer owns its job writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core import notes as N
from ..core.clock import Clock
from ..core.errors import InvalidArgumentError
from ..core.log import EventLog
from ..core.masking import LOG_MASKER, log_secrets, masked_line
from ..core.values import ENCODING_ERRORS
from ..storage.jobs import JobStore
from ..storage.transient import TRANSIENT, describe
from .execution import Run, logged_values, paths_of
from .signals import unless_set

Doc = dict[str, Any]

#: How long one coalesced write rides out an outage (the final write carries what it missed).
FLUSH_BUDGET = 5.0


class RunNotes:
    """The NoteSink of one run (see the module docstring)."""

    def __init__(
        self, run: Run, jobs: JobStore, clock: Clock, log: EventLog, fields: Mapping[str, Any]
    ) -> None:
        self.run = run
        self.jobs = jobs
        self.clock = clock
        self.log = log
        self.fields = dict(fields)
        self.pending_progress: Doc | None = None
        self.lines: list[Doc] = []
        self.last_write: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._writing = False
        self._closed = False
        self._settling: list[tuple[asyncio.Future[bool], Doc, int]] = []
        self._unsure: tuple[str, Doc] | None = None
        """A write of its own whose outcome is unknown (its reply lost, then MongoDB
        unreachable past its budget): its notes id and update, resolved (`_resolve`) before any
        other write carries lines, which would change the notes id that tells."""
        self._resolving = asyncio.Lock()
        self._carrying: set[asyncio.Future[Any]] = set()  # checkpoint saves carrying notes
        self.checkpoints = 0
        """Checkpoints of this run written so far (a cancelled one's state, if it landed, is
        the run's only when none was written after it)."""
        """Checkpoints cancelled while their write was under way, with the notes they carried:
        the write may land yet; `close` learns whether it did."""
        self._loop = asyncio.get_running_loop()
        self._own_keys = _ECHO_KEYS | self.fields.keys()
        self._secrets: set[str] | None = None
        """What the echoed lines hide: the payload's and the checkpoint's secrets (the run's
        start's; worked out at the first line)."""

    # ---- the NoteSink -------------------------------------------------------------------------

    async def progress(self, done: Any, total: Any, message: Any) -> Doc:
        try:
            progress = N.progress_of(done, total, message, self.clock.now())
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self.pending_progress = progress
        self._soon()
        return progress

    def line(self, level: str, message: Any, fields: Mapping[str, Any]) -> None:
        """Called by `job.log` on the worker's loop, or on a thread by a plain-def handler: the
        line is made (and echoed) at once, and kept on the loop, in the order of the calls (so
        before the run's final write, whose result comes back through the loop too)."""
        attempt = int(self.run.doc.get("attempt") or 0)
        line = N.log_line(attempt, level, message, fields, self.clock.now())
        self._echo(level, line)
        if _running_loop() is self._loop:
            self._keep(line)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                self._loop.call_soon_threadsafe(self._keep, line)

    def carry(self, value: Any) -> None:
        self.run.carried.append(value)
        self._secrets = None  # worked out again at the next line

    def _keep(self, line: Doc) -> None:
        self.lines.append(line)
        if len(self.lines) > N.LOG_LIMIT:  # only the last ones would be kept anyway
            del self.lines[: len(self.lines) - N.LOG_LIMIT]
        self._soon()

    def _echo(self, level: str, line: Doc) -> None:
        # the worker's log too, masked as the dashboard and the CLI show the line
        if self._secrets is None:
            self._secrets = log_secrets(logged_values(self.run), paths_of(self.run))
        shown = masked_line(LOG_MASKER, line, self._secrets)
        method = getattr(self.log, level if level in _METHODS else "error")
        # a field named as a key of the log line itself (`event`, `level`, `message`, the job's
        # ids, ...) is shown with a `_` after its name in the worker's log (the job keeps it)
        echoed: dict[str, Any] = {}
        for key, value in shown.get("fields", {}).items():
            while key in self._own_keys or key in echoed:  # `level` and `level_` both kept
                key += "_"
            echoed[key] = value
        method("job_logged", **(echoed | self.fields | {"message": shown["message"]}))

    # ---- writing ------------------------------------------------------------------------------

    def take(self) -> Doc:
        """What is pending, as an update to merge into a checkpoint or a final write (which
        then counts as this second's write)."""
        update = N.notes_update(self.pending_progress, self.lines)
        self.pending_progress, self.lines = None, []
        if update:
            self.last_write = _now()
        return update

    async def take_in_turn(self) -> Doc:
        """`take`, once a write of its own under way has landed or given its notes back: a
        checkpoint carries what is pending after it, so one given back never goes behind (nor
        over) what the checkpoint wrote."""
        timer = self._timer
        if timer is not None and self._writing:
            # never cancels the write; the caller's own cancellation (max runtime, a stop) is
            # raised here as it comes, and close() still waits for the write
            await asyncio.wait({timer})
        if not await self._resolve():
            return {}  # still unreachable: the notes wait (the final write at the latest)
        return self.take()

    @property
    def carrying(self) -> bool:
        """A checkpoint's save carrying notes is under way (a later checkpoint carries none:
        they would land before the older ones)."""
        return bool(self._carrying)

    def carried_by(self, save: asyncio.Future[Any]) -> None:
        """A checkpoint's `save` carries notes `take_in_turn` gave it: the notes' own next
        write waits for it, so that newer lines and progress land after them."""
        self._carrying.add(save)
        save.add_done_callback(self._carrying.discard)

    def settle_later(self, save: asyncio.Future[bool], update: Doc) -> None:
        """A checkpoint cancelled while `save`, carrying `update`, was under way: `close`
        writes `update` again only if `save` did not land (a line is pushed once); if it
        landed, its state is the run's unless a later checkpoint was written since."""
        save.add_done_callback(_retrieved)
        self._settling.append((save, update, self.checkpoints))

    async def close(self, budget: float | None = None) -> Doc:
        """The run is ending: no write of its own any more (one under way is waited for, so
        that it lands before the final write); what is pending goes with the final write,
        with the notes of a cancelled checkpoint whose write did not land. `budget`: the final
        write's (worker_timeout), as long as a write whose outcome is unknown is asked about."""
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None:
            if not self._writing:
                timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        # after the timer: a checkpoint's lines are older than those it took since, and a
        # give-back puts them in front
        restate = bool(self._settling)
        running = self._carrying - {save for save, _, _ in self._settling}
        if running:  # a checkpoint no cancel reached (checkpoint_sync's own task): its notes
            # land with it, or are given back, before the final write
            await asyncio.wait(running, timeout=FLUSH_BUDGET if budget is None else budget)
        await self._resolve(budget, last=True)
        await self.settle(budget)
        update = self.take()
        if restate and self.run.doc.get("state") is not None:
            # a cancelled checkpoint's write was in flight beside later ones (a retry after a
            # reset may land last): the final write holds the run's state, as its hook sees it
            update = N.merged(update, {"$set": {"state": self.run.doc["state"]}})
        return update

    async def settle(self, budget: float | None = None) -> None:
        """The writes of cancelled checkpoints, oldest first, each waited for (as long as a
        write of its own may take, at most): one that landed is the run's document's (its
        state, unless a later checkpoint was written since, and its notes), one that did not
        gives its notes back."""
        while self._settling:
            save, update, before = self._settling[0]
            # the save rides an outage out itself (worker_timeout) and recognises a lost reply:
            # waited as long as the final write that follows would ride it out, or until the
            # run is given up (its lease ended: its writes are the recovery's)
            given_up: asyncio.Future[Any] = asyncio.ensure_future(self.run.given_up.wait())
            try:
                await asyncio.wait(
                    {save, given_up},
                    timeout=FLUSH_BUDGET if budget is None else budget,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                given_up.cancel()
            if not save.done():  # an outage: given up, its notes go with the final write
                save.cancel()
                await asyncio.wait({save})
            self._settling.pop(0)
            landed = not save.cancelled() and save.exception() is None and save.result()
            if landed and self.checkpoints > before:  # a later state was written: its notes
                later = {
                    op: {k: v for k, v in f.items() if k != "state"} for op, f in update.items()
                }
                self.written(later)
            elif landed:
                self.written(update)
            else:
                self.give_back(update)

    def _soon(self) -> None:
        if self._timer is None and not self._closed and not self.run.lost:
            self._timer = asyncio.create_task(self._write_later(), name="job-notes")

    async def _write_later(self) -> None:
        try:
            if self.last_write is not None:
                wait = self.last_write + N.FLUSH_EVERY - _now()
                if wait > 0:
                    await asyncio.sleep(wait)
            while self._carrying:  # a checkpoint carrying older notes lands (or fails) first
                await asyncio.wait(set(self._carrying))
            self._writing = True
            if not await self._resolve():
                return  # still unreachable: what is pending waits (the final write at the latest)
            update = self.take()
            if not update or self.run.lost:
                return
            doc = self.run.doc
            notes_id = D.new_id()
            try:
                args = (doc["_id"], doc["run_id"], update, FLUSH_BUDGET, notes_id)
                if await self.jobs.save_notes(*args):
                    self.written(update)
            except TRANSIENT:  # kept for the next write (the final one at the latest)
                if "$push" in update:  # it may have landed: the next write asks first
                    self._unsure = (notes_id, update)
                else:
                    self.give_back(update)
            except (PyMongoError, *ENCODING_ERRORS) as exc:  # refused as such, or not storable:
                # carried on, it would fail the next write (the final one) too
                self.log.error("job_notes_failed", error=describe(exc), **self.fields)
        finally:
            self._writing = False
            if self._timer is asyncio.current_task():
                self._timer = None
            if (self.lines or self.pending_progress) and not self._closed:
                self._soon()  # what came in while writing: within a second

    async def _resolve(self, budget: float | None = None, last: bool = False) -> bool:
        """Whether the write whose outcome was unknown landed, asked before any other write
        carries lines: one that landed is the run's document's, one that did not gives its
        notes back. False when MongoDB still does not answer; `last` (the final write's turn):
        then its notes go with the final write all the same."""
        async with self._resolving:
            if self._unsure is None:
                return True
            notes_id, update = self._unsure
            doc = self.run.doc
            try:
                asked = FLUSH_BUDGET if budget is None else budget
                question = asyncio.ensure_future(
                    self.jobs.notes_landed(doc["_id"], doc["run_id"], notes_id, asked)
                )
                try:  # not waited for once the run is given up (its lease ended: nothing
                    # more is written for it, the answer would not be used): unanswered
                    if not await unless_set(question, self.run.given_up):
                        raise TimeoutError("the run was given up")
                finally:
                    question.cancel()  # the caller's own cancellation ends it too
                landed = question.result()
            except TRANSIENT:
                if not last:
                    return False
                landed = False
            self._unsure = None
            if landed:
                self.written(update)
            else:
                self.give_back(update)
            return True

    def written(self, update: Doc) -> None:
        """An update with notes landed: the run's document (the final one is computed from it)
        holds them too."""
        self.run.doc = D.applied(self.run.doc, update)

    def give_back(self, update: Doc) -> None:
        """What `take` returned, not written after all: pending again (behind the lines that
        came since; a newer progress stays)."""
        if self.pending_progress is None:
            self.pending_progress = update.get("$set", {}).get("progress")
        earlier = update.get("$push", {}).get("logs", {}).get("$each", [])
        self.lines = [*earlier, *self.lines][-N.LOG_LIMIT :]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Its outcome is read by `close`, or by nobody (the run lost): never reported unread."""
    if not future.cancelled():
        future.exception()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a plain-def handler's thread
        return None


def _now() -> float:
    return asyncio.get_running_loop().time()


_METHODS = frozenset({"debug", "info", "warning", "error", "critical"})
#: The keys of a worker's log line that a job's log field must not overwrite.
_ECHO_KEYS = frozenset({"event", "level", "message", "timestamp", "logger", "exc_info", "self"})
