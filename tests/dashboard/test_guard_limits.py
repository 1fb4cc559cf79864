"""What the guard in front of the dashboard refuses beyond pages: WebSockets of extra routes
without credentials, and form bodies past MAX_FORM_BYTES (no server: a bare database name)."""

from __future__ import annotations

import base64
from typing import Any

import httpx2 as httpx
import pytest
from pymongo.errors import ServerSelectionTimeoutError
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from job_processor.dashboard import create_dashboard, guard

AUTH = ("admin", "s3cret-pw")
GOOD = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret-pw").decode()}


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(f"hello {websocket.scope['state']['user']}")
    await websocket.close()


def test_a_websocket_of_an_extra_route_needs_the_same_auth_host_and_origin(db: Any) -> None:
    app = create_dashboard(db, auth=AUTH, extra_routes=[WebSocketRoute("/ws", echo)])
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/ws", headers=GOOD) as ws:  # not a browser: no Origin
            assert ws.receive_text() == "hello admin"
        own = GOOD | {"origin": "http://testserver"}  # TestClient's Host
        with client.websocket_connect("/ws", headers=own) as ws:
            assert ws.receive_text() == "hello admin"
        for origin in ("https://evil.example", "http://testserver:8081", "null"):
            # any host is allowed (auth given): a page of another origin, credentials cached by
            # the browser, must still not drive it
            other = GOOD | {"origin": origin}
            with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=other):
                pass
    local = create_dashboard(db, extra_routes=[WebSocketRoute("/ws", echo)])  # loopback only
    with TestClient(local) as client:  # its WebSockets say Host: testserver whatever base_url
        at_home = {"host": "localhost"}
        with client.websocket_connect("/ws", headers=at_home) as ws:
            assert ws.receive_text() == "hello anonymous"
        for refused_headers in (at_home | {"origin": "https://evil.example"}, {}):
            with (
                pytest.raises(WebSocketDisconnect),
                client.websocket_connect("/ws", headers=refused_headers),
            ):
                pass


def test_a_websocket_whose_auth_callable_raises_is_closed_unaccepted_and_logged(
    db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error went out of the app to the ASGI server, not logged as the dashboard's:
    an outage (a PyMongoError) closes it with 1013 (try again later), another error with 1011,
    logged once as dashboard_request_failed."""
    errors = [ServerSelectionTimeoutError("users-db:27017: timed out"), KeyError("do-not-show")]

    def auth(request: Any) -> bool:
        raise errors.pop(0)

    app = create_dashboard(db, auth=auth, extra_routes=[WebSocketRoute("/ws", echo)])
    codes = []
    with TestClient(app) as client:
        for _ in range(2):
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
                pass
            codes.append(refused.value.code)
    assert codes == [1013, 1011]
    logged = capsys.readouterr().out  # the dashboard's default log (structlog's)
    assert logged.count("dashboard_request_failed") == 1, logged
    assert "KeyError" in logged  # (the outage: not logged as a failure)


async def test_a_form_body_past_the_limit_is_refused_unread(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "MAX_FORM_BYTES", 1000)
    app = create_dashboard(db, auth=AUTH)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        big = await client.post("/jobs/new", headers=GOOD, data={"payload": "x" * 5000})
        assert big.status_code == 413 and "at most" in big.text

        async def chunks() -> Any:  # no Content-Length: counted as it is read
            for _ in range(10):
                yield b"payload=" + b"x" * 200

        streamed = await client.post(
            "/jobs/new",
            headers=GOOD | {"content-type": "application/x-www-form-urlencoded"},
            content=chunks(),
        )
        assert streamed.status_code == 413
        small = await client.post("/jobs/new", headers=GOOD, data={"payload": "{}"})
        assert small.status_code == 403  # read, then refused for its missing CSRF token
        broken = await client.post(
            "/jobs/new",
            headers=GOOD | {"content-type": "multipart/form-data"},  # no boundary
            content=b"--x\r\n",
        )
        assert broken.status_code == 400 and "The form could not be read" in broken.text


async def unavailable_page(url_of: Any, timeout_ms: int) -> tuple[int, str]:
    """The dashboard's answer on a database nothing answers for (`url_of(port)`: a URL with a
    local port nothing listens on): its status and the cause it says."""
    import socket

    from pymongo import AsyncMongoClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url_of(port), serverSelectionTimeoutMS=timeout_ms, tz_aware=True
    )
    try:
        app = create_dashboard(client["jp_down"])  # loopback, no auth
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
            page = await web.get("/")
    finally:
        await client.close()
    assert page.status_code == 503, page.text[:200]
    return port, page.text.split("The database did not answer: ", 1)[1].split("</p>", 1)[0]


async def test_mongodb_unavailable_page_names_the_cause_in_full() -> None:
    """Nothing listens where the database is: the page says so plainly (it cut pymongo's
    "host:port: [Errno 111] Connect call failed ('127.0.0.1', PORT) (...)" at its first
    comma, an open parenthesis and no port)."""
    port, line = await unavailable_page(lambda port: f"mongodb://127.0.0.1:{port}", 300)
    assert line == f"127.0.0.1:{port}: connection refused: nothing listens on that port"


async def test_mongodb_unavailable_page_names_every_hosts_cause() -> None:
    """A URL of two hosts, neither reachable for its own reason: the page said only the first
    host's cause (the text was cut where the first server's part ends)."""
    port, line = await unavailable_page(
        lambda port: f"mongodb://127.0.0.1:{port},nosuchhost.invalid:27017/", 1500
    )
    assert f"127.0.0.1:{port}: connection refused" in line, line
    assert "nosuchhost.invalid:27017: host name not found" in line, line
