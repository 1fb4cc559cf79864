"""Templates, filters and flash messages of the dashboard."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from ..core.clock import as_utc
from ..core.errors import InvalidArgumentError
from ..core.masking import BIDI_CONTROLS, Masker, bidi_visible, masked_line, progress_message
from ..core.models import recorded, to_jsonable
from ..core.runs import run_outcome, runs_summary
from ..ops.admin import ActionResult
from ..ops.admin.inputs import parse_time

FLASH_COOKIE = "jp_dashboard_flash"
#: Lines of ids / reasons a flash message shows (the cookie holds about 4 KB).
FLASH_LINES = 12

ACTION_LABELS = {
    "jobs_retried": "Retry",
    "jobs_killed": "Kill",
    "jobs_run_now": "Run now",
    "jobs_deleted": "Delete",
    "jobs_purged": "Purge",
    "job_created": "New job",
    "job_duplicated": "Duplicate",
    "cron_triggered": "Trigger cron",
    "name_paused": "Pause",
    "name_resumed": "Resume",
    "event_replayed": "Replay",
    "events_replayed": "Replay",
}

STATUS_ORDER = (
    "waiting",
    "pending",
    "running",
    "paused",
    "finished",
    "errored",
    "killed",
    "skipped",
)


def root_of(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = abs(float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s" if s < 600 else f"{int(s // 60)} min"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def per_window(seconds: float | None) -> str:
    """A rate window for "10 per minute": second, minute, hour, day, or "90 s"."""
    if not seconds:
        return "—"
    for length, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds == length:
            return unit
    return human_duration(seconds)


def relative(when: dt.datetime, now: dt.datetime) -> str:
    """ "12 s ago", "3 min ago", "in 2 h", "5 d ago" (the page's script keeps it current)."""
    delta = (as_utc(when) - now).total_seconds()
    s = abs(delta)
    if s < 1:
        return "now"
    if s < 60:
        text = f"{int(s)} s"
    elif s < 3600:
        text = f"{int(s // 60)} min"
    elif s < 86400:
        text = f"{int(s // 3600)} h"
    else:
        text = f"{int(s // 86400)} d"
    return f"in {text}" if delta > 0 else f"{text} ago"


def absolute(when: dt.datetime) -> str:
    return as_utc(when).strftime("%Y-%m-%d %H:%M:%S UTC")


#: A tag (with its attribute values: a form field keeps its exact value) or a textarea (its text
#: is a form field's value too), in a rendered page; markupsafe escapes every `<` and `>` that
#: data holds, so the page's own tags are the only ones.
_TAGS = re.compile(r"(<textarea\b.*?</textarea>|<[^>]*>)", re.S | re.I)


#: A tooltip, in a tag: text shown to the reader (a cut-short payload or error in full).
_TITLE = re.compile(r'(\btitle=")([^"]*)(")')


def bidi_shown(html: str) -> str:
    """A rendered page whose text and tooltips show Unicode's bidirectional controls as
    escapes: a job named "report\u202efdp.exe" would read "reportexe.pdf". Other attributes
    (form values, links) and textareas as they are."""
    if not BIDI_CONTROLS.search(html):
        return html
    parts = _TAGS.split(html)
    return "".join(
        (part if part[:9].lower() == "<textarea" else _TITLE.sub(_title_shown, part))
        if i % 2
        else bidi_visible(part)
        for i, part in enumerate(parts)
    )


def _title_shown(found: re.Match[str]) -> str:
    return found[1] + bidi_visible(found[2]) + found[3]


def error_line(text: str | None) -> str:
    """The line that says what an error is: the first ("ValueError: could not parse invoice
    42", as a job's error is stored: "Type: message", then the traceback), or the last of a
    bare traceback (another writer's), whose end names the exception. Not the last line of
    any error: a multi-line message's last line is a fragment without the type."""
    lines = [x for x in (text or "").splitlines() if x.strip()]
    if not lines:
        return ""
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0]).strip()


