"""The OpenAPI description: it covers every /api/v1 route, its page is served without a CDN, and schemathesis finds
no server error, undocumented status or response off its schema against a live gunicorn."""

import re
import subprocess
import sys

import pytest

from service.openapi import build_spec

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_api_route_is_described(app):
    spec = build_spec()
    assert spec["openapi"] == "3.1.0"
    routes = {
        (_flask_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "openapi.openapi_json"
        for method in rule.methods & METHODS
    }
    described = {
        (path, method)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in {m.lower() for m in METHODS}
    }
    assert routes == described


def test_every_operation_lists_its_problems_and_the_request_shapes_come_from_marshmallow():
    spec = build_spec()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            assert {"401", "429", "503"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= set(operation["responses"]), (method, path)
    create = spec["components"]["schemas"]["LinkCreate"]
    assert create["required"] == ["phone"] and create["additionalProperties"] is False
    assert create["properties"]["title"]["maxLength"] == 200


def test_the_document_is_served_without_a_key(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.get_json()["info"]["title"] == "Chatlink API"


def test_the_documentation_page_uses_only_chatlinks_own_assets(client):
    page = client.get("/api/docs/").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/api/docs/") for asset in assets), assets
    assert "/api/v1/openapi.json" in page
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


@pytest.mark.live
def test_schemathesis_finds_no_failure_in_any_operation(live_server, api_key, tmp_path):
    # Generous limits so the fuzzer reaches the handlers; no deliverer and no address checks, so that nothing it
    # registers is ever resolved or called (a generated webhook URL may name any host).
    server = live_server(
        RATE_LIMITS_ENABLED="0", DELIVER_EVENTS="0", WEBHOOK_ALLOW_PRIVATE="1", ACCESS_LOG="0", WEB_CONCURRENCY="2"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {api_key}",
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--seed",
            "20261202",
            "--max-examples",
            "25",
            "--generation-database",
            "none",
            "--report-junit-path",
            str(tmp_path / "schemathesis.xml"),
            "--no-color",
        ],
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    described = sum(
        1 for operations in build_spec()["paths"].values() for method in operations if method != "parameters"
    )
    assert re.search(rf"Tested: {described}\b", result.stdout), result.stdout[-3000:]  # every operation fuzzed
