"""Masking of secrets in what people see (the dashboard, the CLI, the admin): payloads,
results, checkpoints, errors; and the characters that would change how the rest is seen.

Two mechanisms, both pure:
- `Masker`: sensitive field *names* (the dashboard's and the CLI's defaults), masked wherever
  they appear, with the values they hold hidden in free text too;
- `redact` and friends: each definition's `sensitive_fields` *paths*, replaced by "[redacted]"
  in every job the admin returns (and the values they hold, in its error texts).

A field is sensitive when its name, lower-cased with `-` read as `_`, equals one of the
sensitive names, or starts with `name_` or ends with `_name` ("access_token", "x-api-key" and
"password_hash" are caught by "token", "api_key" and "password"; "author" is not caught by
"auth"); a name in parts (`.`, `:` or `/` between them) is also read by its last part
("spring.datasource.password" is a password, "token.count" is not a token). Values of
sensitive fields are replaced by MASK wherever they sit (nested dicts and lists included). In
free text (errors, tracebacks, audit details) `field=value` and `"field": "value"` pairs are
masked, and so is every value the same job holds in a sensitive field (an exception message
that quotes a password shows the mask instead).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidArgumentError
from .limits import mask_filled_key
from .models import Event, Job
from .sensitive_names import DEFAULT_SENSITIVE_FIELDS as DEFAULT_SENSITIVE_FIELDS
from .sensitive_names import fields_forms, key_forms, name_is_sensitive

MASK = "••••••"

#: Secret values shorter than this are not searched for in free text (too many false hits).
MIN_SECRET_LENGTH = 4


def sensitive_list(value: Any, *, paths: bool = False) -> tuple[str, ...]:
    """`sensitive_fields` as `Masker`, `Admin` and `create_dashboard` take it: a list (any
    iterable but a mapping) of non-empty texts, returned as a tuple. A lone text is refused,
    never read as its characters ("card" would hide fields named "c", "a", "r" and "d", and
    show "card"); so is anything else that is not such a list, or an entry that is no text,
    each with the fix (InvalidArgumentError). `paths`: dotted paths ("card.number"), no part
    empty, as `JobDef(sensitive_fields=...)` takes them."""
    kind, example = (
        ("payload keys or dotted paths", "'card.number'") if paths else ("names", "'iban'")
    )
    if isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        raise InvalidArgumentError(
            f"sensitive_fields must be a list of {kind}, got the {type(value).__name__} "
            f"{value!r:.60}, which would be read as its characters: use "
            + (
                f"[{text!r:.60}]"
                if paths  # added to the definitions' own paths
                else f"[*DEFAULT_SENSITIVE_FIELDS, {text!r:.60}] (a list replaces the default "
                "names, which would then be shown)"
            )
        )
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"sensitive_fields must be a list of {kind}, e.g. [{example}], got a "
            f"{type(value).__name__}"
        )
    out = tuple(value)
    for item in out:
        if (
            not isinstance(item, str)
            or not item.strip()
            or (paths and any(not part for part in item.split(".")))
        ):
            raise InvalidArgumentError(
                f"sensitive_fields entries must be {kind} (non-empty strings) such as {example}, "
                f"got {item!r:.60}"
            )
    return out


class Masker:
    def __init__(self, fields: Iterable[str]) -> None:
        """`fields`: the sensitive names (`sensitive_list`: a lone text is refused)."""
        self.fields = fields_forms(sensitive_list(fields))
        # "api_key" also reads "api-key", "X-Api-Key" (headers, command lines): a key holding
        # a sensitive name between separators (see `_pair_key`)
        self._delimited = tuple(f"_{f}_" for f in self.fields)
        # a text holding none of the names (separators dropped, any case) has no pair to mask
        self._bare = tuple(sorted({f.replace("_", "") for f in self.fields}))

    def sensitive(self, key: Any) -> bool:
        if not isinstance(key, str):
            return False
        return name_is_sensitive(key, self.fields)

    def value(self, value: Any) -> Any:
        """A copy of `value` with sensitive fields masked (dicts and lists walked), and the
        `key=value` pairs of sensitive keys inside its strings (a webhook's response excerpt, a
        memo quoting `password=...`)."""
        if isinstance(value, str):
            return self.pairs(value)
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

    def _pair_key(self, key: str) -> bool:
        """A key of free text's `key=value` pairs that is sensitive: one of the names, alone
        or between separators (`password`, `db_password`, `X-Api-Key`, `api_key_id`,
        `accessToken`)."""
        return any(f in f"_{k}_" for k in key_forms(key) for f in self._delimited)

    def text(self, text: str | None, secrets: Iterable[str] = ()) -> str | None:
        """Free text with `key=value` pairs of sensitive keys and the given secrets masked.
        Linear in the text's length (an error quoting `auth-auth-auth-...` must not hold the
        event loop): keys are found by one pattern anchored at the start of each word, and
        only a sensitive one's value is read (`_value_end`)."""
        if not text:
            return text
        if not isinstance(text, str):  # a field another program wrote (progress message: 5)
            text = str(text)
        return self.pairs(scrub(text, set(secrets), MASK))

    def pairs(self, text: str) -> str:
        """`text` with the values of its `key=value` pairs of sensitive keys masked (`text`)."""
        if not self._delimited or ("=" not in text and ":" not in text):
            return text
        squeezed = text.casefold().replace("_", "").replace("-", "")
        if not any(name in squeezed for name in self._bare):  # C-speed: most strings
            return text
        out: list[str] = []
        pos = 0
        while (key := _PAIR_KEY.search(text, pos)) is not None:
            start = key.end()
            if not self._pair_key(key["name"]):
                out.append(text[pos:start])
                pos = start
                continue
            if "\n" in text[key.end("name") : start] and _PAIR_KEY.match(text, start):
                out.append(text[pos:start])  # `credentials:` then a nested `password: ...`
                pos = start  # line: no value of its own; the next key is read on its own
                continue
            end, quote = _value_end(text, start)
            out.append(text[pos:start] + (f"{quote}{MASK}{quote}" if end > start else ""))
            pos = max(end, start)
        out.append(text[pos:])
        return "".join(out)

    def masked(self, value: Any, secrets: Iterable[str] = ()) -> Any:
        """`value` (a payload, a checkpoint, a result, an event's payload) with its sensitive
        fields masked, and every one of `secrets` masked inside each string it holds (a result
        that echoes a password the payload holds in a sensitive field)."""
        return scrub(self.value(value), set(secrets), MASK)


