"""URL passwords never reach people: the masking function, and the S3 adapter's messages."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ParamValidationError
from hypothesis import given
from hypothesis import strategies as st

from moderator.errors import ErrorCode, ProcessingError
from moderator.fetch.s3 import S3ObjectStore
from moderator.masking import has_userinfo, mask_passwords
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
    ],
)
def test_passwords_are_masked_and_nothing_else(text: str, masked: str) -> None:
    assert mask_passwords(text) == masked


def test_userinfo_is_detected_in_the_authority_only() -> None:
    assert has_userinfo("http://a:b@h") and has_userinfo("http://a@h:9000")
    assert not has_userinfo("http://h/x@y") and not has_userinfo("https://h:9000/p?q=a@b")


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
