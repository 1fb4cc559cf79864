"""Who may use the dashboard: HTTP basic auth, a callable, or (on loopback only) nobody asked.

- `auth=("user", "password")`: HTTP basic auth (constant-time comparison); the audit log
  records the user name. A client address (an IPv6 one by its /64, and 100 per /48) that sends
  `LoginThrottle.LIMIT` wrong credentials within `LoginThrottle.WINDOW` seconds gets 429 (with
  `Retry-After`) until the oldest of them is that old, its credentials not even compared
  (guessing a password over HTTP stays slow; right credentials do not clear the count, so a
  signed-in user behind the same address does not reset a guesser's).
- `auth=callable(request) -> bool | str` (sync or async): allowed when it returns True or a
  non-empty string (the user name recorded in the audit log); refused (403) otherwise.
- `auth=None`, given explicitly: no authentication at all (you protect it some other way).
- `auth` not given: no authentication, and only requests that reach the server over a loopback
  address are served; `create_dashboard(..., host=...)` and `job-processor dashboard --host`
  refuse to start on any other host.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection

from ..core.errors import JobProcessorError

AuthCallable = Callable[[HTTPConnection], "bool | str | Awaitable[bool | str]"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: `auth` was not given (distinct from an explicit `auth=None`).
UNSET: Any = _Unset()


class DashboardConfigError(JobProcessorError, ValueError):
    """create_dashboard was given options it cannot honour safely (e.g. no auth on a public
    host)."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_public_host(host: str) -> DashboardConfigError:
    return DashboardConfigError(
        f"refusing to serve the dashboard on {host!r} without authentication: pass "
        'auth=("user", "password") or auth=callable (CLI: --auth USER:PASSWORD or '
        "JOB_PROCESSOR_DASHBOARD_AUTH), or auth=None (CLI: --no-auth) if something in front of "
        "it already authenticates; without auth it only serves loopback hosts (127.0.0.1)"
    )


class LoginThrottle:
    """Wrong basic-auth credentials per client address (`client_key`): `LIMIT` of them within
    `WINDOW` seconds refuse that address until the oldest is `WINDOW` old; failures only age
    out. In memory, per dashboard process, at most `MAX_CLIENTS` addresses (the least recently
    failing forgotten first). Behind a proxy every client shares its address: a guesser there
    also blocks the others for a while, which is the price of not letting it guess."""

    LIMIT = 10
    WINDOW = 300.0
    MAX_CLIENTS = 10_000
    WIDE_LIMIT = 100
    """Failures allowed per IPv6 /48 (`client_keys`): one who holds a /48 has 65,536 /64s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, client: str, limit: int | None = None) -> int:
        """Seconds (rounded up, at least 1) before `client` may try again; 0: it may now.
        `limit`: the failures allowed under this key (LIMIT by default)."""
        failures = self._failures.get(client)
        if failures is None or len(failures) < (limit or self.LIMIT):
            return 0
        left = failures[0] + self.WINDOW - self.clock()
        return max(1, math.ceil(left)) if left > 0 else 0

    def failed(self, client: str, limit: int | None = None) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=limit or self.LIMIT)
        failures.append(self.clock())
        self._failures[client] = failures  # the most recent failure last
        while len(self._failures) > self.MAX_CLIENTS:
            self._failures.popitem(last=False)


def client_key(host: str | None) -> str:
    """Whose failures count together: an IPv4 address, an IPv6 one's /64 (one host may hold a
    whole /64), an IPv4-mapped IPv6 one as its IPv4; anything else (no address: a Unix
    socket) as it is."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def client_keys(host: str | None) -> list[tuple[str, int]]:
    """The keys a failure counts under, each with the failures it allows: the address
    (`client_key`, LIMIT), and for an IPv6 one its /48 too (WIDE_LIMIT)."""
    key = client_key(host)
    keys = [(key, LoginThrottle.LIMIT)]
    if key.endswith("/64"):
        wide = ipaddress.IPv6Network(key).supernet(new_prefix=48)
        keys.append((str(wide), LoginThrottle.WIDE_LIMIT))
    return keys


class Authenticator:
    """Decides per request: `await check(request)` -> the user name, or a Denied."""

    def __init__(self, auth: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode: str
        self.throttle = LoginThrottle(clock)
        self._user = self._password = b""
        self._callable: AuthCallable | None = None
        if auth is UNSET:
            self.mode = "loopback"
        elif auth is None:
            self.mode = "none"
        elif isinstance(auth, tuple | list):
            if len(auth) != 2 or not all(isinstance(x, str) and x for x in auth):
                raise DashboardConfigError(
                    'auth must be ("user", "password") with two non-empty strings, a callable '
                    "(request -> bool), or None"
                )
            self.mode = "basic"
            self._user, self._password = auth[0].encode(), auth[1].encode()
        elif callable(auth):
            self.mode = "callable"
            self._callable = auth
        else:
            raise DashboardConfigError(
                f'auth must be ("user", "password"), a callable (request -> bool) or None, '
                f"got {type(auth).__name__}"
            )

    async def check(self, request: HTTPConnection) -> Denied | str:
        if self.mode == "none":
            return "anonymous"
        if self.mode == "loopback":
            server = request.scope.get("server")
            host = server[0] if server else None
            # TestClient and in-process ASGI calls carry no server address: local by nature.
            if server is None or host == "testserver" or is_loopback(host):
                return "anonymous"
            return Denied(
                403,
                "This dashboard has no authentication, so it only answers on a loopback "
                f"address (this request reached {host}). Pass auth=(user, password), a "
                "callable, or auth=None explicitly.",
            )
        if self.mode == "basic":
            keys = client_keys(request.client.host if request.client else None)
            client = keys[0][0]
            wait = max(self.throttle.wait(key, limit) for key, limit in keys)
            if wait:
                return Denied(
                    429,
                    f"Too many wrong user names or passwords from {client}: try again in {wait} s.",
                    retry_after=wait,
                )
            sent = "authorization" in request.headers
            user = self._basic(request)
            if user is None:
                if sent:  # a browser's first request carries none: not a failure
                    for key, limit in keys:
                        self.throttle.failed(key, limit)
                return Denied(401, "Log in with the dashboard's user name and password.")
            return user
        assert self._callable is not None
        verdict = self._callable(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is True:
            return "user"
        if isinstance(verdict, str) and verdict:
            return verdict
        return Denied(403, "Your account is not allowed to use this dashboard.")

    def _basic(self, request: HTTPConnection) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        ok_user = hmac.compare_digest(user, self._user)
        ok_password = hmac.compare_digest(password, self._password)
        if not (sep and ok_user and ok_password):
            return None
        return user.decode("utf-8", "replace")


class Denied:
    def __init__(self, status: int, message: str, retry_after: int = 0) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
