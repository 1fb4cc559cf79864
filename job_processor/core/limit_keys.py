"""The text of a limit key: its `{field}` placeholders, how it is checked, and how a job's
payload fills it (a value's separators escaped, so that two value pairs never fill one key).
Pure."""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Mapping
from typing import Any

from bson import ObjectId


def key_fields(key: str) -> tuple[str, ...]:
    """The `{field}` placeholders of a limit key."""
    return tuple(f for _, f, _, _ in string.Formatter().parse(key) if f)


def key_separators(key: str) -> str:
    """The characters a filled value of this limit key has escaped (a backslash before each):
    those of the text between its placeholders, and the backslash; none for a key of one
    placeholder. So two value pairs never fill one key: in `pair:{region}-{tenant}`,
    ("eu-1", "acme") gives `pair:eu\\-1-acme` and ("eu", "1-acme") `pair:eu-1\\-acme`. (`Limit`
    refuses a text between placeholders that starts with a backslash: each such text then
    starts with a separator, whose first unescaped occurrence ends the value before it.)"""
    between = "".join(_betweens(key))
    return "".join(sorted(set(between) | {"\\"})) if len(key_fields(key)) > 1 else ""


_ESCAPE_LIKE = (
    "a backslash that starts the text between placeholders reads as the escape of a value's "
    "separators (two value pairs would fill one key): use another separator"
)


def _betweens(key: str) -> list[str]:
    """The whole text between each two placeholders of a key ('{{' and '}}' read as braces)."""
    parts = list(string.Formatter().parse(key))
    placed = [i for i, (_, f, _, _) in enumerate(parts) if f]
    return [
        "".join(parts[j][0] for j in range(a + 1, b + 1)) for a, b in itertools.pairwise(placed)
    ]


def fill_limit_key(key: str, payload: Any) -> str:
    """A limit key with its placeholders filled from the payload (`"tenant:{tenant_id}"` ->
    `"tenant:acme"`); the key itself when it has none. A missing or empty field, or one that
    is not a text, a number or an ObjectId, raises ValueError naming it."""
    fields = key_fields(key)
    if not fields:
        return key
    values: dict[str, str] = {}
    for f in fields:
        value = payload.get(f) if isinstance(payload, Mapping) else None
        if (
            value is None
            # a text, a number or an ObjectId only: a value read back the same from MongoDB
            # (a tuple comes back a list, a datetime without its microseconds); no bool (True
            # would be a key "tenant:True")
            or isinstance(value, bool)
            or not isinstance(value, str | int | float | ObjectId)
            or (isinstance(value, float) and not math.isfinite(value))  # NaN, inf
            or str(value) == ""
        ):
            raise ValueError(
                f"limit key {key!r} needs the payload field {f!r}"
                + (" (missing)" if value is None else f", got {value!r}")
                + f": give every job of this limit a {f} (a text, a number or an ObjectId)"
            )
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1.0 and 1 are the same tenant: one key, "tenant:1"
        values[f] = str(value)
    if escaped := key_separators(key):
        values = {f: "".join("\\" + c if c in escaped else c for c in v) for f, v in values.items()}
    return key.format(**values)


def check_key(v: str) -> str:
    """A limit key as given, or ValueError saying what to change."""
    if not v.strip() or "." in v or v.startswith("$"):
        raise ValueError("key must be a non-empty name without '.' or a leading '$'")
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v)]
    except ValueError as exc:
        raise ValueError(f"key {v!r}: {exc} (placeholders are {{field}})") from None
    betweens = _betweens(v)
    for (before, after), text in zip(itertools.pairwise(key_fields(v)), betweens, strict=True):
        if not text:  # "{a}{b}": where one value ends is unknown
            raise ValueError(
                f"key {v!r}: placeholders {{{before}}} and {{{after}}} need text between "
                f"them, e.g. '{{{before}}}:{{{after}}}'"
            )
    if any(text.startswith("\\") for text in betweens):  # reads as a value's escape
        fixed = v.replace("\\", "/")
        raise ValueError(f"key {v!r}: {_ESCAPE_LIKE}, e.g. {fixed!r}")
    for f, spec, conv in parsed:
        if f is None:
            continue
        if not f.isidentifier():
            raise ValueError(
                f"key {v!r}: placeholder {{{f}}} must name a top-level payload field, "
                "e.g. 'tenant:{tenant_id}'"
            )
        if spec or conv:  # a format spec or a conversion: keys that fail or change silently
            raise ValueError(
                f"key {v!r}: write the placeholder as {{{f}}}, without a '!' conversion "
                "or a ':' format (the value is used as it is)"
            )
    return v
