"""What a producer checks and builds before anything is written, and how it paces its polls:
pure, no server."""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import random
from typing import Any

import pytest
from pydantic import AliasChoices, AliasPath, BaseModel, Field, SecretStr, computed_field

from job_processor import InvalidArgumentError, InvalidPayloadError, JobDef, UnknownJobError
from job_processor.core import values as V
from job_processor.core.producing import (
    JobSpec,
    Template,
    WaitPacing,
    batch_items,
    checked_payload,
    due_at,
    new_job_doc,
)

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class Email(BaseModel):
    to: str


async def noop(job: Any, signal: Any) -> None:
    return None


EMAIL = Template.of(JobDef(handler=noop, payload_model=Email, concurrency="exclusive"))


def test_delay_is_seconds_or_a_timedelta_from_now_never_with_scheduled_for() -> None:
    assert due_at("a", None, 90, NOW) == NOW + dt.timedelta(seconds=90)
    assert due_at("a", None, dt.timedelta(minutes=2), NOW) == NOW + dt.timedelta(minutes=2)
    assert due_at("a", None, 0.0015, NOW) == NOW + dt.timedelta(milliseconds=1)  # BSON's ms
    assert due_at("a", None, None, NOW) == NOW
    later = NOW + dt.timedelta(hours=1)
    assert due_at("a", later, None, NOW) == later
    with pytest.raises(InvalidArgumentError, match="give delay or scheduled_for, not both"):
        due_at("a", later, 5, NOW)
    with pytest.raises(InvalidArgumentError, match="delay must not be negative"):
        due_at("a", None, -1, NOW)
    with pytest.raises(InvalidArgumentError, match="delay must be a timedelta or a number"):
        due_at("a", None, "5m", NOW)
    with pytest.raises(InvalidArgumentError, match=r"got nan \(not a number\)"):
        due_at("a", None, float("nan"), NOW)
    for forever in (float("inf"), 10**400):  # an int past a float's range too
        with pytest.raises(InvalidArgumentError, match="is too long"):
            due_at("a", None, forever, NOW)
    with pytest.raises(InvalidArgumentError, match="has no timezone"):
        due_at("a", dt.datetime(2030, 1, 1), None, NOW)


def test_a_job_document_is_validated_and_carries_its_definitions_rules() -> None:
    doc = new_job_doc("email", EMAIL, {"to": "ada"}, now=NOW, delay=60, key="k1")
    assert doc["payload"] == {"to": "ada"}
    assert doc["scheduled_for"] == NOW + dt.timedelta(seconds=60)
    assert doc["exclusive_key"] == "email" and doc["dedup_key"]
    with pytest.raises(InvalidPayloadError, match="field 'to'"):
        new_job_doc("email", EMAIL, {"to": 3}, now=NOW)
    # arguments beside the payload: InvalidArgumentError, still an InvalidPayloadError as before
    with pytest.raises(InvalidArgumentError, match="priority must be an integer") as bad:
        new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, priority="high")
    assert isinstance(bad.value, InvalidPayloadError)
    with pytest.raises(InvalidArgumentError, match="priority must be an integer within 64 bits"):
        new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, priority=2**70)
    with pytest.raises(InvalidArgumentError, match="max_attempts must be an integer >= 1 within"):
        new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, max_attempts=2**64)
    with pytest.raises(InvalidArgumentError, match="key must be a non-empty string") as bad:
        new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, key="")
    assert isinstance(bad.value, InvalidPayloadError)
    assert new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, priority=-(2**63))["priority"] == -(
        2**63
    )
    with pytest.raises(InvalidArgumentError, match="tag 'gpu' differs from its definition's"):
        new_job_doc("email", EMAIL, {"to": "a"}, now=NOW, tag="gpu")


def test_a_batch_names_the_first_bad_item_by_its_index() -> None:
    def template(name: str) -> Template:
        if name != "email":
            raise UnknownJobError(name, ["email"])
        return EMAIL

    good = [("email", {"to": "a"}), JobSpec("email", {"to": "b"}, key="x", delay=5)]
    docs = batch_items(good, template, NOW)
    assert [d["payload"]["to"] for d in docs] == ["a", "b"]
    assert docs[1]["scheduled_for"] == NOW + dt.timedelta(seconds=5)
    with pytest.raises(UnknownJobError, match=r"^item 2: unknown job 'emial' \(did you mean"):
        batch_items([*good, ("emial", {"to": "c"})], template, NOW)
    with pytest.raises(InvalidPayloadError, match=r"^item 1: job 'email': payload does not"):
        batch_items([good[0], ("email", {"too": "c"})], template, NOW)
    with pytest.raises(InvalidArgumentError, match=r"^item 0: an item is a \(name, payload\)"):
        batch_items([{"name": "email"}], template, NOW)
    with pytest.raises(InvalidArgumentError, match="a list of"):
        batch_items("email", template, NOW)  # type: ignore[arg-type]


