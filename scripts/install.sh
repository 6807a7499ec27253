#!/usr/bin/env bash
# Install what qarnotfs needs on a fresh Debian/Ubuntu machine (run as root), into ./.venv.
#   bash scripts/install.sh          # the package, FUSE 3 and the demo server
#   bash scripts/install.sh --test   # plus the test and development tools
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo"
if [[ "${1:-}" == "--test" ]]; then extras="dev"; fi

# fuse3 gives fusermount3 and libfuse3 (loaded by mfusepy); the rest is what the tests drive.
apt_packages=(fuse3 libfuse3-3 python3-venv python3-pip rsync sqlite3 git tar ca-certificates)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/qarnotfs --version >/dev/null
echo "qarnotfs installed in $(pwd)/.venv" >&2
