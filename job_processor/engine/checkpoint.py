"""`job.checkpoint(state)`: the state saved, with the run's pending notes, compare-and-set on
the run.

The save carries what the run's notes held when it was taken (`RunNotes.take_in_turn`); while
it is under way, the notes' own coalesced write waits for it (`RunNotes.carried_by`), so a
later line or progress never lands before the older ones the checkpoint carries. A save the
handler's cancellation interrupts (max runtime, a stop) may land yet: the final write learns
whether it did (`RunNotes.settle_later`). A save that could not reach MongoDB within
`worker_timeout`, or found the job recovered elsewhere, gives the run up (`JobLostError`).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from ..core import notes as N
from ..core.clock import Clock
from ..core.errors import JobLostError
from ..core.log import EventLog
from ..storage.jobs import JobStore
from ..storage.transient import TRANSIENT, describe
from .execution import Run, check_state


async def save_checkpoint(
    jobs: JobStore,
    clock: Clock,
    log: EventLog,
    budget: float,
    fields: dict[str, Any],
    run: Run,
    state: dict[str, Any],
) -> dict[str, Any]:
    """Returns the state as saved, a copy for the handler's `job.state`."""
    state = check_state(state)  # as saved now: the handler may go on changing its dict
    ok = False
    notes: dict[str, Any] = {}
    if not run.lost:
        # an older checkpoint still carrying notes (a cancelled one, during the cleanup's):
        # this one carries none, they go with the next write, which waits for it
        if run.notes is not None and not run.notes.carrying:
            notes = await run.notes.take_in_turn()
        now = clock.now()
        job_id, run_id = run.doc["_id"], run.doc["run_id"]
        save = asyncio.ensure_future(
            jobs.save_checkpoint(job_id, run_id, state, now, budget, notes=notes)
        )
        if notes and run.notes is not None:  # the notes' own next write waits for it
            run.notes.carried_by(save)
        try:
            ok = await asyncio.shield(save)
        except asyncio.CancelledError:  # max runtime, a stop: the write may land yet
            if run.notes is not None:  # the final write learns whether it did: landed,
                # its state (and notes) are the run's document's, as its hook sees it
                landed = N.merged({"$set": {"state": dict(state), "updated_at": now}}, notes)
                run.notes.settle_later(save, landed)
                notes = {}
            else:
                save.cancel()
            raise
        except TRANSIENT as exc:
            log.error("checkpoint_failed", error=describe(exc), **fields)
        finally:  # not written (failed, or cancelled: max runtime, a stop past its grace):
            if not ok and notes and run.notes is not None:  # the final write carries them
                run.notes.give_back(notes)
    if ok:
        run.doc["state"] = dict(state)  # the final document (and its hook) see it
        if run.notes is not None:
            run.notes.checkpoints += 1
            if notes:
                run.notes.written(notes)
        return copy.deepcopy(state)  # job.state: the handler may change it, not the run's
    run.give_up()
    run.signal.abort("shutdown")
    raise JobLostError(
        f"job {run.doc['name']!r} {run.doc['_id']} is no longer owned by this worker "
        "(its worker stopped and put it back, paused or pending: a graceful stop past its "
        "grace; or it was recovered elsewhere, MongoDB unreachable for longer than "
        "worker_timeout)"
    )
