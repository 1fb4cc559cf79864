"""Final writes: a write alone is made by its caller; writes that come meanwhile are grouped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from job_processor.engine.finals import FinalWrites


class Store:
    """`end_runs` that waits for the test's go, records each batch, and fails items named
    "bad" with their own error."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.go = asyncio.Event()

    async def end_runs(self, items: list[Any], budget: float) -> list[Any]:
        self.batches.append(list(items))
        await self.go.wait()
        return [ValueError(f"{i} failed") if i == "bad" else f"{i} written" for i in items]


async def write_alone(item: str) -> tuple[Store, FinalWrites, asyncio.Task[Any]]:
    """A write alone, started and in flight (its batch recorded, its reply held back)."""
    store = Store()
    finals = FinalWrites(store, budget=1.0)  # type: ignore[arg-type]
    task = asyncio.create_task(finals.write(item, alone=True))  # type: ignore[arg-type]
    while not store.batches:
        await asyncio.sleep(0)
    return store, finals, task


async def test_a_write_alone_is_made_at_once_and_the_next_ones_together() -> None:
    store, finals, first = await write_alone("a")
    assert store.batches == [["a"]]  # made at once, alone
    later = [asyncio.create_task(finals.write(i)) for i in ("b", "bad", "c")]  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.batches == [["a"]]  # waiting for the write in flight
    store.go.set()
    assert await first == "a written"
    assert await later[0] == "b written" and await later[2] == "c written"
    with pytest.raises(ValueError, match="bad failed"):  # its own error, to its own caller
        await later[1]
    assert store.batches == [["a"], ["b", "bad", "c"]]  # one command for the three
    assert finals.flushes == 2
    assert await finals.write("d", alone=True) == "d written"  # nothing in flight: alone again  # type: ignore[arg-type]
    assert store.batches[-1] == ["d"]


async def test_a_write_that_is_not_alone_waits_one_turn_for_the_others() -> None:
    """Runs ending in the same turn of the loop share one command."""
    store = Store()
    store.go.set()
    finals = FinalWrites(store, budget=1.0)  # type: ignore[arg-type]
    got = await asyncio.gather(*(finals.write(i) for i in ("f", "g", "h")))  # type: ignore[arg-type]
    assert got == ["f written", "g written", "h written"]
    assert store.batches == [["f", "g", "h"]]


async def test_a_write_alone_that_fails_raises_to_its_caller_and_the_queue_still_flushes() -> None:
    store, finals, alone = await write_alone("bad")
    queued = asyncio.create_task(finals.write("e"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    store.go.set()
    with pytest.raises(ValueError, match="bad failed"):
        await alone
    assert await queued == "e written"


async def test_the_job_run_job_returns_and_the_hook_gets_holds_the_result_as_stored(
    db: Any,
) -> None:
    """storable() checked the result encodes, then returned it as the handler did: the job
    run_job returned and the one on_job_exited got held (1, 2), Color.RED and microseconds,
    while every reader gets [1, 2], "red" and milliseconds."""
    import datetime as dt
    import enum

    from job_processor import AbortSignal, Job, JobDef
    from tests.helpers import make

    class Color(enum.StrEnum):
        RED = "red"

    at = dt.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    hooked: list[Any] = []

    async def h(job: Job, signal: AbortSignal) -> Any:
        return {"pair": (1, 2), "color": Color.RED, "at": at}

    p = await make(db, {"h": JobDef(handler=h, on_job_exited=lambda job: hooked.append(job))})
    done = await p.run_job("h")
    stored = (await p.get_job(done.id)).result
    assert stored == {"pair": [1, 2], "color": "red", "at": at.replace(microsecond=123000)}
    assert hooked and hooked[0].result == stored
    assert done.result == stored


async def test_a_result_holding_an_out_of_range_bson_datetime_is_not_an_internal_error(
    db: Any,
) -> None:
    """A bson.DatetimeMS past year 9999 encodes but is not read back: the round trip raised
    InvalidBSON, and the job errored with "internal error"."""
    import bson

    from job_processor import AbortSignal, Job, JobDef
    from tests.helpers import make

    far = bson.DatetimeMS(2**62)

    async def h(job: Job, signal: AbortSignal) -> Any:
        return {"until": far}

    p = await make(db, {"h": JobDef(handler=h)})
    done = await p.run_job("h")
    assert "internal error" not in str(done.error), done.error


async def test_a_top_level_str_enum_result_is_held_as_stored_too(db: Any) -> None:
    import enum

    from job_processor import AbortSignal, Job, JobDef
    from tests.helpers import make

    class Color(enum.StrEnum):
        RED = "red"

    hooked: list[Any] = []

    async def h(job: Job, signal: AbortSignal) -> Any:
        return Color.RED

    p = await make(db, {"h": JobDef(handler=h, on_job_exited=lambda job: hooked.append(job))})
    done = await p.run_job("h")
    stored = (await p.get_job(done.id)).result
    assert type(stored) is str and stored == "red"
    assert hooked and type(hooked[0].result) is str and hooked[0].result == "red"
    assert type(done.result) is str and done.result == "red"
