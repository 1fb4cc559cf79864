"""Allowed hosts: the `Host` a request names, and the `Origin` a form comes from, must be ones
this dashboard is served under (a defence against DNS rebinding: a page of another site whose
name was made to resolve to 127.0.0.1 sends `Host: evil.example`).

Patterns: an exact host name or address ("jobs.example.com", "127.0.0.1", "::1"), a suffix
("*.example.com"), or "*" (any host: the right choice only behind a proxy that checks it). Ports
are ignored. Default: loopback names only (`LOOPBACK`) when the dashboard has no authentication,
any host when it has one (its forms are then protected by their CSRF token, whatever their
`Origin`; a WebSocket of an extra route must then come from the dashboard's own origin, the
same host and port as its `Host`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from .auth import DashboardConfigError

#: What a browser on this machine calls a loopback-served dashboard.
LOOPBACK: tuple[str, ...] = ("localhost", "*.localhost", "127.0.0.1", "::1")


def host_of(value: str) -> str:
    """The host name of a `Host` header value or an origin's netloc, without the port."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[1 : value.find("]")] if "]" in value else value.strip("[")
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class AllowedHosts:
    def __init__(self, patterns: Sequence[str] | None, loopback_only: bool) -> None:
        if isinstance(patterns, str):
            raise DashboardConfigError(
                f"allowed_hosts must be a list of host names, e.g. [{patterns!r}]"
            )
        chosen = (
            list(patterns) if patterns is not None else (list(LOOPBACK) if loopback_only else ["*"])
        )
        for p in chosen:
            if (
                not isinstance(p, str)
                or not p.strip()
                or ("*" in p and p != "*" and not p.startswith("*."))
            ):
                raise DashboardConfigError(
                    f"allowed_hosts entries are host names, '*.example.com' or '*'; got {p!r}"
                )
        self.patterns = tuple(p.lower() if p.startswith("*") else host_of(p) for p in chosen)
        self.explicit = patterns is not None
        """Given by the caller (not the default): the public names behind a proxy."""

    @property
    def any(self) -> bool:
        return "*" in self.patterns

    def allows(self, host: str | None) -> bool:
        if self.any:
            return True
        if not host:
            return False
        name = host_of(host)
        return any(
            name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in self.patterns
        )

    def origin_allowed(self, origin: str | None) -> bool:
        """A form's `Origin` (absent: a browser that sends none, or not a browser)."""
        if origin is None:
            return True
        if origin == "null":
            return False
        return self.allows(urlsplit(origin).netloc)

    def names_public_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a form's `Origin` is judged by this explicit list rather than against the
        request's `Host`: behind a proxy that sends its own Host, the Origin is the public name,
        another host name than the Host's, on its scheme's default port. The same host name on
        another port, or a port given, is another origin, never a proxy's rewrite: the Origin
        must then be the Host (or X-Forwarded-Host), port included."""
        if not self.explicit or self.any or origin in (None, "null"):
            return False
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        name = host_of(parts.netloc)
        return port is None and bool(name) and name != host_of(host or "")

    def describe(self) -> str:
        return ", ".join(self.patterns)


def patterns_from(values: Iterable[str] | None) -> list[str] | None:
    """`--allowed-hosts a,b --allowed-hosts c` -> ["a", "b", "c"] (None when not given)."""
    if values is None:
        return None
    out = [h.strip() for v in values for h in v.split(",") if h.strip()]
    return out or None
