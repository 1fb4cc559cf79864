"""Cluster-wide limits: pure maths of a limit document, and the checks on definitions.

A limit lives in one document of `<prefix>limits`, `_id` = its key:

    {_id, rev, running, holders: {<run id>: {worker_id, at_ms}}, starts: {<run id>: <epoch ms>},
     concurrency, rate, per_seconds}

Taking slots is a compare-and-set on `rev`: read the document, decide here how many slots may be
taken (`plan`), write with `{_id, rev}` as the filter (another worker that got there first makes it
match nothing: read again). A key with no document yet is created holding its first slots
(`created`): the unique `_id` makes that insert the compare-and-set, and its `rev` starts at the
insert's epoch ms, never a value of a removed document of the same key. Giving one back is a
single update whose filter requires the holder to be there (`holders.<run id>` exists), so it
happens once however many processes try. Holders and starts are maps keyed by run id
(nx-27017's `$pull` with a condition removes every element).
`starts` keeps the starts of the last `per_seconds`: at most `rate` of them, a sliding window.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from .definitions import JobDef, Limit
from .errors import InvalidDefinitionError
from .limit_keys import key_fields, key_separators

Doc = dict[str, Any]


@dataclass(frozen=True)
class Grant:
    slots: int
    """How many slots may be taken now."""
    retry_at: dt.datetime | None = None
    """Rate-limited: when the next start will be allowed (None: wait for a slot to free)."""


def recent_starts(doc: Doc, limit: Limit, now: dt.datetime) -> dict[str, int]:
    """The starts inside the sliding window ending now."""
    if limit.rate is None or limit.per_seconds is None:
        return {}
    since = _ms(now) - int(limit.per_seconds * 1000)
    starts = doc.get("starts")
    stamps = starts.items() if isinstance(starts, Mapping) else ()
    return {str(k): int(t) for k, t in stamps if stored_number(t) is not None and int(t) > since}


def running(doc: Doc) -> int:
    """The slots a limit document says are held. Another program's damaged `running` (text,
    a document) reads as the number of its holders, as its slots are given back one by one."""
    held = stored_number(doc.get("running"))
    if held is not None:
        return int(held)
    holders = doc.get("holders")
    return len(holders) if isinstance(holders, Mapping) else 0


def plan(doc: Doc, limit: Limit, want: int, now: dt.datetime) -> Grant:
    """How many of `want` slots the limit allows now (pure)."""
    free = want
    if limit.concurrency is not None:
        free = min(free, limit.concurrency - running(doc))
    retry_at = None
    if limit.rate is not None and limit.per_seconds is not None:
        starts = sorted(recent_starts(doc, limit, now).values())
        room = limit.rate - len(starts)
        if room <= 0:
            # the oldest start that must leave the window before another may begin
            oldest = starts[len(starts) - limit.rate]
            retry_at = _at(oldest + int(limit.per_seconds * 1000))
        free = min(free, room)
    return Grant(max(free, 0), retry_at if free <= 0 else None)


def taken(
    doc: Doc,
    limit: Limit,
    run_ids: list[str],
    worker_id: str,
    now: dt.datetime,
    template: str | None = None,
) -> Doc:
    """The compare-and-set update that takes one slot per run id (and records their starts).
    `template`: the per-value limit's key this one was filled from (its document is removed
    once idle: no run, no start left in its window, after `idle_after_ms`). A document a
    per-value limit made is kept so by a static limit of its key too (`check_limits` lets
    them share it only with the same settings): its starts are not removed with it."""
    if template is None and isinstance(doc.get("template"), str):
        template = doc["template"]
    fields: Doc = {
        "rev": int(stored_number(doc.get("rev")) or 0) + 1,
        "concurrency": limit.concurrency,
        "rate": limit.rate,
        "per_seconds": limit.per_seconds,
    }
    if template is not None:
        fields["template"] = template
        fields["idle_after_ms"] = _ms(now) + int((limit.per_seconds or 0) * 1000)
    if limit.rate is not None:
        starts = recent_starts(doc, limit, now) | {rid: _ms(now) for rid in run_ids}
        fields["starts"] = starts
        if template is not None:  # found without reading the starts (`rate_full_ms`)
            fields["rate_full_ms"] = rate_full_ms(starts, limit)
    holders = {rid: {"worker_id": worker_id, "at_ms": _ms(now)} for rid in run_ids}
    if not isinstance(doc.get("holders", {}), Mapping):  # another program's damage: replaced
        fields["holders"] = holders
    else:
        fields |= {f"holders.{rid}": holder for rid, holder in holders.items()}
    if stored_number(doc.get("running")) is None:  # not a number: $inc would fail, set it (the rev
        fields["running"] = running(doc) + len(run_ids)  # compare-and-set makes it safe)
        return {"$set": fields}
    return {"$set": fields, "$inc": {"running": len(run_ids)}}


def rate_full_ms(starts: Mapping[str, int], limit: Limit) -> int:
    """Until when (epoch ms) these starts leave the rate no room (0: it has room now). Kept on
    a per-value key's document, so that the claim finds the rate-full keys of a template in
    an index, without reading every key's starts."""
    if limit.rate is None or limit.per_seconds is None or len(starts) < limit.rate:
        return 0
    ordered = sorted(starts.values())
    return ordered[len(ordered) - limit.rate] + int(limit.per_seconds * 1000)


