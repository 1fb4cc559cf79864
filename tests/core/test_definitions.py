from __future__ import annotations

import datetime as dt
import re

import pytest

from job_processor import CronDef, JobDef, Subscriber, WebhookOptions
from job_processor.core.definitions import parse_crons, parse_jobs
from job_processor.core.errors import InvalidDefinitionError


async def handler(job: object, signal: object) -> None:
    return None


def test_job_defaults() -> None:
    d = JobDef(handler=handler)
    assert d.resumable is False
    assert d.tag is None
    assert d.concurrency == "concurrent"
    assert d.max_runtime_in_minutes is None
    assert d.on_job_exited is None


def test_dicts_are_accepted_and_validated() -> None:
    jobs = parse_jobs({"a": {"handler": handler, "resumable": True, "tag": "main"}})
    assert jobs["a"].resumable is True
    assert jobs["a"].tag == "main"


@pytest.mark.parametrize(
    ("definition", "needle"),
    [
        ({"handler": "not a function"}, "'handler'"),
        ({"handler": handler, "concurrency": "sometimes"}, "'concurrency'"),
        ({"handler": handler, "max_runtime_in_minutes": 0}, "'max_runtime_in_minutes'"),
        ({"handler": handler, "retries": 3}, "'retries'"),
        ({"handler": handler, "on_job_exited_timeout": 1e300}, "'on_job_exited_timeout'"),
        ({"handler": handler, "max_runtime_in_minutes": 1e9}, "'max_runtime_in_minutes'"),
        ({}, "'handler'"),
        ({"handler": handler, "tag": " "}, "'tag'"),
    ],
)
def test_invalid_job_names_the_job_and_field(definition: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        parse_jobs({"send-email": definition})
    assert "job 'send-email'" in str(err.value)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("definition", "needle"),
    [
        ({"cron_string": "61 * * * *"}, "'cron_string'"),
        ({"cron_string": "* * *"}, "5 fields"),
        ({"cron_string": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"cron_string": "0 2 * * *", "checkin_margin": -1}, "'checkin_margin'"),
        ({"cron_string": "0 2 * * *", "checkin_margin": 1e300}, "less than or equal to 525600"),
        ({"cron_string": "0 2 * * *", "cron": "x"}, "unknown key"),
        ({"cron_string": "0 0 30 2 *"}, "never matches a date"),
        ({"cron_string": "0 0 0 31 4 *"}, "never matches a date"),
    ],
)
def test_invalid_cron_names_the_cron_and_field(definition: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        parse_crons({"daily-export": {"handler": handler, **definition}})
    assert "cron 'daily-export'" in str(err.value)
    assert needle in str(err.value)


@pytest.mark.parametrize("name", ["a|b", "|"])
def test_a_job_or_cron_name_with_the_key_separator_is_refused(name: str) -> None:
    """'a' keyed 'b|c' and 'a|b' keyed 'c' would share one dedup key."""
    with pytest.raises(InvalidDefinitionError, match=rf"job '{re.escape(name)}': field 'name'"):
        parse_jobs({name: {"handler": handler}})
    with pytest.raises(InvalidDefinitionError, match=r"may not contain '\|'"):
        parse_crons({name: {"handler": handler, "cron_string": "0 2 * * *"}})


def test_leap_days_and_day_or_weekday_crons_are_valid() -> None:
    parse_crons({"leap": {"handler": handler, "cron_string": "0 0 29 2 *"}})
    parse_crons({"either": {"handler": handler, "cron_string": "0 0 31 2 1"}})  # or Mondays


def test_cron_accepts_seconds_field_and_timezone() -> None:
    crons = parse_crons(
        {"tick": {"handler": handler, "cron_string": "*/10 * * * * *", "timezone": "Europe/Paris"}}
    )
    assert isinstance(crons["tick"], CronDef)
    assert crons["tick"].timezone == "Europe/Paris"


def test_jobdef_given_as_cron_is_refused() -> None:
    with pytest.raises(InvalidDefinitionError, match="cron 'x'"):
        parse_crons({"x": JobDef(handler=handler)})


def test_a_bare_handler_where_its_definition_goes_says_how_to_wrap_it() -> None:
    with pytest.raises(
        InvalidDefinitionError,
        match=re.escape(
            "job 'x': got the function 'handler', not a definition: wrap it, "
            "JobDef(handler=handler)"
        ),
    ):
        parse_jobs({"x": handler})
    with pytest.raises(InvalidDefinitionError, match=r"cron 'c': .*CronDef\(cron_string="):
        parse_crons({"c": handler})
    with pytest.raises(InvalidDefinitionError, match="valid dictionary or instance of JobDef"):
        parse_jobs({"x": JobDef})  # a class is not a handler: pydantic's own message


def test_handlers_with_the_wrong_parameters_are_refused() -> None:
    async def one(job: object) -> None: ...

    async def hook(job: object, extra: object) -> None: ...

    with pytest.raises(
        InvalidDefinitionError, match=r"job 'x': field 'handler': .*accept \(job, signal\)"
    ):
        parse_jobs({"x": {"handler": one}})
    with pytest.raises(InvalidDefinitionError, match=r"field 'on_job_exited': .*accept \(job\)"):
        parse_jobs({"x": {"handler": lambda job, signal: None, "on_job_exited": hook}})
    parse_jobs({"x": {"handler": lambda *args: None}})  # *args can take them


def test_generator_functions_are_refused_as_handlers_and_hooks() -> None:
    """A handler with a `yield` (async or not) was accepted: calling it runs none of its body,
    so its job was recorded `finished`, its result the generator's repr, and nothing ran."""

    async def agen(job: object, signal: object) -> object:
        yield 1

    def gen(job: object, signal: object) -> object:
        yield 1

    async def hook(job: object) -> object:
        yield 1

    for bad in (agen, gen):
        with pytest.raises(InvalidDefinitionError, match=r"field 'handler': .* generator"):
            parse_jobs({"x": {"handler": bad}})
        with pytest.raises(InvalidDefinitionError, match=r"field 'handler': .* generator"):
            CronDef(handler=bad, cron_string="* * * * *")
        with pytest.raises(InvalidDefinitionError, match=r"field 'handler': .* generator"):
            Subscriber("audit", bad)
    with pytest.raises(InvalidDefinitionError, match=r"field 'on_job_exited': .* generator"):
        JobDef(handler=handler, on_job_exited=hook)


def test_a_timedelta_for_a_duration_in_numbers_says_the_unit() -> None:
    """`checkin_margin=timedelta(minutes=5)` (keep_finished takes a timedelta) was refused with
    pydantic's "Input should be a valid number": neither the unit nor the fix."""
    five = dt.timedelta(minutes=5)
    for kwargs, said in (
        ({"checkin_margin": five}, "a number of minutes"),
        ({"max_runtime_in_minutes": five}, "a number of minutes"),
        ({"on_job_exited_timeout": five}, "a number of seconds"),
        ({"backoff": {"base_seconds": five}}, "a number of seconds"),
    ):
        with pytest.raises(InvalidDefinitionError, match=re.escape(said)):
            CronDef(handler=handler, cron_string="* * * * *", **kwargs)


def test_unknown_job_keys_list_job_keys_and_point_cron_keys_to_crons() -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        parse_jobs({"x": {"handler": lambda job, signal: None, "cron_string": "* * * * *"}})
    text = str(err.value)
    assert "allowed keys are handler, on_job_exited" in text
    assert "checkin_margin" not in text.split("(")[0]  # only JobDef's keys are listed
    assert "'cron_string' belongs to a CronDef" in text


def test_resumable_jobs_default_to_three_attempts() -> None:
    jobs = parse_jobs(
        {
            "a": {"handler": lambda j, s: None},
            "b": {"handler": lambda j, s: None, "resumable": True},
        }
    )
    assert (jobs["a"].attempts, jobs["b"].attempts) == (1, 3)
    assert (
        parse_jobs({"c": {"handler": lambda j, s: None, "resumable": True, "max_attempts": 1}})[
            "c"
        ].attempts
        == 1
    )


def test_definitions_built_directly_raise_clear_errors_with_the_fix() -> None:
    from job_processor import CronDef, JobDef, JobProcessorError

    async def one(job: object) -> None: ...

    with pytest.raises(JobProcessorError, match=r"^JobDef\(\.\.\.\): field 'handler': handler"):
        JobDef(handler=one)
    with pytest.raises(InvalidDefinitionError, match=r"did you mean 'max_attempts'\?"):
        JobDef(handler=lambda job, signal: None, max_attemps=3)
    with pytest.raises(
        InvalidDefinitionError, match=r"its hour field '25' is not valid \(hour: 0-23"
    ):
        CronDef(handler=lambda job, signal: None, cron_string="0 25 * * *")
    with pytest.raises(InvalidDefinitionError, match=r"its day of week field '8' is not valid"):
        CronDef(handler=lambda job, signal: None, cron_string="* * * * 8")


def test_the_other_definitions_built_directly_raise_the_same_clear_errors() -> None:
    """Backoff, Limit and Subscriber too: a JobProcessorError naming the field, not pydantic's
    ValidationError; nested in a JobDef, the field's whole path."""
    from job_processor import Backoff, JobProcessorError, Limit, Subscriber

    def handler(event: object, signal: object) -> None: ...

    cases = [
        (lambda: Backoff(kind="weird"), r"^Backoff\(\.\.\.\): field 'kind': Input should be"),
        (lambda: Limit(key="k", concurrency=0), r"^Limit\(\.\.\.\): field 'concurrency'"),
        (lambda: Limit(key="k"), r"give concurrency=N, rate=R with per_seconds=S, or both"),
        (
            lambda: Subscriber("x", handler, mode="parallel"),
            r"^Subscriber\(\.\.\.\): field 'mode': Input should be 'async', 'sync' or 'serial'",
        ),
        (lambda: Subscriber("x", handler, bogus=1), r"field 'bogus': unknown key; allowed keys"),
        (lambda: Subscriber("x", handler, backoff={"kind": 3}), r"field 'backoff\.kind'"),
        (
            lambda: JobDef(handler=handler, limit={"key": "k", "concurrency": 0}),
            r"^JobDef\(\.\.\.\): field 'limit\.concurrency'",
        ),
    ]
    for build, message in cases:
        with pytest.raises(JobProcessorError, match=message) as caught:
            build()
        assert isinstance(caught.value, InvalidDefinitionError)
    # given as dicts, where each is read: the same fields, under their path
    from job_processor.core.definitions import parse_subscribers
    from job_processor.processor import _webhook_options

    with pytest.raises(InvalidDefinitionError) as caught:
        parse_subscribers({"ev": [{"name": "x", "handler": handler, "mode": "bad"}]})
    assert str(caught.value) == (
        "event 'ev', subscriber 'x': field 'mode': Input should be 'async', 'sync' or 'serial'"
    )
    with pytest.raises(InvalidDefinitionError) as caught:
        _webhook_options({"backoff": {"kind": "w"}})
    assert str(caught.value) == (
        "webhook_options: field 'backoff.kind': Input should be 'fixed', 'linear' or 'exponential'"
    )


def test_six_field_cron_strings_say_the_first_field_is_seconds() -> None:
    from job_processor import CronDef, InvalidDefinitionError
    from job_processor.core.cron_text import cron_reading

    with pytest.raises(InvalidDefinitionError) as caught:
        CronDef(handler=lambda job, signal: None, cron_string="0 12 * * * 2027")
    assert "6 fields: the first is seconds" in str(caught.value)
    assert "a year field is not supported" in str(caught.value)
    assert cron_reading("*/5 * * * * 1") == (
        "6 fields: the first is seconds, then minute hour day month weekday: "
        "second=*/5 minute=* hour=* day=* month=* weekday=1"
    )
    assert cron_reading("*/5 * * * *") is None


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_attempts", 2**70, "less than or equal to 9223372036854775807"),
        ("on_job_exited_timeout", float("inf"), "a finite number"),
        ("max_runtime_in_minutes", float("nan"), "a finite number"),
    ],
)
def test_numbers_mongodb_or_a_timer_cannot_hold_are_refused_naming_the_field(
    field: str, value: object, says: str
) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        JobDef(handler=lambda j, s: None, **{field: value})
    assert f"field {field!r}" in str(err.value) and says in str(err.value)