def test_a_registered_definition_gives_its_template() -> None:
    row = {"kind": "job", "tag": "main", "concurrency": "exclusive", "max_attempts": 3}
    assert Template.registered(row) == Template(tag="main", exclusive=True, attempts=3)
    assert Template.registered({"max_attempts": "x"}).attempts == 1  # garbage: the defaults


def test_polling_starts_fast_then_stays_at_one_read_per_second_on_average() -> None:
    pacing = WaitPacing()
    reads = [0.0]
    while reads[-1] < 60:
        reads.append(pacing.next_read(reads[-1]))
    pacing.next_read(reads[-1])
    assert reads[1] - reads[0] == pytest.approx(0.1)  # a short job is seen quickly
    later = reads[1:]  # after the first read
    for start in [x / 10 for x in range(0, 560)]:  # every 5 s window, 0.1 s apart
        assert sum(1 for t in later if start < t <= start + 5) <= 5, start
    assert len(later) >= 55  # and it does read about once a second
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert max(gaps) <= 1.6 + 1e-9, gaps  # no long gap after the fast start


def test_reads_that_start_a_little_off_time_still_keep_five_in_any_window() -> None:
    """What the server sees: each read starts up to 20 ms late (a slow round trip before the
    command is sent), or 4 ms early (a sleep that wakes early), and a window starts anywhere."""
    rng = random.Random(7)
    pacing = WaitPacing()
    seen = [0.0]
    planned = 0.0
    while planned < 120:
        planned = pacing.next_read(seen[-1])
        seen.append(planned + rng.uniform(-0.004, 0.02))
    later = seen[1:]
    assert max(sum(1 for t in later if start <= t < start + 5) for start in later) <= 5


def test_a_long_wait_keeps_only_the_reads_a_window_can_count() -> None:
    """wait_for(timeout=None) on a job that takes hours reads once a second all along: the
    pacing keeps the last two windows' reads (it kept every read: memory and time per read
    grew with the wait), and plans exactly the reads it planned when it kept them all."""

    def unbounded(reads: list[float], now: float) -> float:  # the former rule, every read kept
        reads.append(now)
        n = len(reads) - 1
        later = now + (WaitPacing.STEPS[n] if n < len(WaitPacing.STEPS) else 1.0)
        span = 5.0 + WaitPacing.MARGIN
        recent = [t for t in reads[1:] if t > later - span]
        if len(recent) >= 5:
            later = max(later, recent[-5] + span)
        return later

    rng = random.Random(3)
    pacing, kept = WaitPacing(), []
    now, most = 0.0, 0
    for _ in range(4 * 3600):  # four hours of reads
        planned = pacing.next_read(now)
        assert planned == unbounded(kept, now)
        most = max(most, len(pacing.reads))
        now = planned + rng.uniform(-0.004, 0.02)
    assert most <= 12, most  # about two windows of one read a second, however long the wait
    assert pacing.count == 4 * 3600


def test_a_payload_is_stored_in_the_form_its_model_reads_back() -> None:
    """schedule_job stores the model's dump; with aliases the worker must be able to read it
    (a field aliased "customerId" without populate_by_name refuses "customer_id")."""
    from pydantic import AliasChoices, ConfigDict, Field

    from job_processor.core.producing import checked_payload

    class ByAlias(BaseModel):
        customer_id: int = Field(alias="customerId")

    class ByEither(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        customer_id: int = Field(alias="customerId")

    class Legacy(BaseModel):
        x: int = Field(validation_alias=AliasChoices("x", "legacy_x"))

    assert checked_payload("j", ByAlias, {"customerId": 3}) == {"customerId": 3}
    assert checked_payload("j", ByEither, {"customerId": 3}) == {"customerId": 3}
    assert checked_payload("j", Legacy, {"legacy_x": 3}) == {"x": 3}
    assert checked_payload("j", Email, Email(to="a@b.c")) == {"to": "a@b.c"}

    class Optional(BaseModel):  # a dump by name would validate, and read back the default
        customer_id: int = Field(0, alias="customerId")

    class Split(BaseModel):
        a: int = Field(0, validation_alias="in_a", serialization_alias="out_a")

    cases: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (ByAlias, {"customerId": 3}),
        (ByEither, {"customerId": 3}),
        (Legacy, {"legacy_x": 3}),
        (Optional, {"customerId": 5}),
        (Split, {"in_a": 3}),
    ]
    for model, payload in cases:  # what the worker reads back is what was given
        stored = checked_payload("j", model, payload)
        assert model.model_validate(stored) == model.model_validate(payload), (model, stored)


