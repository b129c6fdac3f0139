"""The OpenAPI 3.1 description of /api/v1 (apispec: request shapes from the marshmallow schemas, response shapes and
every problem+json status), served at /api/v1/openapi.json, and its documentation page at /api/docs (assets local)."""

from __future__ import annotations

from functools import cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, json
from flask_swagger_ui import get_swaggerui_blueprint

from .accounts.routes import AcceptIn, InviteIn, LoginIn, PasswordChangeIn, SignupIn
from .analytics.queries import AccountStatsQuery, ClicksQuery, LinkStatsQuery
from .clicks.pipeline import API_FIELDS as CLICK_FIELDS
from .leads.routes import LeadsQuery
from .leads.store import LEAD_FIELDS
from .links.schemas import LinkCreate, LinkEdit, LinkListQuery
from .links.slugs import SlugConverter
from .platform.errors import PROBLEM_JSON
from .webhooks.events import EVENTS
from .webhooks.routes import WebhookIn, WhatsAppIn

bp = Blueprint("openapi", __name__)
SPEC_PATH = "/api/v1/openapi.json"
DOCS_PATH = "/api/docs"

TEXT, NULLABLE_TEXT, NULLABLE_TIME = {"type": "string"}, {"type": ["string", "null"]}, {"type": ["string", "null"]}
COUNT = {"type": "integer", "minimum": 0}
# What a failure answers; the statuses each operation can give are listed with it.
PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": TEXT,
        "title": TEXT,
        "status": {"type": "integer"},
        "detail": TEXT,
        "errors": {
            "type": "object",
            "description": "For 422: the messages of each invalid field.",
            "additionalProperties": {"type": "array", "items": TEXT},
        },
    },
}
PROBLEM_TEXT = {
    400: "Malformed JSON, or nested deeper than 16; for an invite, a used, expired or unknown token.",
    401: "Missing, malformed, invalid or revoked API key, an ended session, or a failed log-in.",
    403: "A member's owner action, a failed CSRF check, or an API key where a session is needed.",
    404: "No such resource in this account.",
    409: "The custom slug is taken.",
    413: "Body over 16 KiB.",
    415: "Not application/json.",
    422: "Invalid fields (named in errors).",
    429: "Rate limited (see Retry-After).",
    503: "A dependency is down (see Retry-After).",
}
LINK = {
    "type": "object",
    "required": ["slug", "short_url", "target_url", "phone", "tags", "disabled", "created_at", "updated_at"],
    "properties": {
        "slug": TEXT,
        "short_url": TEXT,
        "target_url": TEXT,
        "phone": TEXT,
        "message": NULLABLE_TEXT,
        "title": NULLABLE_TEXT,
        "tags": {"type": "array", "items": TEXT},
        "expires_at": NULLABLE_TIME,
        "max_clicks": {"type": ["integer", "null"]},
        "disabled": {"type": "boolean"},
        "lead_form": {"type": ["object", "null"]},
        "created_at": TEXT,
        "updated_at": TEXT,
    },
}
WEBHOOK = {
    "type": "object",
    "required": ["id", "url", "events", "created_at"],
    "properties": {
        "id": TEXT,
        "url": TEXT,
        "events": {"type": "array", "items": {"enum": list(EVENTS)}},
        "created_at": TEXT,
        "secret": {"type": "string", "description": "Only in the answer to POST: store it now."},
    },
}
WHATSAPP = {
    "type": "object",
    "required": ["phone_number_id", "template", "language", "notify_number"],
    "properties": {name: TEXT for name in ("phone_number_id", "template", "language", "notify_number", "updated_at")},
}
LINK_STATS = {
    "type": "object",
    "required": ["slug", "from", "to", "interval", "tz", "clicks", "unique_visitors", "bot_clicks", "series"],
    "properties": {
        "slug": TEXT,
        "from": TEXT,
        "to": TEXT,
        "interval": {"enum": ["day", "hour"]},
        "tz": TEXT,
        "include_bots": {"type": "boolean"},
        "clicks": COUNT,
        "unique_visitors": COUNT,
        "bot_clicks": COUNT,
        "leads": COUNT,
        "conversion_rate": {"type": ["number", "null"]},
        "series": {"type": "array", "items": {"type": "object"}},
        "breakdowns": {"type": "object"},
    },
}
ACCOUNT_STATS = {
    "type": "object",
    "required": ["from", "to", "clicks", "bot_clicks", "unique_visitors", "top_links"],
    "properties": {
        "from": TEXT,
        "to": TEXT,
        "clicks": COUNT,
        "bot_clicks": COUNT,
        "unique_visitors": COUNT,
        "top_links": {"type": "array", "items": {"type": "object"}},
    },
}


