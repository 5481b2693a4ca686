#!/usr/bin/env bash
# Sets up everything the service and its tests need, on a Debian-like machine. Idempotent, and
# quiet unless something goes wrong (then it prints the log of the step that failed).
#   - system packages, when absent: SoftHSM2 (the development HSM), OpenSC (pkcs11-tool),
#     Node.js and npm (the TypeScript SDK); with --postgres also PostgreSQL, whose new cluster
#     is then set to trust local connections on 127.0.0.1 (what the tests expect)
#   - .venv with the service, its SDK and the development tools, at the versions pinned in
#     scripts/constraints.txt
#   - clients/node: npm ci from the committed lockfile, then the TypeScript build
set -euo pipefail
cd "$(dirname "$0")/.."

want_postgres=0
[ "${1:-}" = "--postgres" ] && want_postgres=1

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
quietly() { # name command...: runs the command, shows its output only if it fails
    local name=$1
    shift
    if ! "$@" >"$logs/$name.log" 2>&1; then
        echo "setup: $name failed:" >&2
        cat "$logs/$name.log" >&2
        exit 1
    fi
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
new_postgres=0
if ((want_postgres)) && ! command -v pg_ctlcluster >/dev/null 2>&1; then
    missing+=(postgresql)
    new_postgres=1
fi
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    quietly apt-update $sudo apt-get update
    quietly apt-install env DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi
if ((new_postgres)); then
    # Debian's package creates and configures the cluster "main"; the tests connect as postgres
    # over 127.0.0.1 without a password, so this cluster, which we just made, trusts that.
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    printf '%s\n' "local all all trust" "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust" \
        | $sudo tee "$hba" >/dev/null
    echo "setup: installed PostgreSQL $version (cluster main, trust on 127.0.0.1)" >&2
fi

python=${PYTHON:-python3}
"$python" - <<'PY' || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

[ -x .venv/bin/python ] || quietly venv "$python" -m venv .venv

# Reinstall only when the dependency declarations changed.
stamp=.venv/.kms-installed
packages=(proto/python "clients/python[sqlalchemy,tink,aws]")  # each installed editable, before the service
wanted=$(cat pyproject.toml proto/python/pyproject.toml clients/python/pyproject.toml scripts/constraints.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing Python packages into .venv" >&2
    quietly pip-upgrade .venv/bin/python -m pip install --upgrade pip
    editable=()
    for package in "${packages[@]}"; do
        [ -f "${package%%\[*}/pyproject.toml" ] && editable+=(-e "$package")
    done
    quietly pip-install .venv/bin/python -m pip install -c scripts/constraints.txt "${editable[@]}" -e '.[dev]'
    echo "$wanted" > "$stamp"
fi

if [ -f clients/node/package-lock.json ]; then
    node_stamp=clients/node/node_modules/.kms-installed
    node_wanted=$(cat clients/node/package.json clients/node/package-lock.json | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_wanted" ]; then
        echo "setup: installing the TypeScript SDK's packages (npm ci)" >&2
        quietly npm-ci npm --prefix clients/node ci --no-audit --no-fund
        echo "$node_wanted" > "$node_stamp"
    fi
    quietly npm-build npm --prefix clients/node run --silent build
fi
