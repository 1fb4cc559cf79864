"""What a webhook endpoint and an event's body accept (an outside review's findings, each
failing before its fix): every value a stored payload can hold reaches a receiver as JSON, a
custom format's NaN is a failed attempt rather than a body no parser reads, a malformed URL is
an InvalidArgumentError, and a receiver's answer that echoes the URL's path keeps its token out
of errors and logs."""

from __future__ import annotations

import json
import re
from typing import Any

import bson
import pytest

from job_processor import InvalidArgumentError
from job_processor.events.webhooks import encode_body, without_url_secrets
from tests.events.test_webhooks import make, receiver, wait_delivery  # noqa: F401
from tests.receiver import Receiver, Reply


@pytest.mark.parametrize(
    "value",
    [re.compile("^sku-[0-9]+$"), bson.Regex("^a"), bson.Timestamp(1700000000, 1), bson.MinKey()],
    ids=["re.Pattern", "bson.Regex", "bson.Timestamp", "MinKey"],
)
async def test_every_value_a_stored_payload_holds_reaches_a_receiver_as_json(
    receiver: Receiver,  # noqa: F811
    value: Any,
) -> None:
    """emit() stores any BSON value; the standard format could not encode some, so every
    attempt failed before anything was sent, was retried, and disabled a healthy endpoint.
    They go as MongoDB's Extended JSON. (On mongomock: nx-27017 cannot store these types.)"""
    from mongomock_motor import AsyncMongoMockClient

    db = AsyncMongoMockClient(tz_aware=True)["unjsonable"]
    p = await make(db, max_attempts=3, disable_after=1)
    ep = await p.webhooks.add(url=receiver.url("/ok"), events=["e"])
    async with p:
        event = await p.emit("e", {"v": value})
        d = await wait_delivery(p, event.id, ep, "finished", "errored")
        got = await p.webhooks.get(ep.id)
    assert (d.status, len(receiver.received("/ok"))) == ("finished", 1), (d.error or "")[:300]
    assert got.enabled
    sent = json.loads(receiver.received("/ok")[0].body)["data"]["v"]
    assert isinstance(sent, dict) and next(iter(sent)).startswith("$"), sent


TOKEN = "tok_9f8e7d6c5b4a"


async def test_the_path_token_stays_out_of_errors_and_logs(
    db: Any,
    receiver: Receiver,  # noqa: F811
    capsys: Any,
) -> None:
    path = f"/hooks/{TOKEN}"
    page = Reply(404, body=f"Cannot POST {path}".encode())
    p = await make(db, max_attempts=1)
    ep = await p.webhooks.add(url=receiver.script(path, page), events=["e"])
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored")
    logged = [line for line in capsys.readouterr().out.splitlines() if TOKEN in line]
    in_error = TOKEN in (d.error or "")
    assert (in_error, logged) == (False, []), (d.error or "").splitlines()[0]