def _page(item: dict | str) -> dict:
    items = {"$ref": f"#/components/schemas/{item}"} if isinstance(item, str) else item
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": items}, "next_cursor": NULLABLE_TEXT},
    }


def _record(names) -> dict:
    """A flat row of the given fields (clicks, leads): any JSON scalar each."""
    return {"type": "object", "required": list(names), "properties": {name: {} for name in names}}


def _operation(
    summary: str,
    ok: int,
    body: str | dict | None = None,
    *,
    problems: tuple[int, ...] = (),
    query: type | None = None,
    request: type | None = None,
    csv: bool = False,
    headers: list | None = None,
    example: dict | None = None,
    public: bool = False,
) -> dict:
    """One operation: its success answer, the problems it may give (401, 429 and 503 always), its inputs."""
    content = None
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body}"} if isinstance(body, str) else body
        content = {"application/json": {"schema": schema}}
        if csv:
            content["text/csv"] = {"schema": {"type": "string"}}
    responses = {str(ok): {"description": "OK", **({"content": content} if content else {})}}
    for status in sorted({401, 429, 503, *problems}):
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    responses["414"] = {"$ref": "#/components/responses/UriTooLong"}
    # Every /api/v1 operation takes a key or a session, but for the few that start one (log-in, sign-up, invites).
    security = [] if public else [{"apiKey": []}, {"session": []}]
    operation = {"summary": summary, "responses": responses, "security": security}
    parameters = list(headers or [])
    if query is not None:
        parameters.append({"in": "query", "schema": query})
    if parameters:
        operation["parameters"] = parameters
    if request is not None:
        media = {"schema": request, **({"example": example} if example else {})}
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    return operation


BODY = (400, 413, 415, 422)  # what any operation reading a JSON body may answer
SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string", "pattern": SlugConverter.regex}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "A repeat with the same key and body returns the first response.",
}


def _leads(summary: str, query: type) -> dict:
    return _operation(summary, 200, _page(_record(LEAD_FIELDS)), problems=(404, 422), query=query, csv=True)


