"""Streamed requests to the upstream over plain HTTP/1.1: the request in one write, a chunked answer decoded per read.

httpx2 (through h11) turns each HTTP chunk into an event passed up five generators, 12-15 µs of CPU each; vLLM
sends every token as a chunk of its own, so that was most of the gateway's cost per streamed token. Here a read of
the socket (often dozens of chunks) is decoded in one pass and passed on as one piece. Only the gateway's streamed
POSTs come this way; everything else stays on httpx2.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import anyio
import httpx2

READ_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE = 64


class UpstreamError(Exception):
    """The upstream cannot be reached, broke off or spoke something that is not HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or sent nothing more) within the timeout."""


class StreamClient:
    """POSTs to one upstream whose answers are read as they come; idle connections are kept for the next request."""

    def __init__(self, base: str, timeout_s: float, connect_timeout_s: float = 10.0):
        parts = urlsplit(base)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._ssl = httpx2.create_ssl_context(trust_env=False) if self.tls else None  # as the httpx2 client's
        self._idle: list[_Connection] = []

    async def post(self, target: str, headers: dict[str, str], body: bytes) -> StreamedResponse:
        """Send the request and read the answer's head; its body is read with `StreamedResponse.chunks`."""
        head = [f"POST {target} HTTP/1.1", f"host: {self.host_header}", f"content-length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        while self._idle:  # a kept connection the server may have closed since: then a fresh one
            stream = self._idle.pop()
            try:
                return await self._exchange(stream, request)
            except UpstreamTimeout:
                raise
            except UpstreamError:
                continue
        try:
            with anyio.fail_after(self.connect_timeout_s):
                stream = _Connection(*await asyncio.open_connection(self.host, self.port, ssl=self._ssl))
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not accept a connection in time") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to the upstream: {exc}") from None
        return await self._exchange(stream, request)

    async def _exchange(self, stream: _Connection, request: bytes) -> StreamedResponse:
        response = StreamedResponse(self, stream)
        try:
            try:
                with anyio.fail_after(self.timeout_s):
                    await stream.send(request)
            except TimeoutError:
                raise UpstreamTimeout("the upstream did not take the request in time") from None
            except OSError as exc:
                raise UpstreamError(f"the upstream connection failed: {exc}") from None
            await response.read_head()
        except BaseException:
            await response.aclose()
            raise
        return response

    def _keep(self, stream: _Connection) -> bool:
        if len(self._idle) >= MAX_IDLE:
            return False
        self._idle.append(stream)
        return True

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()


class _Connection:
    """One connection as asyncio's streams: its reader takes what arrives without a system call between reads (anyio's
    SocketStream takes the socket out of epoll and puts it back on every read: a third of reading a paced stream)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, max_bytes: int) -> bytes:
        return await self.reader.read(max_bytes)  # b"": the server closed the connection

    async def aclose(self) -> None:
        self.writer.close()
        with anyio.move_on_after(1), contextlib.suppress(OSError):
            await self.writer.wait_closed()


class StreamedResponse:
    def __init__(self, client: StreamClient, stream: _Connection):
        self._client, self._stream = client, stream
        self._buffer = bytearray()
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self._chunked = False
        self._length: int | None = None  # bytes of body left (Content-Length), None: chunked or until closed
        self._reusable = False
        self._done = False
        self._closed = False

    async def _read(self) -> bytes:
        try:
            with anyio.fail_after(self._client.timeout_s):
                return await self._stream.receive(READ_BYTES)
        except TimeoutError:
            raise UpstreamTimeout("the upstream sent nothing in time") from None
        except OSError as exc:
            raise UpstreamError(f"the upstream connection failed: {exc}") from None

    async def read_head(self) -> None:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            data = await self._read()
            if not data or len(self._buffer) > MAX_HEAD_BYTES:
                raise UpstreamError("the upstream closed the connection or sent no HTTP answer")
            self._buffer += data
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise UpstreamError(f"the upstream answered something that is not HTTP/1.x: {lines[0][:80]!r}")
        self.status_code = int(rest[:3])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self._chunked and self.headers.get("content-length", "").isdigit():
            self._length = int(self.headers["content-length"])
        self._reusable = self.headers.get("connection", "").lower() != "close" and (
            self._chunked or self._length is not None
        )

    async def chunks(self):
        """The body as it arrives, one piece per read of the socket (chunked framing removed)."""
        while not self._done:
            if self._chunked:
                piece, self._done = _dechunk(self._buffer)
            else:
                piece = bytes(self._buffer)
                self._buffer.clear()
                if self._length is not None:
                    piece = piece[: self._length]
                    self._length -= len(piece)
                    self._done = self._length == 0
            if piece:
                yield piece
            if self._done:
                break
            data = await self._read()
            if not data:
                if self._chunked or self._length:
                    raise UpstreamError("the upstream closed the connection in the middle of its answer")
                self._done = True
            self._buffer += data

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def aclose(self) -> None:
        """Give the connection back when its answer was read to the end and it stays open; else close it."""
        if self._closed:
            return
        self._closed = True
        if self._done and self._reusable and not self._buffer and self._client._keep(self._stream):
            return
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


def _dechunk(buffer: bytearray) -> tuple[bytes, bool]:
    """The data of the complete chunks at the start of `buffer` (removed from it), and whether the last one came."""
    pieces = []
    pos = 0
    done = False
    while (eol := buffer.find(b"\r\n", pos)) >= 0:
        try:
            size = int(buffer[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            raise UpstreamError("the upstream sent a malformed chunk") from None
        if size == 0:  # the last chunk, then trailers (none expected) up to an empty line
            end = buffer.find(b"\r\n\r\n", eol)
            if end < 0:
                break
            pos, done = end + 4, True
            break
        start = eol + 2
        if len(buffer) < start + size + 2:
            break
        if buffer[start + size : start + size + 2] != b"\r\n":
            raise UpstreamError("the upstream sent a malformed chunk")
        pieces.append(buffer[start : start + size])
        pos = start + size + 2
    del buffer[:pos]
    return b"".join(pieces), done
