"""Webhook signing, secrets, answers and subscriber declarations (no server)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from job_processor import Subscriber
from job_processor.core.definitions import parse_subscribers
from job_processor.core.errors import InvalidArgumentError, InvalidDefinitionError
from job_processor.core.models import Event, to_jsonable
from job_processor.events.webhooks import (
    Decision,
    WebhookEndpoint,
    check_url,
    classify,
    encode_body,
    generate_secret,
    load_secrets,
    parse_secret,
    retry_after_seconds,
    sign,
    standard_format,
    url_host,
)

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_signatures_verify_with_the_standard_webhooks_library() -> None:
    raw = generate_secret()
    secret = parse_secret("crm", raw)
    body = json.dumps({"type": "shipped", "data": {"é": 1}}, ensure_ascii=False).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "65f0c0ffee0000000000abcd",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "65f0c0ffee0000000000abcd", ts, body),
    }
    assert Webhook(raw).verify(body, headers) == {"type": "shipped", "data": {"é": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)  # another secret
    with pytest.raises(WebhookVerificationError):
        Webhook(raw).verify(body + b" ", headers)  # a changed body


def test_signature_matches_the_spec_computed_independently() -> None:
    # the spec's own test vector (standard-webhooks/spec, "Signature scheme")
    raw = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    ts = 1614265330
    body = b'{"test": 2432232314}'
    got = sign(parse_secret("t", raw), "msg_p5jXN8AQM9LWM0D4loKWxJek", ts, body)
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secrets_come_from_the_argument_or_the_environment_and_never_show() -> None:
    raw = generate_secret()
    env = {"JOB_PROCESSOR_WEBHOOK_SECRETS": json.dumps({"crm": raw})}
    from_env = load_secrets(None, env)
    assert list(from_env) == ["crm"]
    assert raw not in repr(from_env) and raw not in str(from_env["crm"])
    assert list(load_secrets({"other": raw}, env)) == ["other"]  # the argument wins
    assert load_secrets(None, {}) == {}
    with pytest.raises(InvalidDefinitionError, match="invalid JSON at character") as bad_json:
        load_secrets(None, {"JOB_PROCESSOR_WEBHOOK_SECRETS": '{"crm": ' + raw[:10]})
    assert raw[:10] not in str(bad_json.value)
    with pytest.raises(InvalidDefinitionError, match="'crm' must be 'whsec_'") as bad:
        load_secrets({"crm": "hunter2-plain-text"})
    assert "hunter2" not in str(bad.value)
    short = "whsec_" + base64.b64encode(b"short").decode()
    with pytest.raises(InvalidDefinitionError, match="at least 16"):
        load_secrets({"crm": short})


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (200, None, Decision("delivered")),
        (204, None, Decision("delivered")),
        (410, None, Decision("gone")),
        (400, None, Decision("fail")),
        (401, None, Decision("fail")),
        (404, None, Decision("fail")),
        (408, None, Decision("retry")),
        (425, None, Decision("retry")),
        (429, None, Decision("retry")),
        (429, "7", Decision("retry_later", 7.0)),
        (503, "120", Decision("retry_later", 120.0)),
        (503, None, Decision("retry")),
        (500, "5", Decision("retry")),  # Retry-After honoured on 429/503 only
        (502, None, Decision("retry")),
        (301, None, Decision("retry")),
    ],
)
def test_http_answers(status: int, retry_after: str | None, expected: Decision) -> None:
    assert classify(status, retry_after, NOW) == expected


def test_retry_after_as_seconds_or_http_date_capped() -> None:
    assert retry_after_seconds("30", NOW) == 30
    assert retry_after_seconds("Tue, 01 Jan 2030 12:01:00 GMT", NOW) == 60
    assert retry_after_seconds("Tue, 01 Jan 2030 11:00:00 GMT", NOW) == 0  # in the past
    assert retry_after_seconds("999999", NOW) == 3600
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_only_http_and_https_urls() -> None:
    assert check_url("https://example.com/hook?token=abc") == "https://example.com/hook?token=abc"
    for port in ("99999", "0", "http", "-1"):
        with pytest.raises(InvalidArgumentError, match="port is a number from 1 to 65535"):
            check_url(f"https://example.com:{port}/hook?token=abc")
    assert check_url("https://example.com:65535/hook") == "https://example.com:65535/hook"
    for bad in ("ftp://example.com/x", "file:///etc/passwd", "example.com/hook", ""):
        with pytest.raises(InvalidArgumentError, match=r"http:// or https://|URL string"):
            check_url(bad)
    with pytest.raises(InvalidArgumentError, match="url 'http://' has no host: give one"):
        check_url("http://")
    assert url_host("https://user:pw@example.com:8443/a/secret-path?k=v") == (
        "https://example.com:8443"
    )


def test_the_standard_format() -> None:
    event = Event(
        id="65f0c0ffee0000000000abcd",
        name="shipped",
        payload={"at": NOW, "n": 1},
        emitted_at=NOW,
    )
    endpoint = WebhookEndpoint(id="e", url="http://x", events=["*"])
    body = json.loads(encode_body(standard_format(event, endpoint)))
    assert body == {
        "type": "shipped",
        "timestamp": "2030-01-01T12:00:00Z",
        "data": {"at": "2030-01-01T12:00:00+00:00", "n": 1},
    }


def test_webhook_bodies_keep_their_dates_as_receivers_have_always_had_them() -> None:
    """The CLI's and the dashboard's JSON write dates with a Z; a webhook body does not change:
    its data's dates end in +00:00 (a receiver on Python before 3.11 reads them with
    fromisoformat), in the standard format and in a format of the app's own."""
    event = Event(id="65f0c0ffee0000000000abcd", name="shipped", payload={}, emitted_at=NOW)
    own = {"at": NOW, "runs": [{"ended": NOW + dt.timedelta(microseconds=123000)}]}
    assert json.loads(encode_body(own)) == {
        "at": "2030-01-01T12:00:00+00:00",
        "runs": [{"ended": "2030-01-01T12:00:00.123000+00:00"}],
    }
    assert to_jsonable(own)["at"] == "2030-01-01T12:00:00Z"  # what the JSON outputs show
    endpoint = WebhookEndpoint(id="e", url="http://x", events=["*"])
    body = json.loads(
        encode_body(standard_format(event.model_copy(update={"payload": own}), endpoint))
    )
    assert body["data"]["at"] == "2030-01-01T12:00:00+00:00"


