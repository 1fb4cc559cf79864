"""Events on their fault paths (an outside review's findings, each failing before its fix):
a serial chain never stops for good on an outage in the step that starts its next delivery."""

from __future__ import annotations

from typing import Any

from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, Event, Subscriber
from tests.events.test_events import make, wait_delivered


async def test_an_outage_as_a_chain_starts_its_next_delivery_only_delays_it(db: Any) -> None:
    """The hook that creates the next delivery of a serial chain fails once (MongoDB
    unreachable): it stays owed and a live worker's next sweep calls it again, so "b" runs
    (the hook used to be recorded failed, and "b" waited for ever: a finished delivery cannot
    be retried)."""
    ran: list[str] = []

    def record(name: str) -> Any:
        async def handler(event: Event, signal: AbortSignal) -> None:
            ran.append(name)

        return handler

    subs = {
        "shipped": [
            Subscriber("a", handler=record("a"), mode="serial"),
            Subscriber("b", handler=record("b"), mode="serial"),
        ]
    }
    p = await make(db, subs)
    real, blips = p.storage.deliveries.create, []

    async def flaky(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not blips:  # the first, after the emit: the hook's insert of "b"
            blips.append(1)
            raise AutoReconnect("connection reset (test)")
        return await real(docs)

    async with p:
        event = await p.emit("shipped", {})
        p.storage.deliveries.create = flaky  # type: ignore[method-assign]
        shown = await wait_delivered(p, event.id, "a", "b")
    assert blips == [1] and ran == ["a", "b"]
    assert [d.status for d in shown.deliveries] == ["finished", "finished"]
    head = await p.get_job(shown.deliveries[0].job_id or "")
    assert head.exit_hook == "done"