@pytest.mark.parametrize("url", ["http://[::1", "https://[fe80::1/hooks", "http://h]/x"])
async def test_a_malformed_url_is_refused_with_invalid_argument_error(db: Any, url: str) -> None:
    """docs/events.md: "a URL must be http(s) with a host ...: checked by add and update";
    every other bad URL raises InvalidArgumentError (what callers, the dashboard's forms,
    catch); an unbalanced IPv6 bracket escapes as urllib's bare ValueError."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError):
        await p.webhooks.add(url=url, events=["e"])
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"])
    with pytest.raises(InvalidArgumentError):
        await p.webhooks.update(ep.id, url=url)


def test_a_format_returning_nan_is_a_failed_attempt_not_a_body_no_parser_reads() -> None:
    """A format "returns a dict (sent as JSON)": one holding NaN or infinity was sent as
    `NaN`, which is not JSON (the receiver refused the signed body). It is refused when
    encoded, which the sender records as a failed attempt naming the format."""
    with pytest.raises(ValueError, match="JSON"):
        encode_body({"ratio": float("nan"), "max": float("inf")})


def test_an_answer_echoing_the_url_loses_its_path_and_query() -> None:
    url = f"https://hooks.example.com/in/{TOKEN}?sig=abcdef123456"
    said = f"Cannot POST /in/{TOKEN}?sig=abcdef123456; token {TOKEN}; /in/tok_9f8e7d6c5b4a"
    cleaned = without_url_secrets(said, url)
    assert TOKEN not in cleaned and "abcdef123456" not in cleaned, cleaned
    assert cleaned.startswith("Cannot POST …")


LONG_TOKEN = "tok_0123456789abcdef0123456789abcd"  # 34 characters


async def test_a_token_cut_at_the_excerpts_read_bound_does_not_show_after_masking(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """`_send` cuts the answer at 400 characters, masks the URL's path pieces, then keeps 200.
    Masking shrinks the text, so the start of a token that straddled the 400-character cut
    (not a whole piece: not masked) moves into the 200 kept, and is recorded and logged."""
    path = f"/in/{LONG_TOKEN}"
    line = f"Cannot POST {path}\n"
    body = "x" * 12 + line * 8  # 51-char lines: the 8th echo's token starts at 385, cut at 400
    p = await make(db, max_attempts=1)
    ep = await p.webhooks.add(
        url=receiver.script(path, Reply(404, body=body.encode())), events=["e"]
    )
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored")
    excerpts = [a.get("response_excerpt") or "" for a in d.attempts]
    shown = "\n".join([*excerpts, d.error or ""])
    assert LONG_TOKEN[:12] not in shown, [e[-60:] for e in excerpts]


def test_an_answer_echoing_the_decoded_query_loses_it_too() -> None:
    """A SAS-style signature is percent-encoded in the URL (`sig=ab%2Fcd%2Bef%3D...`); a
    receiver that echoes the parameter echoes it decoded. Only the raw and the re-quoted
    forms are masked, so the decoded signature reaches errors and logs."""
    from job_processor.events.webhooks import without_url_secrets

    url = "https://logic.example.net/workflows/run?sv=1.0&sig=Zm9v%2Fbar%2Bbaz%3D%3D12345"
    said = "401: the signature Zm9v/bar+baz==12345 is not valid"
    assert "Zm9v/bar+baz==12345" not in without_url_secrets(said, url)


@pytest.mark.parametrize("description", [123, {"team": "ops"}, "x" * 1001])
async def test_a_description_that_is_not_a_short_text_is_refused_before_anything_is_stored(
    db: Any, description: Any
) -> None:
    """webhooks.add stored the endpoint, then raised pydantic's ValidationError reading it
    back; from then on webhooks.list() raised for every caller (the CLI's `webhooks list`,
    the dashboard), and each event it listens to got a delivery that failed every attempt."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="description"):
        await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], description=description)
    assert await p.webhooks.list() == []
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], description="CRM")
    with pytest.raises(InvalidArgumentError, match="description"):
        await p.webhooks.update(ep.id, description=description)
    assert [(e.id, e.description) for e in await p.webhooks.list()] == [(ep.id, "CRM")]


async def test_enabled_must_be_a_bool(db: Any) -> None:
    """webhooks.add(enabled="no") stored an enabled endpoint (any truthy value enabled it)."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="enabled must be True or False"):
        await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], enabled="no")  # type: ignore[arg-type]
    assert await p.webhooks.list() == []


@pytest.mark.parametrize("reason", [503, "", "x" * 1001])
async def test_a_disable_reason_that_is_not_a_short_text_is_refused_before_anything_is_stored(
    db: Any, reason: Any
) -> None:
    """disable(reason=...) stored the reason unchecked: an int was written, then reading the
    endpoint back raised pydantic's ValidationError, and from then on webhooks.list(), get()
    and the status pages' webhook warnings raised for every caller."""
    p = await make(db)
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"])
    with pytest.raises(InvalidArgumentError, match="reason"):
        await p.webhooks.disable(ep.id, reason=reason)
    assert [(e.id, e.enabled) for e in await p.webhooks.list()] == [(ep.id, True)]
    assert not (await p.webhooks.disable(ep.id, reason="maintenance")).enabled


async def test_a_disable_reason_mongodb_cannot_store_is_refused_as_an_argument(db: Any) -> None:
    """A reason holding a lone surrogate (what surrogateescape decoding gives) reached the
    driver, whose BSON encoder raised its own UnicodeEncodeError."""
    p = await make(db)
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"])
    with pytest.raises(InvalidArgumentError, match="reason"):
        await p.webhooks.disable(ep.id, reason="bad \udcff byte")
    assert [(e.id, e.enabled) for e in await p.webhooks.list()] == [(ep.id, True)]


async def test_a_description_mongodb_cannot_store_is_refused_as_an_argument(db: Any) -> None:
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="description"):
        await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], description="\udcff")
    assert await p.webhooks.list() == []


@pytest.mark.parametrize(
    "formats",
    [{"slack": "not a function"}, {"": lambda e, ep: {}}, {1: lambda e, ep: {}}, ["slack"]],
    ids=["not-callable", "empty-name", "non-text-name", "a-list"],
)
async def test_webhook_formats_are_checked_by_init_as_register_format_checks_them(
    db: Any, formats: Any
) -> None:
    """A format that is no function was accepted: every attempt then failed ("'str' object is
    not callable"), retried, and counted toward disabling the endpoint."""
    from job_processor import InvalidDefinitionError, init_job_processor
    from tests.helpers import FAST

    with pytest.raises(InvalidDefinitionError, match="webhook_formats"):
        await init_job_processor(db, webhook_formats=formats, **FAST)


