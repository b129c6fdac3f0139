"""Settings from the environment: defaults, validation naming the variable, and the README listing them all."""

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service.config import ConfigError, describe, documented_settings, load_settings


def test_defaults_apply_without_environment():
    settings = load_settings({})
    assert settings.port == 8000
    assert settings.trusted_proxies == 0
    assert settings.public_base_url == "http://127.0.0.1:8000"


def test_base_url_defaults_to_the_port():
    assert load_settings({"PORT": "9001"}).public_base_url == "http://127.0.0.1:9001"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("TRUSTED_PROXIES", "-1"),
        ("BASE_URL", "ftp://x"),
        ("RATE_LIMIT_API", "lots"),
        ("RATE_LIMITS_ENABLED", "maybe"),
        ("REDIS_TIMEOUT_MS", "0"),
        ("LOG_LEVEL", "garbage"),
        ("REDIS_URL", "garbage"),
        ("DATABASE_URL", "garbage"),
        ("LOG_FORMAT", "xml"),
        ("CHATLINK_ENV", "staging"),
        ("METRICS_ALLOW", "everyone"),
    ],
)
def test_invalid_value_stops_start_up_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, _default, _ in documented_settings():
        assert f"`{name}`" in readme, name


def test_secrets_key_is_validated_and_never_shown_in_the_settings_repr():
    key = Fernet.generate_key().decode()
    assert key not in repr(load_settings({"SECRETS_KEY": key}))
    with pytest.raises(ConfigError, match="SECRETS_KEY"):
        load_settings({"SECRETS_KEY": "not-a-key"})


PRODUCTION = {
    "CHATLINK_ENV": "production",
    "DATABASE_URL": "postgresql://chatlink@db.internal/chatlink",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "BASE_URL": "https://chat.example",
    "TRUSTED_PROXIES": "1",
}


def test_production_starts_with_safe_settings_and_requires_the_services():
    settings = load_settings(PRODUCTION)
    assert settings.chatlink_env == "production" and settings.require_services is True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"REDIS_URL": ""}, "REDIS_URL"),
        ({"BASE_URL": "http://chat.example"}, "BASE_URL"),
        ({"BASE_URL": ""}, "BASE_URL"),
        ({"TRUSTED_PROXIES": None}, "TRUSTED_PROXIES"),
        ({"WEBHOOK_ALLOW_PRIVATE": "1"}, "WEBHOOK_ALLOW_PRIVATE"),
        ({"METRICS_ALLOW": "0.0.0.0/0"}, "METRICS_ALLOW"),
        ({"METRICS_ALLOW": "127.0.0.1,::/0"}, "METRICS_ALLOW"),
    ],
)
def test_production_refuses_unsafe_settings_naming_the_problem(change, named):
    environ = {k: v for k, v in {**PRODUCTION, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=f"CHATLINK_ENV=production.*{named}") as refused:
        load_settings(environ)
    assert "\n" not in str(refused.value)


def test_development_accepts_what_production_refuses():
    assert load_settings({"BASE_URL": "http://x", "WEBHOOK_ALLOW_PRIVATE": "1", "METRICS_ALLOW": "0.0.0.0/0"})


def test_describe_masks_secrets_and_names_each_source():
    rows = {
        name: (value, source)
        for name, value, source in describe(
            {**PRODUCTION, "DATABASE_URL": "postgresql://chatlink:hunter2@db/chatlink", "METRICS_TOKEN": "tok-123"}
        )
    }
    assert rows["DATABASE_URL"] == ("postgresql://chatlink:***@db/chatlink", "environment")
    assert rows["METRICS_TOKEN"] == ("***", "environment")
    assert rows["REQUIRE_SERVICES"] == ("1", "profile")
    assert rows["PORT"] == ("8000", "default")
    assert "hunter2" not in repr(rows) and "tok-123" not in repr(rows)


def test_an_invalid_url_is_reported_without_its_password():
    with pytest.raises(ConfigError) as refused:
        load_settings({"REDIS_URL": "http://user:hunter2@cache"})
    assert "hunter2" not in str(refused.value)