#: A key of a `key=value` / `key: value` / `"key": "value"` pair in free text: a run of word
#: characters and hyphens that starts a word (so each run is tried once: linear), its optional
#: quotes, then `=` or `:`.
_PAIR_KEY = re.compile(r"""["']?(?<![\w-])(?P<name>[\w-]+)["']?\s*[:=]\s*""")
#: An unquoted value: `Bearer`/`Basic` and the token, or up to a space or separator.
_UNQUOTED = re.compile(r"""(?:(?:bearer|basic)\s+)?[^"'\s,;&}\]]+""", re.IGNORECASE)
_CLOSING = {"[": "]", "{": "}"}
#: A quoted value up to its closing quote, a backslash escaping, at most 8 KiB (C speed); a
#: quote right before a word does not close it (it opens the next line's `token = "..."`).
_QUOTED = {q: re.compile(rf"{q}(?:[^{q}\\]|\\.){{0,8192}}{q}(?!\w)", re.DOTALL) for q in ("'", '"')}


def _value_end(text: str, start: int) -> tuple[int, str]:
    """Where the value that starts at `start` ends, and its quote ("" if none): a quoted one
    at its closing quote (a backslash escapes; unclosed: the end of the text), a list or an
    object at its closing bracket (nested ones and quoted brackets skipped), else
    `_UNQUOTED`'s match. One pass over the value."""
    if start >= len(text):
        return start, ""
    first = text[start]
    if first in "\"'":  # to its closing quote (a PEM block's spans lines); none: the line's end
        closed = _QUOTED[first].match(text, start)
        if closed is not None:
            return closed.end(), first
        line_end = text.find("\n", start)
        return (len(text) if line_end < 0 else line_end), first
    if first in _CLOSING:
        depth, quote, i = 0, "", start
        while i < len(text):
            c = text[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1, ""
            i += 1
        return len(text), ""
    found = _UNQUOTED.match(text, start)
    return (found.end() if found else start), ""


def mask_job(masker: Masker, job: Job[Any], *carried: Any) -> dict[str, Any]:
    """A job as JSON with sensitive fields, and the secrets they hold, masked everywhere
    (payload, checkpoint, result, errors, history, the exit hook's error, and the fields
    another program added to the output, the progress or a log line). `carried`: what else
    the job's run saw and may echo (a delivery job's event payload): its secrets are masked."""
    data: dict[str, Any] = job.model_dump(mode="json")
    payload = data.get("payload")
    secrets = masker.secrets(payload, data.get("state"), job.result, *carried)
    for field in ("payload", "state", "invalid_fields"):
        data[field] = masker.masked(data.get(field), secrets)
    if data.get("output"):  # every field: another program may have added its own
        out = _masked_extra(masker, data["output"], OUTPUT_OWN, secrets)
        out["result"] = masker.masked(out.get("result"), secrets)
        out["error"] = masker.text(out.get("error"), secrets)
        data["output"] = out
    data["history"] = [
        {**h, "error": masker.text(h.get("error"), secrets)}
        if isinstance(h.get("error"), str)
        else h
        for h in masker.masked(data.get("history") or [], secrets)
    ]
    data["exit_hook_error"] = masker.text(data.get("exit_hook_error"), secrets)
    # filled from the payload: a value of a field masked here is masked in it too
    # and a secret the job holds elsewhere (a checkpoint's session id repeated in a plain field)
    data["limit_key"] = mask_filled_key(
        data.get("limit_key"), payload, masker.sensitive, MASK, held=secrets
    )
    # a line's or the progress's other fields (another program's) masked as a payload's
    data["logs"] = [
        masked_line(masker, _masked_extra(masker, line, LINE_OWN, secrets), secrets)
        for line in data.get("logs") or []
    ]
    if isinstance(data.get("progress"), dict):
        progress = _masked_extra(masker, data["progress"], PROGRESS_OWN, secrets)
        progress["message"] = progress_message(masker, data["progress"], secrets)
        data["progress"] = progress
    return data


#: The fields job-processor writes in a job's output, log lines and progress: numbers,
#: times and levels shown as they are (the job page shows them so), or masked on their own.
#: Any other field (another program's) is masked as a payload is.
OUTPUT_OWN = frozenset({"result", "error", "duration_ms"})
LINE_OWN = frozenset({"at", "run", "level", "message", "fields", "cut"})
PROGRESS_OWN = frozenset({"done", "total", "fraction", "message", "at", "cut"})


def _masked_extra(
    masker: Masker, value: dict[str, Any], own: frozenset[str], secrets: Iterable[str]
) -> dict[str, Any]:
    """`value` with the fields another program added (not in `own`) masked as a payload."""
    extra = masker.masked({k: v for k, v in value.items() if k not in own}, secrets)
    return {k: (v if k in own else extra[k]) for k, v in value.items()}


def progress_message(masker: Masker, progress: dict[str, Any], secrets: Iterable[str]) -> Any:
    """A progress message as shown: masked like an error, and, cut to its 500 characters, a
    secret cut by its end masked too (as in a cut log line)."""
    return masked_line(
        masker, {"message": progress.get("message"), "cut": progress.get("cut")}, secrets
    )["message"]


def masked_line(masker: Masker, line: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """A job's log line as shown: its message masked like an error, its fields like a payload
    (fields too big for a line are one cut JSON text: see `masked_folded`)."""
    out = dict(line)
    secrets = set(secrets)
    if isinstance(out.get("message"), str):
        out["message"] = masker.text(out["message"], secrets)
        if out.get("cut") and out["message"].endswith("…"):  # cut to fit: a secret cut in it
            out["message"] = masked_folded(out["message"], secrets)
    if "fields" in out:
        out["fields"] = masker.masked(out["fields"], secrets)
        folded = out["fields"]
        if (
            isinstance(folded, dict)
            and list(folded) == ["fields"]
            and isinstance(folded["fields"], str)
        ):
            out["fields"] = {"fields": masked_folded(folded["fields"], secrets)}
    return out


def masked_folded(text: str, secrets: set[str], mask: str = MASK) -> str:
    """Fields folded into one cut JSON text (`core.notes.log_line`): the secrets also as JSON
    writes them (a quote, a backslash, or, in lines written before, any non-ASCII character
    escaped), and one cut by the end of the text ("...hunter2-ve…") masked."""
    forms = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
    forms |= {json.dumps(s)[1:-1] for s in set(forms)} | {
        json.dumps(s, ensure_ascii=False)[1:-1] for s in set(forms)
    }
    text = scrub(text, forms, mask)
    if text.endswith("…"):
        body = text[:-1]
        for form in sorted(forms, key=len, reverse=True):
            cut = next(
                (
                    k
                    for k in range(len(form) - 1, MIN_SECRET_LENGTH - 1, -1)
                    if body.endswith(form[:k])
                ),
                None,
            )
            if cut is not None:
                return body[:-cut] + mask + "…"
    return text


#: What the worker's own log masks (log lines a handler writes, its errors): the default names.
LOG_MASKER = Masker(DEFAULT_SENSITIVE_FIELDS)


def log_secrets(values: Sequence[Any], paths: Sequence[str] = ()) -> set[str]:
    """The secrets the worker's own log hides in free text: what `values` (the job's payload,
    its checkpoint) hold in a field of the default sensitive names or at the definition's
    `sensitive_fields` `paths`."""
    hidden = LOG_MASKER.secrets(*values)
    for value in values:
        hidden |= values_at(value, paths)
    return hidden


def log_text(text: str, values: Sequence[Any], paths: Sequence[str] = ()) -> str:
    """Free text (a handler's error) as the worker's own log shows it: `key=value` pairs of the
    default sensitive names and the job's secrets (`log_secrets`) masked."""
    return LOG_MASKER.text(text, log_secrets(values, paths)) or text


def task_error(
    doc: dict[str, Any], paths: Sequence[str] = (), masker: Masker | None = None
) -> str | None:
    """A cron task's error as the crons' listings show it (`status`, `crons list`,
    `get_status()`): masked as the worker's log masks it (default sensitive names, the task's
    payload's secrets), as the job's own page would."""
    output = doc.get("output")
    error = output.get("error") if isinstance(output, dict) else None  # another program's
    if not isinstance(error, str):
        return None
    values = (doc.get("payload"), doc.get("state"))
    text = log_text(error, values, paths)
    if masker is not None:
        text = masker.text(text, masker.secrets(*values)) or text
    return text


def mask_event(masker: Masker, event: Event) -> dict[str, Any]:
    """An event as JSON with its payload's sensitive fields, and the secrets they hold, masked
    everywhere: the payload, each delivery's result, error and webhook attempts."""
    data: dict[str, Any] = event.model_dump(mode="json", exclude={"delivery"})
    secrets = masker.secrets(data.get("payload"), *[d.result for d in event.deliveries])
    data["payload"] = masker.masked(data.get("payload"), secrets)
    data["deliveries"] = [
        masker.masked(d, secrets) | {"error": masker.text(d.get("error"), secrets)}
        for d in data.get("deliveries") or []
    ]
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


def scrub(value: Any, hidden: set[str], mask: str = REDACTED) -> Any:
    """A copy of `value` with these values replaced by `mask` in every string it holds, and
    every number that is one of them (a card number echoed as a number) replaced by `mask`."""
    if not hidden:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return mask if str(value) in hidden else value
    if isinstance(value, str):
        for secret in sorted(hidden, key=len, reverse=True):
            value = value.replace(secret, mask)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, hidden, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, hidden, mask) for v in value]
    return value


