"""Per-value limits, pure: the key filled from the payload, the clear error when a field is
missing, and what status pages show when there are many keys."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from job_processor import InvalidPayloadError, JobDef, Limit
from job_processor.core.limits import taken, top_usage
from job_processor.core.producing import Template, new_job_doc

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def noop(job: Any, signal: Any) -> None:
    return None


def test_a_templated_key_is_filled_from_the_payload() -> None:
    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=2)
    assert per_tenant.templated and per_tenant.fields == ("tenant_id",)
    assert per_tenant.key_for({"tenant_id": "acme"}) == "tenant:acme"
    assert per_tenant.key_for({"tenant_id": 42}) == "tenant:42"
    assert per_tenant.key_for({"tenant_id": 42.0}) == "tenant:42"  # the same tenant
    for odd in (True, float("nan")):
        with pytest.raises(ValueError, match="needs the payload field 'tenant_id', got"):
            per_tenant.key_for({"tenant_id": odd})
    assert per_tenant.for_key("tenant:acme").key == "tenant:acme"
    assert not Limit(key="smtp", concurrency=1).templated
    with pytest.raises(ValueError, match="needs the payload field 'tenant_id' \\(missing\\)"):
        per_tenant.key_for({"tenant": "acme"})
    with pytest.raises(ValueError, match="got \\[1\\]"):
        per_tenant.key_for({"tenant_id": [1]})
    with pytest.raises(ValueError, match="must name a top-level payload field"):
        Limit(key="tenant:{0}", concurrency=1)


def test_scheduling_records_the_key_or_names_the_missing_field() -> None:
    template = Template.of(
        JobDef(handler=noop, limit=Limit(key="tenant:{tenant_id}", concurrency=2))
    )
    doc = new_job_doc("sync", template, {"tenant_id": "acme"}, now=NOW)
    assert doc["limit_key"] == "tenant:acme"
    with pytest.raises(InvalidPayloadError, match=r"job 'sync': limit key 'tenant:\{tenant_id\}'"):
        new_job_doc("sync", template, {"tenant": "acme"}, now=NOW)


def test_many_keys_are_shown_as_the_busiest_and_the_rest_folded() -> None:
    limit = Limit(key="tenant:{t}", concurrency=4)
    docs = []
    for i in range(30):
        key = f"tenant:{i}"
        doc: dict[str, Any] = {"_id": key, "rev": 0, "running": 0, "holders": {}, "starts": {}}
        update = taken(
            doc, limit.for_key(key), [f"r{j}" for j in range(i % 5)], "w", NOW, "tenant:{t}"
        )
        docs.append({"_id": key, "running": i % 5} | update["$set"])
    docs.append({"_id": "smtp", "running": 1, "concurrency": 3})
    shown = top_usage(docs, NOW, most=5)
    assert len(shown) == 7  # the static limit, the 5 busiest keys, one row for the rest
    assert shown[0]["key"] == "smtp"
    assert [u["running"] for u in shown[1:6]] == [4, 4, 4, 4, 4]
    folded = shown[-1]
    assert folded["key"] == "tenant:{t} (other keys)" and folded["keys"] == 25  # a fixed label
    assert folded["running"] == sum(i % 5 for i in range(30)) - 20
    assert folded["concurrency"] == 25 * limit.concurrency  # the capacity of the keys folded
    assert folded["running"] <= folded["concurrency"]


def test_a_folded_row_sums_the_capacity_of_keys_written_under_two_deploys() -> None:
    """scale.md: a folded row's capacity and rate are the sums over its keys. It took the
    first key's settings times the key count: after a deploy that changed a per-tenant limit
    (4 per key, 10 per 60 s, then 2 per key, 100 per 1 s), a capacity of 8 for 6, and a rate
    of 20 per 60 s over starts counted in two windows."""
    old = Limit(key="tenant:{t}", concurrency=4, rate=10, per_seconds=60)
    new = Limit(key="tenant:{t}", concurrency=2, rate=100, per_seconds=1)
    docs = []
    for i in range(20):  # the 20 busiest keys, shown one by one
        key = new.key_for({"t": f"busy{i:02d}"})
        update = taken({}, new.for_key(key), ["r1", "r2"], "w", NOW, template=new.key)
        docs.append({"_id": key, "running": 2} | update["$set"])
    for t, limit in (("a-old", old), ("b-new", new)):  # folded: one key of each deploy
        key = limit.key_for({"t": t})
        update = taken({}, limit.for_key(key), ["r"], "w", NOW, template=limit.key)
        docs.append({"_id": key, "running": 1} | update["$set"])
    folded = top_usage(docs, NOW)[-1]
    assert folded["key"] == "tenant:{t} (other keys)" and folded["keys"] == 2
    assert folded["running"] == 2 and folded["started_in_window"] == 2
    assert folded["concurrency"] == 4 + 2, folded
    assert folded["rate"] is None and folded["per_seconds"] is None, folded  # no one window
    assert folded["varies"] == ["concurrency", "rate"], folded
    # the same window: the rates add up; a key without a concurrency: no capacity to say
    same = Limit(key="tenant:{t}", rate=7, per_seconds=1)
    key = same.key_for({"t": "c-same"})
    update = taken({}, same.for_key(key), ["r"], "w", NOW, template=same.key)
    docs = [d for d in docs if d["_id"] != "tenant:a-old"] + [
        {"_id": key, "running": 1} | update["$set"]
    ]
    folded = top_usage(docs, NOW)[-1]
    assert (folded["concurrency"], folded["rate"], folded["per_seconds"]) == (None, 107, 1)
    assert folded["varies"] == ["concurrency", "rate"], folded


@pytest.mark.parametrize("field", ["concurrency", "rate"])
def test_a_limit_mongodb_cannot_store_is_refused_when_defined(field: str) -> None:
    """A concurrency or rate past BSON's 64-bit integers was accepted: a static limit made
    start() raise the driver's bare OverflowError, a per-tenant one crashed the claim loop
    at its first claim (processor_loop_crashed: no job of any name claimed any more)."""
    from job_processor import InvalidDefinitionError

    extra = {"per_seconds": 1} if field == "rate" else {}
    with pytest.raises(InvalidDefinitionError, match=field):
        Limit(key="tenant:{tenant_id}", **{field: 2**70}, **extra)
    assert getattr(Limit(key="k", **{field: 2**31 - 1}, **extra), field) == 2**31 - 1


@pytest.mark.parametrize(
    "key", ["tenant:{tenant_id:d}", "tenant:{tenant_id!z}", "t:{tenant_id:{y}}", "t:{x:>5}"]
)
def test_a_placeholder_with_a_format_or_conversion_is_refused_when_defined(key: str) -> None:
    """Limit() checked a placeholder's field name only: these keys were accepted, and every
    schedule_job of their jobs then failed blaming a good payload ("Unknown format code 'd'
    for object of type 'str'"), raised a bare KeyError('y'), or made a padded key ("t:    7")."""
    from job_processor import InvalidDefinitionError

    with pytest.raises(InvalidDefinitionError, match="without a '!' conversion or a ':' format"):
        Limit(key=key, concurrency=1)


@pytest.mark.parametrize(
    "value",
    [b"acme", ("acme", "eu"), dt.datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)],
    ids=["bytes", "tuple", "datetime"],
)
def test_a_tenant_value_mongodb_gives_back_otherwise_is_refused(value: Any) -> None:
    """scale.md: a field that is not a text, a number or an ObjectId is refused at schedule
    time naming the field. Bytes gave the key "tenant:b'acme'"; a tuple is stored as a list (a
    worker reading it back found another key for the job); a datetime comes back without its
    microseconds (another key)."""
    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=2)
    with pytest.raises(ValueError, match=r"'tenant_id'.*a text, a number or an ObjectId"):
        per_tenant.key_for({"tenant_id": value})


