"""An SSH tunnel from a local port to a compute node's port through the login node (paramiko), as its own process.

`mdagent llm serve` starts it (`python -m mdagent_hpc.serving.tunnel ...`) in a new session when the node is not
reachable from here, records its PID, and `mdagent llm stop` ends it by that PID. It listens on 127.0.0.1 only,
writes the port it got to `--port-file`, and exits when the SSH connection drops (`mdagent llm status` notices and
opens a new one).
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import threading
from pathlib import Path


def connect(host: str, port: int, user: str | None, key: str | None, proxy_jump: str | None, key_policy: str):
    """A paramiko SSHClient to host, through the `proxy_jump` hops ([user@]host[:port], comma-separated)."""
    import paramiko

    policies = {
        "RejectPolicy": paramiko.RejectPolicy,
        "WarningPolicy": paramiko.WarningPolicy,
        "AutoAddPolicy": paramiko.AutoAddPolicy,
    }
    hops = [_hop(h) for h in proxy_jump.split(",")] if proxy_jump else []
    hops.append((user, host, port))
    sock, client = None, None
    for hop_user, hop_host, hop_port in hops:
        if client is not None:
            sock = client.get_transport().open_channel("direct-tcpip", (hop_host, hop_port), ("127.0.0.1", 0))
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        client.set_missing_host_key_policy(policies[key_policy]())
        client.connect(
            hop_host,
            port=hop_port,
            username=hop_user,
            key_filename=key,
            sock=sock,
            look_for_keys=key is None,
            allow_agent=True,
            timeout=30,
        )
    client.get_transport().set_keepalive(30)
    return client


def _hop(spec: str) -> tuple[str | None, str, int]:
    user, _, rest = spec.strip().rpartition("@")
    host, _, port = rest.partition(":")
    return user or None, host, int(port or 22)


def _pipe(channel, sock: socket.socket) -> None:
    try:
        while True:
            ready, _, _ = select.select([channel, sock], [], [], 60)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                sock.sendall(data)
    except OSError:
        pass
    finally:
        channel.close()
        sock.close()


def serve(client, target: tuple[str, int], port_file: Path, listen_port: int = 0) -> None:
    transport = client.get_transport()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    server.settimeout(5)
    port_file.write_text(str(server.getsockname()[1]))
    print(f"forwarding 127.0.0.1:{server.getsockname()[1]} -> {target[0]}:{target[1]}", flush=True)
    while transport.is_active():
        try:
            sock, peer = server.accept()
        except TimeoutError:
            continue
        try:
            channel = transport.open_channel("direct-tcpip", target, peer)
        except Exception as exc:  # noqa: BLE001 (the node refused: the server is not up yet); the client retries
            print(f"cannot reach {target[0]}:{target[1]} from the login node: {exc}", flush=True)
            sock.close()
            continue
        threading.Thread(target=_pipe, args=(channel, sock), daemon=True).start()
    print("the SSH connection dropped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="the login node")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--user")
    parser.add_argument("--key", help="private key file")
    parser.add_argument("--proxy-jump")
    parser.add_argument("--key-policy", default="RejectPolicy")
    parser.add_argument("--target", required=True, help="NODE:PORT as seen from the login node")
    parser.add_argument("--port-file", required=True, type=Path, help="where to write the local port")
    parser.add_argument("--listen-port", type=int, default=0)
    args = parser.parse_args(argv)
    node, _, port = args.target.rpartition(":")
    try:
        client = connect(args.host, args.port, args.user, args.key, args.proxy_jump, args.key_policy)
    except Exception as exc:  # noqa: BLE001 (paramiko's and socket's many errors): the caller shows this line
        print(f"cannot connect to {args.host}:{args.port}: {type(exc).__name__}: {exc}", flush=True)
        return 1
    serve(client, (node, int(port)), args.port_file, args.listen_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