def _id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def build_spec(server_url: str = "/") -> dict:
    """The OpenAPI 3.1 document of /api/v1."""
    spec = APISpec(
        title="Chatlink API",
        version="1",
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "WhatsApp short links: links, analytics, leads, webhooks. Errors are RFC 9457 problems."},
        servers=[{"url": server_url}],
    )
    spec.components.security_scheme("apiKey", {"type": "http", "scheme": "bearer", "description": "clk_… API key"})
    spec.components.security_scheme(
        "session",
        {
            "type": "apiKey",
            "in": "cookie",
            "name": "chatlink_session",
            "description": "The log-in session cookie (__Host-chatlink_session over https); changes need X-CSRF-Token.",
        },
    )
    for name, schema in (("Problem", PROBLEM), ("Link", LINK), ("Webhook", WEBHOOK), ("WhatsApp", WHATSAPP)):
        spec.components.schema(name, schema)
    for name, schema in (("LinkCreate", LinkCreate), ("LinkEdit", LinkEdit)):
        spec.components.schema(name, schema=schema)
    spec.components.schema("WebhookIn", schema=WebhookIn)
    spec.components.schema("WhatsAppIn", schema=WhatsAppIn)
    for status, text in PROBLEM_TEXT.items():
        spec.components.response(
            f"Problem{status}",
            {"description": text, "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}},
        )
    spec.components.response(
        "UriTooLong",
        {
            "description": "Request line over 4094 bytes: refused by gunicorn before the service sees it.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    )
    link_by_slug = {"operationId": "getLink", "parameters": {"slug": "$response.body#/slug"}}
    create = _operation(
        "Create a link",
        201,
        "Link",
        problems=(*BODY, 409),
        request=LinkCreate,
        headers=[IDEMPOTENCY_KEY],
        example={"phone": "+55 11 98765-4321", "message": "Olá! Quero saber mais", "tags": ["ads"]},
    )
    create["operationId"] = "createLink"
    create["responses"]["201"]["links"] = {
        "GetLink": link_by_slug,
        "EditLink": {**link_by_slug, "operationId": "editLink"},
        "DeleteLink": {**link_by_slug, "operationId": "deleteLink"},
        "LinkStats": {**link_by_slug, "operationId": "linkStats"},
        "LinkClicks": {**link_by_slug, "operationId": "linkClicks"},
    }
    webhook = _operation(
        "Register a webhook",
        201,
        "Webhook",
        problems=BODY,
        request=WebhookIn,
        example={"url": "https://hooks.example.com/chatlink", "events": ["lead.created"]},
    )
    webhook_by_id = {"parameters": {"webhook_id": "$response.body#/id"}}
    webhook["responses"]["201"]["links"] = {
        "DeleteWebhook": {**webhook_by_id, "operationId": "deleteWebhook"},
        "WebhookDeliveries": {**webhook_by_id, "operationId": "webhookDeliveries"},
    }
    paths = {
        "/api/v1/links": {
            "post": create,
            "get": _operation(
                "The account's links, newest first", 200, _page("Link"), problems=(422,), query=LinkListQuery
            ),
        },
        "/api/v1/links/{slug}": {
            "parameters": [SLUG],
            "get": {**_operation("One link", 200, "Link", problems=(404,)), "operationId": "getLink"},
            "patch": {
                **_operation("Change a link", 200, "Link", problems=(*BODY, 404), request=LinkEdit),
                "operationId": "editLink",
            },
            "delete": {**_operation("Delete a link", 204, problems=(404,)), "operationId": "deleteLink"},
        },
        "/api/v1/links/{slug}/stats": {
            "parameters": [SLUG],
            "get": {
                **_operation(
                    "A link's totals, series, breakdowns", 200, LINK_STATS, problems=(404, 422), query=LinkStatsQuery
                ),
                "operationId": "linkStats",
            },
        },
        "/api/v1/links/{slug}/clicks": {
            "parameters": [SLUG],
            "get": {
                **_operation(
                    "A link's raw clicks (CSV with Accept: text/csv)",
                    200,
                    _page(_record(CLICK_FIELDS)),
                    problems=(404, 422),
                    query=ClicksQuery,
                    csv=True,
                ),
                "operationId": "linkClicks",
            },
        },
        "/api/v1/links/{slug}/leads": {"parameters": [SLUG], "get": _leads("A link's leads", ClicksQuery)},
        "/api/v1/stats": {
            "get": _operation(
                "The account's totals and top links", 200, ACCOUNT_STATS, problems=(422,), query=AccountStatsQuery
            )
        },
        "/api/v1/leads": {"get": _leads("The account's leads (CSV with Accept: text/csv)", LeadsQuery)},
        "/api/v1/leads/{lead_id}": {
            "parameters": [_id("lead_id")],
            "delete": _operation("Erase a lead and its undelivered events", 204, problems=(404,)),
        },
        "/api/v1/webhooks": {
            "post": webhook,
            "get": _operation(
                "The account's webhooks",
                200,
                {
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}},
                },
            ),
        },
        "/api/v1/webhooks/{webhook_id}": {
            "parameters": [_id("webhook_id")],
            "delete": {**_operation("Remove a webhook", 204, problems=(404,)), "operationId": "deleteWebhook"},
        },
        "/api/v1/webhooks/{webhook_id}/deliveries": {
            "parameters": [_id("webhook_id")],
            "get": {
                **_operation(
                    "A webhook's deliveries with their attempts",
                    200,
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
                    },
                    problems=(404,),
                ),
                "operationId": "webhookDeliveries",
            },
        },
        "/api/v1/whatsapp": {
            "put": _operation(
                "Configure WhatsApp notifications of new leads", 200, "WhatsApp", problems=BODY, request=WhatsAppIn
            ),
            "get": _operation("The WhatsApp settings (without the token)", 200, "WhatsApp", problems=(404,)),
            "delete": _operation("Stop WhatsApp notifications", 204),
        },
    }
    paths.update(_people_paths())
    for path, operations in paths.items():
        spec.path(path=path, parameters=operations.pop("parameters", None), operations=operations)
    return spec.to_dict()


