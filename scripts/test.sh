#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit, vectors, integration (SoftHSM2, SQLite,
# PostgreSQL), end to end, fault injection, and the SDK's tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --postgres  # installs PostgreSQL too when it is absent

# The PostgreSQL half of the suite needs the local server on 127.0.0.1:5432.
if [ "${KMS_TEST_SKIP_POSTGRES:-0}" != 1 ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "test: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 0.5
    done
fi

.venv/bin/python scripts/gen_proto.py --check

# Static checks (configured in pyproject.toml): lint, format, types, and the layer contracts of
# docs/architecture.md. Quiet when they pass; the first failure stops the script with its report.
check() { # name command...: runs the command, shows its output only if it fails
    local name=$1 output
    shift
    if ! output=$("$@" 2>&1); then
        echo "test: $name failed:" >&2
        echo "$output" >&2
        exit 1
    fi
}
check "ruff check" .venv/bin/ruff check --quiet .
check "ruff format" .venv/bin/ruff format --check --quiet .
check mypy .venv/bin/mypy
check "layer contracts" .venv/bin/lint-imports --no-cache

# Tests spread over every core (pytest-xdist): each process has its own SoftHSM token and
# temporary directories, and every PostgreSQL test its own database. KMS_TEST_PROCESSES=0 runs
# them in this one process.
exec .venv/bin/python -m pytest -n "${KMS_TEST_PROCESSES:-auto}" "$@"
