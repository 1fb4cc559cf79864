"""Masking, pure: every known sensitive value is hidden wherever it appears (payload, result,
error, checkpoint, event payloads), quoted values with spaces included."""

from __future__ import annotations

import datetime as dt

from bson import ObjectId

from job_processor.core.masking import (
    DEFAULT_SENSITIVE_FIELDS,
    MASK,
    Masker,
    hide_in_texts,
    mask_event,
    mask_job,
    values_at,
)
from job_processor.core.models import Delivery, Event, Job

M = Masker(DEFAULT_SENSITIVE_FIELDS)
PASSWORD = "correct horse battery"


def test_a_quoted_value_is_masked_to_its_closing_quote() -> None:
    assert M.text(f"login failed: password='{PASSWORD}' for ada") == (
        f"login failed: password='{MASK}' for ada"
    )
    assert M.text(f'{{"api_key": "{PASSWORD}", "user": "ada"}}') == (
        f'{{"api_key": "{MASK}", "user": "ada"}}'
    )
    assert M.text("token=abc123 rest") == f"token={MASK} rest"  # unquoted: to the space
    assert M.text("Authorization: Bearer abc.def.ghi now") == f"Authorization: {MASK} now"
    assert M.text("author=bob") == "author=bob"  # "author" is not "auth"


def test_a_secret_the_payload_holds_is_masked_in_the_result_checkpoint_and_errors() -> None:
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "mail",
            "status": "errored",
            "payload": {"password": PASSWORD, "note": f"pw is {PASSWORD}"},
            "state": {"last": f"tried {PASSWORD}"},
            "output": {"result": {"echo": [f"sent with {PASSWORD}"]}, "error": f"no: {PASSWORD}"},
            "history": [{"attempt": 1, "error": f"no: {PASSWORD}"}],
        }
    )
    shown = str(mask_job(M, job))
    assert PASSWORD not in shown
    data = mask_job(M, job)
    assert data["payload"] == {"password": MASK, "note": f"pw is {MASK}"}
    assert data["output"]["result"] == {"echo": [f"sent with {MASK}"]}
    assert data["state"] == {"last": f"tried {MASK}"}


def test_event_payloads_and_delivery_results_are_masked() -> None:
    event = Event.model_validate(
        {
            "_id": ObjectId(),
            "name": "signup",
            "payload": {"email": "ada@example.com", "password": PASSWORD},
            "emitted_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        }
    )
    event.deliveries = [
        Delivery(
            job_id=str(ObjectId()),
            event_id=event.id,
            target="crm",
            kind="subscriber",
            status="errored",
            result={"sent": PASSWORD},
            error=f"crm refused password='{PASSWORD}'",
        )
    ]
    data = mask_event(M, event)
    assert PASSWORD not in str(data)
    assert data["payload"]["password"] == MASK
    assert data["deliveries"][0]["result"] == {"sent": MASK}


def test_definition_paths_are_hidden_in_the_result_and_the_rest_of_the_payload() -> None:
    card = "4111111111111111"
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "pay",
            "status": "finished",
            "payload": {"card": {"number": card}, "memo": f"card {card}"},
            "output": {"result": {"charged": card}},
        }
    )
    hide_in_texts(job, values_at(job.payload, ["card.number"]))
    assert job.result == {"charged": "[redacted]"}
    assert job.payload["memo"] == "card [redacted]"


def test_hyphenated_key_names_are_masked_in_free_text() -> None:
    assert M.sensitive("x-api-key")
    assert M.text("headers: {'x-api-key': 'abcdefgh123'}") == f"headers: {{'x-api-key': '{MASK}'}}"
    assert M.text("X-Api-Key: abcdefgh123") == f"X-Api-Key: {MASK}"
    assert M.text("private-key=abcdefgh rest") == f"private-key={MASK} rest"


def test_a_number_held_in_a_sensitive_field_is_masked_where_a_result_repeats_it() -> None:
    card = 4111111111111111
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "charge",
            "status": "finished",
            "payload": {"card_number": card, "amount": 12},
            "output": {"result": {"charged": card, "amount": 12, "text": f"charged {card}"}},
            "created_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        }
    )
    shown = mask_job(M, job)
    assert shown["payload"] == {"card_number": MASK, "amount": 12}
    assert shown["output"]["result"] == {"charged": MASK, "amount": 12, "text": f"charged {MASK}"}


