"""Wrong basic-auth credentials are throttled per client address: the rule on a fake clock
(no server), then what a client sees over HTTP."""

from __future__ import annotations

import base64
from typing import Any

import httpx2 as httpx

from job_processor.dashboard import create_dashboard
from job_processor.dashboard.auth import LoginThrottle, client_key

AUTH = ("admin", "s3cret-pw")
GOOD = "Basic " + base64.b64encode(b"admin:s3cret-pw").decode()
BAD = "Basic " + base64.b64encode(b"admin:guess").decode()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_limit_blocks_an_address_until_its_oldest_failure_is_a_window_old() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(LoginThrottle.LIMIT - 1):
        throttle.failed("10.0.0.1")
        clock.t += 1
    assert throttle.wait("10.0.0.1") == 0  # one short of the limit
    throttle.failed("10.0.0.1")  # the first failure was at 1000, this one at 1009
    assert throttle.wait("10.0.0.1") == LoginThrottle.WINDOW - 9
    assert throttle.wait("10.0.0.2") == 0  # per address
    clock.t = 1000 + LoginThrottle.WINDOW - 0.5
    assert throttle.wait("10.0.0.1") == 1  # rounded up
    clock.t = 1000 + LoginThrottle.WINDOW
    assert throttle.wait("10.0.0.1") == 0  # the oldest is a window old: one more try
    throttle.failed("10.0.0.1")  # and it is the tenth within the window again
    assert throttle.wait("10.0.0.1") == 1


def test_addresses_are_keyed_by_host_ipv6_by_its_64_and_the_table_is_bounded() -> None:
    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("[2001:db8:1:2:bbbb::2]")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key(None) == "unknown" and client_key("testclient") == "testclient"
    clock = Clock()
    throttle = LoginThrottle(clock)
    throttle.MAX_CLIENTS = 3
    for i in range(5):
        throttle.failed(f"10.0.1.{i}")
    assert list(throttle._failures) == ["10.0.1.2", "10.0.1.3", "10.0.1.4"]


def client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def test_an_address_that_keeps_guessing_gets_429_even_with_the_right_password(
    db: Any,
) -> None:
    app = create_dashboard(db, auth=AUTH)
    async with client(app, "10.0.0.7") as guesser, client(app, "10.0.0.8") as other:
        for _ in range(3):  # a browser's first request carries no credentials: not a failure
            assert (await guesser.get("/")).status_code == 401
        for _ in range(LoginThrottle.LIMIT):
            resp = await guesser.get("/jobs", headers={"Authorization": BAD})
            assert resp.status_code == 401
        resp = await guesser.get("/jobs", headers={"Authorization": GOOD})
        assert resp.status_code == 429
        assert 0 < int(resp.headers["retry-after"]) <= LoginThrottle.WINDOW
        assert "Too many attempts" in resp.text and "try again in" in resp.text
        assert "www-authenticate" not in resp.headers  # no password prompt to fill in again
        api = await guesser.get("/api/overview", headers={"Authorization": GOOD})
        assert api.status_code == 429 and "try again in" in api.json()["error"]
        # another address is not affected, and probes stay open
        assert (await other.get("/jobs", headers={"Authorization": GOOD})).status_code == 200
        assert (await guesser.get("/healthz")).status_code == 200
        # once the window has passed, the right password works
        throttle = app.state.dashboard.auth.throttle
        throttle.clock = lambda: 1e12
        assert (await guesser.get("/jobs", headers={"Authorization": GOOD})).status_code == 200


async def test_a_signed_in_user_at_the_same_address_does_not_reset_a_guessers_count(
    db: Any,
) -> None:
    """Behind one NAT or proxy address: the right credentials (a live tab's refresh) between
    wrong ones do not clear them, so the guesser still gets LIMIT tries per WINDOW."""
    app = create_dashboard(db, auth=AUTH)
    async with client(app, "10.0.0.9") as shared:
        checked = 0
        for _ in range(3 * LoginThrottle.LIMIT):
            resp = await shared.get("/jobs", headers={"Authorization": BAD})
            checked += resp.status_code == 401
            await shared.get("/jobs", headers={"Authorization": GOOD})
        assert checked == LoginThrottle.LIMIT


async def test_an_ipv6_guesser_rotating_its_64s_is_held_by_its_48(db: Any) -> None:
    """One who holds a /48 has 65,536 /64s: WIDE_LIMIT failures per /48 as well."""
    app = create_dashboard(db, auth=AUTH)
    checked = 0
    for n in range(LoginThrottle.WIDE_LIMIT + 30):  # a new /64 of the same /48 each time
        async with client(app, f"2001:db8:7:{n:x}::1") as guesser:
            resp = await guesser.get("/jobs", headers={"Authorization": BAD})
            checked += resp.status_code == 401
    assert checked == LoginThrottle.WIDE_LIMIT
    async with client(app, "2001:db8:8::1") as elsewhere:  # another /48
        assert (await elsewhere.get("/jobs", headers={"Authorization": GOOD})).status_code == 200