async def test_an_endpoint_is_made_unsigned_again_by_secret_ref_none(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    """update(secret_ref=None) was ignored (None read as "not given"): a signed endpoint could
    be made unsigned only by removing it (a new id). None now removes it, as for description;
    a field not given is kept."""
    p = await make(db)
    ep = await p.webhooks.add(
        url=receiver.url("/x"), events=["e"], secret_ref="crm", description="CRM"
    )
    kept = await p.webhooks.update(ep.id, events=["e", "f"])
    assert (kept.secret_ref, kept.description) == ("crm", "CRM")
    updated = await p.webhooks.update(ep.id, secret_ref=None, description=None)
    assert (updated.secret_ref, updated.description) == (None, None)
    assert (await p.webhooks.get(ep.id)).secret_ref is None


async def test_endpoint_events_refuse_a_name_no_emit_can_carry(db: Any) -> None:
    """emit refuses an event name holding '|', so an endpoint listening to one could never
    receive anything (it was stored, listed enabled, and named among the known events)."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError):
        await p.emit("order|placed", {})
    with pytest.raises(InvalidArgumentError, match=r"\|"):
        await p.webhooks.add(url="https://example.com/hooks", events=["order|placed"])
    ep = await p.webhooks.add(url="https://example.com/hooks", events=["order_placed"])
    with pytest.raises(InvalidArgumentError, match=r"\|"):
        await p.webhooks.update(ep.id, events=["order|placed"])
    assert (await p.webhooks.get(ep.id)).events == ["order_placed"]


async def test_an_event_name_bson_cannot_store_is_refused_with_a_clear_error(db: Any) -> None:
    """A lone surrogate (an event name read from a non-UTF-8 argv or file name): emit and
    webhooks.add raised a raw UnicodeEncodeError from bson, naming neither the event nor what
    is wrong."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="event name"):
        await p.emit("order\udcffplaced", {})
    with pytest.raises(InvalidArgumentError, match="event name"):
        await p.webhooks.add(url="https://example.com/hooks", events=["order\udcffplaced"])


async def test_an_events_key_an_endpoints_url_and_a_subscriber_name_bson_cannot_store(
    db: Any,
) -> None:
    """A lone surrogate in emit's key, an endpoint's url or a subscriber's name reached bson,
    which raised a raw UnicodeEncodeError naming neither the argument nor the fix."""
    from job_processor import InvalidDefinitionError, Subscriber, init_job_processor

    p = await make(db)
    async with p:
        with pytest.raises(InvalidArgumentError, match="key"):
            await p.emit("order_placed", {}, key="order-\udcff1")
    with pytest.raises(InvalidArgumentError, match="url"):
        await p.webhooks.add(url="https://example.com/hooks/\udcff", events=["order_placed"])
    ep = await p.webhooks.add(url="https://example.com/hooks", events=["order_placed"])
    with pytest.raises(InvalidArgumentError, match="url"):
        await p.webhooks.update(ep.id, url="https://example.com/hooks/\udcff")

    async def mail(event: Any, signal: Any) -> None:
        return None

    with pytest.raises(InvalidDefinitionError, match="subscriber name"):
        await init_job_processor(db, subscribers={"order_placed": [Subscriber("mail\udcff", mail)]})


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in\n",
        "https://hooks.example.com/in\r\n",
        "http://host\t/in",
        "https://hooks.example.com/a\x7fb",
    ],
    ids=["trailing-newline", "trailing-crlf", "tab", "DEL"],
)
async def test_a_url_with_a_control_character_is_refused_when_added_or_updated(
    db: Any, url: str
) -> None:
    """urlsplit drops tabs and newlines: such a URL was stored, and every attempt failed
    (httpx refuses it), counting toward disabling the endpoint."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="control character"):
        await p.webhooks.add(url=url, events=["e"])
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"])
    with pytest.raises(InvalidArgumentError, match="control character"):
        await p.webhooks.update(ep.id, url=url)


@pytest.mark.parametrize(
    "stored",
    [f"https://hooks.example.com/hooks/{TOKEN}?key={TOKEN}\n", f"https:///hooks/{TOKEN}"],
    ids=["trailing-newline", "no-host"],
)
async def test_a_stored_url_refused_at_send_time_keeps_its_token_out_of_errors_and_logs(
    db: Any, capsys: Any, stored: str
) -> None:
    """events.md: the URL is checked again at send time, and errors show an endpoint's
    scheme, host and port only. A url another program stored (or one stored before add
    refused control characters) failed that check with check_url's message, which quotes the
    whole url: its path and query token went into the delivery's error, its attempt record
    and the worker's log."""
    from bson import ObjectId

    p = await make(db, max_attempts=1)
    ep = await p.webhooks.add(url="https://hooks.example.com/x", events=["e"])
    await db["job_processor_webhooks"].update_one(
        {"_id": ObjectId(ep.id)}, {"$set": {"url": stored}}
    )
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored")
    assert "control character" in (d.error or "") or "has no host" in (d.error or ""), d.error
    logged = [line for line in capsys.readouterr().out.splitlines() if TOKEN in line]
    shown = [TOKEN in (d.error or ""), [a for a in d.attempts if TOKEN in str(a)], logged]
    assert shown == [False, [], []], (d.error or "").splitlines()[0]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}\n"},
        {"X-Team": "ops\r\nX-Injected: 1"},
        {"X-Team": " ops"},
        {"X-Team": "o\x00ps"},
        {"X Team": "ops"},
        {"": "ops"},
        {"X-Team:": "ops"},
        {"X-Team": "caf\u00e9"},  # httpx sends ASCII only: UnicodeEncodeError, every attempt
    ],
    ids=[
        "trailing-newline",
        "crlf",
        "leading-space",
        "nul",
        "space-in-name",
        "empty-name",
        "colon",
        "non-ascii-value",
    ],
)
async def test_a_header_no_request_can_carry_is_refused_when_added_or_updated(
    db: Any, headers: dict[str, str]
) -> None:
    """A header HTTP cannot carry (a value with a trailing newline read from a file, a name
    with a space) was stored, and every attempt failed before anything was sent, retried with
    the backoff and counted toward disabling the endpoint, its error quoting the value (a
    credential, often). Refused as a url with a control character is, without the value."""
    p = await make(db)
    with pytest.raises(InvalidArgumentError, match="header") as raised:
        await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], headers=headers)
    assert TOKEN not in str(raised.value)
    assert await p.webhooks.list() == []
    ep = await p.webhooks.add(url="http://127.0.0.1:9/h", events=["e"], headers={"X-A": "1"})
    with pytest.raises(InvalidArgumentError, match="header"):
        await p.webhooks.update(ep.id, headers=headers)
    assert (await p.webhooks.get(ep.id)).headers == {"X-A": "1"}


