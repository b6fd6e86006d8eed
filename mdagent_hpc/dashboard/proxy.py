"""`mdagent dashboard` with MDAGENT_SERVER set: a local app that forwards each GET to the server's /dashboard/ with
the user's key, guarded by a per-launch secret.

The proxy listens on the loopback address of a machine that may be shared (a login node): any local account can
open a connection to it, and it holds the user's key. So each launch makes a random token, printed once in the URL
(`http://127.0.0.1:PORT/?token=...`). The first visit with it is answered with a redirect to the same page without
the token and an HttpOnly, SameSite=Strict cookie holding it; every later request must carry that cookie (or the
token). Anything else is a 401 that forwards nothing. Only the path and the query go upstream: never the cookie,
never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

TOKEN_PARAM = "token"
FORWARDED_HEADERS = ("content-type", "location", "cache-control")
REFUSED = (
    "<h1>401</h1><p>this dashboard needs the link `mdagent dashboard` printed when it started (it holds a "
    "secret); open that link in this browser</p>"
)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def cookie_name(token: str) -> str:
    """A name of this launch's own (cookies ignore ports: two dashboards on one host must not share one)."""
    return "mdagent_dashboard_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenGuard:
    """ASGI middleware: a request passes with the launch's cookie; with the token instead it gets the cookie and a
    redirect to the same address without the token; anything else is a 401, before any routing."""

    def __init__(self, app, token: str):
        self.app, self.token, self.cookie = app, token, cookie_name(token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if matches(request.cookies.get(self.cookie), self.token):
            return await self.app(scope, receive, send)
        if request.method == "GET" and matches(request.query_params.get(TOKEN_PARAM), self.token):
            params = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
            target = request.url.path + (f"?{urlencode(params)}" if params else "")
            answer = RedirectResponse(target, status_code=303)  # the token leaves the address bar and history
            answer.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        else:
            answer = HTMLResponse(REFUSED, 401)
        await answer(scope, receive, send)


def proxy_app(server_url: str, key: str, token: str, hosts: list[str]) -> Starlette:
    """The local app: pages of `server_url`/dashboard/ fetched with `key`, for a browser holding `token`."""
    client = httpx2.AsyncClient(
        base_url=f"{server_url}/dashboard",
        headers={"authorization": f"Bearer {key}"},
        timeout=httpx2.Timeout(120, connect=10),
        trust_env=False,
    )

    async def forward(request: Request) -> Response:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
        try:
            answer = await client.get("/" + request.path_params["path"], params=params)
        except httpx2.HTTPError:
            return HTMLResponse(
                f"<h1>502</h1><p>the mdagent server {server_url} does not answer; check MDAGENT_SERVER or ask "
                "your admin whether it runs</p>",
                502,
            )
        headers = {k: v for k, v in answer.headers.items() if k in FORWARDED_HEADERS}
        return Response(answer.content, answer.status_code, headers=headers)

    # the Host check first (a DNS-rebound page gets a 400 and no cookie), then the token
    return Starlette(
        routes=[Route("/{path:path}", forward)],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(TokenGuard, token=token),
        ],
    )
