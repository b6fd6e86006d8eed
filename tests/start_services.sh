#!/usr/bin/env bash
# The database and broker the tests use: PostgreSQL on 127.0.0.1:5432 (user postgres, no password) and RabbitMQ on
# 127.0.0.1:5672 (guest/guest). Each is left alone when it answers; otherwise installed from Debian if missing,
# started (`service ... start`) and waited for. Safe to run again. Usage: bash tests/start_services.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WAIT_S="${MDAGENT_SERVICES_TIMEOUT:-180}"  # RabbitMQ took 20-40 s to start on a loaded 2-core machine
PY=.venv/bin/python

die() { echo "tests/start_services.sh: $*" >&2; exit 2; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

postgres_answers() {
  timeout 30 "$PY" -c 'import psycopg
psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=10).close()' \
    >/dev/null 2>&1
}
postgres_listens() { timeout 30 pg_isready -q -h 127.0.0.1 -p 5432 -t 10 2>/dev/null; }
rabbitmq_answers() {
  timeout 60 "$PY" -c 'from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config as detect
detect(host="127.0.0.1", port=5672, username="guest", password="guest")' >/dev/null 2>&1
}

wait_for() {  # wait_for WHAT CHECK: until CHECK succeeds, at most WAIT_S seconds
  local deadline=$((SECONDS + WAIT_S))
  until "$2"; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer within $WAIT_S s (MDAGENT_SERVICES_TIMEOUT)"
    sleep 1
  done
}

install_missing() {
  local missing=()
  for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The tests log in as postgres over TCP without a password; Debian's default asks loopback logins for one. One line
# at the top of pg_hba.conf trusts that login, from 127.0.0.1 only.
trust_test_login() {
  local hba
  hba="$(su postgres -c "psql -tAc 'SHOW hba_file'")" || die "cannot ask PostgreSQL for its pg_hba.conf as postgres"
  grep -q "mdagent tests" "$hba" && return
  sed -i "1i host all postgres 127.0.0.1/32 trust  # mdagent tests (tests/start_services.sh)" "$hba"
  su postgres -c "psql -qtAc 'SELECT pg_reload_conf()'" >/dev/null
}

if ! postgres_answers; then
  as_root || die "PostgreSQL does not answer on 127.0.0.1:5432 as postgres: start it, or run this as root to install and start it"
  install_missing postgresql
  echo "== starting PostgreSQL"
  service postgresql start >/dev/null
  wait_for "PostgreSQL on 127.0.0.1:5432" postgres_listens
  postgres_answers || trust_test_login
  wait_for "PostgreSQL's login as postgres" postgres_answers
fi

if ! rabbitmq_answers; then
  as_root || die "RabbitMQ does not answer on 127.0.0.1:5672 as guest: start it, or run this as root to install and start it"
  install_missing rabbitmq-server
  echo "== starting RabbitMQ"
  service rabbitmq-server start >/dev/null
  wait_for "RabbitMQ on 127.0.0.1:5672" rabbitmq_answers
fi