async def test_headers_http_carries_are_sent_as_given(
    db: Any,
    receiver: Receiver,  # noqa: F811
) -> None:
    p = await make(db)
    headers = {"X-Team": "ops and\tdev", "X-Empty": "", "X-Odd_Name!": "v"}
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"], headers=headers)
    async with p:
        event = await p.emit("e", {})
        await wait_delivery(p, event.id, ep, "finished")
    got = receiver.received("/h")[0].headers
    assert [got.get(k.lower()) for k in headers] == list(headers.values())


@pytest.mark.parametrize(
    "stored",
    [{"Authorization": f"Bearer {TOKEN}\n"}, {"Transfer-Encoding": "chunked"}],
    ids=["trailing-newline", "transfer-encoding"],
)
async def test_a_header_stored_before_add_refused_it_is_refused_at_send_time_unquoted(
    db: Any,
    receiver: Receiver,  # noqa: F811
    capsys: Any,
    stored: dict[str, str],
) -> None:
    """An endpoint an older version stored (before add and update checked headers) or another
    program wrote: the sender did not check its headers again, as it checks its url. A value
    with a newline failed every attempt with httpx's error quoting it ("Illegal header value
    b'Bearer tok_...'"): the credential went into the delivery's error, its attempt record
    and the worker's log; a stored Transfer-Encoding was sent, its receiver reading a chunked
    framing (with no end) as the body. Both are now the attempt's error, naming the header,
    not its value; nothing is sent. The endpoint can still be listed, updated and removed."""
    from bson import ObjectId

    p = await make(db, max_attempts=1)
    ep = await p.webhooks.add(url=receiver.url("/h"), events=["e"])
    hooks = db["job_processor_webhooks"]
    await hooks.update_one({"_id": ObjectId(ep.id)}, {"$set": {"headers": stored}})
    async with p:
        event = await p.emit("e", {})
        d = await wait_delivery(p, event.id, ep, "errored", "finished")
    name = next(iter(stored))
    assert d.status == "errored" and f"header {name!r}" in (d.error or ""), d.error
    assert receiver.received("/h") == []
    logged = [line for line in capsys.readouterr().out.splitlines() if TOKEN in line]
    shown = [TOKEN in (d.error or ""), [a for a in d.attempts if TOKEN in str(a)], logged]
    assert shown == [False, [], []], (d.error or "").splitlines()[0]
    assert [e.headers for e in await p.webhooks.list()] == [stored]
    assert (await p.webhooks.update(ep.id, description="old")).headers == stored
    assert (await p.webhooks.update(ep.id, headers={"X-A": "1"})).headers == {"X-A": "1"}
    await p.webhooks.remove(ep.id)
