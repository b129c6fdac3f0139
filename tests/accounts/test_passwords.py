"""Password rules (OWASP ASVS 5.0 §6): at least 12 characters, 64 and more allowed, any Unicode, no composition
rules, the 10,000 most common refused."""

from __future__ import annotations

import pytest

from service.accounts import passwords


def test_the_shipped_list_holds_10000_common_passwords():
    common = passwords.common_passwords()
    assert len(common) == 10000 and {"123456", "password", "qwertyuiop"} <= common


@pytest.mark.parametrize(
    "password",
    [
        "abcdefghijkl",  # 12 lower-case letters: no composition rules
        "ünïcødé pässwörd ✓",
        "日本語のパスワードです十二",
        "x" * 64 + "y" * 64,
    ],
)
def test_long_enough_uncommon_passwords_of_any_script_are_accepted(password):
    assert passwords.password_problems(password) == []


@pytest.mark.parametrize("password", ["short", "elevenchars", "1qaz2wsx3edc", "Q1W2E3R4T5Y6", "x" * 129, None, 12])
def test_short_common_overlong_or_non_text_passwords_are_refused(password):
    assert passwords.password_problems(password)


def test_hashes_are_argon2id_and_verify(tmp_path):
    stored = passwords.hash_password("a long enough passphrase")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "a long enough passphrase")
    assert not passwords.verify_password(stored, "a long enough passphrasE")
    assert not passwords.verify_password(None, "a long enough passphrase")


def test_a_password_change_refusing_a_common_password_names_the_field(client, make_person):
    from tests.accounts.conftest import PASSWORD, log_in

    session = log_in(client, make_person())
    response = client.put(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "1qaz2wsx3edc"},
        headers=session["headers"],
    )
    assert response.status_code == 422 and "new_password" in response.get_json()["errors"]
