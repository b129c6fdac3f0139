"""GET /metrics: every process's metrics in the Prometheus text format, for METRICS_ALLOW addresses or METRICS_TOKEN."""

from __future__ import annotations

from flask import Blueprint, Response, request

from .config import settings
from .platform import metrics
from .platform.errors import ApiError

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    """The metrics of all gunicorn workers and the background process; 403 for anyone else (never rate limited)."""
    current = settings()
    authorization = request.headers.get("Authorization")
    if not metrics.allowed(request.remote_addr, authorization, current.metrics_networks, current.metrics_token):
        raise ApiError(
            403, "forbidden", "Forbidden", "Metrics are served to METRICS_ALLOW addresses or with METRICS_TOKEN."
        )
    metrics.sampler.sample()  # this process's gauges as of now
    return Response(
        metrics.render(current.prometheus_multiproc_dir),
        content_type=metrics.CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