#: What a delivery whose event is gone shows of its texts (`hide_every_text`).
EVENT_GONE = "[hidden: its event is gone (keep_events), and with it what to mask here]"


def hide_every_text(job: Job[Any], note: str = EVENT_GONE) -> None:
    """Replace every text the job's runs wrote (result, errors, log lines, progress message)
    by `note`: a delivery whose event is gone may quote the event's sensitive values, which
    can no longer be known."""
    if job.output is not None:
        job.output.error = note if job.output.error is not None else None
        job.output.result = note if job.output.result is not None else None
    job.history = [
        {**h, "error": note} if isinstance(h, dict) and h.get("error") is not None else h
        for h in job.history
    ]
    job.exit_hook_error = note if job.exit_hook_error is not None else None
    job.logs = [
        {k: v for k, v in line.items() if k != "fields"} | {"message": note}
        if isinstance(line, dict)
        else line
        for line in job.logs
    ]
    if isinstance(job.progress, dict) and job.progress.get("message") is not None:
        job.progress = job.progress | {"message": note}


def hide_in_texts(job: Job[Any], hidden: set[str]) -> None:
    """Replace these values by REDACTED wherever the job holds them: its error texts (its
    error, its runs' errors, the exit hook's error), its result, and the rest of its payload
    and checkpoint (a field that is not sensitive but quotes one that is)."""
    if not hidden:
        return
    if job.output is not None:
        job.output.error = scrub(job.output.error, hidden)
        job.output.result = scrub(job.output.result, hidden)
    job.history = scrub(job.history, hidden)
    job.exit_hook_error = scrub(job.exit_hook_error, hidden)
    job.logs = [_redacted_line(line, hidden) for line in job.logs]
    job.progress = _redacted_line(job.progress, hidden)
    job.payload = scrub(job.payload, hidden)
    job.state = scrub(job.state, hidden)
    # a limit key filled from the payload: each hidden value as the key spells it (escaped)
    job.limit_key = mask_filled_key(job.limit_key, None, lambda _: False, REDACTED, held=hidden)