def test_what_a_delivery_job_carries_is_masked_with_it() -> None:
    """A delivery job's payload holds the event's id; the event's secrets, echoed by the
    subscriber's result or error, are masked when the event's payload is given."""
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "audit",
            "status": "errored",
            "payload": {"event_id": str(ObjectId()), "event": "user.login"},
            "output": {"result": None, "error": f"refused: logged in with {PASSWORD}"},
            "created_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        }
    )
    assert PASSWORD in str(mask_job(M, job))
    shown = mask_job(M, job, {"user": "ada", "password": PASSWORD})
    assert PASSWORD not in str(shown) and MASK in shown["output"]["error"]


def test_lists_objects_and_keys_between_separators_are_masked_in_free_text() -> None:
    said = 'crm said: {"order_id": "A1", "card_number": "4111", "token": ["LIST", {"a": "]"}]}'
    assert (
        M.text(said) == f'crm said: {{"order_id": "A1", "card_number": "{MASK}", "token": {MASK}}}'
    )
    assert M.text("token={'a': 'b', 'c': [1, 2]} rest") == f"token={MASK} rest"
    assert M.text("db_password=hunter2; user=ada") == f"db_password={MASK}; user=ada"
    assert M.text("api_key_id=abc mypassword=x") == f"api_key_id={MASK} mypassword=x"
    assert M.text("password='never closed, to the end") == f"password='{MASK}'"
    assert M.text('password="a\\"b" tail') == f'password="{MASK}" tail'
    assert M.text("password=") == "password="  # nothing to mask


def test_masking_free_text_is_linear_in_its_length() -> None:
    """A complexity guard, not a speed target: the earlier pattern backtracked on
    `auth-auth-auth-...` (27 s for 3,900 characters, and it grew as the cube of the length);
    100,000 characters of each worst case now take milliseconds, so a second is a wide margin
    that only a super-linear pattern would miss."""
    import time

    for text in ("auth-" * 20_000, "a" * 100_000, "password='" * 10_000, "x " * 50_000):
        started = time.process_time()
        M.text(text)
        assert time.process_time() - started < 1.0, text[:20]


def test_pairs_inside_stored_strings_are_masked_too() -> None:
    """A webhook delivery's checkpoint keeps each attempt's response excerpt: a receiver that
    echoes `api_key` (or the Authorization header made from the URL's user:password) is masked
    there as in the error, on every page and in the JSON."""
    excerpt = '{"api_key":"HEADERSECRET123","Authorization":"Basic dXNlcjpw"}'
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "webhook-delivery",
            "status": "pending",
            "payload": {"memo": "token=abc123 please"},
            "state": {"attempts": [{"status": 500, "response_excerpt": excerpt}]},
        }
    )
    data = mask_job(M, job)
    assert data["state"]["attempts"][0]["response_excerpt"] == (
        f'{{"api_key":"{MASK}","Authorization":"{MASK}"}}'
    )
    assert data["payload"]["memo"] == f"token={MASK} please"


def test_camel_case_keys_are_read_as_words() -> None:
    assert M.sensitive("accessToken") and M.sensitive("clientSecret") and M.sensitive("apiKey")
    assert not M.sensitive("authorName") and not M.sensitive("tokenizer")
    assert M.value({"accessToken": "abc", "userName": "ada"}) == {
        "accessToken": MASK,
        "userName": "ada",
    }
    assert M.text('{"clientSecret": "s3cr3t-value"}') == f'{{"clientSecret": "{MASK}"}}'


def test_every_spelling_of_a_name_and_every_space_after_the_key_are_read() -> None:
    """camelCase read both as words and as one (`PassWord` is still `password`), names given
    in camelCase match their other spellings, a newline may follow the `:`, and a quote not
    closed on its line masks that line only (the next line's pairs are read on their own)."""
    assert M.sensitive("PassWord") and M.sensitive("passWd") and M.sensitive("db_PassWord")
    custom = Masker(["apiKey", "clientSecret"])
    for key in ("apikey", "APIKEY", "api_key", "clientsecret", "CLIENT_SECRET", "x-client-secret"):
        assert custom.sensitive(key), key
    assert M.text("PassWord=hunter2") == f"PassWord={MASK}"
    assert M.text('"password":\n  "secret"') == f'"password":\n  "{MASK}"'
    assert M.text("Authorization: Bearer\nabc") == f"Authorization: {MASK}"
    assert M.text('password="pa55\nretry with token = "tok en 123" ok') == (
        f'password="{MASK}"\nretry with token = "{MASK}" ok'
    )


