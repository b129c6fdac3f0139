"""Benchmark baseline: a bare Flask app whose GET /<slug> answers a fixed 302 without any I/O."""

from flask import Flask

app = Flask(__name__)
LOCATION = "https://wa.me/5511987654321?text=Ol%C3%A1%21%20Bench%20link%20%F0%9F%91%8B"


@app.route("/<slug>", methods=["GET", "HEAD"])
def follow(slug: str):
    """The same redirect for every slug: the floor of what Flask under gunicorn costs per request."""
    return app.response_class(status=302, headers={"Location": LOCATION, "Cache-Control": "private, no-store"})
