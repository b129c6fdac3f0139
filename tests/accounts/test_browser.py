"""A browser front end on another origin, in a real headless Chromium: listed in CORS_ORIGINS it logs in with
credentials, creates a link with the CSRF header and reads it back; not listed, the browser refuses it; and a
form POST from a foreign page without the token changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.accounts.conftest import PASSWORD
from tests.support import chromium

pytestmark = pytest.mark.live

# Runs in the front end's page: log in, create a link with the session's CSRF token, read it back.
FRONT_END_SCRIPT = """
const [api, email, password, done] = arguments;
(async () => {
  const json = {"Content-Type": "application/json"};
  const login = await fetch(api + "/api/v1/sessions", {method: "POST", credentials: "include", headers: json,
                                                       body: JSON.stringify({email, password})});
  const session = await login.json();
  const create = await fetch(api + "/api/v1/links", {method: "POST", credentials: "include",
      headers: {...json, "X-CSRF-Token": session.csrf_token},
      body: JSON.stringify({phone: "+14155552671", title: "made in a browser"})});
  const created = await create.json();
  const read = await fetch(api + "/api/v1/links/" + created.slug, {credentials: "include"});
  done({login: login.status, create: create.status, location: create.headers.get("Location"),
        read: read.status, link: await read.json(), cookie_visible: document.cookie});
})().catch((error) => done({error: String(error)}));
"""

# Runs in a page of an origin that is not listed: every credentialed call must be refused by the browser.
FOREIGN_SCRIPT = """
const [api, email, password, done] = arguments;
const attempts = [
  fetch(api + "/api/v1/links", {credentials: "include"}),
  fetch(api + "/api/v1/sessions", {method: "POST", credentials: "include",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({email, password})}),
];
Promise.allSettled(attempts).then((results) => done(results.map((r) => r.status + ":" + (r.reason || ""))));
"""

# A classic cross-site form: JSON smuggled in a text/plain body, posted with whatever cookie the browser has.
FORM_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" action="{api}/api/v1/links" enctype="text/plain">
<input name='{{"phone": "+14155552671", "title": "forged", "x": "' value='"}}'>
</form><script>document.getElementById("f").submit();</script></body></html>"""


@contextmanager
def page_server(html: str) -> Iterator[str]:
    """Serve one HTML page on a port of its own on 127.0.0.1: a second origin; yields its origin."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = html.encode()
            self.send_response(200)
            for name, value in (("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_listed_front_end_logs_in_creates_and_reads_while_others_are_refused(live_server, make_person, owner_conn):
    person = make_person()
    blank = "<!doctype html><title>front end</title><p>front end</p>"
    with page_server(blank) as front_end, page_server(blank) as foreign, chromium() as browser:
        server = live_server(CORS_ORIGINS=front_end)
        browser.set_script_timeout(30)

        browser.get(foreign)  # first, before any log-in: the browser refuses the unlisted origin outright
        results = browser.execute_async_script(FOREIGN_SCRIPT, server.url, person["email"], PASSWORD)
        assert all(r.startswith("rejected:TypeError") for r in results), results

        browser.get(front_end)
        result = browser.execute_async_script(FRONT_END_SCRIPT, server.url, person["email"], PASSWORD)
        assert "error" not in result, result
        assert (result["login"], result["create"], result["read"]) == (201, 201, 200)
        assert result["location"] == result["link"]["short_url"]  # Location is exposed to the page
        assert result["link"]["title"] == "made in a browser"
        assert result["cookie_visible"] == ""  # HttpOnly: the page's script never sees the session

        browser.get(foreign)  # logged in now, the unlisted origin still cannot read anything
        results = browser.execute_async_script(FOREIGN_SCRIPT, server.url, person["email"], PASSWORD)
        assert all(r.startswith("rejected:TypeError") for r in results), results

        with page_server(FORM_PAGE.format(api=server.url)) as attacker:
            browser.get(attacker)
            deadline = time.monotonic() + 15
            while not browser.current_url.startswith(server.url) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert browser.current_url.startswith(f"{server.url}/api/v1/links")
            assert "csrf-failed" in browser.page_source  # the form's POST arrived, with the cookie, and was refused

    titles = [
        r[0]
        for r in owner_conn.execute("select title from links where account_id = %s", [person["account_id"]]).fetchall()
    ]
    assert titles == ["made in a browser"]


def test_an_invite_link_opens_a_page_that_sets_the_password(live_server, make_person):
    from selenium.webdriver.common.by import By

    server = live_server()
    owner = make_person()
    key = requests.post(
        f"{server.url}/api/v1/sessions", json={"email": owner["email"], "password": PASSWORD}, timeout=20
    )
    csrf = {"Origin": server.url, "X-CSRF-Token": key.json()["csrf_token"]}
    invite = requests.post(
        f"{server.url}/api/v1/members",
        json={"email": "page@example.com"},
        headers=csrf,
        cookies=key.cookies,
        timeout=20,
    ).json()
    with chromium() as browser:
        browser.get(invite["invite_url"])
        browser.find_element(By.ID, "password").send_keys("set on the invite page")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        deadline = time.monotonic() + 15
        while not browser.find_element(By.ID, "result").text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert browser.find_element(By.ID, "result").text == "Done: log in as page@example.com."
        assert "#token=" not in browser.current_url
    login = requests.post(
        f"{server.url}/api/v1/sessions",
        json={"email": "page@example.com", "password": "set on the invite page"},
        timeout=20,
    )
    assert login.status_code == 201 and login.json()["session"]["role"] == "member"
