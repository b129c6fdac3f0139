"""The webhook tests' peers: a receiver and a WhatsApp Cloud API stand-in, each started for one test."""

import pytest

from tests.receivers import FakeCloudApi, WebhookReceiver


def _running(server):
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    yield from _running(WebhookReceiver())


@pytest.fixture
def cloud_api():
    yield from _running(FakeCloudApi())


@pytest.fixture
def events_app(make_app, settings, cloud_api):
    """An app whose WhatsApp calls go to the stand-in, and whose lead forms may be sent at once."""
    return make_app(settings, lead_min_fill_seconds=0, whatsapp_api_base=f"{cloud_api.url}/v21.0")
