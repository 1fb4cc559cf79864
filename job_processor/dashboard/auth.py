"""Who may use the dashboard: HTTP basic auth, a callable, or (on loopback only) nobody asked.

- `auth=("user", "password")`: HTTP basic auth (constant-time comparison); the audit log
  records the user name.
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
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from ..core.errors import JobProcessorError

AuthCallable = Callable[[Request], "bool | str | Awaitable[bool | str]"]


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


class Authenticator:
    """Decides per request: `await check(request)` -> the user name, or a Denied."""

    def __init__(self, auth: Any) -> None:
        self.mode: str
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

    async def check(self, request: Request) -> Denied | str:
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
            user = self._basic(request)
            if user is None:
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

    def _basic(self, request: Request) -> str | None:
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
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
