"""Webhooks: endpoints stored in MongoDB, signed HTTP deliveries, one delivery job per endpoint.

- Endpoints (`processor.webhooks.add/update/disable/enable/remove/list`) live in
  `<prefix>webhooks`: url (http or https only), events (names, or ["*"]), format, secret_ref,
  headers, enabled, description. A secret is never stored there, only its reference.
- Secrets: `init_job_processor(webhook_secrets={"crm": "whsec_..."})`, else the JSON object in
  `JOB_PROCESSOR_WEBHOOK_SECRETS`. Each is "whsec_" + base64, as the Standard Webhooks spec
  says. They never appear in logs, job documents or error messages.
- Each event makes one "webhook-delivery" job per matching enabled endpoint (see `bus.py`),
  retried on its own. Every attempt reads the endpoint and the secret afresh and builds the
  payload with the endpoint's format (`"standard"`, or one registered with `webhook_formats=`),
  so a configuration fixed between attempts takes effect.
- Signing (https://www.standardwebhooks.com): headers `webhook-id` (the event id: stable across
  retries and replays), `webhook-timestamp` (seconds, this attempt), `webhook-signature`
  ("v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>").
- Answers: 2xx delivered; 410 disables the endpoint; other 4xx except 408/425/429 fail without
  retry; 429/503 honour Retry-After; 3xx, 5xx, timeouts and connection errors retry with the
  backoff. An endpoint whose deliveries fail for good `disable_after` times in a row is
  disabled (log event `webhook_endpoint_disabled`, and a warning in get_status()).

This module holds the rules and the endpoint API; `webhook_sender.py` sends.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from bson import ObjectId
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.clock import Clock, as_utc, iso_utc
from ..core.definitions import Backoff, Checked, check_event_name, not_a_bool
from ..core.errors import (
    InvalidArgumentError,
    InvalidDefinitionError,
    JobProcessorError,
    WebhookNotFoundError,
)
from ..core.lenient import read_leniently, texts
from ..core.log import EventLog, make_log
from ..core.models import Event, to_jsonable
from ..core.values import is_utf8
from ..storage import Storage
from .answers import RETRY_AFTER_CAP as RETRY_AFTER_CAP
from .answers import Decision as Decision
from .answers import Verdict as Verdict
from .answers import classify as classify
from .answers import retry_after_seconds as retry_after_seconds
from .secrets import SECRET_PREFIX as SECRET_PREFIX  # re-exported: their home before
from .secrets import SECRETS_ENV as SECRETS_ENV  # events/secrets.py
from .secrets import Secret as Secret
from .secrets import generate_secret as generate_secret
from .secrets import load_secrets as load_secrets
from .secrets import parse_secret as parse_secret
from .secrets import sign as sign

Doc = dict[str, Any]

#: Characters of the response body kept per attempt.
EXCERPT_CHARS = 200
#: Attempt records kept on a delivery.
ATTEMPTS_KEPT = 20
#: An endpoint's description, at most (characters).
MOST_DESCRIPTION = 1000
#: Headers we set; an endpoint's own headers may not override them.
RESERVED_HEADERS = frozenset(
    # and the body's framing: a receiver read `chunked` framing as the body (signatures failed)
    {"webhook-id", "webhook-timestamp", "webhook-signature"}
    | {"content-type", "content-length", "transfer-encoding"}
)
USER_AGENT = "job-processor-webhooks/0.1"
#: A header name HTTP can carry (RFC 9110's token).
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")


class WebhookError(JobProcessorError):
    """A webhook attempt that failed and will be retried (with the backoff)."""


class WebhookOptions(Checked):
    """How this process delivers webhooks: `init_job_processor(webhook_options=...)`. Built
    directly, bad input raises InvalidDefinitionError naming the field (as JobDef does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=10, ge=1, le=2**63 - 1)
    """Attempts per delivery (set on the delivery when the event is emitted)."""
    backoff: Backoff = Backoff(kind="exponential", base_seconds=10, max_seconds=3600)
    """Delay between attempts: 10 s, 20 s, 40 s, ... capped at an hour, with jitter."""
    timeout: float = Field(default=10.0, gt=0, le=24 * 3600, allow_inf_nan=False)
    """Seconds for connecting, sending, and each read of the answer (at most a day)."""
    disable_after: int | None = Field(default=20, ge=1)
    """Disable an endpoint after this many deliveries in a row failed for good (None: never)."""
    deliver: bool = True
    """False: this process never claims webhook deliveries (it can still emit and manage)."""

    _numbers = field_validator("max_attempts", "timeout", "disable_after", mode="before")(
        not_a_bool
    )


