"""Liveness and the load balancer's health check: pass, warn with Redis down, fail with PostgreSQL down."""


def test_livez_answers_200_touching_nothing(make_app, settings, dead_port):
    client = make_app(
        settings,
        redis_url=f"redis://127.0.0.1:{dead_port}/0",
        app_database_url=f"postgresql://postgres@127.0.0.1:{dead_port}/x",
    ).test_client()
    assert client.get("/livez").status_code == 200


def test_health_passes_with_both_dependencies_up(client):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and response.mimetype == "application/health+json"
    assert body["status"] == "pass"
    for name in ("postgresql:connection", "redis:connection"):
        check = body["checks"][name][0]
        assert check["status"] == "pass" and check["observedUnit"] == "ms" and check["observedValue"] >= 0
    assert body["checks"]["clicks:dropped"][0]["observedValue"] == 0


def test_health_warns_with_redis_down(make_app, settings, dead_port):
    client = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "warn" and body["checks"]["redis:connection"][0]["status"] == "warn"


def test_health_warns_with_redis_hung(make_app, settings, silent_server):
    client = make_app(settings, redis_url=f"redis://127.0.0.1:{silent_server.port}/0").test_client()
    assert client.get("/health").get_json()["status"] == "warn"


def test_health_fails_with_postgresql_down(make_app, settings, dead_port):
    client = make_app(settings, app_database_url=f"postgresql://postgres@127.0.0.1:{dead_port}/x").test_client()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["postgresql:connection"][0]["status"] == "fail"


def test_health_fails_within_its_bound_with_postgresql_hung(make_app, settings, silent_server):
    client = make_app(
        settings, app_database_url=f"postgresql://postgres@127.0.0.1:{silent_server.port}/x"
    ).test_client()
    body = client.get("/health").get_json()
    assert body["status"] == "fail"
    assert body["checks"]["postgresql:connection"][0]["output"] == "no answer within 500 ms"


def test_health_endpoints_are_never_rate_limited(make_app, settings):
    client = make_app(settings, rate_limit_redirect="1/minute", rate_limit_not_found="1/minute").test_client()
    assert {client.get("/livez").status_code for _ in range(5)} == {200}
    assert {client.get("/health").status_code for _ in range(3)} == {200}