def test_an_objectid_tenant_keeps_its_key_once_stored() -> None:
    import bson

    from job_processor.engine.limiter import value_key

    per_tenant = Limit(key="tenant:{tenant_id}", concurrency=2)
    tenant = bson.ObjectId()
    key = per_tenant.key_for({"tenant_id": tenant})
    assert key == f"tenant:{tenant}"
    stored = bson.decode(bson.encode({"payload": {"tenant_id": tenant}}))
    assert value_key(per_tenant, stored) == key


def test_a_limit_key_filled_from_a_sensitive_field_is_refused() -> None:
    """The key is shown unmasked wherever limits are (the metrics' labels, status, every
    job's limit_key): a key filled from a sensitive payload field published its values while
    the payload showed "[redacted]" (an outside hunt found `user:{email}` on /metrics)."""
    from job_processor import InvalidDefinitionError

    async def handler(job: Any, signal: Any) -> None:
        return None

    per_user = Limit(key="user:{email}", concurrency=1)
    with pytest.raises(InvalidDefinitionError, match=r"placeholder \{email\} names a sensitive"):
        JobDef(handler=handler, limit=per_user, sensitive_fields=("email",))
    for key in ("partner:{api_key}", "s:{sessionToken}", "db:{db_password}"):  # by name
        with pytest.raises(InvalidDefinitionError, match=r"not secret, e\.g\. an account id"):
            JobDef(handler=handler, limit=Limit(key=key, concurrency=1))
    JobDef(handler=handler, limit=per_user)  # email not declared sensitive: a plain field
    JobDef(handler=handler, limit=Limit(key="tenant:{tenant_id}", concurrency=1))