def test_a_misspelled_key_beside_a_missing_field_is_named() -> None:
    from pydantic import BaseModel

    from job_processor.core.errors import InvalidPayloadError
    from job_processor.core.producing import checked_payload

    class Report(BaseModel):
        customer: str
        rows: int = 0

    with pytest.raises(InvalidPayloadError) as err:
        checked_payload("send_report", Report, {"custmer": "acme"})
    assert str(err.value) == (
        "job 'send_report': payload does not match Report: field 'customer': Field required; "
        "'custmer' is not a field (did you mean 'customer'?)"
    )
    with pytest.raises(InvalidPayloadError) as err:
        checked_payload("send_report", Report, {"other": "acme"})
    assert "did you mean" not in str(err.value)  # nothing close: nothing guessed


def test_after_is_refused_past_max_after_and_read_in_linear_time() -> None:
    from bson import ObjectId

    from job_processor.core.producing import MAX_AFTER, after_ids

    ids = [ObjectId() for _ in range(MAX_AFTER)]
    assert after_ids([*ids, *ids], "merge") == ids  # once each, in order
    with pytest.raises(InvalidArgumentError, match=r"after holds 10001 jobs, more than the 10000"):
        after_ids([*ids, ObjectId()], "merge")


def test_a_jobspecs_after_given_as_a_generator_is_read_once_and_kept() -> None:
    """`after` is read when the batch is checked, and again for the items of a batch cut
    midway (`remaining_items`): a generator was empty the second time, so the items to
    schedule again lost their dependencies."""
    from job_processor.core.producing import remaining_items

    first = JobSpec("a")
    second = JobSpec("b", after=(ref for ref in [0, first]))
    assert second.after == (0, first)
    docs = [{"_id": "id-a"}, {"_id": "id-b"}]
    (rest,) = remaining_items([first, second], docs, 1)
    assert rest.after == ["id-a", "id-a"]


class _Nested(BaseModel):
    a: int = Field(1, validation_alias=AliasPath("outer", "inner"))
    b: str = "x"


def test_a_payload_whose_field_is_read_through_an_alias_path_reads_back_as_given() -> None:
    """guide.md "Typed payloads": stored in the form that reads back as the same value. A field
    read through an AliasPath was stored under its name, read back as its default (1): the
    handler got the wrong value, the job finished."""
    for given in (_Nested(outer={"inner": 9}), {"outer": {"inner": 9}}):
        stored = checked_payload("j", _Nested, given)
        assert stored == {"outer": {"inner": 9}, "b": "x"}
        assert _Nested.model_validate(stored) == _Nested(outer={"inner": 9})

    class Choices(BaseModel):
        a: int = Field(1, validation_alias=AliasChoices(AliasPath("p", "q"), "a2"))

    assert checked_payload("j", Choices, {"a2": 4}) == {"p": {"q": 4}}


def test_a_payload_no_stored_form_reads_back_is_refused_naming_the_field() -> None:
    class Indexed(BaseModel):
        a: int = Field(1, validation_alias=AliasPath("items", 0))

    with pytest.raises(InvalidPayloadError, match=r"job 'j': payload Indexed .* 'a' would read"):
        checked_payload("j", Indexed, {"items": [5]})

    class Excluded(BaseModel):  # excluded from the dump: not stored, as documented
        a: int = Field(1, alias="A", exclude=True)
        b: int = Field(2, alias="B")

    assert checked_payload("j", Excluded, {"A": 5, "B": 6}) == {"B": 6}


class _Inner(BaseModel):
    a: int = 1
    secret: str = Field("d", exclude=True)


