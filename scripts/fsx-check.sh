#!/usr/bin/env bash
# Data integrity check: xfstests' fsx (random reads, writes, truncates, mmap, close and
# reopen, fsync, checked against an in-memory copy after every operation) on files inside
# a fresh qarnotfs mount on moto.
#
#   scripts/fsx-check.sh [XFSTESTS]     # a source tree, or a git directory (a mirror)
#
# XFSTESTS defaults to $XFSTESTS_SRC, else /work/.mirror/kdave+xfstests/repo (what the
# `fetch` tool gives for github:kdave/xfstests). Only ltp/fsx.c is built (gcc), in
# $FSX_CHECK_DIR (default /tmp/qarnotfs-fsx-check), outside the repository: it is never
# vendored. Runs, each on its own file (FSX_OPS, default 100000, scales them):
#
#   mmap        fsx's default mix, mapped reads and writes included (FSX_OPS ops)
#   no-mmap     read()/write() only: -R -W (FSX_OPS ops)
#   close-open  -c 20: closed and opened again every 20 operations or so, so every
#               close uploads the file and every open reads the object back
#               (close-to-open), the path other machines see (FSX_OPS/10 ops)
#   flush       -f: fsync and drop the kernel's pages after each operation, so reads
#               come from the mount, not the page cache (FSX_OPS/10 ops)
#   fsync       -y: fsync after every change, an upload each (FSX_OPS/100 ops)
#   big         a file up to 40 MB with operations up to 4 MB, closed every 50 operations:
#               multipart uploads and the read cache's blocks (FSX_OPS/100 ops)
#
# fsx finds which of fallocate, hole punching, zero/collapse/insert range, copy_file_range,
# clone and dedupe the mount refuses (all of them: EOPNOTSUPP) and leaves them out; it
# says so in its output. Prints each run's result and the number of operations, and exits
# non-zero if one failed (its log, and fsx's .fsxlog/.fsxgood, are in the run folder).
#
# Environment: PYTHON (default .venv/bin/python of this checkout), FSX_OPS, FSX_SEED
# (default 1), FSX_RUNS (names of the runs to do, default all).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source_tree=${1:-${XFSTESTS_SRC:-/work/.mirror/kdave+xfstests/repo}}
work=${FSX_CHECK_DIR:-/tmp/qarnotfs-fsx-check}
python=${PYTHON:-$here/.venv/bin/python}
ops=${FSX_OPS:-100000}
seed=${FSX_SEED:-1}
runs=${FSX_RUNS:-mmap no-mmap close-open flush fsync big}

for tool in gcc fusermount3; do
    command -v "$tool" >/dev/null || { echo "fsx-check: $tool is missing" >&2; exit 2; }
done

mkdir -p "$work"
fsx=$work/fsx
if [ ! -x "$fsx" ]; then
    src=$work/src
    rm -rf "$src" && mkdir -p "$src"
    wanted=(ltp/fsx.c src/global.h src/statx.h)
    if git --git-dir="$source_tree" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        git --git-dir="$source_tree" archive HEAD "${wanted[@]}" | tar -x -C "$src"
    elif [ -f "$source_tree/ltp/fsx.c" ]; then
        for file in "${wanted[@]}"; do install -D -m 644 "$source_tree/$file" "$src/$file"; done
    else
        echo "fsx-check: $source_tree is neither an xfstests tree nor its git directory" >&2
        exit 2
    fi
    # What xfstests' configure would find on Linux with glibc (no XFS headers, no libaio).
    {
        for header in SYS_TYPES SYS_STAT SYS_STATVFS SYS_TIME SYS_IOCTL SYS_WAIT MALLOC \
                      DIRENT STDLIB UNISTD ERRNO STRING SYS_FCNTL SYS_PARAM LIBGEN ASSERT \
                      STRINGS SYS_MMAN LINUX_FALLOC ERR; do
            echo "#define HAVE_${header}_H 1"
        done
        echo "#define STDC_HEADERS 1"
        echo "#define HAVE_COPY_FILE_RANGE 1"
    } >"$src/config.h"
    gcc -O2 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -include getopt.h -I"$src" -I"$src/src" \
        -o "$fsx" "$src/ltp/fsx.c" >"$work/build.log" 2>&1 \
        || { echo "fsx-check: the build failed, see $work/build.log" >&2; exit 2; }
fi

run=$(mktemp -d "$work/run.XXXXXX")
source "$here/scripts/moto-mount.sh"
moto_mount "$run" --read-cache-dir "$run/blocks"
echo "fsx-check: $("$python" -c 'import qarnotfs; print(qarnotfs.__file__)'), $fsx"

flags_of() {
    case $1 in
        mmap)       echo "-N $ops" ;;
        no-mmap)    echo "-N $ops -R -W" ;;
        close-open) echo "-N $((ops / 10)) -c 20" ;;
        flush)      echo "-N $((ops / 10)) -f" ;;
        fsync)      echo "-N $((ops / 100)) -y" ;;
        big)        echo "-N $((ops / 100)) -l 40000000 -o 4000000 -c 50" ;;
        *) echo "fsx-check: unknown run $1" >&2; return 1 ;;
    esac
}

failed=0
for name in $runs; do
    flags=$(flags_of "$name")
    mkdir -p "$run/$name"
    start=$(date +%s)
    # shellcheck disable=SC2086  # flags are words
    if "$fsx" $flags -S "$seed" -p 10000 -P "$run/$name" "$mnt/$name" >"$run/$name/out.log" 2>&1; then
        result=ok
    else
        result="FAILED (exit $?)"
        failed=1
    fi
    done_ops=$(grep -Eo '^All [0-9]+ operations completed A-OK' "$run/$name/out.log" \
               | grep -Eo '[0-9]+' || true)
    printf '%-11s %-6s %8s operations in %4ss  (fsx %s)\n' "$name" "$result" \
        "${done_ops:-?}" "$(($(date +%s) - start))" "$flags"
done
grep -h "disabling\|not supported" "$run"/*/out.log | sort | uniq -c || true
echo "fsx-check: fsx output in $run/<run>/out.log, mount log in $run/mount.log"
exit "$failed"
