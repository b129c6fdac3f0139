"""GET /<slug>: the redirect rules (resolver and its Lua script), the WSGI fast path, per-address limits, the view."""
