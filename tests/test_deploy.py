"""deploy/prometheus: the alert rules and the dashboard name only metrics the service exports (promtool tests the
rules themselves in .ci/run)."""

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import service  # noqa: F401 (imports every module that defines a metric)
import service.background  # noqa: F401

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def _exported() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def _named(text: str) -> set[str]:
    return set(re.findall(r"\bchatlink_[a-z_]+", text))


def test_every_metric_the_alerts_use_is_exported():
    named = _named((DEPLOY / "alerts.yml").read_text())
    assert named and named <= _exported(), named - _exported()


def test_every_metric_the_dashboard_plots_is_exported():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    named = _named(" ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"]))
    assert named and named <= _exported(), named - _exported()
