"""What `jobs new` checks of a payload without the model: the registry's summary of its fields
accepts every payload pydantic accepts by key (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import (
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)
from pydantic.alias_generators import to_camel

from job_processor.core.errors import InvalidPayloadError
from job_processor.core.payload_fields import check_payload_fields, payload_fields


def problem(model: type[BaseModel], payload: dict[str, Any]) -> str | None:
    """The check's refusal, after making sure pydantic agrees (accepts iff no refusal)."""
    try:
        check_payload_fields("j", model.__name__, payload_fields(model), payload)
    except InvalidPayloadError as exc:
        with pytest.raises(ValueError):
            model.model_validate(payload)
        return str(exc)
    return None


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: str
    year: int = 2030


class ByAlias(BaseModel):
    customer_id: int = Field(alias="customerId")


class ByEither(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    customer_id: int = Field(alias="customerId")


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    customer_id: int


class Choices(BaseModel):
    x: int = Field(validation_alias=AliasChoices("x", "legacy_x"))


def test_required_and_forbidden_keys_are_refused_with_the_fields_named() -> None:
    assert problem(Report, {"custmer": "acme"}) == (
        "job 'j': payload does not match Report: missing 'customer'; unknown 'custmer' "
        "(did you mean 'customer'?) (its fields: 'customer', 'year')"
    )
    assert problem(Report, {"customer": "acme"}) is None
    assert problem(ByAlias, {"customerId": 1}) is None
    assert problem(ByAlias, {"customer_id": 1}) == (
        "job 'j': payload does not match ByAlias: missing 'customerId'; 'customer_id' is not a "
        "field (did you mean 'customerId'?) (its fields: 'customerId')"
    )


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (ByEither, {"customer_id": 1}),  # the name, as schedule_job stores it (model_dump)
        (ByEither, {"customerId": 1}),
        (Camel, {"customer_id": 1}),
        (Camel, {"customerId": 1}),
        (Choices, {"legacy_x": 1}),
        (Choices, {"x": 1}),
    ],
)
def test_every_key_pydantic_accepts_is_accepted(model: type[BaseModel], payload: Any) -> None:
    assert problem(model, payload) is None
    model.model_validate(payload)


def test_what_a_summary_cannot_describe_is_left_to_the_worker() -> None:
    class Legacy(BaseModel):
        model_config = ConfigDict(extra="forbid")
        to: str

        @model_validator(mode="before")
        @classmethod
        def renamed(cls, data: Any) -> Any:
            return {"to": data.pop("email")} if "email" in data else data

    class Nested(BaseModel):
        city: str = Field(validation_alias=AliasPath("address", "city"))

    for model in (Legacy, Nested, RootModel[dict[str, int]]):
        assert payload_fields(model) is None
    check_payload_fields("j", "Legacy", None, {"email": "a@b.c"})  # nothing to check against
    assert Legacy.model_validate({"email": "a@b.c"}).to == "a@b.c"


class Loose(BaseModel):  # extra keys ignored (pydantic's default)
    customer: str


def test_a_misspelled_key_beside_a_missing_field_is_named_without_the_model() -> None:
    with pytest.raises(InvalidPayloadError) as err:
        check_payload_fields("send_report", "Loose", payload_fields(Loose), {"custmer": "x"})
    assert "missing 'customer'; 'custmer' is not a field (did you mean 'customer'?)" in str(
        err.value
    )
