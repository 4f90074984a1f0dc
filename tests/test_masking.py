"""URL passwords never reach people: the masking function, and the S3 adapter's messages."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ParamValidationError
from hypothesis import given
from hypothesis import strategies as st

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.s3 import S3ObjectStore
from moderator.masking import has_userinfo, mask_passwords, mask_values
from moderator.settings import S3Settings
from tests.fuzz import fuzz_settings


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("audit.url: 'u:secret@host/db'", "audit.url: 'u:***@host/db'"),
        ("u:secret@host/db", "u:***@host/db"),
        ('URL: "http://AK:S/K@minio:9000/b"', 'URL: "http://AK:***@minio:9000/b"'),
        ("x postgresql+psycopg://u:p@ss@h/d y", "x postgresql+psycopg://u:***@h/d y"),
        ("postgresql://u@h/db and http://h:80/x", "postgresql://u@h/db and http://h:80/x"),
        ("kids.yaml:3: categories.O1: bad", "kids.yaml:3: categories.O1: bad"),
        ("s3://bucket/k:e@y", "s3://bucket/k:e@y"),
        ("postgresql://u@server:secret@h/db", "postgresql://u@server:***@h/db"),
        (
            "postgresql://a@h:1/db?password=secret: failed",
            "postgresql://a@h:1/db?password=***: failed",
        ),
        ("pg:///db?host=h&password=secret&user=a", "pg:///db?host=h&password=***&user=a"),
        (
            "pg://h/db?PassWord=se%40cret&SSLPASSWORD=secret",
            "pg://h/db?PassWord=***&SSLPASSWORD=***",
        ),
        (
            "pg://h/db?pass%77ord=secret#x;y&sslmode=require",
            "pg://h/db?pass%77ord=***&sslmode=require",
        ),
        ("'pg://h/db?sslpassword=secret', more", "'pg://h/db?sslpassword=***', more"),
        ("conninfo host=h password=secret user=a", "conninfo host=h password=*** user=a"),
        ("http://h/p?passwords=a&password=&q=x=y", "http://h/p?passwords=a&password=&q=x=y"),
    ],
)
def test_passwords_are_masked_and_nothing_else(text: str, masked: str) -> None:
    assert mask_passwords(text) == masked
    assert mask_passwords(masked) == masked


def test_known_secret_values_are_masked_where_they_stand_alone() -> None:
    text = 'failed to resolve host "Q@x": password Q@x, user a, at "127.0.0.1"'
    assert mask_values(text, ["Q@x", "a", ""]) == (
        'failed to resolve host "***": password ***, user ***, at "127.0.0.1"'
    )


def test_userinfo_is_detected_in_the_authority_only() -> None:
    assert has_userinfo("http://a:b@h") and has_userinfo("http://a@h:9000")
    assert not has_userinfo("https://h:9000/p?q=a@b") and not has_userinfo("http://h:9000/p")
    # a secret key with a '/' ends the authority early: the '@' after it still counts
    assert has_userinfo("http://AKIA:abc/def@minio:9000") and has_userinfo("http://h/x@y")


_PART = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp"), blacklist_characters="'\"<>@/:"
    ),
    min_size=1,
    max_size=12,
)
_PASSWORD = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp"), blacklist_characters="'\"<>"
    ),
    min_size=1,
    max_size=20,
)


@pytest.mark.fuzz
@fuzz_settings(200)
@given(
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg", "http", "https", "s3", ""]),
    user=_PART,
    password=_PASSWORD,
    host=st.from_regex(r"[a-z0-9.-]{1,15}(:[0-9]{1,5})?", fullmatch=True),
    path=st.from_regex(r"(/[a-z0-9._-]{0,10}){0,3}", fullmatch=True),
    before=st.sampled_from(["", "error: ", "url='", '("']),
)
def test_any_url_password_is_masked(
    scheme: str, user: str, password: str, host: str, path: str, before: str
) -> None:
    """200 generated URLs by default (about a second)."""
    head = f"{scheme}://" if scheme else ""
    text = f"{before}{head}{user}:{password}@{host}{path} (more)"
    assert mask_passwords(text) == f"{before}{head}{user}:***@{host}{path} (more)"


_VALUE = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp"), blacklist_characters="'\"<>&"
    ),
    min_size=2,
    max_size=20,
)


@pytest.mark.fuzz
@fuzz_settings(200)
@given(
    key=st.sampled_from(["password", "PASSWORD", "sslPassword", "pass%77ord", "passwd"]),
    value=_VALUE,
    before=st.sampled_from(["?", "?host=h&", "?a=b&"]),
    after=st.sampled_from(["", "&sslmode=require", ": connection failed", " (more)"]),
)
def test_any_secret_query_value_is_masked(key: str, value: str, before: str, after: str) -> None:
    """200 generated query strings by default: only a closing ":", ",", "." or ")" of the value
    may stay, as punctuation."""
    masked = mask_passwords(f"postgresql://a@h/db{before}{key}={value}{after}")
    head = f"postgresql://a@h/db{before}{key}=***"
    assert masked.startswith(head) and masked.endswith(after)
    assert masked[len(head) : len(masked) - len(after)] in ("", *":,.)")


class _Client:
    def get_object(self, **params: Any) -> Any:
        raise ParamValidationError(report="bad endpoint http://AKID:hunter2@minio:9000/b/k")


def test_s3_errors_quoting_an_endpoint_are_masked() -> None:
    store = S3ObjectStore(S3Settings(max_attempts=1), _Client())
    with pytest.raises(ProcessingError) as caught:
        store.get("b", "k", None, 100)
    assert caught.value.code is ErrorCode.FETCH_FAILED
    assert "hunter2" not in caught.value.message
    assert "http://AKID:***@minio:9000/b/k" in caught.value.message