#: A key's document before its first slot is taken.
EMPTY: Doc = {"rev": 0, "running": 0, "holders": {}, "starts": {}}


def created(
    key: str,
    limit: Limit,
    run_ids: list[str],
    worker_id: str,
    now: dt.datetime,
    template: str | None = None,
) -> Doc:
    """A new limit document that already holds one slot per run id: inserted when the key has
    no document yet, its unique `_id` makes the insert the compare-and-set (a per-value limit
    creates one for each new key: two commands, a read and this insert, instead of four)."""
    update = taken(EMPTY, limit, run_ids, worker_id, now, template)
    doc: Doc = {"_id": key, "running": len(run_ids), "holders": {}, "starts": {}}
    for field, value in update["$set"].items():
        if field.startswith("holders."):
            doc["holders"][field.removeprefix("holders.")] = value
        else:
            doc[field] = value
    # not 1: a per-value key's document removed when idle and created again must not give a
    # `rev` that a slow reader of the old one still holds (its compare-and-set would match)
    doc["rev"] = _ms(now)
    return doc


def check_limits(definitions: Mapping[str, JobDef]) -> dict[str, Limit]:
    """Definitions naming the same key must agree on it; so must two keys that can be filled
    to the same text (`api:acme` and `api:{tenant}`: one document, one limit). Returns
    key -> Limit."""
    out: dict[str, Limit] = {}
    for name, d in definitions.items():
        if d.limit is None:
            continue
        known = out.setdefault(d.limit.key, d.limit)
        if known != d.limit:
            raise InvalidDefinitionError(
                f"job {name!r}: limit {d.limit.key!r} is declared differently by another job "
                f"({known.model_dump()} vs {d.limit.model_dump()}): declare it once, e.g. "
                f"MAIL = Limit(key={d.limit.key!r}, ...), and use it in each JobDef"
            )
    keys = sorted(out)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if _settings(out[a]) != _settings(out[b]) and could_meet(a, b):
                raise InvalidDefinitionError(
                    f"limits {a!r} and {b!r} can name the same key (a payload value may fill "
                    f"one to the other's text), which would be one limit with two settings "
                    f"({_settings(out[a])} vs {_settings(out[b])}): give them keys that "
                    f"cannot meet (e.g. a different prefix), or the same settings"
                )
    return out


def _settings(limit: Limit) -> dict[str, Any]:
    return {"concurrency": limit.concurrency, "rate": limit.rate, "per_seconds": limit.per_seconds}


def could_meet(a: str, b: str) -> bool:
    """Whether limit keys `a` and `b` can be filled to the same text (a static key is one
    text). A placeholder stands for one value of one character or more; in a key of several
    placeholders a value's separators (`key_separators`) come escaped, a backslash before
    each: there it is a run of characters other than those, or of a backslash and one of
    them. A walk of both keys at once, one character at a time, each character a constraint
    ("one of", or "none of", a set); a position is (token, inside a value that has one
    character already, just after a backslash)."""
    ta, tb = _tokens(a), _tokens(b)
    ea, eb = frozenset(key_separators(a)), frozenset(key_separators(b))
    State = tuple[int, bool, bool]
    Char = tuple[bool, frozenset[str]]  # (True: one of, False: none of) the set

    def closure(state: State) -> list[State]:  # a value with a whole character may end here
        i, inside, escaping = state
        return [state, (i + 1, False, False)] if inside and not escaping else [state]

    def moves(
        tok: list[str | None], seps: frozenset[str], state: State
    ) -> list[tuple[Char, State]]:
        i, inside, escaping = state
        if escaping:  # the character a backslash escapes
            return [((True, seps), (i, True, False))]
        if inside or (i < len(tok) and tok[i] is None):
            out: list[tuple[Char, State]] = [((False, seps), (i, True, False))]
            if seps:
                out.append(((True, frozenset("\\")), (i, inside, True)))
            return out
        return [((True, frozenset(tok[i] or "")), (i + 1, False, False))] if i < len(tok) else []

    def meet(x: Char, y: Char) -> bool:
        (x_in, xs), (y_in, ys) = x, y
        if x_in and y_in:
            return bool(xs & ys)
        if x_in or y_in:
            return bool((xs - ys) if x_in else (ys - xs))
        return True  # none of two finite sets: some character is in neither

    todo: list[tuple[State, State]] = [((0, False, False), (0, False, False))]
    seen: set[tuple[State, State]] = set()
    while todo:
        pair = todo.pop()
        if pair in seen:
            continue
        seen.add(pair)
        if pair == ((len(ta), False, False), (len(tb), False, False)):
            return True
        for ca, na in moves(ta, ea, pair[0]):
            for cb, nb in moves(tb, eb, pair[1]):
                if meet(ca, cb):
                    todo += [(x, y) for x in closure(na) for y in closure(nb)]
    return False


