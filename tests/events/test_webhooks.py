"""Webhook deliveries to a real HTTP receiver on 127.0.0.1, through the job engine."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from job_processor import (
    Event,
    InvalidArgumentError,
    JobProcessor,
    WebhookEndpoint,
    WebhookNotFoundError,
    WebhookOptions,
    init_job_processor,
)
from job_processor.core.definitions import Backoff
from job_processor.events.webhooks import generate_secret
from tests.helpers import FAST

from ..receiver import Receiver, Reply, closed_port_url, receiving

SECRET = generate_secret()
QUICK = Backoff(kind="fixed", base_seconds=0.2, jitter=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


async def make(db: Any, logger: Any = None, **options: Any) -> JobProcessor:
    return await init_job_processor(
        db,
        logger=logger,
        webhook_secrets={"crm": SECRET},
        webhook_options=WebhookOptions(
            **({"backoff": QUICK, "max_attempts": 10, "timeout": 2.0} | options)
        ),
        **FAST,
    )


async def delivery(p: JobProcessor, event_id: str, endpoint: WebhookEndpoint) -> Any:
    event = await p.get_event(event_id)
    return next(d for d in event.deliveries if d.target == f"webhook:{endpoint.id}")


async def wait_delivery(
    p: JobProcessor, event_id: str, endpoint: WebhookEndpoint, *states: str, timeout: float = 15
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while (d := await delivery(p, event_id, endpoint)).status not in states:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"delivery is {d.status}, expected {states}")
        await asyncio.sleep(0.05)
    return d


async def test_one_endpoint_down_one_up_then_the_fixed_one_delivers(
    db: Any, receiver: Receiver
) -> None:
    p = await make(db)
    up = await p.webhooks.add(url=receiver.url("/up"), events=["shipped"], secret_ref="crm")
    down = await p.webhooks.add(url=closed_port_url(), events=["*"], secret_ref="crm")
    async with p:
        event = await p.emit("shipped", {"shipment_id": "s1"})
        assert sorted(d.target for d in event.deliveries) == sorted(
            [f"webhook:{up.id}", f"webhook:{down.id}"]
        )
        await wait_delivery(p, event.id, up, "finished")
        # the down endpoint keeps retrying on its own...
        deadline = asyncio.get_running_loop().time() + 10
        while (await delivery(p, event.id, down)).failures < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        # ...while the up one got exactly one delivery
        assert len(receiver.received("/up")) == 1
        failing = await delivery(p, event.id, down)
        assert failing.status in ("pending", "running")
        assert all(a["error"].startswith("ConnectError") for a in failing.attempts[:3])
        # fixing the configuration takes effect at the next attempt
        await p.webhooks.update(down.id, url=receiver.url("/fixed"))
        fixed = await wait_delivery(p, event.id, down, "finished")
    assert fixed.attempts[-1]["status_code"] == 200
    assert len(receiver.received("/fixed")) == 1
    assert len(receiver.received("/up")) == 1
    for request in receiver.received():
        assert request.headers["webhook-id"] == event.id  # stable across retries
        body = Webhook(SECRET).verify(request.body, request.headers)
        assert body["type"] == "shipped"
        assert body["data"] == {"shipment_id": "s1"}


async def test_status_codes_decide_retries(db: Any, receiver: Receiver) -> None:
    p = await make(db)
    gone = await p.webhooks.add(url=receiver.script("/gone", Reply(410)), events=["e"])
    bad = await p.webhooks.add(
        url=receiver.script("/bad", Reply(422, body=b"bad field")), events=["e"]
    )
    busy = await p.webhooks.add(
        url=receiver.script("/busy", Reply(429, {"Retry-After": "1"}), Reply(200)), events=["e"]
    )
    flaky = await p.webhooks.add(
        url=receiver.script("/flaky", Reply(500, body=b"oops"), Reply(503), Reply(204, body=b"")),
        events=["e"],
    )
    async with p:
        event = await p.emit("e", {})
        g = await wait_delivery(p, event.id, gone, "errored")
        b = await wait_delivery(p, event.id, bad, "errored")
        r = await wait_delivery(p, event.id, busy, "finished")
        f = await wait_delivery(p, event.id, flaky, "finished")
    assert g.attempt == 1
    assert "HTTP 410" in (g.error or "")
    assert not (await p.webhooks.get(gone.id)).enabled  # 410 disables the endpoint
    assert b.attempt == 1  # other 4xx: no retry
    assert b.attempts[0]["status_code"] == 422
    assert b.attempts[0]["response_excerpt"] == "bad field"
    assert (await p.webhooks.get(bad.id)).enabled
    assert r.attempt == 2
    first, second = receiver.received("/busy")
    assert second.at - first.at >= 0.9  # Retry-After honoured (the backoff is 0.2 s)
    assert [a["status_code"] for a in f.attempts] == [500, 503, 204]
    assert f.attempts[0]["response_excerpt"] == "oops"
    assert all(isinstance(a["duration_ms"], int) for a in f.attempts)
    # a disabled endpoint gets no more deliveries
    assert f"webhook:{gone.id}" not in [t.target for t in (await p.emit("e", {})).targets]


async def test_consecutive_failed_deliveries_disable_an_endpoint(
    db: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test-webhooks")
    p = await make(db, logger, max_attempts=1, disable_after=2)
    ep = await p.webhooks.add(
        url=receiver.script("/down", Reply(500)), events=["e"], secret_ref="crm"
    )
    with caplog.at_level(logging.INFO, logger="test-webhooks"):
        async with p:
            first = await p.emit("e", {})
            await wait_delivery(p, first.id, ep, "errored")
            assert (await p.webhooks.get(ep.id)).consecutive_failures == 1
            second = await p.emit("e", {})
            await wait_delivery(p, second.id, ep, "errored")
    endpoint = await p.webhooks.get(ep.id)
    assert not endpoint.enabled
    assert endpoint.disabled_reason == "2 consecutive failed deliveries"
    warnings = (await p.get_status()).warnings
    assert any(ep.id in w and "is disabled" in w for w in warnings), warnings
    assert "webhook_endpoint_disabled" in caplog.text
    # the secret never shows: not in logs, not in any stored document
    assert SECRET not in caplog.text
    assert SECRET[6:] not in caplog.text
    for coll in ("job_processor_jobs", "job_processor_events", "job_processor_webhooks"):
        async for doc in db[coll].find({}):
            assert SECRET[6:] not in json.dumps(doc, default=str)
    enabled = await p.webhooks.enable(ep.id)
    assert enabled.enabled and enabled.consecutive_failures == 0


async def test_custom_formats_headers_and_replays(db: Any, receiver: Receiver) -> None:
    def slack(event: Event, endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {"text": f"{event.name}: {event.payload['shipment_id']}"}

    p = await init_job_processor(
        db,
        webhook_secrets={"crm": SECRET},
        webhook_formats={"slack": slack},
        webhook_options={"backoff": QUICK},
        **FAST,
    )
    ep = await p.webhooks.add(
        url=receiver.url("/slack"),
        events=["shipped"],
        format="slack",
        headers={"X-Team": "ops"},
        description="ops channel",
    )
    async with p:
        event = await p.emit("shipped", {"shipment_id": "s9"})
        await wait_delivery(p, event.id, ep, "finished")
        replayed = await p.replay_event(event.id)
        assert [d.target for d in replayed] == [f"webhook:{ep.id}"]
        await receiver.wait("/slack", 2)
    first, again = receiver.received("/slack")
    assert json.loads(first.body) == {"text": "shipped: s9"}
    assert first.headers["x-team"] == "ops"
    assert "webhook-signature" not in first.headers  # no secret_ref: unsigned
    assert again.body == first.body
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == event.id


async def test_managing_endpoints_with_clear_errors(db: Any, receiver: Receiver) -> None:
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="http:// or https://"):
        await p.webhooks.add(url="ftp://example.com/x", events=["e"])
    with pytest.raises(InvalidArgumentError, match="invalid port '99999'"):
        await p.webhooks.add(url="https://example.com:99999/hook", events=["e"])
    kept = await p.webhooks.add(url=receiver.url("/kept"), events=["e"])
    with pytest.raises(InvalidArgumentError, match="a port is a number from 1 to 65535"):
        await p.webhooks.update(kept.id, url="https://example.com:0/hook")
    assert (await p.webhooks.get(kept.id)).url == receiver.url("/kept")  # nothing written
    await p.webhooks.remove(kept.id)
    with pytest.raises(InvalidArgumentError, match="unknown webhook format 'xml'"):
        await p.webhooks.add(url=receiver.url("/x"), events=["e"], format="xml")
    with pytest.raises(InvalidArgumentError, match="unknown secret_ref 'nope'"):
        await p.webhooks.add(url=receiver.url("/x"), events=["e"], secret_ref="nope")
    with pytest.raises(InvalidArgumentError, match="use \\['e'\\]"):
        await p.webhooks.add(url=receiver.url("/x"), events="e")  # type: ignore[arg-type]
    for reserved in ("Webhook-Id", "Transfer-Encoding"):  # the latter: a chunked body framing
        with pytest.raises(InvalidArgumentError, match="cannot be overridden"):
            await p.webhooks.add(url=receiver.url("/x"), events=["e"], headers={reserved: "x"})
    ep = await p.webhooks.add(url=receiver.url("/x"), events=["e"])
    assert [e.id for e in await p.webhooks.list()] == [ep.id]
    assert (await p.webhooks.update(ep.id, events=["f", "g"])).events == ["f", "g"]
    disabled = await p.webhooks.disable(ep.id, reason="maintenance")
    assert (disabled.enabled, disabled.disabled_reason) == (False, "maintenance")
    assert (await p.emit("f", {})).targets == []
    assert (await p.webhooks.enable(ep.id)).enabled
    await p.webhooks.remove(ep.id)
    assert await p.webhooks.list() == []
    with pytest.raises(WebhookNotFoundError, match="no webhook endpoint"):
        await p.webhooks.remove(ep.id)
    with pytest.raises(WebhookNotFoundError, match="not a webhook endpoint id"):
        await p.webhooks.get("nope")


async def test_a_removed_endpoint_stops_its_retries(db: Any, receiver: Receiver) -> None:
    p = await make(db)
    ep = await p.webhooks.add(url=closed_port_url(), events=["e"])
    async with p:
        event = await p.emit("e", {})
        deadline = asyncio.get_running_loop().time() + 10
        while (await delivery(p, event.id, ep)).failures < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await p.webhooks.remove(ep.id)
        ended = await wait_delivery(p, event.id, ep, "errored")
    assert f"webhook endpoint {ep.id} was removed" in (ended.error or "")


async def test_a_timed_out_attempt_is_retried_and_a_success_resets_the_failure_count(
    db: Any, receiver: Receiver
) -> None:
    release = threading.Event()
    p = await make(db, timeout=0.5, max_attempts=2, disable_after=3)
    slow = await p.webhooks.add(
        url=receiver.script("/slow", Reply(200, hold=release), Reply(204)), events=["e"]
    )
    flaky = await p.webhooks.add(
        url=receiver.script("/flaky", Reply(500), Reply(500), Reply(204)), events=["f"]
    )
    try:
        async with p:
            event = await p.emit("e", {})
            done = await wait_delivery(p, event.id, slow, "finished")
            failed = await p.emit("f", {})  # 500 twice: failed for good
            await wait_delivery(p, failed.id, flaky, "errored")
            assert (await p.webhooks.get(flaky.id)).consecutive_failures == 1
            fixed = await p.emit("f", {})  # then 204: the run of failures starts again
            await wait_delivery(p, fixed.id, flaky, "finished")
    finally:
        release.set()
    assert done.attempts[0]["error"] == "timed out after 0.5s"
    assert done.attempts[-1]["status_code"] == 204
    assert done.attempt == 2
    assert (await p.webhooks.get(flaky.id)).consecutive_failures == 0


async def test_a_delivery_retried_by_hand_that_fails_again_counts_again(
    db: Any, receiver: Receiver
) -> None:
    """The endpoint counted a failure once per delivery id (a write sent again after a lost
    reply must count once), so a delivery retried by hand that failed again was never
    counted: an endpoint enabled again was never disabled again. Counted once per run now."""
    p = await make(db, max_attempts=1, disable_after=2)
    ep = await p.webhooks.add(url=receiver.script("/bad", Reply(422)), events=["e"])
    async with p:
        first = await p.emit("e", {"n": 1})
        second = await p.emit("e", {"n": 2})
        d1 = await wait_delivery(p, first.id, ep, "errored")
        d2 = await wait_delivery(p, second.id, ep, "errored")
        assert not (await p.webhooks.get(ep.id)).enabled  # 2 in a row: disabled
        await p.webhooks.enable(ep.id)  # "fixed" (it was not): the operator retries both
        await p.retry_job(d1.job_id or "")
        await p.retry_job(d2.job_id or "")
        for d in (first, second):
            await wait_delivery(p, d.id, ep, "errored")
        got = await p.webhooks.get(ep.id)
    assert len(receiver.received("/bad")) == 4
    assert got.consecutive_failures == 2 and not got.enabled


async def test_a_failed_delivery_sent_to_sentry_holds_no_url_path_token(db: Any) -> None:
    """events.md: errors show an endpoint's scheme, host and port only, never its path or
    query (they may hold a token). The Sentry event of a failed delivery (sentry-sdk's
    default include_local_variables=True) had the full URL in its frames' variables."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sent: list[str] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            sent.extend(json.dumps(i.payload.json) for i in envelope.items if i.type == "event")

    token = "tok_9f8e7d6c5b4a39281706"
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture)
    try:
        p = await make(db, max_attempts=1)
        down = await p.webhooks.add(
            url=closed_port_url(f"/hooks/{token}?key={token}"), events=["*"], secret_ref="crm"
        )
        async with p:
            event = await p.emit("shipped", {"shipment_id": "s1"})
            await wait_delivery(p, event.id, down, "errored")
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    assert sent  # the failed delivery was captured
    assert not [s for s in sent if token in s]


