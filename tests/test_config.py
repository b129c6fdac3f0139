"""Settings from the environment: defaults, validation naming the variable, and the README listing them all."""

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from service.config import ConfigError, documented_settings, load_settings


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
