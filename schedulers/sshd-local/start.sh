#!/usr/bin/env bash
# Run a key-only sshd on 127.0.0.1:2222 for tests, with its own host key, config and client key pair under a
# state folder ($1, default /tmp/mdagent-sshd). Installs openssh-server if missing. Prints the client key path.
# Safe to run again: a running sshd is left alone.
set -euo pipefail

STATE="${1:-/tmp/mdagent-sshd}"
PORT=2222
die() { echo "sshd-local: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it authorizes a key for root)"

if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q "install ok installed"; then
    echo "sshd-local: installing openssh-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi

mkdir -p "$STATE" /run/sshd /root/.ssh
chmod 700 "$STATE" /root/.ssh
[ -f "$STATE/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C "mdagent-sshd host" -f "$STATE/host_ed25519"
[ -f "$STATE/client_key" ] || ssh-keygen -q -t ed25519 -N "" -C "mdagent-sshd client" -f "$STATE/client_key"

# The client key goes to root's authorized_keys once; stop.sh takes it out again.
pub="$(cat "$STATE/client_key.pub")"
touch /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
grep -qxF "$pub" /root/.ssh/authorized_keys || echo "$pub" >>/root/.ssh/authorized_keys

cat >"$STATE/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $STATE/host_ed25519
PidFile $STATE/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
Subsystem sftp internal-sftp
CONF

if [ -f "$STATE/sshd.pid" ] && kill -0 "$(cat "$STATE/sshd.pid")" 2>/dev/null; then
    :
else
    /usr/sbin/sshd -t -f "$STATE/sshd_config" || die "invalid $STATE/sshd_config"
    /usr/sbin/sshd -f "$STATE/sshd_config" -E "$STATE/sshd.log"
fi

deadline=$(( $(date +%s) + 15 ))
until ssh -i "$STATE/client_key" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 true 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 15 "$STATE/sshd.log" >&2; die "no SSH login on 127.0.0.1:$PORT after 15s"; }
    sleep 0.2
done
echo "$STATE/client_key"
