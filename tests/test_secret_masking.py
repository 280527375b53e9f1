"""Secrets in URLs are masked wherever settings are shown (`/admin/config`, `config show`): the
password of `user:pw@`, and credentials given as query or libpq keyword parameters (issue 11 item 6)."""

from __future__ import annotations

import pytest

from service.config.settings import load_settings, mask_url_password


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://ops:pw@db/app", "postgresql://ops:****@db/app"),
        (
            "postgresql://ops@db/app?password=pw&sslmode=require",
            "postgresql://ops@db/app?password=****&sslmode=require",
        ),
        ("postgresql://ops@/app?host=/run/pg&sslpassword=pw", "postgresql://ops@/app?host=/run/pg&sslpassword=****"),
        ("postgresql://h1:5432,h2:5433/app?password=pw", "postgresql://h1:5432,h2:5433/app?password=****"),
        ("postgresql://ops:p@ss@db/app", "postgresql://ops:****@db/app"),
        ("host=db user=ops password=pw dbname=app", "host=db user=ops password=**** dbname=app"),
        ("redis://:pw@cache:6379/0", "redis://:****@cache:6379/0"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=****"),
        ("https://hooks.example/grant?api_key=pw&tenant=t1#x", "https://hooks.example/grant?api_key=****&tenant=t1#x"),
        ("https://idp.example/jwks?access_token=pw", "https://idp.example/jwks?access_token=****"),
        ("postgresql://ops@db/app?application_name=x", "postgresql://ops@db/app?application_name=x"),
    ],
)
def test_every_credential_of_a_url_is_masked(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


def test_effective_settings_mask_query_credentials_of_every_url_setting(tmp_path) -> None:
    settings = load_settings(
        environ={
            "XDG_CONFIG_HOME": str(tmp_path),
            "DATABASE_URL": "postgresql://ops@db/app?password=db-s3cret",
            "REDIS_URL": "redis://cache:6379/0?password=redis-s3cret",
            "CHALLENGE_REWARD_WEBHOOK_URL": "https://hooks.example/grant?token=hook-s3cret",
            "CHALLENGE_JWT_JWKS_URL": "https://idp.example/jwks?key=jwks-s3cret",
        },
    )
    shown = settings.effective()
    assert "s3cret" not in repr(shown)
    assert shown["reward_webhook_url"]["value"] == "https://hooks.example/grant?token=****"
    assert settings.effective(reveal_secrets=True)["database_url"]["value"].endswith("password=db-s3cret")