class Unset:
    """An argument not given (None is a value: `update(secret_ref=None)` removes it)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def check_formats(given: Any) -> dict[str, Format]:
    """`webhook_formats=`, checked as `register_format` checks one: name -> function."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidDefinitionError(
            f"webhook_formats must be a dict of format name -> fn(event, endpoint), got "
            f"{type(given).__name__}"
        )
    for name, fn in given.items():
        if not isinstance(name, str) or not name:
            raise InvalidDefinitionError(
                f"webhook_formats: format names must be non-empty strings, got {name!r}"
            )
        if not callable(fn):
            raise InvalidDefinitionError(
                f"webhook_formats: format {name!r} must be a function (event, endpoint), got "
                f"{type(fn).__name__}"
            )
    return dict(given)


# ---- endpoints -------------------------------------------------------------------------------


def check_url(url: Any, shown: str | None = None) -> str:
    """`url` if it is an http(s) URL a request can be sent to, else InvalidArgumentError.
    `shown`: how its messages name the url (default: as given; the sender checks a stored url
    again at send time and names it by its scheme, host and port: a path may hold a token)."""
    name = repr(url) if shown is None else shown
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"url must be an http(s) URL string, got {url!r}")
    if not is_utf8(url):  # a lone surrogate (a non-UTF-8 argv): bson refuses it
        raise InvalidArgumentError(f"url {name} is not valid text: it holds a lone surrogate")
    control = next((c for c in url if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:  # urlsplit drops tabs and newlines; no request could be sent
        raise InvalidArgumentError(
            f"url {name} holds the control character {control!r} (a trailing newline from a "
            "file or a variable?): remove it"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.hostname  # noqa: B018 (an unbalanced IPv6 bracket raises here on some Pythons)
    except ValueError as exc:  # "Invalid IPv6 URL", or a netloc NFKC changes (a full-width ':')
        hint = "an IPv6 host is written in brackets, e.g. https://[2001:db8::1]:8443/path"
        raise InvalidArgumentError(
            f"url is not a valid URL ({exc})" + (f": {hint}" if "IPv6" in str(exc) else "")
        ) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgumentError(
            f"url must be an http:// or https:// URL with a host, got scheme "
            f"{parts.scheme or '(none)'!r}"
        )
    if not parts.hostname:
        raise InvalidArgumentError(
            f"url {name} has no host: give one, e.g. https://hooks.example.com/path"
        )
    try:
        port = parts.port
    except ValueError:  # "Port out of range 0-65535", or not a number
        port = -1
    if port is not None and not 1 <= port <= 65535:
        written = parts.netloc.rpartition(":")[2]
        raise InvalidArgumentError(
            f"url {parts.scheme}://{parts.hostname} has an invalid port {written!r}: a port is a "
            "number from 1 to 65535"
        )
    return url


def url_host(url: str) -> str:
    """What logs and errors show of a URL: scheme, host and port (a path or query may hold a
    token). A url Python cannot split (another program's write: an unbalanced IPv6 bracket)
    is "(invalid URL)", as the CLI's listing shows it."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.hostname  # noqa: B018 (an unbalanced IPv6 bracket raises here on some Pythons)
    except ValueError:
        return "(invalid URL)"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # an invalid port (refused by check_url): shown as written
        port = f":{parts.netloc.rpartition(':')[2]}"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, bracketed as in the URL
    return f"{parts.scheme}://{host}{port}"


def without_url_secrets(text: str, url: str, cut: bool = False) -> str:
    """`text` (a receiver's answer) without the URL's path and query, nor any part of them of
    8 characters or more, as written, percent-encoded or decoded: a receiver's error page that
    echoes the path ("Cannot POST /hooks/tok_...") would put its token into errors and logs.
    `cut`: the text is the start of a longer answer, so the start of a part at its very end
    goes too."""
    parts = urllib.parse.urlsplit(url)
    pieces = [url, parts.path + ("?" + parts.query if parts.query else ""), parts.query]
    pieces += re.split(r"[/?&=;]", parts.path + "?" + parts.query)
    forms = set()
    for piece in pieces:
        forms |= {piece, urllib.parse.quote(piece, safe=""), urllib.parse.unquote_plus(piece)}
    forms = {f for f in forms if len(f) >= 8}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "…")
    if cut:
        for form in sorted(forms, key=len, reverse=True):
            start = next((k for k in range(len(form) - 1, 3, -1) if text.endswith(form[:k])), 0)
            if start:
                text = text[:-start] + "…"
                break
    return text


class WebhookEndpoint(BaseModel):
    """A webhook endpoint as stored (no secret: `secret_ref` names one)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    url: str
    events: list[str]
    """Event names, or ["*"] for every event."""
    format: str = "standard"
    secret_ref: str | None = None
    headers: dict[str, str] = {}
    """Sent with every delivery; shown in listings: keep credentials in secrets."""
    enabled: bool = True
    description: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    consecutive_failures: int = 0
    """Deliveries in a row that failed for good (reset by a success or enable())."""
    disabled_reason: str | None = None
    disabled_at: dt.datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: as_utc(v) if isinstance(v, dt.datetime) else v for k, v in data.items()}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        if "state" in doc:
            doc["enabled"] = doc.pop("state") == "enabled"
        for key in ("headers",):
            if doc.get(key) is None:
                doc[key] = {}
        return doc

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        return list(v)


def _check_events(events: Any) -> list[str]:
    if isinstance(events, str):
        raise InvalidArgumentError(
            f"events must be a list of event names (or ['*']), got the string {events!r}: "
            f"use [{events!r}]"
        )
    if not isinstance(events, Sequence) or not events:
        raise InvalidArgumentError(
            f"events must be a non-empty list of event names, or ['*'] for all; got {events!r}"
        )
    for e in events:
        if not isinstance(e, str) or not e.strip():
            raise InvalidArgumentError(f"events must be non-empty strings, got {e!r}")
        check_event_name(e)  # a name emit refuses ('|') could never be delivered
    return list(dict.fromkeys(events))


def _check_description(description: Any) -> str | None:
    """None or a text (it is stored as given, and every reader reads it as text)."""
    if description is None:
        return None
    if not isinstance(description, str):
        raise InvalidArgumentError(
            f"description must be a text, got {type(description).__name__}: "
            "description='billing team endpoint'"
        )
    if not is_utf8(description):
        raise InvalidArgumentError(
            "description must be valid text (it holds a lone surrogate, which cannot be stored)"
        )
    if len(description) > MOST_DESCRIPTION:
        raise InvalidArgumentError(
            f"description is {len(description)} characters; at most {MOST_DESCRIPTION}"
        )
    return description


def _check_reason(reason: Any) -> str:
    if (
        not isinstance(reason, str)
        or not reason.strip()
        or len(reason) > MOST_DESCRIPTION
        or not is_utf8(reason)
    ):
        raise InvalidArgumentError(
            f"reason must be a non-empty text of at most {MOST_DESCRIPTION} characters, "
            f"got {reason!r:.80}"
        )
    return reason


def _check_enabled(enabled: Any) -> bool:
    if not isinstance(enabled, bool):
        raise InvalidArgumentError(f"enabled must be True or False, got {enabled!r}")
    return enabled


def check_headers(headers: Any) -> dict[str, str]:
    """`headers` if every one is a header a request can carry and not one the delivery sets,
    else InvalidArgumentError naming the header, never its value (a credential, often). The
    sender checks a stored endpoint's again at send time (one stored before add checked them,
    or by another program)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidArgumentError(f"headers must be a dict of str -> str, got {headers!r}")
    out: dict[str, str] = {}
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgumentError("headers must be a dict of str -> str")
        if k.lower() in RESERVED_HEADERS:
            raise InvalidArgumentError(
                f"header {k!r} is set by the webhook delivery itself and cannot be overridden"
            )
        if not HEADER_NAME.fullmatch(k):
            raise InvalidArgumentError(
                f"header name {k!r:.60} is not one HTTP can carry: letters, digits and "
                "!#$%&'*+-.^_`|~ only (no space, no colon)"
            )
        control = next((c for c in v if (ord(c) < 0x20 and c != "\t") or c == "\x7f"), None)
        if control is not None or v != v.strip(" \t") or not v.isascii():  # value not shown
            what = (
                f"the control character {control!r} (a trailing newline from a file or a variable?)"
                if control
                else "a leading or trailing space or tab"
                if v != v.strip(" \t")
                else "a character that is not ASCII (percent-encode it, or send it in the body)"
            )
            raise InvalidArgumentError(
                f"header {k!r} has a value holding {what}: no request could carry it; remove it"
            )
        out[k] = v
    return out


def endpoint_id_of(endpoint_id: str | ObjectId) -> ObjectId:
    if isinstance(endpoint_id, ObjectId):
        return endpoint_id
    try:
        return ObjectId(endpoint_id)
    except Exception:
        raise WebhookNotFoundError(
            f"{endpoint_id!r} is not a webhook endpoint id (24 hex characters)"
        ) from None


# ---- formats ---------------------------------------------------------------------------------

#: format(event, endpoint) -> the body: a dict (sent as JSON), str or bytes.
Format = Callable[["Event", WebhookEndpoint], Any]


def standard_format(event: Event, endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The Standard Webhooks payload shape: type, timestamp (the event's), data (its dates
    end in +00:00, as receivers have always been sent them: see `encode_body`)."""
    return {
        "type": event.name,
        "timestamp": iso_utc(event.emitted_at),
        "data": to_jsonable(event.payload, dates=WEBHOOK_DATES),
    }


#: How a webhook body writes the datetimes of its data: "+00:00", as it always has (a receiver
#: on Python before 3.11 reads that with `fromisoformat`, not a "Z"); the JSON outputs of the CLI
#: and the dashboard write "Z".
WEBHOOK_DATES: Literal["+00:00"] = "+00:00"


def encode_body(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    dumped = json.dumps(
        to_jsonable(value, dates=WEBHOOK_DATES),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return dumped.encode()


# ---- the admin API: processor.webhooks --------------------------------------------------------


class Webhooks:
    """`processor.webhooks`: manage endpoints (stored in MongoDB, shared by every process)."""

    def __init__(
        self,
        storage: Storage,
        formats: dict[str, Format],
        secrets: Mapping[str, Secret],
        clock: Clock,
        log: EventLog,
    ) -> None:
        self.store = storage.webhooks
        self.formats = formats
        self.secrets = secrets
        self.clock = clock
        self.log = log

    def register_format(self, name: str, fn: Format) -> None:
        """Add a payload format: fn(event, endpoint) -> dict (sent as JSON), str or bytes.
        Register it in every process that delivers webhooks."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"format names must be non-empty strings, got {name!r}")
        if not callable(fn):
            raise InvalidArgumentError(f"format {name!r} must be a function (event, endpoint)")
        self.formats[name] = fn

    def _check_format(self, fmt: Any) -> str:
        if not isinstance(fmt, str):  # before the look-up: a list is not even hashable
            raise InvalidArgumentError(
                f"format must be a format name (a string such as 'standard'), got {fmt!r:.60}"
            )
        if fmt not in self.formats:
            known = ", ".join(sorted(self.formats))
            raise InvalidArgumentError(
                f"unknown webhook format {fmt!r} (known here: {known}); register it with "
                "webhook_formats={...} in init_job_processor, in every process that delivers"
            )
        return str(fmt)

    def _check_secret_ref(self, ref: Any) -> str | None:
        if ref is None:
            return None
        if not isinstance(ref, str):  # before the look-up: a list is not even hashable
            raise InvalidArgumentError(
                f"secret_ref must be the name of a secret in webhook_secrets (a string) or "
                f"None (unsigned), got {ref!r:.60}"
            )
        if ref not in self.secrets:
            known = ", ".join(sorted(self.secrets)) or "none"
            raise InvalidArgumentError(
                f"unknown secret_ref {ref!r} (known here: {known}); add it to webhook_secrets= "
                f"or {SECRETS_ENV} in every process that delivers webhooks"
            )
        return str(ref)

    async def add(
        self,
        *,
        url: str,
        events: Sequence[str],
        format: str = "standard",
        secret_ref: str | None = None,
        headers: Mapping[str, str] | None = None,
        description: str | None = None,
        enabled: bool = True,
    ) -> WebhookEndpoint:
        now = self.clock.now()
        doc: Doc = {
            "_id": ObjectId(),
            "url": check_url(url),
            "events": _check_events(events),
            "format": self._check_format(format),
            "secret_ref": self._check_secret_ref(secret_ref),
            "headers": check_headers(headers),
            "state": "enabled" if _check_enabled(enabled) else "disabled",
            "description": _check_description(description),
            "created_at": now,
            "updated_at": now,
            "consecutive_failures": 0,
            "disabled_reason": None if enabled else "added disabled",
            "disabled_at": None if enabled else now,
            "last_failure_at": None,
        }
        endpoint = WebhookEndpoint.model_validate(await self.store.add(doc))
        self.log.info(
            "webhook_endpoint_added",
            endpoint_id=endpoint.id,
            url=url_host(endpoint.url),
            events=endpoint.events,
        )
        return endpoint

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        format: str | None = None,
        secret_ref: str | Unset | None = UNSET,
        headers: Mapping[str, str] | None = None,
        description: str | Unset | None = UNSET,
    ) -> WebhookEndpoint:
        """Change the given fields; deliveries not yet sent use the new configuration.
        `secret_ref=None` makes the endpoint unsigned; `description=None` removes it."""
        fields: Doc = {"updated_at": self.clock.now()}
        if url is not None:
            fields["url"] = check_url(url)
        if events is not None:
            fields["events"] = _check_events(events)
        if format is not None:
            fields["format"] = self._check_format(format)
        if not isinstance(secret_ref, Unset):
            fields["secret_ref"] = self._check_secret_ref(secret_ref)
        if headers is not None:
            fields["headers"] = check_headers(headers)
        if not isinstance(description, Unset):
            fields["description"] = _check_description(description)
        doc = await self.store.update(endpoint_id_of(endpoint_id), fields)
        endpoint = self._found(doc, endpoint_id)
        changed = sorted(k for k in fields if k != "updated_at")
        self.log.info("webhook_endpoint_updated", endpoint_id=endpoint.id, fields=changed)
        return endpoint

    async def disable(self, endpoint_id: str, reason: str = "disabled by hand") -> WebhookEndpoint:
        reason = _check_reason(reason)
        oid = endpoint_id_of(endpoint_id)
        doc = await self.store.disable(oid, reason, self.clock.now())
        if doc is None:
            return self._found(await self.store.get(oid), endpoint_id)  # already disabled
        self.log.info("webhook_endpoint_disabled", endpoint_id=str(oid), reason=reason)
        return self._found(doc, endpoint_id)

    async def enable(self, endpoint_id: str) -> WebhookEndpoint:
        """Enabled again (its failure count reset). Deliveries that failed while it was
        disabled are not re-sent: replay their events."""
        doc = await self.store.enable(endpoint_id_of(endpoint_id), self.clock.now())
        endpoint = self._found(doc, endpoint_id)
        self.log.info("webhook_endpoint_enabled", endpoint_id=endpoint.id)
        return endpoint

    async def remove(self, endpoint_id: str) -> None:
        if not await self.store.remove(endpoint_id_of(endpoint_id)):
            raise WebhookNotFoundError(f"no webhook endpoint with id {endpoint_id!r}")
        self.log.info("webhook_endpoint_removed", endpoint_id=str(endpoint_id))

    async def list(self) -> builtins.list[WebhookEndpoint]:
        return [e for e in map(readable_endpoint, await self.store.all()) if e is not None]

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return self._found(await self.store.get(endpoint_id_of(endpoint_id)), endpoint_id)

    @staticmethod
    def _found(doc: Doc | None, endpoint_id: str) -> WebhookEndpoint:
        if doc is None:
            raise WebhookNotFoundError(f"no webhook endpoint with id {endpoint_id!r}")
        endpoint = readable_endpoint(doc)
        if endpoint is None:
            raise WebhookNotFoundError(f"webhook endpoint {endpoint_id!r} is stored unreadable")
        return endpoint


def readable_endpoint(doc: Doc) -> WebhookEndpoint | None:
    """A stored endpoint as the listings show it (`core.lenient`): a field another program
    wrote with a wrong type (a hand edit, an older version) reads as its default; a url that is
    no text as its text, events that are no list as none (its texts of a list). None, with a
    warning, for one that cannot be read even so: the listing skips it. (A delivery reads its
    endpoint strictly: events/sender.py.)"""
    url = doc.get("url")
    fallbacks = {"url": "" if url is None else str(url), "events": texts(doc.get("events"))}
    endpoint = read_leniently(WebhookEndpoint, doc, fallbacks)
    if endpoint is None:
        make_log(None).warning(
            "unreadable_document_skipped", collection="webhooks", id=str(doc.get("_id"))
        )
    return endpoint


async def webhook_warnings(storage: Storage) -> list[str]:
    """For status pages: every disabled endpoint, with why and how to re-enable it."""
    out = []
    for doc in await storage.webhooks.disabled():
        ep = readable_endpoint(doc)
        if ep is None:
            continue
        out.append(
            f"webhook endpoint {ep.id} ({url_host(ep.url)}) is disabled: "
            f"{ep.disabled_reason or 'no reason recorded'}; fix it, then "
            "processor.webhooks.enable(id) and replay the events it missed"
        )
    return out