def test_limit_keys_filled_from_masked_fields_show_the_mask() -> None:
    """Each per-value row is masked by its own template (top_usage gives it): the whole
    masked value, whatever it holds, static limits and folded rows as they are."""
    from job_processor.core.limits import mask_limit_keys

    def row(template: str, payload: dict[str, Any]) -> dict[str, Any]:
        key = Limit(key=template, concurrency=1).key_for(payload)
        return {"key": key, "template": template, "running": 1}

    iban = {"iban": "DE89-3704-0044-0532-0130-00", "region": "eu"}
    rows = [
        row("acct:{iban}:{region}", iban),
        row("pay-{iban}-{region}", iban),  # the value holds the separator
        # side by side: a template refused now, its keys stored by an older version
        {"key": "acct-DE89370400440532013000EU", "template": "acct-{iban}{region}", "running": 1},
        row("acct{{eu}}:{iban}", iban),  # escaped braces
        row("acct:{user}:x", {"user": "bob"}),  # another template: not masked
        {"key": "acct:global", "running": 0},  # a static limit
        {"key": "acct:{iban}:{region} (other keys)", "template": "acct:{iban}:{region}", "keys": 3},
    ]
    shown = mask_limit_keys(rows, lambda f: f == "iban", "***")
    # side by side, where one value ends is unknown: the masked one takes all it can
    assert shown[2]["key"] == "acct-***U"
    assert [r["key"] for r in shown[:2] + shown[3:]] == [
        "acct:***:eu",
        "pay-***-eu",
        "acct{eu}:***",
        "acct:bob:x",
        "acct:global",
        "acct:{iban}:{region} (other keys)",
    ]
    odd = mask_limit_keys([{"key": "x", "template": "acct:{iban}"}], lambda f: True, "***")
    assert odd[0]["key"] == "***"  # a key its template does not read: the mask alone


def test_a_jobs_limit_key_masks_the_values_of_masked_fields_whatever_their_length() -> None:
    from job_processor.core.limits import mask_filled_key

    def masked(f: str) -> bool:
        return f in ("pin", "account_no")

    assert mask_filled_key("card:042", {"pin": "042"}, masked, "***") == "card:***"
    key = Limit(key="acct:{account_no}", concurrency=1).key_for({"account_no": 12345678.0})
    assert mask_filled_key(key, {"account_no": 12345678.0}, masked, "***") == "acct:***"
    plain = {"tenant_id": "acme"}
    assert mask_filled_key("token-refresh:acme", plain, masked, "***") == "token-refresh:acme"
    # a key of several placeholders holds its values' separators escaped: masked all the same
    pair = {"account_no": "12-34\\5", "region": "eu-1"}
    key = Limit(key="pair:{region}-{account_no}", concurrency=1).key_for(pair)
    assert key == "pair:eu\\-1-12\\-34\\\\5"
    assert mask_filled_key(key, pair, masked, "***") == "pair:eu\\-1-***"


def test_masked_limit_keys_never_show_part_of_a_masked_value() -> None:
    """Two masked placeholders around a plain one: where each value ends is unknown, so all
    between them is masked (the greedy first match took the plain value and left the second
    masked value's head in clear); a masked value inside another is replaced longest first."""
    from job_processor.core.limits import mask_filled_key, mask_limit_keys

    payload = {"iban": "DE89", "region": "eu", "pin": "SECRET-4711"}
    template = "{iban}-{region}-{pin}"
    key = Limit(key=template, concurrency=1).key_for(payload)
    rows = [{"key": key, "template": template, "running": 1}]
    shown = mask_limit_keys(rows, lambda f: f in ("iban", "pin"), "***")[0]["key"]
    assert shown == "***"

    def masked(f: str) -> bool:
        return f in ("pin", "iban")

    nested = {"pin": "37", "iban": "DE8937040044"}
    key = Limit(key="{iban}/{pin}", concurrency=1).key_for(nested)
    assert mask_filled_key(key, nested, masked, "***") == "***/***"


