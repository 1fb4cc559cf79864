"""A JobClient is one per process, shared by every request thread (producers.md: "it is
thread-safe"). A name the registry read does not hold has the registry read again: the shared
read is replaced, never cleared (a version that set it to None for the re-read let another
thread, between its check of it and its use, read None: a TypeError from schedule_job)."""

from __future__ import annotations

import sys
import threading
import time as real_time
from typing import Any

import pytest
from pymongo.database import Database

from job_processor.engine import jobs_api
from job_processor.sync import JobClient


def test_two_threads_scheduling_unregistered_names_never_see_a_cleared_registry(
    sync_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = JobClient(sync_db)
    client.schedule_job("warm-up")  # makes the processor, reads the registry once
    processor = client._processor("schedule_job")
    monkeypatch.setattr(jobs_api, "REGISTRY_MISS_TTL", -1.0)  # every miss: read again

    a_held, b_cleared, a_done = threading.Event(), threading.Event(), threading.Event()

    class Clock:
        """jobs_api's `time`, holding thread A just after it found `_registry` set (line 84)
        until thread B has cleared it (the interleaving the GIL may produce at any bytecode)."""

        def monotonic(self) -> float:
            caller = sys._getframe(1).f_code.co_name
            me = threading.current_thread().name
            if me == "A" and caller == "_templates" and not a_held.is_set():
                a_held.set()
                b_cleared.wait(10)
            if me == "B" and caller == "_registry_rows" and processor._registry is None:
                b_cleared.set()
                a_done.wait(10)  # B's read would otherwise set it again first
            return real_time.monotonic()

    monkeypatch.setattr(jobs_api, "time", Clock())
    errors: dict[str, BaseException] = {}

    def schedule(name: str) -> None:
        try:
            client.schedule_job(name)
        except BaseException as exc:
            errors[threading.current_thread().name] = exc
        finally:
            if threading.current_thread().name == "A":
                a_done.set()
                a_held.set()
            else:
                b_cleared.set()

    a = threading.Thread(target=schedule, args=("ghost-a",), name="A")
    a.start()
    assert a_held.wait(10)  # A holds after its check of `_registry` (or is done)
    b = threading.Thread(target=schedule, args=("ghost-b",), name="B")
    b.start()
    a.join(20)
    b.join(20)
    assert errors == {}, errors
