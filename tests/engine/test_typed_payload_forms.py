"""Typed payloads a handler gets as scheduled, or refused when scheduled: never accepted, then
errored or read back otherwise at run time (strict models, `Json` fields, aliases behind a
type alias or a TypedDict's alias generator, a nested model's AliasPath, a serializer that
drops a datetime's offset)."""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from typing import Any

import pytest
import typing_extensions as te
from pydantic import AliasPath, BaseModel, ConfigDict, Field, Json, PrivateAttr, field_serializer
from pydantic.alias_generators import to_camel

from job_processor import AbortSignal, InvalidPayloadError, Job, JobDef, JobStatus
from tests.helpers import make

AT = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class StrictWhen(BaseModel):
    model_config = ConfigDict(strict=True)
    at: dt.datetime


class StrictField(BaseModel):
    at: dt.datetime = Field(strict=True)


class JsonField(BaseModel):
    settings: Json[dict[str, int]]


@pytest.mark.parametrize(
    "value",
    [StrictWhen(at=AT), StrictField(at=AT), JsonField(settings='{"a": 1}')],  # type: ignore[arg-type]
    ids=["strict-model", "strict-field", "json-field"],
)
async def test_a_model_whose_stored_form_does_not_read_back_is_refused_when_scheduled(
    db: Any, value: BaseModel
) -> None:
    """Its JSON form (a datetime as text, a Json field's parsed dict) is refused by its own
    validation at run time: the job was accepted, then errored ("invalid job document")."""

    async def seen(job: Job[Any], signal: AbortSignal) -> bool:
        return bool(job.payload == value)

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=type(value))})
    with pytest.raises(InvalidPayloadError, match="strict mode or a Json field") as exc:
        await p.run_job("typed", value)
    assert "'at'" in str(exc.value) or "'settings'" in str(exc.value)
    assert await p.storage.jobs.coll.count_documents({}) == 0  # nothing half-written


class Contact(BaseModel):
    email: str = "none"
    note: str = Field("none", alias="noteText")


ContactAlias = te.TypeAliasType("ContactAlias", Contact)


class ViaTypeAlias(BaseModel):
    contact: ContactAlias  # type: ignore[valid-type]


class CamelDict(te.TypedDict, total=False):
    __pydantic_config__ = ConfigDict(alias_generator=to_camel)  # type: ignore[misc]
    reply_to: str


class ViaTypedDict(BaseModel):
    headers: CamelDict


class Point(BaseModel):
    x: int = Field(0, validation_alias=AliasPath("pos", "x"))


class Shape(BaseModel):
    point: Point


@pytest.mark.parametrize(
    ("value", "read"),
    [
        (
            ViaTypeAlias(contact=Contact(email="a@b.c", noteText="VIP")),
            lambda p: p.contact.note,
        ),
        (ViaTypedDict(headers={"replyTo": "VIP"}), lambda p: p.headers.get("reply_to", "none")),  # type: ignore[typeddict-unknown-key]
        (Shape(point=Point.model_validate({"pos": {"x": "VIP".__len__()}})), lambda p: p.point.x),
    ],
    ids=["TypeAliasType", "TypedDict-alias_generator", "nested-AliasPath"],
)
async def test_an_alias_anywhere_is_read_back_as_given_not_as_its_default(
    db: Any, value: BaseModel, read: Any
) -> None:
    """An alias the model's fields do not show (a nested model behind a TypeAliasType, a
    TypedDict's alias generator) was stored by name and read back as its default (the job
    finished with "none"); a nested model's AliasPath was refused though it reads back."""

    async def seen(job: Job[Any], signal: AbortSignal) -> Any:
        return read(job.payload)

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=type(value))})
    job = await p.run_job("typed", value)
    assert job.status == JobStatus.FINISHED, (job.status, job.error)
    assert job.output is not None and job.output.result == read(value)


class LocalTime(BaseModel):
    at: dt.datetime

    @field_serializer("at", when_used="json")
    def _text(self, value: dt.datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%S")  # the offset dropped


async def test_a_serializer_that_drops_the_offset_is_refused_not_read_back_naive(
    db: Any,
) -> None:
    """An aware datetime stored by a JSON serializer as naive text reached the handler naive,
    its +01:00 silently dropped (the check looked only for naive datetimes in the dump)."""

    async def seen(job: Job[LocalTime], signal: AbortSignal) -> bool:
        return job.payload.at.utcoffset() is not None

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=LocalTime)})
    paris = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(InvalidPayloadError, match="'at' is a datetime without a time zone"):
        await p.run_job("typed", LocalTime(at=dt.datetime(2030, 1, 1, 9, tzinfo=paris)))