def test_a_limit_key_is_never_filled_from_infinity() -> None:
    """NaN was refused, infinity not: another program's job (schedule_job refuses non-finite
    payloads) got the key "acct:inf", shown in clear beside its masked field (JSON has no
    infinity: the payload showed null)."""
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="needs the payload field 'iban'"):
            Limit(key="acct:{iban}", concurrency=1).key_for({"iban": value})


def _quick(job: object, signal: object) -> None:
    return None


def test_a_static_limit_and_a_per_tenant_limit_that_fill_to_one_key_must_agree() -> None:
    """`api:acme` and `api:{tenant}` (tenant "acme") are one document: one limit. With two
    settings, the per-tenant one's sweep removed the static one's starts (its rate exceeded)."""
    from job_processor.core.errors import InvalidDefinitionError
    from job_processor.core.limits import check_limits

    static = Limit(key="api:acme", rate=1, per_seconds=60)
    for other in ("api:{tenant}", "{service}:{tenant}", "{service}:acme"):
        defs = {
            "report": JobDef(handler=_quick, limit=static),
            "sync": JobDef(handler=_quick, limit=Limit(key=other, concurrency=2)),
        }
        with pytest.raises(InvalidDefinitionError, match="can name the same key") as err:
            check_limits(defs)
        assert "'api:acme'" in str(err.value) and repr(other) in str(err.value)
    # two templates that meet, with two settings: refused too
    defs = {
        "a": JobDef(handler=_quick, limit=Limit(key="tenant:{tenant_id}", concurrency=1)),
        "b": JobDef(handler=_quick, limit=Limit(key="tenant:{account}", concurrency=3)),
    }
    with pytest.raises(InvalidDefinitionError, match="can name the same key"):
        check_limits(defs)
    # the same settings: one limit, shared on purpose; keys that cannot meet: two limits
    same = {"a": JobDef(handler=_quick, limit=Limit(key="api:{tenant}", rate=1, per_seconds=60))}
    assert len(check_limits(same | {"report": JobDef(handler=_quick, limit=static)})) == 2
    apart = {
        "report": JobDef(handler=_quick, limit=static),
        "sync": JobDef(handler=_quick, limit=Limit(key="sync:{tenant}", concurrency=2)),
        "mail": JobDef(handler=_quick, limit=Limit(key="api:acme:{box}", concurrency=1)),
    }
    assert len(check_limits(apart)) == 3


def test_a_static_take_keeps_a_shared_per_value_document_alive_while_its_starts_count() -> None:
    """A static limit's slot taken on a document a per-value limit made moves its idle time
    on, so the sweep does not remove it (and its starts) inside the rate window."""
    limit = Limit(key="api:acme", rate=1, per_seconds=60)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    doc = {"_id": "api:acme", "rev": 3, "template": "api:{tenant}", "idle_after_ms": 0}
    update = taken(doc, limit, ["r1"], "w1", t0)
    assert update["$set"]["template"] == "api:{tenant}"
    assert update["$set"]["idle_after_ms"] == int(t0.timestamp() * 1000) + 60_000


def test_two_value_pairs_never_fill_one_key() -> None:
    """`pair:{region}-{tenant}`: ("eu-1", "acme") and ("eu", "1-acme") were one key, one
    limit for two tenants. A value's separators are escaped in a key of several
    placeholders; a key of one placeholder is filled as it is."""
    per_pair = Limit(key="pair:{region}-{tenant}", concurrency=1)
    a = per_pair.key_for({"region": "eu-1", "tenant": "acme"})
    b = per_pair.key_for({"region": "eu", "tenant": "1-acme"})
    assert a != b and (a, b) == ("pair:eu\\-1-acme", "pair:eu-1\\-acme")
    tricky = per_pair.key_for({"region": "eu\\", "tenant": "-x"})
    assert tricky != per_pair.key_for({"region": "eu\\-", "tenant": "x"})
    assert Limit(key="tenant:{t}", concurrency=1).key_for({"t": "a-b\\c"}) == "tenant:a-b\\c"
    with pytest.raises(ValueError, match=r"\{a\} and \{b\} need text between them"):
        Limit(key="pair:{a}{b}", concurrency=1)