async def test_an_endpoint_stored_oddly_is_delivered_to_or_said_unreadable(
    db: Any, receiver: Receiver
) -> None:
    """`events` stored as one text: emit targets it (MongoDB's `$in` matches a scalar), and the
    delivery failed the sender's strict read with a raw ValidationError, retried until its
    attempts ran out. One text is one name now; an endpoint the sender cannot read at all
    (a url that is no text) errors its delivery at once, saying so."""
    from bson import ObjectId

    p = await make(db)
    good = await p.webhooks.add(url=receiver.url("/good"), events=["e"], secret_ref="crm")
    bad = await p.webhooks.add(url=receiver.url("/bad"), events=["e"], secret_ref="crm")
    hooks = db["job_processor_webhooks"]
    await hooks.update_one({"_id": ObjectId(good.id)}, {"$set": {"events": "e"}})
    await hooks.update_one({"_id": ObjectId(bad.id)}, {"$set": {"url": 7}})
    async with p:
        event = await p.emit("e", {"n": 1})
        sent = await wait_delivery(p, event.id, good, "finished")
        said = await wait_delivery(p, event.id, bad, "errored")
    assert sent.status == "finished" and len(receiver.received("/good")) == 1
    assert f"webhook endpoint {bad.id} is stored unreadable (url)" in (said.error or ""), said
    assert said.failures == 1, said


async def test_a_disabled_endpoint_stored_with_a_malformed_url_is_still_warned_about(
    db: Any, receiver: Receiver
) -> None:
    """A url another program stored (a hand edit, an older version) that Python cannot even
    split (an unbalanced IPv6 bracket): its deliveries fail, saying so, and the endpoint is
    disabled; then `url_host` raised ValueError in `webhook_warnings`, so `get_status()` (the
    `status` command, the dashboard's overview) failed for every caller, as long as it stayed."""
    from bson import ObjectId

    p = await make(db, max_attempts=1, disable_after=1)
    ep = await p.webhooks.add(url=receiver.url("/ok"), events=["e"])
    hooks = db["job_processor_webhooks"]
    await hooks.update_one({"_id": ObjectId(ep.id)}, {"$set": {"url": "https://[::1/hooks"}})
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored")
    assert "not a valid URL" in (d.error or "")
    assert not (await p.webhooks.get(ep.id)).enabled
    warnings = (await p.get_status()).warnings
    assert any(ep.id in w and "is disabled" in w for w in warnings), warnings