def _tokens(key: str) -> list[str | None]:
    """A limit key's characters, None for each placeholder (`{{` and `}}` read as braces)."""
    out: list[str | None] = []
    for text, f, _, _ in string.Formatter().parse(key):
        out += [*text, *([None] if f else [])]
    return out


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


#: How many limit keys status pages and metrics show one by one.
TOP_KEYS = 20


def top_usage(
    docs: list[Doc], now: dt.datetime, defined: set[str] | None = None, most: int = TOP_KEYS
) -> list[dict[str, Any]]:
    """The limits in use for people and metrics: every static limit (`defined`: the keys the
    registered definitions name; another key shows only while it has runs or starts in its
    window: a limit a deploy removed; a key named as it is shows as a static limit, even on a
    document a per-value limit filled to it), the `most` busiest keys of the per-value
    limits, and the rest of those folded into one row per template (`key` "tenant:{tenant_id}
    (other keys)", a fixed name: a metric label that does not change with the count; `keys`:
    how many). A folded row adds its keys up (`added`), each with its own settings. The
    number of rows stays bounded."""
    usages = [
        limit_usage(d, now)
        | ({"template": d["template"]} if isinstance(d.get("template"), str) else {})
        for d in docs
    ]
    if defined is not None:
        usages = [
            u
            for u in usages
            if u.get("template") or u["key"] in defined or u["running"] or u["started_in_window"]
        ]
    usages.sort(key=lambda u: (-u["running"], -u["started_in_window"], str(u["key"])))
    # a key a definition names as it is is a static limit, and always shown as one, even
    # on a document a per-value limit of the same key made (`api:acme` and `api:{tenant}`)
    named = {k for k in defined or () if not _templated(k)}
    for u in usages:
        if u["key"] in named:
            u.pop("template", None)
    static = [u for u in usages if not u.get("template")]
    values = [u for u in usages if u.get("template")]
    folded: dict[str, dict[str, Any]] = {}
    for u in values[most:]:
        name = str(u["template"])
        row = folded.get(name)
        folded[name] = u | {"keys": 1, "varies": []} if row is None else added(row, u)
    for row in folded.values():
        row["key"] = f"{row['template']} (other keys)"
    return static + values[:most] + list(folded.values())


def _templated(key: str) -> bool:
    try:
        return bool(key_fields(key))
    except ValueError:  # not a key a Limit accepts: no placeholder to fill
        return False


def added(a: Doc, b: Doc) -> Doc:
    """Two rows of limit usage as one (a folded row; keys the metrics mask alike), each key
    with its own settings (a deploy that changed a per-value limit leaves keys of both):
    slots running, starts (each key's in its own window) and `keys` add up; `concurrency` is
    the sum of the keys' (None when one has none: no bound); `rate` the sum of theirs when
    every key has one over the same window (`per_seconds`), else rate and per_seconds are
    None; `varies` names the settings ("concurrency", "rate") that differ between the keys."""
    ka, kb = int(a.get("keys") or 1), int(b.get("keys") or 1)
    varies = set(a.get("varies") or ()) | set(b.get("varies") or ())
    if _differ(a.get("concurrency"), ka, b.get("concurrency"), kb):
        varies.add("concurrency")
    if a.get("per_seconds") != b.get("per_seconds") or _differ(
        a.get("rate"), ka, b.get("rate"), kb
    ):
        varies.add("rate")
    one_window = (
        a.get("rate") is not None
        and b.get("rate") is not None
        and a.get("per_seconds") == b.get("per_seconds")
    )
    concurrency = (
        None
        if a.get("concurrency") is None or b.get("concurrency") is None
        else a["concurrency"] + b["concurrency"]
    )
    return a | {
        "running": a["running"] + b["running"],
        "concurrency": concurrency,
        "started_in_window": a["started_in_window"] + b["started_in_window"],
        "rate": a["rate"] + b["rate"] if one_window else None,
        "per_seconds": a["per_seconds"] if one_window else None,
        "keys": ka + kb,
        "varies": sorted(varies),
    }


def _differ(x: Any, kx: int, y: Any, ky: int) -> bool:
    """Whether a setting differs between two rows of `kx` and `ky` keys (`x`, `y`: the sums
    over their keys, each row's keys alike)."""
    if x is None or y is None:
        return (x is None) != (y is None)
    return bool(x * ky != y * kx)


