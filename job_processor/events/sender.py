"""Sending one webhook delivery: read the endpoint and the secret, build and sign the body,
POST it with the processor's pooled httpx client, record the attempt, decide what the answer
means (see `webhooks.classify`), and disable endpoints that keep failing. Rules in webhooks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from bson import ObjectId
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from ..core import event_documents as E
from ..core.abort import AbortSignal
from ..core.clock import Clock, iso_utc
from ..core.errors import DoNotRetry, InvalidArgumentError, RetryLater
from ..core.lenient import texts
from ..core.log import EventLog
from ..core.models import Event, Job
from ..core.status import JobStatus
from ..storage import Storage
from ..storage.transient import describe, ride_out
from .webhooks import (
    ATTEMPTS_KEPT,
    EXCERPT_CHARS,
    SECRETS_ENV,
    USER_AGENT,
    Decision,
    Format,
    Secret,
    WebhookEndpoint,
    WebhookError,
    WebhookOptions,
    check_headers,
    check_url,
    classify,
    encode_body,
    endpoint_id_of,
    sign,
    url_host,
    without_url_secrets,
)

#: How long an endpoint's bookkeeping write rides out an outage (`WebhookSender._bookkeeping`).
BOOKKEEPING_BUDGET = 10.0


def run_key(job_id: object, run_id: object, attempt: object) -> str:
    """A delivery's run, by which the endpoint's bookkeeping counts a failure (or disables)
    once, whoever writes it and however often (the worker's attempt, the recovery sweep)."""
    return f"{job_id}:{run_id or attempt}"


class WebhookSender:
    """Runs webhook deliveries: one pooled httpx.AsyncClient per processor (opened on the
    first delivery, closed by stop())."""

    def __init__(
        self,
        storage: Storage,
        secrets: Mapping[str, Secret],
        formats: dict[str, Format],
        options: WebhookOptions,
        clock: Clock,
        log: EventLog,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = storage.webhooks
        self.secrets = secrets
        self.formats = formats
        self.options = options
        self.clock = clock
        self.log = log
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.options.timeout),
                follow_redirects=False,
                # the encodings the excerpt inflates (`_bounded_decoder`), not httpx's br, zstd
                headers={"user-agent": USER_AGENT, "accept-encoding": "gzip, deflate"},
                transport=self.transport,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver(self, job: Job[Any], signal: AbortSignal, event: Event) -> dict[str, Any]:
        """One attempt of one delivery. Returns the attempt's record; raises to fail it
        (WebhookError: retry; RetryLater: retry at the server's time; DoNotRetry: for good)."""
        endpoint_id = str(job.payload["endpoint_id"])
        fields: dict[str, Any] = {
            "job_id": job.id,
            "event_id": event.id,
            "endpoint_id": endpoint_id,
        }
        # this run of the delivery, by which the endpoint's bookkeeping counts a failure (or
        # disables) once however often its write is sent again; a retry of the delivery, by
        # hand, is a new run that counts again
        run = run_key(job.id, job.run_id, job.attempt)
        doc = await self.endpoints.get(endpoint_id_of(endpoint_id))
        if doc is None:
            raise DoNotRetry(f"webhook endpoint {endpoint_id} was removed")
        try:  # `events` as the listings and emit read it (one text is one name): not sent
            endpoint = WebhookEndpoint.model_validate(doc | {"events": texts(doc.get("events"))})
        except ValidationError as exc:  # another program's write: said, not retried for ever
            unread = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            raise DoNotRetry(
                f"webhook endpoint {endpoint_id} is stored unreadable ({unread}): fix it or "
                "add it again, then replay the event"
            ) from None
        if not endpoint.enabled:
            await self._not_counted(endpoint_id, run, fields)
            raise DoNotRetry(
                f"webhook endpoint {endpoint_id} is disabled"
                + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else "")
                + ": enable it and replay the event"
            )
        final = job.failures + 1 >= job.max_attempts
        try:
            request = self._request(endpoint, event)
        except WebhookError as exc:
            await self._record(job, {"error": str(exc)}, 0)
            if final and signal.reason != "shutdown":  # else interrupted: counted when rerun
                await self._failed_for_good(endpoint.id, fields, run)
            raise
        record, decision = await self._send(endpoint, request, signal)
        fields |= {"url": url_host(endpoint.url), "status_code": record.get("status_code")}
        if decision.verdict == "delivered":
            self.log.info("webhook_delivered", duration_ms=record["duration_ms"], **fields)
            # always (a failure counted meanwhile by a concurrent delivery ends its run too)
            oid = endpoint_id_of(endpoint_id)
            await self._bookkeeping("delivered", lambda: self.endpoints.delivered(oid), fields)
            return record | {"attempt": job.attempt, "at": self._now()}
        await self._record(job, record, record["duration_ms"])
        what = record.get("error") or f"HTTP {record['status_code']}"
        message = f"{what} from {url_host(endpoint.url)} in {record['duration_ms']} ms"
        if record.get("response_excerpt"):
            message += f": {record['response_excerpt'][:100]}"
        self.log.warning("webhook_attempt_failed", attempt=job.attempt, error=what, **fields)
        if decision.verdict == "gone":
            await self._not_counted(endpoint_id, run, fields)
            await self._disable(
                endpoint.id, f"HTTP 410 Gone from {url_host(endpoint.url)}", fields, run
            )
            raise DoNotRetry(message + " (endpoint disabled)")
        # a retryable failure after the stop's signal is an interrupted run (no attempt used:
        # sent again after the restart), not the last attempt failing for good
        interrupted = signal.reason == "shutdown" and decision.verdict == "retry"
        if decision.verdict == "fail" or (final and not interrupted):
            await self._failed_for_good(endpoint.id, fields, run)
        if decision.verdict == "fail":
            raise DoNotRetry(message)
        if decision.verdict == "retry_later":
            assert decision.delay is not None
            raise RetryLater(decision.delay, message + " (Retry-After)")
        raise WebhookError(message)

    def _now(self) -> str:
        return iso_utc(self.clock.now())  # kept as text, written as the JSON outputs write dates

    def _request(
        self, endpoint: WebhookEndpoint, event: Event
    ) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of this attempt (config and secret read now)."""
        try:
            check_url(endpoint.url, shown=f"{url_host(endpoint.url)} (its path not shown)")
            # stored before add checked them, or by another program: refused unsent, its
            # value unquoted (httpx's error quotes it: a credential, often)
            check_headers(endpoint.headers)
        except InvalidArgumentError as exc:
            raise WebhookError(f"endpoint {endpoint.id}: {exc}") from None
        fmt = self.formats.get(endpoint.format)
        if fmt is None:
            known = ", ".join(sorted(self.formats))
            raise WebhookError(
                f"endpoint {endpoint.id}: format {endpoint.format!r} is not registered in this "
                f"process (known: {known}); pass it in webhook_formats= to init_job_processor"
            )
        try:
            body = encode_body(fmt(event, endpoint))
        except Exception as exc:
            raise WebhookError(
                f"endpoint {endpoint.id}: format {endpoint.format!r} raised "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        ts = int(self.clock.now().timestamp())
        headers = {
            **endpoint.headers,
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(ts),
        }
        if endpoint.secret_ref is not None:
            secret = self.secrets.get(endpoint.secret_ref)
            if secret is None:
                raise WebhookError(
                    f"endpoint {endpoint.id}: secret_ref {endpoint.secret_ref!r} is not in this "
                    f"process's webhook secrets (webhook_secrets= or {SECRETS_ENV})"
                )
            headers["webhook-signature"] = sign(secret, event.id, ts, body)
        return endpoint.url, body, headers

    async def _send(
        self,
        endpoint: WebhookEndpoint,
        request: tuple[str, bytes, dict[str, str]],
        signal: AbortSignal,
    ) -> tuple[dict[str, Any], Decision]:
        url, body, headers = request
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        record: dict[str, Any] = {"status_code": None, "response_excerpt": None, "error": None}
        decision = Decision("retry")
        excerpt = b""
        try:
            async with contextlib.AsyncExitStack() as stack:
                # the status line and the headers within one `timeout` in all (httpx's own
                # timeouts bound each read: a receiver trickling its headers held the slot)
                async with asyncio.timeout(self.options.timeout):
                    sent = self.client().stream("POST", url, content=body, headers=headers)
                    resp = await stack.enter_async_context(sent)
                # the status decides, once the headers are in: what follows of the body is an
                # excerpt for people, read within one `timeout` in all (a body that trickles,
                # cannot be decoded or is cut off never turns a 2xx into a failure)
                record["status_code"] = resp.status_code
                decision = classify(
                    resp.status_code, resp.headers.get("retry-after"), self.clock.now()
                )
                excerpt = await self._excerpt(resp, signal)
        except Exception as exc:  # httpx's, or another (a header it cannot encode, a host name)
            if record["status_code"] is None:
                record["error"] = self._error(exc, url)
        if record["status_code"] is not None:
            read = excerpt[: EXCERPT_CHARS * 4]  # the first 800 bytes (a chunk may hold more)
            answer, cut = read.decode("utf-8", "replace"), len(excerpt) >= EXCERPT_CHARS * 4
            record["response_excerpt"] = without_url_secrets(answer, url, cut)[:EXCERPT_CHARS]
        record["duration_ms"] = int((loop.time() - t0) * 1000)
        return record, decision

    async def _excerpt(self, resp: Any, signal: AbortSignal) -> bytes:
        """The start of the answer's body, read within one `timeout`, and no longer once the
        signal fires: a worker stopping keeps the answer it has (a 2xx read to its end in the
        shutdown grace was cancelled there, and the receiver got the delivery again)."""
        got: list[bytes] = []

        async def read() -> None:
            size = 0
            decode = _bounded_decoder(resp.headers.get("content-encoding"))
            async for raw in resp.aiter_raw():  # as sent: httpx would inflate a chunk whole
                chunk = decode(raw, EXCERPT_CHARS * 4 - size)
                if chunk is None:  # it does not inflate: the excerpt ends there
                    break
                got.append(chunk)
                size += len(chunk)
                if size >= EXCERPT_CHARS * 4:
                    break

        if signal.aborted:
            return b""
        reading: asyncio.Future[Any] = asyncio.ensure_future(read())
        stopped: asyncio.Future[Any] = signal.future()
        try:
            await asyncio.wait(
                {reading, stopped}, timeout=self.options.timeout, return_when=FIRST_COMPLETED
            )
        finally:
            stopped.cancel()
            reading.cancel()
        await asyncio.wait({reading})  # its end, whatever it was (never raises)
        if not reading.cancelled():
            reading.exception()  # a body cut off or undecodable: what came is the excerpt
        return b"".join(got)

    def _error(self, exc: Exception, url: str) -> str:
        """An attempt that got no answer, in one line (the URL's path and query left out)."""
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return f"timed out after {self.options.timeout:g}s"
        text = str(exc).replace(url, url_host(url))[:200]
        return f"{type(exc).__name__}: {text}"

    async def _bookkeeping(self, what: str, write: Any, fields: dict[str, Any]) -> Any:
        """An endpoint's counters and state: an outage is ridden out (10 s), then said; it
        never changes what the answer meant (a 4xx is not sent again, a 2xx not failed)."""
        try:
            return await ride_out(write, BOOKKEEPING_BUDGET)
        except (PyMongoError, TimeoutError) as exc:
            self.log.warning("webhook_bookkeeping_failed", what=what, error=describe(exc), **fields)
            return None

    async def _record(self, job: Job[Any], record: dict[str, Any], duration_ms: int) -> None:
        """Keep this failed attempt on the delivery (the next attempt sees it in job.state)."""
        entry = {
            "attempt": job.attempt,
            "at": self._now(),
            "status_code": record.get("status_code"),
            "duration_ms": duration_ms,
            "response_excerpt": record.get("response_excerpt"),
            "error": record.get("error"),
        }
        previous = list((job.state or {}).get("attempts") or [])
        await job.checkpoint({"attempts": [*previous, entry][-ATTEMPTS_KEPT:]})

    async def recovered(self, doc: dict[str, Any], ended: dict[str, Any]) -> None:
        """A delivery the recovery sweep ended errored (`Recovery.recovered`): its worker died
        or lost track of it during its last attempt. It failed for good: counted toward
        `disable_after` as `deliver` counts one, once per run (a count its worker wrote before
        dying is not made twice). An endpoint removed since: nothing to count. Any other job,
        or a delivery retried or killed, is not one."""
        if doc.get("name") != E.WEBHOOK_JOB or ended.get("status") != JobStatus.ERRORED.value:
            return
        payload = doc.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        endpoint_id = payload.get("endpoint_id")
        if not isinstance(endpoint_id, str | ObjectId) or not ObjectId.is_valid(endpoint_id):
            return  # another program's document: no endpoint to count against
        fields = {
            "job_id": str(doc["_id"]),
            "event_id": str(payload.get("event_id")),
            "endpoint_id": str(endpoint_id),
        }
        run = run_key(doc["_id"], doc.get("run_id"), doc.get("attempt"))
        # counted under the run's key (never twice), disabled under the sweep's own: a
        # disabling the run's worker made (its count reached the limit, a 410) is not redone
        await self._failed_for_good(str(endpoint_id), fields, run, f"{run}:recovered")

    async def _not_counted(self, endpoint_id: str, run: str, fields: dict[str, Any]) -> None:
        """A run that ends without a count (a 410, refused as disabled): noted, so that the
        recovery sweep never counts it (`recovered`) once the endpoint is enabled again."""
        oid = endpoint_id_of(endpoint_id)
        await self._bookkeeping("noted", lambda: self.endpoints.not_counted(oid, run), fields)

    async def _failed_for_good(
        self, endpoint_id: str, fields: dict[str, Any], run: str, disabler: str | None = None
    ) -> None:
        limit = self.options.disable_after
        oid, now = endpoint_id_of(endpoint_id), self.clock.now()
        count = await self._bookkeeping(
            "failed_delivery", lambda: self.endpoints.failed_delivery(oid, now, run), fields
        )
        if limit is not None and count is not None and count >= limit:
            reason = f"{count} consecutive failed deliveries"
            await self._disable(endpoint_id, reason, fields, disabler or run)

    async def _disable(
        self, endpoint_id: str, reason: str, fields: dict[str, Any], run: str
    ) -> None:
        oid, now = endpoint_id_of(endpoint_id), self.clock.now()
        done = await self._bookkeeping(
            "disable", lambda: self.endpoints.disable(oid, reason, now, run), fields
        )
        if done is not None:
            self.log.warning("webhook_endpoint_disabled", reason=reason, **fields)


def _bounded_decoder(encoding: str | None) -> Callable[[bytes, int], bytes | None]:
    """fn(bytes as sent, at most) -> at most that many bytes of the body: one gzip or deflate
    layer is inflated within the bound (a receiver's few compressed bytes may inflate to
    gigabytes, layer upon layer); any other encoding, or several, is kept as sent. None: the
    stream does not inflate (the excerpt ends there)."""
    name = (encoding or "identity").strip().lower()
    if name not in ("gzip", "x-gzip", "deflate"):
        return lambda raw, most: raw[: max(most, 0)]
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header
    first: list[bytes | None] = [b""]  # read so far while no output came (deflate may be raw)

    def decode(raw: bytes, most: int) -> bytes | None:
        nonlocal inflate
        try:
            out = inflate.decompress(inflate.unconsumed_tail + raw, max(most, 1))
        except zlib.error:
            if name != "deflate" or first[0] is None:
                return None
            # "deflate" as many servers send it: raw, no zlib header (httpx reads both)
            inflate, data, first[0] = zlib.decompressobj(-zlib.MAX_WBITS), first[0] + raw, None
            try:
                return inflate.decompress(data, max(most, 1))
            except zlib.error:
                return None
        if first[0] is not None:  # kept for a raw deflate's retry only, and only so far
            held = first[0] + raw
            first[0] = None if out or name != "deflate" or len(held) > 65536 else held
        return out

    return decode