async def handler(event: Any, signal: Any) -> None:
    return None


def test_subscriber_declarations_are_checked() -> None:
    subs = parse_subscribers(
        {"shipped": [Subscriber("email", handler=handler), {"name": "crm", "handler": handler}]}
    )
    assert [s.name for s in subs["shipped"]] == ["email", "crm"]
    assert subs["shipped"][0].mode == "async"
    assert subs["shipped"][0].max_attempts == 3
    with pytest.raises(InvalidDefinitionError, match="'mode'"):
        parse_subscribers({"shipped": [{"name": "x", "handler": handler, "mode": "later"}]})
    with pytest.raises(InvalidDefinitionError, match="may not contain ':'"):
        parse_subscribers({"shipped": [{"name": "a:b", "handler": handler}]})
    with pytest.raises(InvalidDefinitionError, match="unique"):
        parse_subscribers({"shipped": [Subscriber("a", handler=handler)] * 2})
    with pytest.raises(InvalidDefinitionError, match="must be a list of Subscriber"):
        parse_subscribers({"shipped": Subscriber("a", handler=handler)})  # type: ignore[dict-item]
    with pytest.raises(InvalidDefinitionError, match=r"must accept \(event, signal\)"):
        parse_subscribers({"shipped": [{"name": "a", "handler": lambda: None}]})


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 1e12, 0])
def test_webhook_options_refuse_a_timeout_that_cannot_be_waited_for(timeout: float) -> None:
    from job_processor.events.webhooks import WebhookOptions

    with pytest.raises(ValueError, match="timeout"):
        WebhookOptions(timeout=timeout)


def test_a_url_python_cannot_split_is_refused_with_a_hint_that_fits() -> None:
    """The IPv6 hint was given for every ValueError of urlsplit, a full-width colon typed in a
    host among them (NFKC makes it a ':'), where brackets have nothing to do with it."""
    with pytest.raises(InvalidArgumentError, match="IPv6 host is written in brackets"):
        check_url("https://[2001:db8::1/hook")
    with pytest.raises(InvalidArgumentError, match="NFKC") as raised:
        check_url("https://hooks.example.com\uff1a8443/hook")
    assert "IPv6" not in str(raised.value)
