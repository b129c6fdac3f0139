"""Rate limits: per API key on the API, stricter on creation, per client IP on redirects and on 404 scans."""

import functools
import gc
import threading
import time

import redis


def test_link_creation_is_limited_per_key_with_retry_after(make_app, settings, auth, new_api_key):
    client = make_app(settings, rate_limit_create="2/minute").test_client()
    body = {"phone": "+14155552671"}
    statuses = [client.post("/api/v1/links", headers=auth, json=body).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]
    refused = client.post("/api/v1/links", headers=auth, json=body)
    assert refused.mimetype == "application/problem+json" and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["type"] == "/problems/rate-limited"
    other_key = {"Authorization": f"Bearer {new_api_key()}"}
    assert client.post("/api/v1/links", headers=other_key, json=body).status_code == 201


def test_api_calls_are_limited_per_key(make_app, settings, auth):
    client = make_app(settings, rate_limit_api="3/minute").test_client()
    assert [client.get("/api/v1/links", headers=auth).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_redirects_are_limited_per_client_ip(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_redirect="2/minute").test_client()
    ip_a, ip_b = {"REMOTE_ADDR": "198.51.100.1"}, {"REMOTE_ADDR": "198.51.100.2"}
    assert [client.get(f"/{link['slug']}", environ_base=ip_a).status_code for _ in range(3)] == [302, 302, 429]
    assert client.get(f"/{link['slug']}", environ_base=ip_b).status_code == 302


def test_slug_scanning_is_stopped_by_the_404_limit(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_not_found="3/minute").test_client()
    scanner = {"REMOTE_ADDR": "203.0.113.9"}
    statuses = [client.get(f"/scan-{i}", environ_base=scanner).status_code for i in range(5)]
    assert statuses == [404, 404, 404, 429, 429]
    assert client.get(f"/{link['slug']}", environ_base={"REMOTE_ADDR": "203.0.113.10"}).status_code == 302


def test_successful_redirects_do_not_count_towards_the_404_limit(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_not_found="2/minute").test_client()
    assert {client.get(f"/{link['slug']}").status_code for _ in range(5)} == {302}


def test_spoofed_forwarded_for_does_not_escape_the_limit_without_trusted_proxies(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_redirect="2/minute").test_client()
    statuses = [
        client.get(f"/{link['slug']}", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(3)
    ]
    assert statuses == [302, 302, 429]


def test_with_one_trusted_proxy_only_the_hop_it_appended_counts(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_redirect="2/minute", trusted_proxies=1).test_client()
    proxy = {"REMOTE_ADDR": "10.1.1.1"}
    # The client forges earlier hops; the proxy appends the real address last.
    statuses = [
        client.get(
            f"/{link['slug']}", environ_base=proxy, headers={"X-Forwarded-For": f"1.2.3.{i}, 192.0.2.50"}
        ).status_code
        for i in range(3)
    ]
    assert statuses == [302, 302, 429]
    other = client.get(f"/{link['slug']}", environ_base=proxy, headers={"X-Forwarded-For": "192.0.2.51"})
    assert other.status_code == 302


def test_a_forged_key_with_someone_elses_public_id_does_not_use_up_their_limit(make_app, settings, api_key, auth):
    client = make_app(settings, rate_limit_api="3/minute").test_client()
    forged = {"Authorization": f"Bearer {api_key[:13]}{'B' if api_key[13] == 'A' else 'A'}{api_key[14:]}"}
    assert [client.get("/api/v1/links", headers=forged).status_code for _ in range(4)] == [401, 401, 401, 429]
    assert client.get("/api/v1/links", headers=auth).status_code == 200


def test_made_up_keys_are_limited_per_address(make_app, settings):
    client = make_app(settings, rate_limit_api_per_ip="2/minute").test_client()
    keys = [f"Bearer clk_{i:08d}_" + "A" * 43 for i in range(3)]
    assert [client.get("/api/v1/links", headers={"Authorization": k}).status_code for k in keys] == [401, 401, 429]


def test_rate_limit_counters_in_redis_never_name_the_address(app, make_app, settings, make_link):
    link = make_link()
    client = make_app(settings).test_client()
    client.get(f"/{link['slug']}", environ_base={"REMOTE_ADDR": "198.51.100.99"})
    keys = app.extensions["chatlink.redis"].client.keys(f"{settings.key_prefix}*")
    assert keys and not any("198.51.100.99" in key for key in keys)


def test_a_unix_socket_redis_url_is_spelled_for_the_limits_library():
    from service.ratelimit import storage_uri

    assert storage_uri("unix:///run/redis.sock") == "redis+unix:///run/redis.sock"
    assert storage_uri("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_every_limit_of_a_redirect_limit_string_is_enforced(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_redirect="100/minute;2/hour").test_client()
    assert [client.get(f"/{link['slug']}").status_code for _ in range(3)] == [302, 302, 429]
    refused = client.get(f"/{link['slug']}")
    assert refused.status_code == 429 and 3500 < int(refused.headers["Retry-After"]) <= 3600


def test_an_app_with_rate_limits_off_keeps_its_limiter_alive(make_app, settings, auth):
    # flask-limiter's decorated views hold only a weak reference to it; losing it broke every API call.
    client = make_app(settings, rate_limits_enabled=False).test_client()
    gc.collect()
    response = client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=auth)
    assert response.status_code == 201


def test_flask_limiter_hooks_only_into_the_blueprints_it_limits(app):
    # Its per-request check found nothing to count anywhere else, at 7 % of an API call's CPU. (That its limits
    # still hold: the log-in and lead-form tests.)
    limiter = app.extensions["chatlink.limiter"]

    def ours(hook) -> bool:
        return getattr(hook, "__self__", None) is limiter or (
            isinstance(hook, functools.partial) and limiter in hook.args
        )

    registries = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    assert not [hook for registry in registries for hook in registry.get(None, ()) if ours(hook)]
    for name in ("accounts", "leads", "accounts_pages"):
        assert [sum(map(ours, registry.get(name, ()))) for registry in registries] == [1, 1, 1]


def test_spaces_in_the_authorization_header_do_not_give_a_fresh_bucket(make_app, settings, api_key):
    client = make_app(settings, rate_limit_api="3/minute").test_client()
    statuses = [
        client.get("/api/v1/links", headers={"Authorization": f"Bearer{' ' * n} {api_key}  "}).status_code
        for n in range(1, 6)
    ]
    assert statuses == [200, 200, 200, 429, 429]


def test_every_rate_limit_counter_lives_under_key_prefix(make_app, settings, auth, redis_url, key_prefix):
    client = make_app(settings).test_client()
    assert client.get("/api/v1/links", headers=auth).status_code == 200
    server = redis.Redis.from_url(redis_url)
    try:
        # flask-limiter's counters (log-in, lead form) and the API's own (ApiLimits)
        limiter_keys = [k.decode() for k in server.scan_iter(match="*LIMITER*", count=1000)]
        limiter_keys += [k.decode() for k in server.scan_iter(match="*limits:api:*", count=1000)]
    finally:
        server.close()
    mine = [k for k in limiter_keys if key_prefix in k]
    assert mine and all(k.startswith(key_prefix) for k in mine), mine


def test_a_401_names_the_bearer_scheme(client):
    response = client.get("/api/v1/links")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


def _commands_sent(redis_url: str, key_prefix: str, action) -> list[str]:
    """The commands naming key_prefix that clients sent Redis while action ran (MONITOR; a script's own calls
    are left out: they cost no round trip)."""
    server = redis.Redis.from_url(redis_url, decode_responses=True)
    sentinel = f"{key_prefix}done"
    seen: list[str] = []
    with server.monitor() as monitor:
        ready = threading.Event()

        def collect():
            ready.set()
            for entry in monitor.listen():
                command = entry["command"]
                if sentinel in command:
                    return
                if key_prefix in command and "lua" not in entry.get("client_type", ""):
                    seen.append(command)

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        ready.wait(5)
        time.sleep(0.2)  # MONITOR is on before the first command
        action()
        redis.Redis.from_url(redis_url).echo(sentinel)
        reader.join(10)
    server.close()
    return seen


def test_an_api_call_counts_against_all_its_limits_in_one_redis_command(
    make_app, settings, auth, redis_url, key_prefix
):
    client = make_app(settings).test_client()
    assert client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=auth).status_code == 201  # warm
    sent = _commands_sent(
        redis_url,
        key_prefix,
        lambda: client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=auth),
    )
    # The limits (per key, per address, creation per key) in one script call; the link cache's write-through.
    assert len(sent) == 2, sent


def test_api_answers_name_the_tightest_limit(make_app, settings, auth):
    client = make_app(settings, rate_limit_create="5/minute").test_client()
    response = client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=auth)
    assert response.headers["X-RateLimit-Limit"] == "5" and response.headers["X-RateLimit-Remaining"] == "4"
    assert 0 < int(response.headers["X-RateLimit-Reset"]) - time.time() <= 61
    assert "Retry-After" not in response.headers


def test_api_limits_fall_back_to_process_memory_while_redis_is_down(make_app, settings, auth, dead_port):
    client = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0", rate_limit_fallback="2/minute")
    statuses = [client.test_client().get("/api/v1/links", headers=auth).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_cors_preflight_is_not_counted(make_app, settings, auth):
    client = make_app(settings, rate_limit_api_per_ip="1/minute", cors_origins="https://app.example").test_client()
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert client.options("/api/v1/links", headers=preflight).status_code < 400
    assert client.get("/api/v1/links", headers=auth).status_code == 200
