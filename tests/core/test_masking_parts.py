"""A field name in parts (a config key, a path) is read by its last part: a password under a
dotted key is masked; a counter or a host name whose first part is a sensitive word is not
(its value would otherwise be hidden in every text of the job)."""

from __future__ import annotations

from job_processor.core.masking import DEFAULT_SENSITIVE_FIELDS, MASK, Masker

M = Masker(DEFAULT_SENSITIVE_FIELDS)


def test_the_last_part_of_a_dotted_colon_or_slashed_key_decides() -> None:
    masked = {"spring.datasource.password": "pw-123456", "db:password": "x", "vault/token": "t"}
    assert M.value(masked) == dict.fromkeys(masked, MASK)
    plain = {"token.count": 1500, "session.timeout": 3600, "auth.example.com": "healthy"}
    assert M.value(plain) == plain


def test_a_counter_named_with_dots_hides_nothing_elsewhere() -> None:
    secrets = M.secrets({"stats": {"token.count": 1500}, "auth.example.com": "healthy"})
    assert M.masked({"processed": 1500}, secrets) == {"processed": 1500}
    error = "2 services checked: auth healthy"
    assert M.text(error, secrets) == error


def test_a_sensitive_field_given_in_parts_is_not_read_by_its_last_part() -> None:
    custom = Masker(["api.key"])
    assert custom.value({"key": "k", "api.key": "s"}) == {"key": "k", "api.key": MASK}