class UtcStamp(BaseModel):
    """A naive UTC datetime its JSON serializer writes aware: `isoformat() + "Z"`."""

    at: dt.datetime

    @field_serializer("at", when_used="json")
    def _z(self, value: dt.datetime) -> str:
        return value.isoformat() + "Z"


async def test_a_naive_datetime_a_serializer_writes_with_z_is_stored_and_read_aware(
    db: Any,
) -> None:
    """A naive datetime a serializer writes aware is not refused: stored as
    "2030-01-01T09:00:00Z", the handler reads 09:00 UTC, aware. The read-back check refused it
    ("a datetime without a time zone"): read back aware and written again, it is "+00:00Z"."""

    async def seen(job: Job[UtcStamp], signal: AbortSignal) -> str:
        return job.payload.at.isoformat()

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=UtcStamp)})
    job = await p.run_job("typed", UtcStamp(at=dt.datetime(2030, 1, 1, 9)))
    assert job.status == JobStatus.FINISHED, (job.status, job.error)
    assert job.output is not None and job.output.result == "2030-01-01T09:00:00+00:00"


class Order(BaseModel):
    order_id: int


class TrackedOrder(Order):
    """A subclass the producer's code uses; the handler declares the base model."""

    source: str = "web"


class StrictOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: int


class TrackedStrictOrder(StrictOrder):
    source: str = "web"


async def test_an_instance_of_a_subclass_of_the_payload_model_is_scheduled(db: Any) -> None:
    """`schedule_job(name, TrackedOrder(...))` for `payload_model=Order`: the handler gets
    Order(order_id=7), as before the read-back check, which refused it naming 'source' with
    reasons that did not fit; a base model that forbids extra keys says so."""

    async def seen(job: Job[Any], signal: AbortSignal) -> Any:
        return [type(job.payload).__name__, job.payload.order_id]

    p = await make(
        db,
        {
            "typed": JobDef(handler=seen, payload_model=Order),
            "strict": JobDef(handler=seen, payload_model=StrictOrder),
        },
    )
    job = await p.run_job("typed", TrackedOrder(order_id=7))
    assert job.status == JobStatus.FINISHED, (job.status, job.error)
    assert job.output is not None and job.output.result == ["Order", 7]
    with pytest.raises(InvalidPayloadError, match=r"a subclass of StrictOrder.*'source'"):
        await p.schedule_job("strict", TrackedStrictOrder(order_id=7))


class Transfer(BaseModel):
    account: str
    amount: int


class LoggedTransfer(Transfer):
    """A producer-side subclass whose serializer shortens the account for its logs."""

    source: str = "web"

    @field_serializer("account")
    def _last4(self, value: str) -> str:
        return "****" + value[-4:]


async def test_a_subclass_whose_serializer_changes_a_field_is_refused(db: Any) -> None:
    """The subclass's serializers write the stored form: one that changes an inherited field
    (redacts it) was taken, and the handler got '****3000' for the account scheduled."""

    async def seen(job: Job[Transfer], signal: AbortSignal) -> str:
        return job.payload.account

    p = await make(db, {"transfer": JobDef(handler=seen, payload_model=Transfer)})
    given = LoggedTransfer(account="DE89370400440532013000", amount=5)
    with pytest.raises(InvalidPayloadError, match=r"a subclass of Transfer.*'account'"):
        await p.run_job("transfer", given)


class TrackedStrictWhen(StrictWhen):
    source: str = "web"


async def test_a_subclass_of_a_strict_model_is_refused_for_the_strict_field(db: Any) -> None:
    """A subclass of a model that cannot store it anyway (strict mode) was refused blaming the
    subclass ("pass a StrictWhen"), which is refused too: the model's own reason is given."""

    async def seen(job: Job[Any], signal: AbortSignal) -> None:
        return None

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=StrictWhen)})
    with pytest.raises(InvalidPayloadError, match="strict mode") as sub:
        await p.schedule_job("typed", TrackedStrictWhen(at=AT))
    assert "pass a StrictWhen" not in str(sub.value), str(sub.value)


class IsoStamp(BaseModel):
    at: dt.datetime

    @field_serializer("at")  # every mode: model_dump() writes it as text too
    def _iso(self, value: dt.datetime) -> str:
        return value.isoformat()


async def test_a_naive_datetime_behind_a_serializer_of_every_mode_is_refused(db: Any) -> None:
    """The naive check read the consumer's values from model_dump(), where this serializer had
    already written the datetime as text: the handler got a naive datetime."""

    async def seen(job: Job[IsoStamp], signal: AbortSignal) -> Any:
        return job.payload.at.tzinfo is None

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=IsoStamp)})
    with pytest.raises(InvalidPayloadError, match="without a time zone"):
        await p.run_job("typed", IsoStamp(at=dt.datetime(2030, 1, 1, 9)))
    job = await p.run_job("typed", IsoStamp(at=dt.datetime(2030, 1, 1, 9, tzinfo=dt.UTC)))
    assert job.status == JobStatus.FINISHED and job.result is False, (job.status, job.error)


