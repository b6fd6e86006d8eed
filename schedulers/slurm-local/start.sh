#!/usr/bin/env bash
# Start a single-node Slurm cluster with accounting on this machine (root, no systemd): munge, slurmdbd
# (MariaDB on 127.0.0.1:3306), slurmctld, slurmd. Installs the packages if missing. Safe to run again.
# The accounting database: MDAGENT_SLURMDBD_DB_USER and MDAGENT_SLURMDBD_DB_PASS name an existing MariaDB user
# that may create MDAGENT_SLURMDBD_DB_NAME (default slurm_acct_db); without them MariaDB's root creates the
# database and a `slurm` user.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_DIR=/etc/slurm
DB_NAME="${MDAGENT_SLURMDBD_DB_NAME:-slurm_acct_db}"
DB_USER="${MDAGENT_SLURMDBD_DB_USER:-slurm}"
CLUSTER=mdagent
WAIT_S="${SLURM_START_TIMEOUT:-60}"
t0=$(date +%s%N)

die() { echo "slurm-local: $*" >&2; exit 1; }
log() { echo "slurm-local: $*"; }
[ "$(id -u)" = 0 ] || die "run as root (the daemons run as root here)"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in slurm-wlm munge slurmdbd; do installed "$pkg" || missing+=("$pkg"); done
db_listening() { (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; }
# No database server here at all: use Debian's MariaDB (it stays installed and running after stop.sh).
if ! db_listening && ! installed mariadb-server; then missing+=(mariadb-server); fi
command -v mysql >/dev/null || installed mariadb-server || missing+=(mariadb-client)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- configuration ------------------------------------------------------------------------------
host="$(hostname -s)"
hw="$(slurmd -C | head -1)"
node_hardware="$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$hw" | xargs)"
real_mb="$(grep -oE 'RealMemory=[0-9]+' <<<"$hw" | cut -d= -f2)"
[ -n "$node_hardware" ] && [ -n "$real_mb" ] || die "cannot read CPUs and memory from 'slurmd -C': $hw"
# Leave headroom: slurmd drains a node that reports less memory than configured.
real_memory=$(( real_mb * 8 / 10 ))

mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
new_conf="$(sed -e "s/@HOSTNAME@/$host/g" -e "s/@NODE_HARDWARE@/$node_hardware/" \
    -e "s/@REAL_MEMORY@/$real_memory/" "$HERE/slurm.conf.in")"

# Keep the database password across runs; a new one would lock out a running slurmdbd.
db_pass="${MDAGENT_SLURMDBD_DB_PASS:-}"
[ -n "$db_pass" ] || [ -n "${MDAGENT_SLURMDBD_DB_USER:-}" ] \
    || db_pass="$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf" 2>/dev/null || true)"
[ -n "$db_pass" ] || [ -n "${MDAGENT_SLURMDBD_DB_USER:-}" ] \
    || db_pass="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
new_dbd_conf="# written by mdagent schedulers/slurm-local/start.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$db_pass
StorageLoc=$DB_NAME
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid"

changed=0
if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then
    if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -q "schedulers/slurm-local/start.sh" "$CONF_DIR/slurm.conf"; then
        cp -n "$CONF_DIR/slurm.conf" "$CONF_DIR/slurm.conf.orig"
    fi
    printf '%s\n' "$new_conf" >"$CONF_DIR/slurm.conf"
    changed=1
fi
if [ "$(cat "$CONF_DIR/slurmdbd.conf" 2>/dev/null)" != "$new_dbd_conf" ]; then
    (umask 077 && printf '%s\n' "$new_dbd_conf" >"$CONF_DIR/slurmdbd.conf")
    changed=1
fi
chmod 600 "$CONF_DIR/slurmdbd.conf"
if [ "$changed" = 1 ]; then
    log "configuration written to $CONF_DIR"
    "$HERE/stop.sh" --slurm-only --quiet  # daemons started with an older configuration would not pick it up
fi

# --- database -----------------------------------------------------------------------------------
db_fail() {
    die "cannot set up the accounting database $DB_NAME in MariaDB at 127.0.0.1:3306 ($1); set \
MDAGENT_SLURMDBD_DB_USER and MDAGENT_SLURMDBD_DB_PASS to a MariaDB user that may create $DB_NAME, then rerun"
}
if ! db_listening; then
    service mariadb start >/dev/null 2>&1 || db_fail "nothing listens there and 'service mariadb start' failed"
    for _ in $(seq 100); do db_listening && break; sleep 0.2; done
    db_listening || db_fail "MariaDB started but does not listen there after 20 s"
fi
if [ -n "${MDAGENT_SLURMDBD_DB_USER:-}" ]; then
    err="$(MYSQL_PWD="$db_pass" mysql -h 127.0.0.1 -P 3306 -u "$DB_USER" \
        -e "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`" 2>&1)" || db_fail "as $DB_USER: ${err##*$'\n'}"
else
    setup_sql="CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$db_pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$db_pass';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';"
    # MariaDB's root: over the unix socket first (Debian's root logs in there by unix_socket, whatever its
    # TCP password), then over TCP without a password (MYSQL_PWD, if set, is used).
    err="$(mysql -u root <<<"$setup_sql" 2>&1)" \
        || err="$(mysql -h 127.0.0.1 -P 3306 -u root <<<"$setup_sql" 2>&1)" \
        || db_fail "MariaDB's root was refused over its unix socket and over TCP: ${err##*$'\n'}"
fi

# --- daemons ------------------------------------------------------------------------------------
wait_for() {  # wait_for DESCRIPTION LOGFILE COMMAND...
    local what="$1" logfile="$2"; shift 2
    local deadline=$(( $(date +%s) + WAIT_S ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "slurm-local: $what not ready after ${WAIT_S}s; last lines of $logfile:" >&2
            tail -n 15 "$logfile" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
}

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    service munge start >/dev/null || die "munge did not start (see /var/log/munge/munged.log)"
fi
wait_for "munge" /var/log/munge/munged.log bash -c 'munge -n | unmunge'

running /run/slurmdbd.pid || slurmdbd
wait_for "slurmdbd" /var/log/slurm/slurmdbd.log sacctmgr -n list cluster

if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

running /run/slurmctld.pid || slurmctld
wait_for "slurmctld" /var/log/slurm/slurmctld.log scontrol ping
running /run/slurmd.pid || slurmd

node_idle() {
    local state
    state="$(sinfo -h -n "$host" -o %t)"
    case "$state" in
        idle|mix|alloc) return 0 ;;
        down*|drain*|drng*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    return 1
}
wait_for "node $host (sinfo)" /var/log/slurm/slurmd.log node_idle

log "up in $(( ($(date +%s%N) - t0) / 1000000 )) ms: partition $(sinfo -h -o '%P %D node %t, %c CPUs, %m MB')"