def _redacted_line(line: Any, hidden: set[str]) -> Any:
    """A log line or a progress record with these values redacted, one cut by the end of its
    message (`cut`) or of its folded fields too (`masked_folded`)."""
    out = scrub(line, hidden)
    if not isinstance(out, dict):
        return out
    if out.get("cut") and isinstance(out.get("message"), str):
        out["message"] = masked_folded(out["message"], hidden, REDACTED)
    folded = out.get("fields")
    if (
        isinstance(folded, dict)
        and list(folded) == ["fields"]
        and isinstance(folded["fields"], str)
    ):
        out["fields"] = {"fields": masked_folded(folded["fields"], hidden, REDACTED)}
    return out


#: Characters never printed as they are: C0 controls but the newline and the tab (an escape
#: sequence can rewrite an operator's terminal, a carriage return hide what came before), DEL,
#: C1 controls, and Unicode's bidirectional controls (they display "name\u202egnp.exe" as
#: "nameexe.png"). Shown as their `\uXXXX` escape, which is also valid inside a JSON string.
_HIDDEN = [
    *(c for c in range(0x20) if chr(c) not in "\n\t"),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_VISIBLE = {c: f"\\u{c:04x}" for c in _HIDDEN}
#: The bidirectional controls alone.
BIDI_CONTROLS = re.compile("[" + "".join(chr(c) for c in _HIDDEN if c > 0xA0) + "]")
_BIDI = {c: f"\\u{c:04x}" for c in _HIDDEN if c > 0xA0}


def visible(text: str) -> str:
    """`text` with its control and bidirectional-control characters shown as escapes (the
    CLI's output: what a job's name, error or log line holds cannot act on the terminal)."""
    return text.translate(_VISIBLE)


def bidi_visible(text: str) -> str:
    """`text` with only its bidirectional controls shown as escapes (the dashboard's pages:
    HTML shows the other controls harmlessly)."""
    return text.translate(_BIDI)
