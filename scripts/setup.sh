#!/usr/bin/env bash
# Sets up everything the service and its tests need, on a Debian-like machine. Idempotent.
#   - system packages: SoftHSM2 (the development HSM) and OpenSC (pkcs11-tool), when absent
#   - .venv with the service, its SDK and the test tools, at the versions in scripts/constraints.txt
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
"$python" - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

[ -x .venv/bin/python ] || "$python" -m venv .venv

# Reinstall only when the dependency declarations changed.
stamp=.venv/.kms-installed
wanted=$(cat pyproject.toml clients/python/pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -c scripts/constraints.txt -e clients/python -e '.[dev]'
    echo "$wanted" > "$stamp"
fi