def make_env(masker: Masker) -> Environment:
    env = Environment(
        loader=PackageLoader("job_processor.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def reltime(value: Any, now: dt.datetime | None = None) -> Markup:
        if not isinstance(value, dt.datetime) or recorded(value) is None:
            return Markup('<span class="muted">—</span>')
        now = now or dt.datetime.now(dt.UTC)
        iso = as_utc(value).isoformat()
        return Markup('<time datetime="{}" title="{}">{}</time>').format(
            iso, absolute(value), relative(value, now)
        )

    def masked(value: Any, secrets: Iterable[str]) -> Any:
        """Sensitive fields masked, and the secrets the value itself holds in them (and those
        given: the rest of the job's) masked wherever else they appear in it."""
        return to_jsonable(masker.masked(value, {*masker.secrets(value), *secrets}))

    def pretty(value: Any, secrets: Iterable[str] = ()) -> str:
        return json.dumps(masked(value, secrets), indent=2, ensure_ascii=False)

    def compact(value: Any, width: int = 80, secrets: Iterable[str] = ()) -> str:
        if not value:
            return ""
        text = json.dumps(masked(value, secrets), ensure_ascii=False)
        return text if len(text) <= width else text[: width - 1] + "…"

    def line_fields(fields: Any, width: int = 300, secrets: Iterable[str] = ()) -> str:
        """A log line's fields as `compact` shows a value, masked as every reader masks a
        line (fields folded into one cut text included: `masked_line`)."""
        shown = masked_line(masker, {"fields": fields}, {*masker.secrets(fields), *secrets})
        return compact(shown["fields"], width)

    def clip(value: Any, width: int = 60) -> str:
        """A value of a list's row (a dedup key, a tag) cut to `width` characters: one key of
        100,000 would otherwise make the row, and the page, that long."""
        text = str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    def shown_progress(value: Any) -> dict[str, Any] | None:
        """A job's `progress` as the bar shows it: written by report_progress it is shown as it
        is; one another program wrote (a fraction that is text, infinite or missing) never
        breaks the page: its fraction is a finite number from 0 to 1, or none; a total it
        left out is none (no total), not an empty one."""
        if not isinstance(value, dict):
            return None
        given = value.get("fraction")
        fraction = None
        if isinstance(given, int | float) and not isinstance(given, bool) and math.isfinite(given):
            fraction = min(max(float(given), 0.0), 1.0)
        return value | {"fraction": fraction, "total": value.get("total")}

    def segment(value: Any) -> str:
        """A name as one segment of a URL's path, "/" escaped too: a name holding "/../" cannot
        send a form to another name's path once the browser normalises the URL."""
        return quote(str(value), safe="")

    def short_id(value: Any) -> Markup:
        text = str(value or "")
        return Markup('<code class="id" title="{}">{}</code>').format(text, text[-8:])

    def badge(status: Any) -> Markup:
        text = str(getattr(status, "value", status))
        return Markup('<span class="badge s-{0}">{0}</span>').format(text)

    env.filters |= {
        "reltime": reltime,
        "outcome": run_outcome,
        "pretty": pretty,
        "compact": compact,
        "line_fields": line_fields,
        "clip": clip,
        "shown_progress": shown_progress,
        "short_id": short_id,
        "segment": segment,
        "badge": badge,
        "duration": human_duration,
        "per_window": per_window,
        "absolute": lambda v: absolute(v) if isinstance(v, dt.datetime) else "—",
        "mask_text": lambda v, secrets=(): masker.text(v, secrets),
        "error_line": error_line,
        "progress_message": lambda p, secrets=(): progress_message(masker, p, secrets),
        # a log line's message as every reader shows it (a secret cut by its end masked)
        "line_message": lambda line, secrets=(): masked_line(
            masker, {"message": line.get("message"), "cut": line.get("cut")}, secrets
        )["message"],
    }
    env.tests["job_id"] = is_job_id
    env.globals["STATUS_ORDER"] = STATUS_ORDER
    env.globals["runs_summary"] = runs_summary
    return env


def is_job_id(value: Any) -> bool:
    """A job id as the dashboard writes them (an audit entry's ids are job ids or names, a
    24-character name is no job id; a dependency another program wrote may be neither)."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{24}", value) is not None


def filter_form(
    filters: dict[str, str], times: Iterable[str], limit: str, sizes: Iterable[int]
) -> tuple[dict[str, str], list[int]]:
    """What a list's filter form shows of the filters the list applies, so that the next
    Filter keeps them: each time as a `datetime-local` input holds it (UTC, to the second: the
    browser wipes a link's `Z`, offset or bare date), and the page size among the choices."""
    shown = dict(filters)
    for key in times:
        try:
            when = parse_time(filters.get(key) or None, key)
        except InvalidArgumentError:
            continue  # the page says why; the input shows it as given
        if when is not None:
            shown[key] = as_utc(when).strftime("%Y-%m-%dT%H:%M:%S")
    choices = set(sizes)
    if limit.isascii() and limit.isdigit() and int(limit) > 0:  # not '²': int() refuses it
        choices.add(int(limit))
    return shown, sorted(choices)


def url(root: str, path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{root}{path}" + (f"?{query}" if query else "")


# ---- flash messages -------------------------------------------------------------------------


def flash_from_result(result: ActionResult, masker: Masker) -> dict[str, Any]:
    label = ACTION_LABELS.get(result.action, result.action)
    requested = set(result.detail.get("requested") or [])
    lines = [
        f"{jid}: kill requested (its worker stops it)" if jid in requested else jid
        for jid in result.changed[:FLASH_LINES]
    ]
    if len(result.changed) > FLASH_LINES:
        lines.append(f"… and {len(result.changed) - FLASH_LINES} more changed")
    lines += [  # queued, but no worker claims it
        f"{name!r} is paused: no worker runs it until it is resumed (Names page)"
        for name in result.detail.get("paused") or []
    ]
    for jid, why in list(result.skipped.items())[:FLASH_LINES]:
        lines.append(f"{jid}: {masker.text(why)}")
    if len(result.skipped) > FLASH_LINES:
        lines.append(f"… and {len(result.skipped) - FLASH_LINES} more skipped")
    skipped = len(result.skipped)
    if result.done:
        title = f"{label}: {result.count} changed" + (f", {skipped} skipped" if skipped else "")
        kind = "warn" if skipped else "ok"
    else:
        title = f"{label}: nothing changed" + (f" ({skipped} skipped)" if skipped else "")
        kind = "warn"
    return {"kind": kind, "title": title, "lines": lines, "by": result.actor}


def set_flash(response: Response, flash: dict[str, Any], path: str, secure: bool = False) -> None:
    raw = json.dumps(flash, ensure_ascii=False).encode()
    while len(raw) > 3000 and flash["lines"]:
        flash["lines"] = flash["lines"][:-1]
        raw = json.dumps(flash, ensure_ascii=False).encode()
    value = base64.urlsafe_b64encode(raw).decode()
    response.set_cookie(
        FLASH_COOKIE, value, path=path or "/", httponly=True, samesite="strict", secure=secure
    )


def read_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        flash = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError, RecursionError):  # a cookie set by hand or by another site
        return None
    if not isinstance(flash, dict) or not isinstance(flash.get("lines", []), list):
        return None
    return {
        "kind": flash["kind"] if flash.get("kind") in ("ok", "warn", "error") else "ok",
        "title": str(flash.get("title", "")),
        "lines": [str(x) for x in flash.get("lines", [])],
        "by": str(flash.get("by", "")),
    }