def _items(item: dict | None = None) -> dict:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": item or {"type": "object"}}},
    }


def _people_paths() -> dict:
    """Sessions, members and invites, sign-up and the API-keys API (service/accounts/routes.py)."""
    person = (403,)  # an API key where the person's session is needed
    owner = (403,)  # a member's session
    return {
        "/api/v1/sessions": {
            "post": _operation(
                "Log in (sets the session cookie)",
                201,
                {"type": "object"},
                problems=(*BODY, 403),
                request=LoginIn,
                public=True,
            ),
            "get": _operation("The person's live sessions", 200, _items(), problems=person),
        },
        "/api/v1/sessions/current": {
            "get": _operation("This session and its CSRF token", 200, {"type": "object"}, problems=person),
            "delete": _operation("Log out", 204, problems=person),
        },
        "/api/v1/sessions/{session_id}": {
            "parameters": [_id("session_id")],
            "delete": _operation("End one of the person's sessions", 204, problems=(*person, 404)),
        },
        "/api/v1/me/password": {
            "put": _operation(
                "Change the password (ends the other sessions)",
                204,
                problems=(*BODY, *person),
                request=PasswordChangeIn,
            ),
        },
        "/api/v1/members": {
            "post": _operation(
                "Invite a person (a one-time link, valid 72 h)",
                201,
                {"type": "object"},
                problems=(*BODY, *owner),
                request=InviteIn,
            ),
            "get": _operation("The account's people and roles", 200, _items(), problems=owner),
        },
        "/api/v1/members/{user_id}": {
            "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "delete": _operation("Remove a person from the account", 204, problems=(*owner, 404)),
        },
        "/api/v1/invites/accept": {
            "post": _operation(
                "Accept an invite or a set-password link",
                200,
                {"type": "object"},
                problems=BODY,
                request=AcceptIn,
                public=True,
            ),
        },
        "/api/v1/signup": {
            "post": _operation(
                "Create an account and its owner (SIGNUP_ENABLED)",
                201,
                {"type": "object"},
                problems=(*BODY, 404, 409),
                request=SignupIn,
                public=True,
            ),
        },
        "/api/v1/api-keys": {
            "post": _operation("A new API key (shown once)", 201, {"type": "object"}, problems=owner),
            "get": _operation("The account's API keys (never the secret)", 200, _items(), problems=owner),
        },
        "/api/v1/api-keys/{public_id}": {
            "parameters": [_id("public_id")],
            "delete": _operation("Revoke an API key", 204, problems=(*owner, 404)),
        },
    }


@cache
def _document(server_url: str) -> str:
    return json.dumps(build_spec(server_url))


@bp.get(SPEC_PATH)
def openapi_json() -> Response:
    """The OpenAPI document (no key needed: it describes, it does not serve data)."""
    return Response(_document("/"), mimetype="application/json", headers={"Cache-Control": "public, max-age=300"})


def init_app(app: Flask) -> None:
    """Serve the document and the documentation page (Swagger UI from the flask-swagger-ui wheel, no CDN)."""
    app.register_blueprint(bp)
    app.register_blueprint(
        get_swaggerui_blueprint(
            DOCS_PATH,
            SPEC_PATH,
            config={"app_name": "Chatlink API", "validatorUrl": None, "layout": "BaseLayout"},
            blueprint_name="api_docs",
        )
    )
