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

# pytest's temporary folders (mount points included) live here, so the check below sees
# only this run's mounts.
basetemp=$(mktemp -d /tmp/qarnotfs-tests.XXXXXX)
status=0
for backend in ${BACKENDS:-moto rgw}; do
    echo "=== test suite on ${backend} ===" >&2
    if [[ "$backend" == rgw ]]; then
        QARNOTFS_PYTHON=.venv/bin/python bash scripts/ceph-rgw.sh start >/dev/null
        trap 'bash scripts/ceph-rgw.sh stop >/dev/null 2>&1 || true' EXIT
    fi
    .venv/bin/python -m pytest --backend "$backend" --basetemp "$basetemp/$backend" "$@" \
        || status=$?
    if [[ "$backend" == rgw ]]; then
        bash scripts/ceph-rgw.sh stop >/dev/null || true
        trap - EXIT
    fi
    # Never leave a mount behind, whatever the tests did.
    leftovers=$(awk -v base="$basetemp/" \
        '$3 == "fuse.qarnotfs" && index($2, base) == 1 { print $2 }' /proc/mounts)
    if [[ -n "$leftovers" ]]; then
        echo "error: the tests left qarnotfs mounts behind: $leftovers" >&2
        for mountpoint in $leftovers; do fusermount3 -uz "$mountpoint" || true; done
        status=1
    fi
done
rm -rf "$basetemp"
exit "$status"
