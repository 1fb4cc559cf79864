from __future__ import annotations

import datetime as dt

from job_processor.engine.wakeup import DueTimes, wakes_worker

WHEN = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_insert_of_a_pending_job_wakes_at_its_time() -> None:
    change = {
        "operationType": "insert",
        "fullDocument": {"status": "pending", "scheduled_for": WHEN},
    }
    assert wakes_worker(change) == (True, WHEN)
    skipped = {
        "operationType": "insert",
        "fullDocument": {"status": "skipped", "scheduled_for": WHEN},
    }
    assert wakes_worker(skipped)[0] is False


def test_undecodable_events_wake_conservatively() -> None:
    assert wakes_worker({"operationType": "insert", "fullDocument": "raw"}) == (True, None)
    assert wakes_worker({"operationType": "update", "updateDescription": None}) == (True, None)


def test_updates_wake_only_when_a_job_becomes_claimable() -> None:
    def upd(fields: dict[str, object]) -> dict[str, object]:
        return {"operationType": "update", "updateDescription": {"updatedFields": fields}}

    assert wakes_worker(upd({"status": "pending"}))[0] is True  # retry_job
    assert wakes_worker(upd({"status": "pending", "scheduled_for": WHEN})) == (True, WHEN)
    assert wakes_worker(upd({"status": "paused"}))[0] is True  # a recovered resumable job
    assert wakes_worker(upd({"status": "finished"}))[0] is False
    assert wakes_worker(upd({"state": {"i": 1}}))[0] is False  # a checkpoint
    assert wakes_worker({"operationType": "delete"})[0] is False


def test_due_times_keep_the_earliest_and_are_bounded() -> None:
    due = DueTimes(limit=3)
    sec = dt.timedelta(seconds=1)
    assert due.add(WHEN + 5 * sec) is True
    assert due.add(WHEN + 9 * sec) is False
    assert due.add(WHEN + 2 * sec) is True  # the new earliest: the sleeper re-arms
    due.add(WHEN + 7 * sec)  # the latest (9 s) is dropped: polling finds it
    assert len(due) == 3
    assert due.next_after(WHEN) == WHEN + 2 * sec
    assert not due.passed(WHEN + sec)
    assert due.passed(WHEN + 3 * sec)
    assert due.next_after(WHEN + 3 * sec) == WHEN + 5 * sec  # passed times are dropped
    assert len(due) == 2


def test_watch_refusals_switch_streams_off_but_other_errors_do_not() -> None:
    from pymongo.errors import AutoReconnect, OperationFailure

    from job_processor.engine.wakeup import refuses_streams

    not_a_replica_set = OperationFailure(
        "The $changeStream stage is only supported on replica sets", 40573
    )
    assert refuses_streams(not_a_replica_set)
    assert refuses_streams(NotImplementedError())  # mongomock
    assert not refuses_streams(OperationFailure("resume point no longer in the oplog", 286))
    assert not refuses_streams(AutoReconnect("primary stepped down"))


def test_the_stream_is_filtered_on_the_server_where_it_can_be() -> None:
    from job_processor.storage import ServerProfile
    from job_processor.storage.jobs import JobStore

    real = JobStore(None, ServerProfile("mongodb")).wake_pipeline()
    match = real[0]["$match"]["$or"]
    assert {"operationType": "insert", "fullDocument.claim_name": {"$exists": True}} in match
    assert {
        "operationType": "update",
        "updateDescription.updatedFields.claim_name": {"$exists": True},
    } in match
    nx = JobStore(None, ServerProfile("nx-27017")).wake_pipeline()  # no $or there
    assert nx == [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]