class Tagged(BaseModel):
    order_id: int
    meta: dict[str, Any] = {}


class Audited(BaseModel):
    order_id: int
    dry_run: bool = Field(False, exclude=True)  # guide.md: not stored, reads back as default


class Line(BaseModel):
    sku: str
    _seen_at: dt.datetime = PrivateAttr(default_factory=lambda: dt.datetime.now(dt.UTC))


class Basket(BaseModel):
    lines: list[Line]


class Second(BaseModel):
    at: dt.datetime

    @field_serializer("at")
    def _to_the_second(self, value: dt.datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _sub(model: type[BaseModel]) -> type[BaseModel]:
    """A producer-side subclass with one field of its own."""
    namespace = {"__annotations__": {"source": str}, "source": "web", "__module__": __name__}
    return type(f"Tracked{model.__name__}", (model,), namespace)


SUBCLASS_CASES: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "any-datetime": (Tagged, {"order_id": 7, "meta": {"requested_at": AT}}),
    "any-uuid": (Tagged, {"order_id": 7, "meta": {"trace": uuid.UUID(int=5)}}),
    "excluded-field": (Audited, {"order_id": 7, "dry_run": True}),
    "nested-private-attr": (Basket, {"lines": [{"sku": "a"}]}),
    "serializer-to-the-second": (Second, {"at": dt.datetime(2030, 1, 1, 9, 0, 0, 123000, dt.UTC)}),
}


@pytest.mark.parametrize("case", sorted(SUBCLASS_CASES))
async def test_a_subclass_instance_is_taken_where_the_model_instance_is(db: Any, case: str) -> None:
    """A subclass instance is taken unless the model forbids extra keys or the subclass's
    serializers change a field the model reads: comparing raw attributes refused these
    ('pass a <Model>') while the model's own instance with the same values was taken."""
    model, values = SUBCLASS_CASES[case]

    async def seen(job: Job[Any], signal: AbortSignal) -> str:
        return type(job.payload).__name__

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=model)})
    plain = await p.run_job("typed", model(**values))
    assert plain.status == JobStatus.FINISHED, (plain.status, plain.error)
    sub = await p.run_job("typed", _sub(model)(**values))
    assert sub.status == JobStatus.FINISHED and sub.result == model.__name__, sub.error


class Recent(BaseModel):
    seen: collections.deque[dt.datetime]


class Slots(BaseModel):
    booked: dict[dt.datetime, int]


@pytest.mark.parametrize(
    "value",
    [Recent(seen=[dt.datetime(2030, 1, 1, 9)]), Slots(booked={dt.datetime(2030, 1, 1, 9): 2})],  # type: ignore[arg-type]
    ids=["deque", "dict-key"],
)
async def test_a_naive_datetime_in_a_deque_or_a_dict_key_is_refused(db: Any, value: Any) -> None:
    """The handler got these naive: the check walked lists, tuples, sets and mapping values."""

    async def seen(job: Job[Any], signal: AbortSignal) -> bool:
        return True

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=type(value))})
    with pytest.raises(InvalidPayloadError, match="without a time zone"):
        await p.run_job("typed", value)


class ByAlias(BaseModel):
    order_id: int = Field(alias="orderId")


class ByGenerator(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel)
    order_id: int


class ByReadPath(BaseModel):
    order_id: int = Field(validation_alias=AliasPath("order", "id"))


ALIASED_CASES: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "alias": (ByAlias, {"orderId": 7}),
    "alias-generator": (ByGenerator, {"orderId": 7}),
    "alias-path": (ByReadPath, {"order": {"id": 7}}),
}


@pytest.mark.parametrize("case", sorted(ALIASED_CASES))
async def test_a_subclass_instance_of_an_aliased_model_is_taken(db: Any, case: str) -> None:
    """The subclass check read back the model's own form dumped by field name, which a model
    with an alias (or alias generator, or AliasPath) does not read: refused."""
    model, values = ALIASED_CASES[case]

    async def seen(job: Job[Any], signal: AbortSignal) -> int:
        return int(job.payload.order_id)

    p = await make(db, {"typed": JobDef(handler=seen, payload_model=model)})
    plain = await p.run_job("typed", model(**values))
    assert plain.status == JobStatus.FINISHED and plain.result == 7, plain.error
    sub = await p.run_job("typed", _sub(model)(**values))
    assert sub.status == JobStatus.FINISHED and sub.result == 7, sub.error
