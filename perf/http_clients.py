"""What one streamed read costs the gateway's HTTP client: httpx against httpx2, CPU time in one process.

32 streams at a time from perf/fake_upstream.py (256 chunks each, as fast as it can), read with `aiter_raw` as the
gateway reads them, on uvloop; CPU time of this process per read, three rounds each, alternated. Printed, never
asserted. The gateway uses the cheaper one (docs/llm.md, "Cost").

    .venv/bin/python perf/http_clients.py
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from pathlib import Path

import uvloop

FAKE = Path(__file__).resolve().parent / "fake_upstream.py"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": True}


async def cpu_per_read(library, url: str) -> tuple[float, int]:
    async with library.AsyncClient(trust_env=False, timeout=60, limits=library.Limits(max_connections=32)) as client:

        async def one() -> int:
            reads = 0
            headers = {"authorization": "Bearer k"}
            async with client.stream("POST", url + "/chat/completions", json=BODY, headers=headers) as response:
                async for _ in response.aiter_raw():
                    reads += 1
            return reads

        await asyncio.gather(*(one() for _ in range(32)))  # warm-up: connections
        start = time.process_time()
        reads = sum(await asyncio.gather(*(one() for _ in range(32 * 4))))
        return time.process_time() - start, reads


def main() -> None:
    command = [sys.executable, str(FAKE), "--api-key", "k", "--tokens", "256"]
    upstream = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = upstream.stdout.readline().split()[-1]
        for _ in range(3):
            for name in ("httpx", "httpx2"):
                cpu, reads = uvloop.run(cpu_per_read(importlib.import_module(name), url))
                print(f"{name:7s} {cpu * 1e6 / reads:6.1f} us of CPU per streamed read ({reads} reads)", flush=True)
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
