#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, types, then every tier on moto's
# server and again on a local Ceph RADOS Gateway (the real server behind Qarnot storage).
#   bash scripts/test.sh              # both backends
#   BACKENDS=moto bash scripts/test.sh
# Extra arguments go to pytest (e.g. -x, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh --test
.venv/bin/ruff check qarnotfs tests scripts
.venv/bin/mypy

status=0
for backend in ${BACKENDS:-moto rgw}; do
    echo "=== test suite on ${backend} ===" >&2
    if [[ "$backend" == rgw ]]; then
        QARNOTFS_PYTHON=.venv/bin/python bash scripts/ceph-rgw.sh start >/dev/null
        trap 'bash scripts/ceph-rgw.sh stop >/dev/null 2>&1 || true' EXIT
    fi
    .venv/bin/python -m pytest --backend "$backend" "$@" || status=$?
    if [[ "$backend" == rgw ]]; then
        bash scripts/ceph-rgw.sh stop >/dev/null || true
        trap - EXIT
    fi
    # Never leave a mount behind, whatever the tests did.
    if grep -q " fuse.qarnotfs " /proc/mounts; then
        echo "error: a qarnotfs mount was left behind by the tests" >&2
        status=1
    fi
done
exit "$status"
