"""The lead form in a real headless Chromium at phone size: fill, submit, arrive at wa.me with the greeting."""

import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.support import chromium

pytestmark = pytest.mark.live
SCREENSHOT = ROOT / "artifacts" / "lead-form.png"


@pytest.fixture
def browser():
    # A small phone: 320 CSS pixels wide, the narrowest width the page must work at.
    with chromium(phone_width=320) as driver:
        yield driver


def test_a_visitor_fills_the_form_on_a_phone_and_lands_on_wa_me(live_server, api_key, browser):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    server = live_server(LEAD_MIN_FILL_SECONDS="1")
    link = requests.post(
        f"{server.url}/api/v1/links",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
        json={
            "phone": "+55 11 98765-4321",
            "message": "Olá {name}! Quero saber mais",
            "lead_form": {
                "fields": ["name", "phone", "email"],
                "required": ["name"],
                "heading": "Fale com a gente",
                "button": "Abrir o WhatsApp",
                "consent": "Aceito ser contactado.",
            },
        },
    ).json()
    browser.get(link["short_url"])
    assert browser.find_element(By.TAG_NAME, "h1").text == "Fale com a gente"
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 320  # no sideways scrolling
    # The inline stylesheet is applied, i.e. its hash in the Content-Security-Policy matches.
    button_colour = "return getComputedStyle(document.querySelector('button')).backgroundColor"
    assert browser.execute_script(button_colour) == "rgb(7, 94, 84)"
    name = browser.find_element(By.ID, "name")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=name]").text.startswith("Your name")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    name.send_keys("Ana")
    browser.find_element(By.ID, "phone").send_keys("+55 11 91234-5678")
    browser.find_element(By.ID, "email").send_keys("ana@example.com")
    browser.find_element(By.CSS_SELECTOR, "input[name=consent]").click()
    time.sleep(1.1)  # a person takes longer than the minimum fill time
    try:
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        deadline = time.monotonic() + 10
        while not browser.current_url.startswith("https://wa.me/") and time.monotonic() < deadline:
            time.sleep(0.1)
    except WebDriverException:
        pass  # this machine cannot reach wa.me; the address the browser went to is what matters
    assert browser.current_url == "https://wa.me/5511987654321?text=Ol%C3%A1%20Ana%21%20Quero%20saber%20mais"
    assert Path(SCREENSHOT).stat().st_size > 1000
