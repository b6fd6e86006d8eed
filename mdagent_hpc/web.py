"""What the shared server and the LLM gateway share on the web side: a refusal with its HTTP status, the Bearer key
of a request, the listening socket and serving an ASGI app on it with uvicorn."""

from __future__ import annotations

import contextlib
import socket


class RequestRefusedError(Exception):
    """A request refused on purpose: its status, a short code and the sentence the client sees (never how)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def bearer_key(header: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header; None when there is none."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then (without it: +40 ms per keep-alive request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# uvicorn's own lines (a malformed request, a shutdown) as the rest of a server's log reads: time, who, level
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s uvicorn %(levelname)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


def uvicorn_config(app, **options):
    """uvicorn's settings for our apps: warnings only, in our log's form, no access log (we keep our own), no Server
    header, 5 s for open requests to finish on shutdown."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="warning",
        log_config=LOG_CONFIG,
        access_log=False,
        timeout_graceful_shutdown=5,
        server_header=False,
        **options,
    )


def serve(app, sock: socket.socket, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Serve `app` on `sock` in this process until SIGINT or SIGTERM."""
    import uvicorn

    config = uvicorn_config(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down cleanly, then re-raises it
        uvicorn.Server(config).run(sockets=[sock])