def test_a_model_with_aliases_takes_what_one_without_them_takes() -> None:
    """A field excluded from the dump one model down, free-form data whose JSON form is text
    or a list: compared as stored, they read back as given (an alias on another field made
    them refused)."""
    from pydantic import ConfigDict

    class Outer(BaseModel):
        inner: _Inner = Field(alias="In")

    assert checked_payload("j", Outer, Outer(In=_Inner(a=2, secret="s"))) == {"In": {"a": 2}}

    class Meta(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        customer_id: str = Field(alias="customerId")
        meta: dict[str, Any] = {}

    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    stored = checked_payload("j", Meta, Meta(customerId="c", meta={"at": when, "t": (1, 2)}))
    assert stored == {"customerId": "c", "meta": {"at": "2024-01-01T00:00:00Z", "t": [1, 2]}}


def test_a_later_alias_choice_is_used_when_the_first_is_a_path_with_an_index() -> None:
    class Choices(BaseModel):
        v: int = Field(0, validation_alias=AliasChoices(AliasPath("a", 0), "b"))

    stored = checked_payload("j", Choices, {"b": 5})
    assert stored == {"b": 5} and Choices.model_validate(stored) == Choices(b=5)


def test_a_nested_alias_only_field_is_stored_by_its_alias() -> None:
    class Inner(BaseModel):
        customer_id: str = Field("none", alias="customerId")

    class Outer(BaseModel):  # no alias at the top: the nested one counts
        inner: Inner

    stored = checked_payload("j", Outer, {"inner": {"customerId": "c1"}})
    assert Outer.model_validate(stored).inner.customer_id == "c1"


def test_a_secret_in_a_payload_is_refused_naming_the_field() -> None:
    """model_dump(mode="json") masks a secret: the handler got '**********'."""

    class Login(BaseModel):
        password: SecretStr

    class Outer(BaseModel):
        login: Login | None = None

    for model, payload, field in (
        (Login, {"password": "hunter2"}, "'password'"),
        (Outer, {"login": {"password": "hunter2"}}, "'login.password'"),
    ):
        with pytest.raises(InvalidPayloadError, match=rf"job 'j': payload field {field} .* secret"):
            checked_payload("j", model, payload)


def test_a_computed_field_is_left_out_where_the_model_forbids_extra_keys() -> None:
    from pydantic import ConfigDict, computed_field

    class Doubled(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def double(self) -> int:
            return self.x * 2

    stored = checked_payload("j", Doubled, Doubled(x=2))
    assert stored == {"x": 2} and Doubled.model_validate(stored).double == 4


def test_a_secret_whose_stored_form_is_not_the_mask_is_stored_as_it_was() -> None:
    """A json field_serializer that writes the secret's value, a secret left out of the dump,
    an optional one left empty: none stores the mask, all are stored as before."""
    from pydantic import SecretStr, field_serializer

    class Login(BaseModel):
        password: SecretStr

        @field_serializer("password", when_used="json")
        def reveal(self, v: SecretStr) -> str:
            return v.get_secret_value()

    stored = checked_payload("j", Login, {"password": "hunter2"})
    assert stored == {"password": "hunter2"}
    assert Login.model_validate(stored).password.get_secret_value() == "hunter2"

    class Excluded(BaseModel):
        api_key: SecretStr = Field(SecretStr("from-env"), exclude=True)
        token: SecretStr | None = None
        n: int = 1

    assert checked_payload("j", Excluded, {"n": 2}) == {"token": None, "n": 2}


def test_a_nested_computed_field_is_not_stored() -> None:
    from pydantic import ConfigDict, computed_field

    class Doubled(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def double(self) -> int:
            return self.x * 2

    class Outer(BaseModel):
        inner: Doubled
        items: list[Doubled] = []

    stored = checked_payload("j", Outer, {"inner": {"x": 2}, "items": [{"x": 3}]})
    assert stored == {"inner": {"x": 2}, "items": [{"x": 3}]}
    assert Outer.model_validate(stored) == Outer(inner=Doubled(x=2), items=[Doubled(x=3)])


def test_a_secret_or_alias_in_a_nested_dataclass_or_typeddict_is_seen() -> None:
    """Only models were followed: a SecretStr in a pydantic dataclass or a TypedDict was
    stored as the mask, and an alias-only field of a nested dataclass read back as its
    default."""
    from pydantic.dataclasses import dataclass as pydantic_dataclass
    from typing_extensions import TypedDict

    @pydantic_dataclass
    class Creds:
        password: SecretStr

    class Creds2(TypedDict):
        password: SecretStr

    class ViaDataclass(BaseModel):
        creds: Creds

    class ViaTypedDict(BaseModel):
        creds: Creds2

    for model in (ViaDataclass, ViaTypedDict):
        with pytest.raises(InvalidPayloadError, match=r"secret stored as pydantic's mask"):
            checked_payload("j", model, {"creds": {"password": "hunter2"}})

    @pydantic_dataclass
    class Customer:
        customer_id: str = Field("none", alias="customerId")

    class Order(BaseModel):
        customer: Customer

    stored = checked_payload("j", Order, {"customer": {"customerId": "c1"}})
    assert Order.model_validate(stored).customer.customer_id == "c1"


def test_the_refused_secret_named_is_the_one_stored_as_the_mask() -> None:
    from pydantic import field_serializer

    class Login(BaseModel):
        api_key: SecretStr
        password: SecretStr

        @field_serializer("api_key", when_used="json")
        def reveal(self, v: SecretStr) -> str:
            return v.get_secret_value()

    with pytest.raises(InvalidPayloadError) as refused:
        checked_payload("j", Login, {"api_key": "k-1", "password": "hunter2"})
    assert "'password'" in str(refused.value) and "'api_key'" not in str(refused.value)


def test_a_secret_under_a_field_of_no_declared_model_is_refused_as_stored_as_the_mask() -> None:
    """A SecretStr held by an `Any` field, or an extra key of an extra="allow" model, was
    stored as '**********' (the model's traits saw no secret type): the handler got the mask."""
    from pydantic import ConfigDict, SecretStr

    class Login(BaseModel):
        password: SecretStr

    class Loose(BaseModel):
        login: Any

    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        user: str

    for model, value in (
        (Loose, Loose(login=Login(password=SecretStr("hunter2")))),
        (Open, Open(user="ada", token=SecretStr("hunter2"))),
    ):
        with pytest.raises(InvalidPayloadError, match="secret stored as pydantic's mask"):
            checked_payload("j", model, value)


def test_a_model_payload_of_an_untyped_job_or_event_holding_a_secret_is_refused() -> None:
    """A model given to a job without payload_model (or to emit) is stored as its JSON form:
    a SecretStr in it was stored as the mask."""
    from pydantic import SecretStr

    from job_processor.core.values import checked_payload as checked_any

    class Login(BaseModel):
        user: str
        password: SecretStr

    for kind in ("job", "event"):
        with pytest.raises(InvalidPayloadError, match=rf"{kind} 'j': payload field 'password'"):
            checked_any(kind, "j", Login(user="ada", password=SecretStr("x")), 1 << 20)

    class Plain(BaseModel):
        note: str

    assert checked_any("job", "j", Plain(note="**********"), 1 << 20) == {"note": "**********"}


def test_a_plain_str_holding_the_mask_text_is_stored_when_no_secret_is_there() -> None:
    """A str field whose value is '**********' is no secret: models without any secret whose
    JSON form does not read back through them (strict, an alias, extra="forbid" with a
    computed field, a set under Any) were refused as holding 'a secret stored as the mask'."""
    from pydantic import ConfigDict

    from job_processor.core.values import checked_payload as checked_any

    mask = "**********"

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True)
        note: str
        at: dt.datetime

    class Aliased(BaseModel):
        note: str = Field(alias="Note")

    class Forbid(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: str

        @computed_field  # type: ignore[prop-decorator]
        @property
        def size(self) -> int:
            return len(self.note)

    class Tagged(BaseModel):
        notes: list[str]
        tags: Any

    for value in (
        Strict(note=mask, at=NOW),
        Aliased(Note=mask),
        Forbid(note=mask),
        Tagged(notes=[mask, mask], tags={1}),
    ):
        for kind in ("job", "event"):
            stored = checked_any(kind, "j", value, 1 << 20)
            assert mask in str(stored), (kind, type(value).__name__)
    assert checked_payload("j", Tagged, Tagged(notes=[mask], tags={1})) == {
        "notes": [mask],
        "tags": [1],
    }


class _Provider(enum.Enum):
    AWS = "aws"


class _ApiKeys(BaseModel):
    keys: dict[_Provider, SecretStr]


class _Flags(BaseModel):
    keys: dict[bool, SecretStr]


@pytest.mark.parametrize(
    "value",
    [_ApiKeys(keys={_Provider.AWS: SecretStr("AKIA-real")}), _Flags(keys={True: SecretStr("x")})],
    ids=["enum-key", "bool-key"],
)
def test_a_secret_under_a_key_whose_json_text_differs_is_refused_not_stored_masked(
    value: BaseModel,
) -> None:
    """The secret's path was matched as text: "keys.aws" (JSON) against "keys.Provider.AWS"
    (the Python dump), "keys.true" against "keys.True": never equal, so the mask was stored."""
    key = "aws" if isinstance(value, _ApiKeys) else "true"
    with pytest.raises(InvalidPayloadError, match=rf"'keys\.{key}'.* secret stored as"):
        checked_payload("keys", type(value), value)
    with pytest.raises(InvalidPayloadError, match=rf"'keys\.{key}'.* secret stored as"):
        V.checked_payload("event", "keys.rotated", value, 16 * 1024 * 1024)
