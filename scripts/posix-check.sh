#!/usr/bin/env bash
# POSIX conformance check: pjdfstest's whole suite inside a fresh qarnotfs mount on moto.
#
#   scripts/posix-check.sh [PJDFSTEST]      # a source tree, or a git directory (a mirror)
#
# PJDFSTEST defaults to $PJDFSTEST_SRC, else /work/.mirror/pjd+pjdfstest/repo (what the
# `fetch` tool gives for github:pjd/pjdfstest). The suite is never vendored: it is built
# (autoconf, automake, gcc: `apt-get install autoconf automake gcc`) in $POSIX_CHECK_DIR
# (default /tmp/qarnotfs-posix-check), outside the repository. A moto server on 127.0.0.1
# gets a fresh bucket, which is mounted with this checkout's code (run as root: pjdfstest
# changes owners); `prove -r` runs in the mount, and the failures are printed per test
# file, then the total. Everything started is stopped on exit.
#
# Environment: PYTHON (default .venv/bin/python of this checkout), PROVE_JOBS (default 2),
# POSIX_CHECK_TIMEOUT (seconds for the whole run, default 5400), PJDFSTEST_TESTS (a
# sub-folder or file of tests/ to run only that, e.g. rename or rename/00.t), PROVE_VERBOSE=1
# (every subtest in the log: `grep "^not ok"` shows what failed). Exit status 0 when the suite ran
# (whatever its failures), non-zero when it could not run.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source_tree=${1:-${PJDFSTEST_SRC:-/work/.mirror/pjd+pjdfstest/repo}}
work=${POSIX_CHECK_DIR:-/tmp/qarnotfs-posix-check}
python=${PYTHON:-$here/.venv/bin/python}
jobs=${PROVE_JOBS:-2}
limit=${POSIX_CHECK_TIMEOUT:-5400}

for tool in autoreconf make gcc prove fusermount3; do
    command -v "$tool" >/dev/null || { echo "posix-check: $tool is missing" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "posix-check: pjdfstest must run as root" >&2; exit 2; }

mkdir -p "$work"
build=$work/pjdfstest
if [ ! -x "$build/pjdfstest" ]; then
    rm -rf "$build" && mkdir -p "$build"
    if git --git-dir="$source_tree" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        git --git-dir="$source_tree" archive HEAD | tar -x -C "$build"
    elif [ -f "$source_tree/pjdfstest.c" ]; then
        cp -a "$source_tree"/. "$build"
    else
        echo "posix-check: $source_tree is neither a pjdfstest tree nor its git directory" >&2
        exit 2
    fi
    (cd "$build" && autoreconf -ifs && ./configure && make pjdfstest) >"$work/build.log" 2>&1 \
        || { echo "posix-check: the build failed, see $work/build.log" >&2; exit 2; }
fi

run=$(mktemp -d "$work/run.XXXXXX")
source "$here/scripts/moto-mount.sh"
# allow_other: pjdfstest acts as other users too (FUSE refuses them all otherwise).
moto_mount "$run" --allow-other

tests=$build/tests${PJDFSTEST_TESTS:+/$PJDFSTEST_TESTS}
echo "posix-check: $("$python" -c 'import qarnotfs; print(qarnotfs.__file__)'), $tests"
(cd "$mnt" && timeout "$limit" prove -r ${PROVE_VERBOSE:+-v} -j "$jobs" "$tests") >"$run/prove.log" 2>&1 || true

# prove's summary: "<file> (Wstat: W Tests: N Failed: F)"; a file that died has no count.
awk -v base="$build/tests/" '
    /\(Wstat: .* Tests: [0-9]+ Failed: [0-9]+\)/ {
        file = $1; sub(base, "", file)
        match($0, /Tests: [0-9]+/); tests = substr($0, RSTART + 7, RLENGTH - 7)
        match($0, /Failed: [0-9]+/); failed = substr($0, RSTART + 8, RLENGTH - 8)
        printf "%-24s %5d of %5d failed\n", file, failed, tests; total += failed
    }
    /^Files=/ { summary = $0 }
    /^Result:/ { result = $0 }
    END { printf "failed tests: %d\n%s\n%s\n", total, summary, result }
' "$run/prove.log"
echo "posix-check: full output in $run/prove.log, mount log in $run/mount.log"
