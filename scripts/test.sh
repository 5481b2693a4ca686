#!/usr/bin/env bash
# Sets up and runs the whole test suite: unit, vectors, integration (SoftHSM2, SQLite,
# PostgreSQL), end to end, fault injection, and the SDK's tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

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
exec .venv/bin/python -m pytest "$@"