def test_nested_keys_multi_line_quotes_and_case_folding() -> None:
    """A key with no value on its line is followed by nested keys, not by its value; a quoted
    value closes at a quote not followed by a word, lines apart if need be (a PEM block); the
    quick pre-check and the full scan read case alike (a final sigma)."""
    assert M.text("credentials:\n  password: hunter2") == f"credentials:\n  password: {MASK}"
    assert M.text("auth:\npassword: hunter2") == f"auth:\npassword: {MASK}"
    pem = 'private_key="-----BEGIN KEY-----\nMIIEvQ\n-----END KEY-----" tail'
    assert M.text(pem) == f'private_key="{MASK}" tail'
    greek = Masker(["κωδικός"])
    assert greek.text("ΚΩΔΙΚΌΣ:ABC") == f"ΚΩΔΙΚΌΣ:{MASK}"


def test_a_secret_cut_by_the_end_of_a_long_log_message_is_masked_where_shown() -> None:
    """A message cut to fit its line ("...hunter2-very…") showed all but the end of the
    payload's password."""
    from job_processor.core.notes import log_line

    password = "hunter2-very-secret"
    now = dt.datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    full = len(log_line(1, "info", "x" * 5000, {}, now)["message"]) - 1  # kept before "…"
    line = log_line(1, "info", "x" * (full - 12) + password + " " + "y" * 3000, {}, now)
    assert line["message"].endswith(password[:12] + "…")  # the cut falls inside it
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "login",
            "status": "finished",
            "payload": {"password": password},
            "logs": [line],
        }
    )
    shown = mask_job(M, job)["logs"][0]["message"]
    assert password[:8] not in shown


def test_an_uncut_message_ending_with_an_ellipsis_is_not_masked_where_no_secret_is() -> None:
    """Only a message cut to fit its line ends inside a secret: a handler's own "…" after an
    ordinary word that a secret merely starts with hides nothing."""
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "deploy",
            "status": "finished",
            "payload": {"token": "prod-7f3a9c2e41"},
            "logs": [
                {
                    "at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
                    "run": 1,
                    "level": "info",
                    "message": "deploying to prod…",
                }
            ],
        }
    )
    assert mask_job(M, job)["logs"][0]["message"] == "deploying to prod…"


def test_the_json_views_show_a_jobs_own_numbers_and_times_whatever_its_secrets() -> None:
    """24cab26 masked every field of the output, the progress and the log lines as a
    payload: a secret the payload holds that is also one of those numbers or a part of those
    times (a PIN "1500", "2030") masked output.duration_ms, progress.done/total and each
    line's `at` in /api/jobs and the CLI's JSON (a text where a number is expected), which
    the job page shows as they are. Only the fields another program added are masked so."""
    at = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "mail",
            "status": "finished",
            "payload": {"password": "1500", "pin": "x", "api_key": "2030"},
            "created_at": at,
            "output": {"result": "ok", "error": None, "duration_ms": 1500, "note": 1500},
            "progress": {"done": 1500, "total": 3000, "fraction": 0.5, "message": "m", "at": at},
            "logs": [{"at": at, "run": 1, "level": "info", "message": "hi", "extra": "2030"}],
        }
    )
    shown = mask_job(M, job)
    assert shown["output"]["duration_ms"] == 1500
    assert shown["output"]["note"] == MASK  # another program's field: masked as before
    assert shown["progress"]["done"] == 1500 and shown["progress"]["total"] == 3000
    assert shown["progress"]["at"] == job.model_dump(mode="json")["progress"]["at"]
    line = shown["logs"][0]
    assert line["at"] == job.model_dump(mode="json")["logs"][0]["at"], line
    assert line["level"] == "info" and line["run"] == 1 and line["extra"] == MASK
