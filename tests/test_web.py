"""What the server and the gateway share (mdagent_hpc/web.py): the Bearer key, and uvicorn's own log lines in the
same form as the rest of a server's log (not a bare `WARNING:`)."""

import subprocess
import sys

from mdagent_hpc.web import bearer_key

SERVE_AND_SEND_GARBAGE = """
import socket, threading, time
from mdagent_hpc import web

async def app(scope, receive, send):
    pass

sock = web.bind("127.0.0.1", 0)
threading.Thread(target=web.serve, args=(app, sock), daemon=True).start()
for _ in range(100):
    try:
        c = socket.create_connection(sock.getsockname(), timeout=1)
        break
    except OSError:
        time.sleep(0.1)
c.sendall(b"NOT HTTP \\x00\\x01\\r\\n\\r\\n")
c.recv(1024)  # uvicorn answers 400 (or closes) once it has logged the bad request
c.close()
"""


def test_the_bearer_key_of_a_header():
    assert bearer_key("Bearer mdk_abc") == "mdk_abc" and bearer_key("bearer  mdk_abc ") == "mdk_abc"
    assert bearer_key("Basic xyz") is None and bearer_key("Bearer ") is None and bearer_key("") is None


def test_uvicorns_warnings_are_dated_and_named_not_bare():
    done = subprocess.run([sys.executable, "-c", SERVE_AND_SEND_GARBAGE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "Invalid HTTP request" in line]
    assert lines, done.stderr
    assert all(" uvicorn WARNING: " in line and not line.startswith("WARNING:") for line in lines), lines
