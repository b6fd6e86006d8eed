#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by start.sh: slurmd, slurmctld, slurmdbd, then munge.
# Usage: stop.sh [--slurm-only] [--quiet]   (--slurm-only leaves munge running)
set -uo pipefail

slurm_only=0 quiet=0
for arg in "$@"; do
    case "$arg" in
        --slurm-only) slurm_only=1 ;;
        --quiet) quiet=1 ;;
        *) echo "usage: $0 [--slurm-only] [--quiet]" >&2; exit 2 ;;
    esac
done
log() { [ "$quiet" = 1 ] || echo "slurm-local: $*"; }

stop_pid() {  # stop_pid NAME PIDFILE
    local name="$1" pidfile="$2" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        log "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop_pid slurmd /run/slurmd.pid
stop_pid slurmctld /run/slurmctld.pid
stop_pid slurmdbd /run/slurmdbd.pid
if [ "$slurm_only" = 0 ] && [ -f /run/munge/munged.pid ]; then
    service munge stop >/dev/null 2>&1 && log "stopped munge"
fi
exit 0
