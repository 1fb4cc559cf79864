"""Checkpoints as a user of resumable jobs sees them: what the final document, `run_job`'s
answer and on_job_exited hold of the state, and what the next run is given."""

from __future__ import annotations

from typing import Any

import bson
import pytest

from job_processor import AbortSignal, InvalidPayloadError, Job, JobDef, JobStatus
from job_processor.engine.execution import check_state
from tests.helpers import make, wait_for

S = JobStatus


async def test_the_final_job_and_its_hook_hold_the_state_as_saved_not_as_changed_since(
    db: Any,
) -> None:
    """The handler goes on changing the dict it checkpointed (a list in it): the job `run_job`
    returns and the one on_job_exited gets hold the state MongoDB holds, as saved then."""
    hooked: list[Any] = []
    seen: list[Any] = []

    async def index(job: Job, signal: AbortSignal) -> str:
        state: dict[str, Any] = {"done": [1], "pair": (1, 2)}
        await job.checkpoint(state)
        state["done"].append(2)  # not saved
        seen.append(job.state)  # the handler's view: as saved too
        job.state["done"].append(3)  # its own copy: not the run's either
        return "ok"

    async def hook(job: Job) -> None:
        hooked.append(job.state)

    p = await make(db, {"index": JobDef(handler=index, resumable=True, on_job_exited=hook)})
    async with p:
        done = await p.run_job("index")
        await wait_for(lambda: bool(hooked))
        stored = await p.get_job(done.id)
    assert done.status == S.FINISHED
    assert stored.state == {"done": [1], "pair": [1, 2]}
    assert done.state == stored.state
    assert hooked == [stored.state]
    assert seen == [{"done": [1, 3], "pair": [1, 2]}]


def test_a_state_that_would_not_be_read_back_is_refused_with_why() -> None:
    """BSON encodes a date past year 9999, which no reader of the job decodes: refused as the
    checkpoint, not stored to break the next run's claim."""
    with pytest.raises(InvalidPayloadError, match="could not be read back"):
        check_state({"at": bson.DatetimeMS(2**62)})
