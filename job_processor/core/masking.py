"""Masking of secrets in what people see (the dashboard, the CLI, the admin): payloads,
results, checkpoints, errors.

Two mechanisms, both pure:
- `Masker`: sensitive field *names* (the dashboard's and the CLI's defaults), masked wherever
  they appear, with the values they hold hidden in free text too;
- `redact` and friends: each definition's `sensitive_fields` *paths*, replaced by "[redacted]"
  in every job the admin returns (and the values they hold, in its error texts).

A field is sensitive when its name, lower-cased with `-` read as `_`, equals one of the
sensitive names, or starts with `name_` or ends with `_name` ("access_token", "x-api-key" and
"password_hash" are caught by "token", "api_key" and "password"; "author" is not caught by
"auth"). Values of sensitive fields are replaced by MASK wherever they sit (nested dicts and
lists included). In free text (errors, tracebacks, audit details) `field=value` and
`"field": "value"` pairs are masked, and so is every value the same job holds in a sensitive
field (an exception message that quotes a password shows the mask instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from .models import Job

MASK = "••••••"

#: Used when `create_dashboard(sensitive_fields=...)` is not given.
DEFAULT_SENSITIVE_FIELDS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "private_key",
    "access_key",
    "session",
    "ssn",
    "card_number",
    "cvv",
)

#: Secret values shorter than this are not searched for in free text (too many false hits).
MIN_SECRET_LENGTH = 4


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class Masker:
    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = tuple(sorted({_norm(f) for f in fields if f and f.strip()}))
        self._pair: re.Pattern[str] | None = None
        if self.fields:
            names = "|".join(re.escape(f) for f in sorted(self.fields, key=len, reverse=True))
            key = rf"(?:[\w-]*[_-])?(?:{names})(?:[_-][\w-]*)?\b"
            self._pair = re.compile(
                rf"""(?P<key>["']?\b{key}["']?\s*[:=]\s*)(?P<q>["']?)(?P<value>(?:(?:bearer|basic)\s+)?[^"'\s,;&}}\]]+)""",
                re.IGNORECASE,
            )

    def sensitive(self, key: Any) -> bool:
        if not isinstance(key, str):
            return False
        k = _norm(key)
        return any(k == f or k.startswith(f + "_") or k.endswith("_" + f) for f in self.fields)

    def value(self, value: Any) -> Any:
        """A copy of `value` with sensitive fields masked (dicts and lists walked)."""
        if isinstance(value, dict):
            return {
                k: (MASK if self.sensitive(k) and v is not None else self.value(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def secrets(self, *values: Any) -> set[str]:
        """The text of every value held in a sensitive field of `values` (to hide in text)."""
        out: set[str] = set()

        def walk(v: Any, hidden: bool) -> None:
            if isinstance(v, dict):
                for k, item in v.items():
                    walk(item, hidden or self.sensitive(k))
            elif isinstance(v, list | tuple):
                for item in v:
                    walk(item, hidden)
            elif hidden and v is not None and not isinstance(v, bool):
                text = str(v)
                if len(text) >= MIN_SECRET_LENGTH:
                    out.add(text)

        for value in values:
            walk(value, False)
        return out

    def text(self, text: str | None, secrets: Iterable[str] = ()) -> str | None:
        """Free text with `key=value` pairs of sensitive keys and the given secrets masked."""
        if not text:
            return text
        for secret in sorted(set(secrets), key=len, reverse=True):
            text = text.replace(secret, MASK)
        if self._pair is not None:
            text = self._pair.sub(lambda m: f"{m['key']}{m['q']}{MASK}", text)
        return text


def mask_job(masker: Masker, job: Job[Any]) -> dict[str, Any]:
    """A job as JSON with sensitive fields, and the secrets they hold, masked everywhere
    (payload, checkpoint, result, errors, history, the exit hook's error)."""
    data: dict[str, Any] = job.model_dump(mode="json")
    secrets = masker.secrets(data.get("payload"), data.get("state"), job.result)
    data["payload"] = masker.value(data.get("payload"))
    data["state"] = masker.value(data.get("state"))
    data["invalid_fields"] = masker.value(data.get("invalid_fields"))
    if data.get("output"):
        out = dict(data["output"])
        out["result"] = masker.value(out.get("result"))
        out["error"] = masker.text(out.get("error"), secrets)
        data["output"] = out
    data["history"] = [
        {**h, "error": masker.text(h.get("error"), secrets)}
        if isinstance(h.get("error"), str)
        else h
        for h in masker.value(data.get("history") or [])
    ]
    data["exit_hook_error"] = masker.text(data.get("exit_hook_error"), secrets)
    return data


# ---- redaction of the definitions' sensitive_fields (the admin, for every reader) --------

REDACTED = "[redacted]"


def redact_any(value: Any, paths: Sequence[str]) -> Any:
    """`redact`, also inside a list (a payload or checkpoint another program stored as one)."""
    if isinstance(value, list):
        return [redact_any(v, paths) for v in value]
    return redact(value, paths)


def redact(value: Any, paths: Sequence[str]) -> Any:
    """A copy of `value` (a payload or checkpoint) with each dotted path replaced by
    "[redacted]" (inside lists of objects too)."""
    if not paths or not isinstance(value, dict):
        return value
    out = dict(value)
    nested: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in out:
            continue
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            out[head] = REDACTED
    for head, rests in nested.items():
        inner = out[head]
        if isinstance(inner, list):
            out[head] = [redact_any(item, rests) for item in inner]
        elif inner != REDACTED:
            out[head] = redact(inner, rests)
    return out


def values_at(value: Any, paths: Sequence[str]) -> set[str]:
    """The text of every value at or under these dotted paths (inside lists of objects too),
    long enough to be looked for in free text (an error quoting a card number)."""
    out: set[str] = set()
    if isinstance(value, list):  # a list of objects (or a payload stored as a list)
        for item in value:
            out |= values_at(item, paths)
        return out
    if not isinstance(value, dict):
        return out
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in value:
            continue
        out |= values_at(value[head], [rest]) if rest else leaves(value[head])
    return out


def leaves(value: Any) -> set[str]:
    """The text of every scalar in `value` (walking dicts and lists) long enough to hide."""
    if isinstance(value, dict):
        return set().union(*(leaves(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(leaves(v) for v in value))
    if value is None or isinstance(value, bool) or len(str(value)) < MIN_SECRET_LENGTH:
        return set()
    return {str(value)}


def scrub(value: Any, hidden: set[str]) -> Any:
    """A copy of `value` with these values replaced by REDACTED in every string it holds."""
    if isinstance(value, str):
        for secret in sorted(hidden, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, hidden) for v in value]
    return value


def hide_in_texts(job: Job[Any], hidden: set[str]) -> None:
    """Replace these values in the job's error texts (its error, its runs' errors, the exit
    hook's error) by REDACTED."""
    if not hidden:
        return
    if job.output is not None:
        job.output.error = scrub(job.output.error, hidden)
    job.history = scrub(job.history, hidden)
    job.exit_hook_error = scrub(job.exit_hook_error, hidden)
