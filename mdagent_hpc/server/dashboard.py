"""The dashboard's pages at /dashboard/ on the server, behind the same key check and read rules as the API.

The dashboard app itself serves them (no second set of pages). Unless the group setting (or admin) lets the user
read everyone's work, each request carries the user's AiiDA identity (`dashboard.app.OWNER`), so lists show only
their runs and sweeps, and a page about one run or sweep is checked first (403 page for another user's).
Browsers never call this directly: `mdagent dashboard` with MDAGENT_SERVER set forwards to it, adding the key.
"""

from __future__ import annotations

import re
import time

from starlette.requests import Request

from mdagent_hpc.dashboard.app import OWNER, make_app, page
from mdagent_hpc.server.access import identity

# the pages about one run or one sweep: /runs/PK..., /api/runs/PK, /sweeps/PK...
ONE = re.compile(r"^/(?:api/)?(runs|sweeps)/([^/]+)")


class DashboardGate:
    def __init__(self, server):
        self.server = server
        self.app = make_app(["*"])  # the server's own address decides who reaches it (docs/deploy.md)

    async def __call__(self, scope, receive, send) -> None:
        from mdagent_hpc.server import service
        from mdagent_hpc.server.app import Problem

        request, started, user, status = Request(scope), time.perf_counter(), None, 500
        root, path = scope.get("root_path", ""), scope["path"]
        path = path[len(root) :] if root and path.startswith(root) else path

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            user = await self.server.authenticate(request)
            if not self.server.visible_to(user):
                scope = {**scope, OWNER: identity(user.name, user.email)}
                if one := ONE.match(path):
                    what = one[1][:-1]
                    await self.server.read(service.readable, user, one[2], False, what)
        except Problem as p:
            await self.refuse(request, p.status, p.message, sending)
        except service.Denied as exc:
            await self.refuse(request, 403, str(exc), sending)
        except service.Missing:
            await self.app(scope, receive, sending)  # the dashboard's own 404 page says what is there
        else:
            await self.app(scope, receive, sending)
        finally:
            self.server.log(request, user, status, started)

    async def refuse(self, request: Request, status: int, message: str, send) -> None:
        response = page(request, "error.html", status_code=status, status=status, message=message)
        await response(request.scope, request.receive, send)
