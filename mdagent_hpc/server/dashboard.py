"""The dashboard's pages at /dashboard/ on the server, behind the same key check and read rules as the API.

The dashboard app itself serves them (no second set of pages). Each request carries whose work the user may read
(`dashboard.app.CALLER`: their own, or everyone's with the group setting or as admin), so lists show only what
they may read, and a page about one run or sweep is checked first (the same 404 page for another user's as
for one that does not exist). The key was checked, and the request logged, by the server's `Guard`.
Browsers never call this directly: `mdagent dashboard` with MDAGENT_SERVER set forwards to it, adding the key.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from mdagent_hpc.dashboard.app import CALLER, make_app, page

# the pages about one run or one sweep: /runs/PK..., /api/runs/PK, /sweeps/PK...
ONE = re.compile(r"^/(?:api/)?(runs|sweeps)/([^/]+)")


class DashboardGate:
    def __init__(self, server):
        self.server = server
        self.app = make_app(["*"])  # the server's own address decides who reaches it (docs/deploy.md)

    async def __call__(self, scope, receive, send) -> None:
        from mdagent_hpc.server import service
        from mdagent_hpc.server.wire import STATE, parse_pk
        from mdagent_hpc.web import RequestRefusedError

        request, user = Request(scope), scope[STATE]["user"]
        root, path = scope.get("root_path", ""), scope["path"]
        path = path[len(root) :] if root and path.startswith(root) else path
        scope = {**scope, CALLER: self.server.caller(user)}
        if not self.server.visible_to(user):
            if one := ONE.match(path):
                what = one[1][:-1]
                try:
                    parse_pk(one[2], what)
                    await self.server.read(service.readable, user, one[2], False, what)
                except (
                    service.DeniedError,
                    service.MissingError,
                    RequestRefusedError,
                ):  # the same page for all: no pk oracle
                    await self.refuse(request, 404, f"no {what} {one[2][:40]} that you may read", send)
                    return
        await self.server.page(self.app, scope, receive, send)

    async def refuse(self, request: Request, status: int, message: str, send) -> None:
        response = page(request, "error.html", status_code=status, status=status, message=message)
        await response(request.scope, request.receive, send)
