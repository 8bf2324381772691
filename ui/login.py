"""With a login (--auth), Gradio still answers the page to anyone — it is the login form —
and embeds the app's API description in it. This ASGI middleware blanks that description
for a visitor who has not logged in; every other route answers 401 through Gradio itself."""
from __future__ import annotations

import re

API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
BLANK = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


def logged_in(app, scope) -> bool:
    """Gradio's own session check: its access-token cookie names a live token."""
    cookies = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                cookies[key] = val
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return bool(token) and token in getattr(app, "tokens", {})


class HideApiBeforeLogin:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        app = scope.get("app")
        if (scope["type"] != "http" or scope.get("method") != "GET" or not getattr(app, "auth", None)
                or logged_in(app, scope)):
            return await self.app(scope, receive, send)
        start, chunks = None, []

        async def buffering_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start["headers"]]
            if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                body = API_INFO.sub(BLANK, body)
                headers = [(k, v) for k, v in headers if k != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffering_send)