@pytest.mark.parametrize("key", ["share:{host}\\{share}", "p:{a}\\-{b}", "t:{a}-{b}\\:x{c}"])
def test_a_backslash_between_placeholders_is_refused(key: str) -> None:
    """scale.md: two value pairs never fill one key. A backslash in the text between two
    placeholders reads as the escape of a value's separators: `share:{host}\\{share}` gave
    one key for ("-", "\\-") and ("-\\", "-"), `p:{a}\\-{b}` for ("-", "--") and ("--", "-")."""
    with pytest.raises(ValueError, match=r"field 'key': .*a backslash that starts the text") as err:
        Limit(key=key, concurrency=1)
    fixed = key.replace("\\", "/")
    assert repr(fixed) in str(err.value), err.value  # the fix, spelled out
    limit = Limit(key=fixed, concurrency=1)
    a, b = limit.fields[:2]
    rest = dict.fromkeys(limit.fields[2:], "x")
    pairs = [("-", "\\-"), ("-\\", "-"), ("-", "--"), ("--", "-"), ("-/", "-"), ("-", "/-")]
    assert len({limit.key_for({a: x, b: y} | rest) for x, y in pairs}) == len(pairs)
    # before the first placeholder or after the last, a backslash is fixed text: kept
    assert Limit(key="a\\b:{x}:{y}\\z", concurrency=1).key_for({"x": "1", "y": "2"}) == (
        "a\\b:1:2\\z"
    )


def test_keys_whose_escaped_fills_cannot_meet_are_not_refused() -> None:
    """A value's separators come escaped in a key of several placeholders: after `sync:`,
    `{tenant}-{region}` always has one unescaped '-', `{tenant}-{region}-{shard}` two; they
    never meet, and were refused as if they could."""
    from job_processor.core.limits import check_limits, could_meet

    two = Limit(key="sync:{tenant}-{region}", concurrency=2)
    three = Limit(key="sync:{tenant}-{region}-{shard}", concurrency=1)
    fills = {
        two.key_for({"tenant": "a", "region": "b-c"}),
        two.key_for({"tenant": "a-b", "region": "c"}),
        three.key_for({"tenant": "a", "region": "b", "shard": "c"}),
    }
    assert len(fills) == 3
    defs = {
        "sync": JobDef(handler=_quick, limit=two),
        "sync-shard": JobDef(handler=_quick, limit=three),
    }
    assert len(check_limits(defs)) == 2
    assert not could_meet("pair:{r}-{t}", "pair:a-b-c")
    assert could_meet("pair:{r}-{t}", "pair:a\\-b-c")  # ("a-b", "c")
    assert could_meet("t:{a}-{b}", "t:{x}:{y}")  # ("p:q", "r") and ("p", "q-r")


def _pairs() -> list[tuple[str, str]]:
    alphabet = ["-", ":", "\\", "{", "}", "x"]
    values = ["".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)]
    return [(a, b) for a in values for b in values]


@pytest.mark.parametrize("key", ["lock:{drive}:\\{path}", "p:{a}-\\-{b}", "p:{a}:\\:{b}"])
def test_a_backslash_that_cannot_be_read_as_an_escape_is_not_refused(key: str) -> None:
    """The text between the placeholders starts with a character that is not a backslash: an
    unescaped separator where the first value's escaped text ends, so no two value pairs fill
    one key (every pair of 1-3 characters checked). Such keys were refused at startup."""
    limit = Limit(key=key, concurrency=1)
    a, b = limit.fields
    assert len({limit.key_for({a: x, b: y}) for x, y in _pairs()}) == len(_pairs())


@pytest.mark.parametrize("key", ["p:{a}\\{{{b}", "p:{a}\\}}{b}"])
def test_a_backslash_before_a_literal_brace_is_refused_too(key: str) -> None:
    """`\\{{` between two placeholders starts with a backslash: ("-", "{-") and ("-{", "-") fill
    `p:-\\{\\{-` alike; the check read only the text before the literal brace."""
    with pytest.raises(ValueError, match="a backslash that starts the text"):
        Limit(key=key, concurrency=1)
