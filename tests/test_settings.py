"""Settings precedence, parsing, aliases, masking and the startup refusals (docs/configuration.md, X14)."""

from __future__ import annotations

import pytest

from service.config.settings import MASK, SettingsError, load_settings, validate_for_serve


def test_defaults_when_nothing_is_given(tmp_path):
    settings = load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.http_port == 8000 and settings.grpc_port == 6565 and settings.admin_port == 8080
    assert settings.base_path == "/challenge"
    assert settings.sources["http_port"] == "default"


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = tmp_path / "challengectl" / "config.toml"
    config.parent.mkdir()
    config.write_text('namespace = "from-file"\nhttp_port = 7001\nflush_interval_ms = 70\ngrpc_port = 7002\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CHALLENGE_HTTP_PORT": "7101", "CHALLENGE_GRPC_PORT": "7102"}
    settings = load_settings({"grpc_port": 7203}, env)
    assert (settings.grpc_port, settings.sources["grpc_port"]) == (7203, "flag")
    assert (settings.http_port, settings.sources["http_port"]) == (7101, "env")
    assert (settings.flush_interval_ms, settings.sources["flush_interval_ms"]) == (70, "file")
    assert (settings.namespace, settings.sources["namespace"]) == ("from-file", "file")
    assert settings.sources["admin_port"] == "default"


def test_profile_section_overrides_top_level(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('namespace = "top"\n[profiles.staging]\nnamespace = "staging-ns"\n')
    plain = load_settings({"config_file": str(config)}, {})
    staged = load_settings({"config_file": str(config)}, {"CHALLENGE_PROFILE": "staging"})
    assert plain.namespace == "top"
    assert staged.namespace == "staging-ns"


def test_unknown_profile_and_unknown_file_keys_are_errors(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('namespace = "x"\n')
    with pytest.raises(SettingsError, match="profiles.nope"):
        load_settings({"config_file": str(config), "profile": "nope"}, {})
    config.write_text('nme_space = "x"\n')
    with pytest.raises(SettingsError, match="nme_space"):
        load_settings({"config_file": str(config)}, {})


def test_reference_aliases(tmp_path):
    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "AB_NAMESPACE": "game",
        "BASE_PATH": "/ch",
        "CHALLENGE_CONFIG_PATH": "/etc/c.json",
        "LOG_LEVEL": "debug",
        "REFRESH_INTERVAL": "120",
        "PLUGIN_GRPC_SERVER_AUTH_ENABLED": "false",
    }
    settings = load_settings({}, env)
    assert settings.namespace == "game"
    assert settings.base_path == "/ch"
    assert settings.catalog_path == "/etc/c.json"
    assert settings.log_level == "debug"
    assert settings.jwks_refresh_s == 120
    assert settings.auth == "none"


def test_prefixed_variable_wins_over_alias(tmp_path):
    settings = load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path), "AB_NAMESPACE": "a", "CHALLENGE_NAMESPACE": "b"})
    assert settings.namespace == "b"


def test_database_and_redis_urls_are_read_without_prefix(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DATABASE_URL": "postgresql://u:pw@h/db", "REDIS_URL": "redis://h:1/0"}
    settings = load_settings({}, env)
    assert settings.database_url == "postgresql://u:pw@h/db"
    assert settings.redis_url == "redis://h:1/0"


@pytest.mark.parametrize(
    "raw, expected", [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)]
)
def test_booleans(tmp_path, raw, expected):
    assert load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path), "CHALLENGE_DEBUG": raw}).debug is expected


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"CHALLENGE_HTTP_PORT": "eighty"}, "setting 'http_port' from env CHALLENGE_HTTP_PORT"),
        ({"CHALLENGE_ACK_MODE": "sometimes"}, "setting 'ack_mode' from env CHALLENGE_ACK_MODE"),
        ({"CHALLENGE_DEBUG": "maybe"}, "setting 'debug'"),
        ({"CHALLENGE_WORKERS": "-1"}, "below the minimum 0"),
        ({"CHALLENGE_DEDUP_PENDING_TTL_S": "2"}, "below the minimum 3"),
    ],
)
def test_invalid_values_name_the_setting_and_source(tmp_path, env, fragment):
    with pytest.raises(SettingsError) as raised:
        load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path), **env})
    assert fragment in str(raised.value)
    assert raised.value.exit_code == 2


def test_secrets_are_masked(tmp_path):
    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "DATABASE_URL": "postgresql://ops:s3cret@db/ch",
        "CHALLENGE_JWT_SECRET": "topsecret",
        "CHALLENGE_ADMIN_TOKEN": "adm",
    }
    effective = load_settings({}, env).effective()
    text = repr(effective)
    assert "s3cret" not in text and "topsecret" not in text and "adm'" not in text
    assert effective["jwt_secret"] == {"value": MASK, "source": "env"}
    assert effective["database_url"]["value"] == f"postgresql://ops:{MASK}@db/ch"
    assert load_settings({}, env).effective(reveal_secrets=True)["jwt_secret"]["value"] == "topsecret"


@pytest.mark.parametrize(
    "flags, setting",
    [
        ({"auth": "none", "http_host": "0.0.0.0"}, "auth"),
        ({"admin_host": "0.0.0.0"}, "admin_token"),
        ({"reward_mode": "webhook"}, "reward_webhook_url"),
        ({"flush_workers": 33}, "flush_workers"),
        ({"flush_workers": 0}, "flush_workers"),
        ({"base_path": "/challenge/"}, "base_path"),
        ({"base_path": "challenge"}, "base_path"),
        ({"redis_key_prefix": "c{h}"}, "redis_key_prefix"),
    ],
)
def test_startup_refusals_name_the_setting(tmp_path, flags, setting):
    settings = load_settings({"jwt_secret": "k", **flags}, {"XDG_CONFIG_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match=f"invalid setting '{setting}'"):
        validate_for_serve(settings, embedded_postgres=False)


def test_jwt_needs_a_key_source_outside_embedded_mode(tmp_path):
    settings = load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="key source"):
        validate_for_serve(settings, embedded_postgres=False)
    validate_for_serve(settings, embedded_postgres=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost"])
def test_auth_none_is_allowed_on_loopback(tmp_path, host):
    settings = load_settings({"auth": "none", "http_host": host}, {"XDG_CONFIG_HOME": str(tmp_path)})
    validate_for_serve(settings, embedded_postgres=True)