def test_a_subscriber_takes_its_name_and_handler_by_position_or_keyword() -> None:
    from job_processor import Subscriber

    async def email(event: object, signal: object) -> None:
        pass

    assert Subscriber("email", email, mode="serial").handler is email
    assert Subscriber("email", handler=email).mode == "async"
    assert Subscriber(name="email", handler=email).name == "email"
    with pytest.raises(TypeError, match="handler given twice"):
        Subscriber("email", email, handler=email)


def test_a_definition_given_its_handler_by_position_says_to_name_it() -> None:
    """`JobDef(send_email)` raised pydantic's TypeError naming an internal class."""

    async def send_email(job: object, signal: object) -> None:
        return None

    with pytest.raises(InvalidDefinitionError, match=r"JobDef\(handler=send_email, \.\.\.\)"):
        JobDef(send_email)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # not IANA names: "localtime" is the host's /etc/localtime (it differs between hosts,
        # so replicas on two hosts would run the "same" slot at two instants: two tasks)
        ("timezone", "localtime"),
        ("timezone", "posixrules"),
        ("timezone", "posix/Europe/Paris"),
        # a bool is not a number of minutes / attempts (settings such as poll_interval refuse it)
        ("checkin_margin", True),
        ("max_attempts", True),
        ("max_runtime_in_minutes", True),
        ("on_job_exited_timeout", False),
    ],
)
def test_a_cron_refuses_values_that_only_look_valid_naming_the_field(
    field: str, value: object
) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        parse_crons({"nightly": {"cron_string": "0 2 * * *", "handler": handler, field: value}})
    assert f"cron 'nightly': field {field!r}" in str(err.value)


