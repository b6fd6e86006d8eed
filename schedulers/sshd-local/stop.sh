#!/usr/bin/env bash
# Stop the sshd started by start.sh and remove its client key from root's authorized_keys.
# Usage: stop.sh [STATE_DIR]   (default /tmp/mdagent-sshd; the folder is kept)
set -uo pipefail

STATE="${1:-/tmp/mdagent-sshd}"
if [ -f "$STATE/sshd.pid" ]; then
    pid="$(cat "$STATE/sshd.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        echo "sshd-local: stopped sshd ($pid)"
    fi
    rm -f "$STATE/sshd.pid"
fi
if [ -f "$STATE/client_key.pub" ] && [ -f /root/.ssh/authorized_keys ]; then
    grep -vxF "$(cat "$STATE/client_key.pub")" /root/.ssh/authorized_keys >/root/.ssh/authorized_keys.tmp || true
    mv /root/.ssh/authorized_keys.tmp /root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
fi
exit 0
