"""Names in the settings that the service matches events against (buckets, tenant ids) are
checked at load, one line naming the key; a union member's tag never shows in a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from moderator.errors import ConfigError
from moderator.events.upload import TENANT_ID_RULE
from moderator.policy.keys import BUCKET_NAME_RULE
from moderator.settings import TenancySettings, load_settings
from tests.settings_fixtures import settings_error

HASH = "3f0c1d" + "0" * 58
TENANT_OR_ALL = f'is neither a tenant id ({TENANT_ID_RULE}) nor "*" (every tenant)'


def _file(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Every event from such a bucket went to the DLQ as having "no valid tenant id".
        (
            "tenancy: {rule: bucket_map, bucket_map: {uploads: Bad Tenant}}\n",
            f"tenancy.bucket_map.uploads: 'Bad Tenant' is not a tenant id: {TENANT_ID_RULE}",
        ),
        (
            "tenancy: {rule: bucket_map, bucket_map: {uploads: ''}}\n",
            f"tenancy.bucket_map.uploads: '' is not a tenant id: {TENANT_ID_RULE}",
        ),
        (
            "tenancy: {rule: bucket_map, bucket_map: {Up/Loads: acme}}\n",
            f"tenancy.bucket_map: key 'Up/Loads' is not a bucket name: {BUCKET_NAME_RULE}",
        ),
        (
            "tenancy: {upload_buckets: [uploads, '*']}\n",
            f"tenancy.upload_buckets: '*' is not a bucket name: {BUCKET_NAME_RULE}",
        ),
        (
            "tenancy: {upload_buckets: [Uploads]}\n",
            f"tenancy.upload_buckets: 'Uploads' is not a bucket name: {BUCKET_NAME_RULE}",
        ),
    ],
)
def test_tenancy_names_are_checked(
    no_env: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    cfg = _file(tmp_path, text)
    assert settings_error(cfg) == f"configuration error: {expected} (in {cfg})"


def test_a_bad_bucket_map_from_the_environment_names_the_variable(
    no_env: pytest.MonkeyPatch,
) -> None:
    no_env.setenv("MODERATOR_TENANCY__RULE", "bucket_map")
    no_env.setenv("MODERATOR_TENANCY__BUCKET_MAP", '{"uploads": "Acme"}')
    assert settings_error() == (
        f"configuration error: tenancy.bucket_map.uploads: 'Acme' is not a tenant id: "
        f"{TENANT_ID_RULE} (from environment MODERATOR_TENANCY__BUCKET_MAP)"
    )


def test_valid_tenancy_names_load(no_env: pytest.MonkeyPatch) -> None:
    tenancy = TenancySettings(
        rule="bucket_map",
        bucket_map={"acme-uploads": "acme", "media.example.com": "news_2", "b-1": "0x"},
        upload_buckets=("uploads", "my.bucket-2"),
    )
    assert tenancy.bucket_map["media.example.com"] == "news_2"
    assert load_settings(overrides={"tenancy.upload_buckets": ["abc"]}).tenancy.upload_buckets == (
        "abc",
    )


@pytest.mark.parametrize("tenants", ["[ALPHA]", "['']", "[acme, ' acme']", "[acme/x]"])
def test_an_api_token_tenant_must_be_a_tenant_id_or_star(
    no_env: pytest.MonkeyPatch, tmp_path: Path, tenants: str
) -> None:
    """Such a token read nothing: every answer a 200 with no items."""
    cfg = _file(tmp_path, f"audit:\n  api_tokens:\n    {HASH}: {tenants}\n")
    message = settings_error(cfg)
    assert message.startswith(
        f"configuration error: audit.api_tokens: api_tokens[{HASH[:12]}...]: "
    )
    assert TENANT_OR_ALL in message and HASH not in message
    assert message.endswith(f"the token would read nothing (in {cfg})")


def test_api_token_tenants_that_read_something_load(no_env: pytest.MonkeyPatch) -> None:
    tokens = {HASH: ["acme", "news-2"], "e4d909" + "1" * 58: ["*"]}
    settings = load_settings(overrides={"audit.api_tokens": tokens})
    assert settings.audit.api_tokens == tokens


def test_a_raw_token_key_is_still_not_echoed_with_a_bad_tenant(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = _file(tmp_path, "audit:\n  api_tokens:\n    s3cr3t-raw-token-value: [ALPHA]\n")
    assert "s3cr3t" not in settings_error(cfg)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("kafka:\n  client:\n    sasl.password: [1]\n", "kafka.client.sasl.password"),
        ("kafka:\n  client:\n    str: {a: 1}\n", "kafka.client.str"),  # a key named like a tag
        (
            "kafka:\n  topic_specs:\n    dlq:\n      configs: {retention.ms: [1]}\n",
            "kafka.topic_specs.dlq.configs.retention.ms",
        ),
    ],
)
def test_a_union_member_tag_is_not_part_of_the_key(
    no_env: pytest.MonkeyPatch, tmp_path: Path, text: str, key: str
) -> None:
    """Was `kafka.client.sasl.password.str: Input should be a valid string (and 2 more
    problems)`, with no source: the three members of str | int | bool are one problem."""
    cfg = _file(tmp_path, text)
    assert settings_error(cfg) == (
        f"configuration error: {key}: Input should be a valid string, a valid integer or a "
        f"valid boolean (in {cfg})"
    )


def test_problems_are_counted_per_key_not_per_union_member(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = _file(tmp_path, "kafka:\n  client:\n    a.b: [1]\n    c.d: {x: 1}\n")
    assert settings_error(cfg) == (
        "configuration error: kafka.client.a.b: Input should be a valid string, a valid "
        f"integer or a valid boolean (in {cfg}) (and 1 more problem)"
    )


def test_a_retention_key_that_is_no_tenant_id_is_refused() -> None:
    # `Acme` would never match an event's tenant id: its records would be kept forever.
    with pytest.raises(ConfigError, match=r"audit.retention_days: 'Acme' is neither a tenant id"):
        load_settings(overrides={"audit.retention_days": {"Acme": 30}})
    kept = load_settings(overrides={"audit.retention_days": {"default": 30, "acme": 7}})
    assert kept.audit.retention_days == {"default": 30, "acme": 7}
