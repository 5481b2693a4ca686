#!/usr/bin/env bash
# Sets up and runs the KMS on embedded defaults: SQLite and a SoftHSM2 token it creates, both in
# ./kms-data, in development mode (plaintext on loopback; every local user is a superuser).
# Extra arguments go to `kms serve` (e.g. --listen 127.0.0.1:50052).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/kms serve --dev --listen "${KMS_LISTEN:-127.0.0.1:50051}" --data-dir "${KMS_DATA_DIR:-kms-data}" "$@"