def test_a_limit_refuses_a_bool_for_a_number() -> None:
    from job_processor import Limit

    for kw in (
        {"concurrency": True},
        {"rate": True, "per_seconds": 1},
        {"rate": 1, "per_seconds": True},
    ):
        with pytest.raises(InvalidDefinitionError, match="must be a number, got True"):
            Limit(key="k", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("cron_string", ["1-1/0 * * * *", "0 0 L-L * *", "0 0 * * sun-sun/0"])
def test_a_cron_string_croniter_refuses_is_still_refused_after_its_ranges_are_collapsed(
    cron_string: str,
) -> None:
    """Only the collapsed form ('1', 'L', 'sun') was checked, so these were stored (and sent
    as is to Sentry's monitor_config, which parses them with croniter)."""
    with pytest.raises(InvalidDefinitionError, match="cron_string"):
        parse_crons({"c": {"cron_string": cron_string, "handler": handler}})


@pytest.mark.parametrize("cron_string", ["1-² * * * *", "0 0 * 1-¹ *", "0 0 * * 0-⁰"])
def test_a_range_end_python_calls_a_digit_but_int_refuses_gets_the_cron_message(
    cron_string: str,
) -> None:
    """croniter_form compared values with int() once both ends were str.isdigit(): a
    superscript digit made int()'s ValueError the whole message."""
    with pytest.raises(InvalidDefinitionError, match="is not a valid cron expression"):
        parse_crons({"c": {"cron_string": cron_string, "handler": handler}})


@pytest.mark.parametrize("cron_string", ["0 0 1-1 * fri#2", "0 0 15W * sun-0", "0 0 1 * fri#2"])
def test_a_day_of_month_with_a_nth_or_nearest_weekday_is_not_said_to_be_a_missing_day(
    cron_string: str,
) -> None:
    """croniter cannot evaluate a day of month beside '#'/'W'/'L' rules; the refusal blamed
    the day of month for not existing in its month(s), which is false."""
    with pytest.raises(InvalidDefinitionError) as err:
        parse_crons({"c": {"cron_string": cron_string, "handler": handler}})
    assert "does not exist in its month" not in str(err.value)
    assert "make one of them '*'" in str(err.value)


@pytest.mark.parametrize("cron_string", ["0 0 15 * fri#3", "0 0 13 * 5#2", "0 0 15W * mon"])
def test_a_day_of_month_beside_l_w_or_hash_is_refused_even_when_croniter_finds_a_date(
    cron_string: str,
) -> None:
    """croniter silently drops one of the two fields there (the 15th never runs beside
    fri#3): refused whatever croniter answers."""
    with pytest.raises(InvalidDefinitionError, match=r"make one of them '\*'"):
        parse_crons({"c": {"cron_string": cron_string, "handler": handler}})


@pytest.mark.parametrize("cron_string", ["0 0 L * fri", "0 0 1,15 * wed", "0 0 15W * *"])
def test_a_day_of_month_beside_a_plain_weekday_is_still_accepted(cron_string: str) -> None:
    assert parse_crons({"c": {"cron_string": cron_string, "handler": handler}})


@pytest.mark.parametrize(
    "cron_string", ["0 0 ? * fri#2", "0 0 ? * 5#3", "0 0 15W * ?", "0 0 0 ? * mon#1"]
)
def test_a_question_mark_beside_l_w_or_hash_is_no_day_and_is_accepted(cron_string: str) -> None:
    """'?' is croniter's 'no specific value' (read as '*'): the Quartz idiom for the n-th
    weekday ('0 0 ? * fri#2', second Friday) runs right and stays accepted."""
    assert parse_crons({"c": {"cron_string": cron_string, "handler": handler}})


def test_a_cron_whose_payload_model_refuses_an_empty_payload_is_refused() -> None:
    """A cron task's payload is always {}: a model with a required field errored every task
    ("payload does not match"), found only at the first slot."""
    from pydantic import BaseModel

    class Account(BaseModel):
        account: str

    class Defaulted(BaseModel):
        account: str = "all"

    def tick(job: object, signal: object) -> None:
        return None

    with pytest.raises(InvalidDefinitionError) as err:
        parse_crons(
            {"nightly": {"cron_string": "0 3 * * *", "handler": tick, "payload_model": Account}}
        )
    text = str(err.value)
    assert "cron 'nightly': field 'payload_model'" in text and "field 'account'" in text
    assert "give each of its fields a default" in text
    ok = parse_crons(
        {"n": {"cron_string": "0 3 * * *", "handler": tick, "payload_model": Defaulted}}
    )
    assert ok["n"].payload_model is Defaulted


@pytest.mark.parametrize("field", ["base_seconds", "max_seconds"])
@pytest.mark.parametrize("value", [True, False])
def test_backoff_refuses_a_bool_for_a_number_of_seconds(field: str, value: bool) -> None:
    """As JobDef's and Limit's numbers do (`not_a_bool`): Backoff(base_seconds=True) silently
    meant 1 s, and False was refused as 'greater than 0'."""
    from job_processor import Backoff, JobProcessorError

    with pytest.raises(JobProcessorError, match=rf"field '{field}': {field} must be a number"):
        Backoff(**{field: value})


async def event_handler(event: object, signal: object) -> None:
    return None


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: WebhookOptions(max_attempts="x"), "max_attempts"),
        (lambda: WebhookOptions(timeout=[]), "timeout"),
        (lambda: WebhookOptions(backoff=7), "backoff"),
        (lambda: WebhookOptions(max_attempts=True), "max_attempts"),
        (lambda: WebhookOptions(timeout=True), "timeout"),
        (lambda: WebhookOptions(disable_after=True), "disable_after"),
        (lambda: Subscriber("s", event_handler, max_attempts=True), "max_attempts"),
        (
            lambda: Subscriber("s", event_handler, max_runtime_in_minutes=True),
            "max_runtime_in_minutes",
        ),
    ],
)
def test_webhook_options_and_subscribers_refuse_bad_fields_as_jobdef_does(
    build: object, field: str
) -> None:
    """WebhookOptions built directly raised pydantic's ValidationError (not a JobProcessorError),
    and it and Subscriber read True as 1 (max_attempts=True: one attempt; timeout=True: 1 s)."""
    assert callable(build)
    with pytest.raises(InvalidDefinitionError, match=rf"^\w+\(\.\.\.\): field '{field}'"):
        build()
