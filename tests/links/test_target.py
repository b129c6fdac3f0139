"""Phone normalisation, message rules and the wa.me URL (pure, no services)."""

import pytest

from service.links import target


@pytest.mark.parametrize(
    ("text", "region", "e164"),
    [
        ("+55 11 98765-4321", None, "+5511987654321"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("0044 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "gb", "+442079460958"),
        ("+1-415-555-2671", None, "+14155552671"),
    ],
)
def test_human_formats_normalise_to_e164(text, region, e164):
    assert target.normalize_phone(text, region) == e164


@pytest.mark.parametrize("text", ["+1 555", "+999 123456", "hello", "", "+44 20 7946 095812345"])
def test_impossible_numbers_are_rejected(text):
    with pytest.raises(target.InvalidPhone):
        target.normalize_phone(text)


def test_national_number_without_region_asks_for_country_code():
    with pytest.raises(target.InvalidPhone, match="country code"):
        target.normalize_phone("(415) 555-2671")


def test_message_keeps_emoji_and_scripts_and_is_nfc():
    text = "Olá 👋 مرحبا 你好 Ж\ncafe\u0301\tok"
    assert target.clean_message(text) == "Olá 👋 مرحبا 你好 Ж\ncafé\tok"


@pytest.mark.parametrize("bad", ["a\x00b", "a\x07", "a\rb", "lone \ud800 surrogate", "\x1b[31m"])
def test_message_rejects_nul_controls_and_lone_surrogates(bad):
    with pytest.raises(ValueError):
        target.clean_message(bad)


def test_message_longer_than_2000_characters_after_nfc_is_rejected():
    assert len(target.clean_message("e\u0301" * 2000)) == 2000  # 4000 code points, 2000 after NFC
    with pytest.raises(ValueError, match="2000"):
        target.clean_message("x" * 2001)


def test_wa_me_url_percent_encodes_the_message_as_utf8():
    url = target.wa_me_url("+5511987654321", "Olá & bem-vindo? 👋 #1/2")
    assert url == "https://wa.me/5511987654321?text=Ol%C3%A1%20%26%20bem-vindo%3F%20%F0%9F%91%8B%20%231%2F2"


def test_wa_me_url_without_message_has_no_query():
    assert target.wa_me_url("+14155552671", None) == "https://wa.me/14155552671"
