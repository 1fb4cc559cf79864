"""CSRF protection for the dashboard's forms (double-submit token, plus the Origin check).

Every page sets a random token in an HttpOnly, SameSite=Strict cookie scoped to the dashboard
and puts the same token in a hidden field of each form. A POST is accepted only when the field
equals the cookie (a page of another site can neither read the cookie nor set it) and, when the
browser sends an Origin header, that origin is the dashboard's own.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "jp_dashboard_csrf"
FIELD = "csrf_token"


def token_for(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (then `set_cookie` must be called)."""
    current = request.cookies.get(COOKIE, "")
    if len(current) >= 32 and current.isalnum():
        return current, False
    return secrets.token_hex(24), True


def set_cookie(response: Response, token: str, path: str, secure: bool = False) -> None:
    """`secure`: the page was served over HTTPS, so the browser never sends it over HTTP."""
    response.set_cookie(
        COOKIE, token, path=path or "/", httponly=True, samesite="strict", secure=secure
    )


def origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return parts.netloc.lower() in {h.lower() for h in hosts if h}


def verify(request: Request, submitted: str | None, origin_listed: bool = False) -> str | None:
    """None when the POST is genuine, else why it is refused. `origin_listed`: the caller
    judges the Origin by the dashboard's explicit `allowed_hosts` (behind a proxy that sends
    its own Host, the Origin is the public name, not the Host)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return "the form's security cookie is missing: reload the page and submit again"
    if not submitted or not hmac.compare_digest(cookie.encode(), str(submitted).encode()):
        return "the form's security token does not match: reload the page and submit again"
    if not origin_listed and not origin_ok(request):
        return f"the request came from another site ({request.headers.get('origin')})"
    return None