async def test_a_stream_that_fails_is_reopened_and_the_worker_woken() -> None:
    import asyncio

    from pymongo.errors import OperationFailure

    from job_processor import FakeClock
    from job_processor.core.log import make_log
    from job_processor.engine.wakeup import ChangeStreamWaker

    class Stream:
        def __init__(self, fail: bool) -> None:
            self.fail, self.alive = fail, True

        async def try_next(self) -> object:
            await asyncio.sleep(0)
            if self.fail:
                raise OperationFailure("resume of change stream was not possible", 280)
            await asyncio.Event().wait()  # a healthy, idle, blocking stream
            return None

        async def close(self) -> None:
            self.alive = False

    class Store:
        def __init__(self) -> None:
            self.opened: list[Stream] = []

        async def watch(self, max_await_ms: int) -> Stream:
            self.opened.append(Stream(fail=not self.opened))
            return self.opened[-1]

        async def close_stream(self, stream: Stream) -> None:
            await stream.close()

    class Worker:
        def __init__(self) -> None:
            self.wake, self.idle = asyncio.Event(), asyncio.Event()
            self.idle.set()

        def wake_at(self, when: object) -> None: ...

    store, worker, clock = Store(), Worker(), FakeClock()
    waker = ChangeStreamWaker(store, worker, clock, make_log(None), max_await=1.0)
    task = asyncio.create_task(waker.loop())
    while not worker.wake.is_set():
        await asyncio.sleep(0)
    assert waker.reopened == 1  # wake-ups stay on...
    while clock.sleepers == 0:  # it waits a moment before reopening
        await asyncio.sleep(0)
    clock.advance(1)
    while len(store.opened) < 2 or not waker.active:
        await asyncio.sleep(0)
    assert store.opened[0].alive is False  # ...on a fresh stream
    waker.stop_event.set()
    await asyncio.wait_for(task, 1)


def test_an_operators_run_now_wakes_at_the_new_time() -> None:
    change = {
        "operationType": "update",
        "updateDescription": {"updatedFields": {"due_ms": 1, "scheduled_for": WHEN}},
    }
    assert wakes_worker(change) == (True, WHEN)


async def test_a_stream_is_not_opened_where_it_could_never_beat_the_poll() -> None:
    """On a server known not to block (nx-27017), a stream read once per `max_await` cannot
    wake a worker that polls at least that often: it is not opened. Elsewhere a quick answer
    (a real server's, right after it resumed from a network error) never closes the stream."""
    import asyncio

    from job_processor import FakeClock
    from job_processor.core.log import make_log
    from job_processor.engine.wakeup import ChangeStreamWaker

    class Stream:
        alive = True

        async def try_next(self) -> object:
            await asyncio.sleep(0)
            return None  # at once, with nothing

    class Store:
        def __init__(self) -> None:
            self.opened, self.closed = 0, 0

        async def watch(self, max_await_ms: int) -> Stream:
            self.opened += 1
            return Stream()

        async def close_stream(self, stream: Stream) -> None:
            self.closed += 1

    class Worker:
        def __init__(self) -> None:
            self.wake, self.idle = asyncio.Event(), asyncio.Event()
            self.idle.set()

        def wake_at(self, when: object) -> None: ...

    log, clock = make_log(None), FakeClock()
    store = Store()
    nx = ChangeStreamWaker(store, Worker(), clock, log, 10.0, poll_interval=2.0, stream_waits=False)
    await asyncio.wait_for(nx.loop(), 1)  # returns by itself
    assert store.opened == 0 and nx.blocking is False and not nx.active

    for waits, poll in ((True, 2.0), (False, 30.0)):  # a real server; or a longer poll
        store = Store()
        waker = ChangeStreamWaker(
            store, Worker(), clock, log, 10.0, poll_interval=poll, stream_waits=waits
        )
        task = asyncio.create_task(waker.loop())
        for _ in range(3):  # answered at once each time: throttled, never closed
            while clock.sleepers == 0:
                await asyncio.sleep(0)
            assert waker.active and waker.blocking is False
            clock.advance(10)
            await asyncio.sleep(0)
        assert (store.opened, store.closed) == (1, 0)
        waker.stop_event.set()
        await asyncio.wait_for(task, 1)


def test_a_status_another_program_wrote_as_a_list_or_a_document_wakes_no_one() -> None:
    """Unhashable there (it used to raise TypeError in the claim loop's wake-up source)."""
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    for status in (["pending"], {"s": "pending"}):
        insert = {
            "operationType": "insert",
            "fullDocument": {"status": status, "scheduled_for": when},
        }
        update = {
            "operationType": "update",
            "updateDescription": {"updatedFields": {"status": status}},
        }
        assert wakes_worker(insert) == (False, when)
        assert wakes_worker(update) == (False, None)


def test_a_time_asked_for_again_and_again_never_crowds_out_the_others() -> None:
    """A rate-full per-tenant key asks for its window's end at every claim round: each copy
    was kept, and 1,000 of them dropped every later due time (a job scheduled for later then
    waited for the next poll)."""
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    due = DueTimes()
    assert due.add(t0 + dt.timedelta(seconds=7))
    assert due.add(t0 + dt.timedelta(seconds=5))
    for _ in range(2000):
        assert not due.add(t0 + dt.timedelta(seconds=5))
    assert len(due) == 2
    assert due.next_after(t0 + dt.timedelta(seconds=5.5)) == t0 + dt.timedelta(seconds=7)