def limit_usage(doc: Doc, now: dt.datetime) -> dict[str, Any]:
    """What a limit document says, for people: slots in use and starts in the window. A field
    another program wrote with a wrong type reads as missing (a page, never an error)."""
    per = stored_number(doc.get("per_seconds"))
    since = (now.timestamp() - per) * 1000 if per else None
    starts = doc.get("starts")
    stamps = [
        t
        for t in (starts.values() if isinstance(starts, Mapping) else ())
        if stored_number(t) is not None
    ]
    return {
        "key": doc["_id"],
        "running": int(stored_number(doc.get("running")) or 0),
        "concurrency": stored_number(doc.get("concurrency")),
        "started_in_window": sum(1 for t in stamps if since is not None and t > since),
        "rate": stored_number(doc.get("rate")),
        "per_seconds": per,
    }


def stored_number(value: Any) -> Any:
    """A stored number as it is; None for anything else (text, a bool, NaN, infinity, a
    document)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def mask_limit_keys(
    limits: list[dict[str, Any]], sensitive: Callable[[str], bool], mask: str
) -> list[dict[str, Any]]:
    """The limits as shown where `sensitive` field names are masked: a per-value key filled
    from a template whose placeholder names such a field (`acct:{iban}` with "iban" masked)
    shows `mask` in its place (`acct:••••••`), by its own template (`top_usage` gives each
    row its own). A JobDef refuses its own sensitive fields and the default names there; a
    dashboard may mask more (`create_dashboard(sensitive_fields=...)`). Static limits and
    folded rows are shown as they are; a key its template does not read is shown as the
    mask alone."""
    out = []
    for row in limits:
        key, template = row.get("key"), row.get("template")
        if not isinstance(key, str) or not isinstance(template, str) or "keys" in row:
            out.append(row)
            continue
        parts = list(string.Formatter().parse(template))
        fields = [f for _, f, _, _ in parts if f]
        if not any(sensitive(f) for f in fields):
            out.append(row)
            continue
        # literal parts as written ({{ and }} read as braces); a masked value matched whole;
        # in a key of several placeholders, a value holds its separators escaped
        escaped = key_separators(template)
        char = f"(?:\\\\.|[^{re.escape(escaped)}])" if escaped else "."
        regex = "".join(
            re.escape(text) + ("" if f is None else f"({char}+{'' if sensitive(f) else '?'})")
            for text, f, _, _ in parts
        )
        found = re.fullmatch(regex, key, re.S)
        if found is None:
            out.append(row | {"key": mask})
            continue
        pieces = [
            (text, value, f is not None and sensitive(f))
            for (text, f, _, _), value in zip(parts, _groups(parts, found.groups()), strict=True)
        ]
        masked_at = [i for i, (_, _, hidden) in enumerate(pieces) if hidden]
        first, last = masked_at[0], masked_at[-1]
        # between two masked values where one ends is unknown: all of it is masked
        shown = (
            "".join(text + value for text, value, _ in pieces[:first])
            + pieces[first][0]
            + mask
            + "".join(text + value for text, value, _ in pieces[last + 1 :])
        )
        out.append(row | {"key": shown})
    return out


def _groups(parts: list[Any], groups: tuple[str, ...]) -> list[str]:
    """The matched values, one per part ("" for a part with no placeholder)."""
    values = iter(groups)
    return [next(values) if f is not None else "" for _, f, _, _ in parts]


def mask_filled_key(
    key: Any,
    payload: Any,
    sensitive: Callable[[str], bool],
    mask: str,
    held: Iterable[str] = (),
) -> Any:
    """A job's `limit_key` as shown where `sensitive` field names are masked: each value of
    such a top-level payload field, as the key was filled with it (`fill_limit_key`: 1.0 as
    1), and each of the `held` secrets (what the job holds elsewhere), replaced by `mask`,
    whatever its length. In a key of several placeholders a value's separators are escaped:
    it is found as escaped there (the characters the key shows escaped), then as it is."""
    if not isinstance(key, str):
        return key
    values = {str(v) for v in held if isinstance(v, str | int | float) and str(v)}
    for f, value in payload.items() if isinstance(payload, dict) else ():
        if not isinstance(f, str) or not sensitive(f) or isinstance(value, bool):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str | int | float | ObjectId) and str(value):
            values.add(str(value))
    escaped = set(re.findall(r"\\(.)", key, re.S))  # what the key escapes: its separators
    spelled = {"".join("\\" + c if c in escaped else c for c in v) for v in values}
    # the escaped spellings first (the longer first: a value inside another), then as they are
    ordered = sorted(spelled - values, key=len, reverse=True)
    for value in [*ordered, *sorted(values, key=len, reverse=True)]:
        key = key.replace(value, mask)
    return key
