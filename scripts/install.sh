#!/usr/bin/env bash
# Install qarnotfs on a fresh Debian/Ubuntu machine (run as root): the package in ./.venv,
# then `qarnotfs` and `mount.fuse.qarnotfs` on the system PATH, so the README's commands,
# `mount -t fuse.qarnotfs` and /etc/fstab lines work, the systemd unit qarnotfs@.service,
# the manual page (`man qarnotfs`) and the bash and zsh completions.
#   bash scripts/install.sh            # the package, FUSE 3, the demo server, the links
#   bash scripts/install.sh --test     # plus the test and development tools; no links (the
#                                      # mount tests make and remove their own; add --system)
#   bash scripts/install.sh --no-system  # only ./.venv (no links, no unit)
# Where the links and the unit go (defaults shown; the tests point them at a temporary folder):
#   QARNOTFS_BIN_DIR=/usr/local/bin QARNOTFS_SBIN_DIR=/usr/sbin
#   QARNOTFS_UNIT_DIR=/etc/systemd/system
#   QARNOTFS_SHARE_DIR=/usr/local/share   (man/man1, zsh/site-functions, bash-completion)
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo"
system=""
for argument in "$@"; do
    case "$argument" in
        --test) extras="dev"; system=${system:-0} ;;
        --system) system=1 ;;
        --no-system) system=0 ;;
        *) echo "install.sh: unknown option $argument (see the header of $0)" >&2; exit 2 ;;
    esac
done

# fuse3 gives fusermount3 and libfuse3 (loaded by mfusepy); systemd gives systemd-analyze
# (the unit's test); attr gives setfattr/getfattr and s3fs the s3fs-fuse the
# interoperability tests mount; man-db shows the manual page and zsh uses the completion
# (its test drives a real zsh); the rest is what the tests drive.
apt_packages=(fuse3 libfuse3-3 python3-venv python3-pip rsync sqlite3 git tar ca-certificates
              systemd psmisc attr s3fs man-db zsh)
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
# pip's and setuptools' notices (locations, deprecations, "running as root") are not the
# user's business: pip's output is shown only if it fails.
quiet_pip() {
    local output status=0
    output=$(PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
             .venv/bin/python -m pip install -q "$@" 2>&1) || status=$?
    if ((status)); then
        printf '%s\n' "$output" >&2
        return "$status"
    fi
}
quiet_pip --upgrade pip
quiet_pip -e ".[${extras}]"
.venv/bin/qarnotfs --version >/dev/null
echo "qarnotfs installed in $(pwd)/.venv" >&2

if ((${system:-1})); then
    bin_dir=${QARNOTFS_BIN_DIR:-/usr/local/bin}
    sbin_dir=${QARNOTFS_SBIN_DIR:-/usr/sbin}
    unit_dir=${QARNOTFS_UNIT_DIR:-/etc/systemd/system}
    mkdir -p "$bin_dir" "$sbin_dir" "$unit_dir"
    # mount(8) runs /sbin/mount.fuse.qarnotfs; mount.fuse3 and systemd run `qarnotfs` with
    # a standard PATH, which holds /usr/local/bin.
    ln -sfn "$(pwd)/.venv/bin/qarnotfs" "$bin_dir/qarnotfs"
    ln -sfn "$(pwd)/.venv/bin/mount.fuse.qarnotfs" "$bin_dir/mount.fuse.qarnotfs"
    ln -sfn "$(pwd)/.venv/bin/mount.fuse.qarnotfs" "$sbin_dir/mount.fuse.qarnotfs"
    sed "s|/usr/local/bin/qarnotfs|$bin_dir/qarnotfs|g" qarnotfs/resources/qarnotfs@.service \
        > "$unit_dir/qarnotfs@.service"
    # Both built from the parser, so they always match the installed commands; these
    # folders are in man's, zsh's and bash-completion's default search paths.
    share_dir=${QARNOTFS_SHARE_DIR:-/usr/local/share}
    mkdir -p "$share_dir/man/man1" "$share_dir/zsh/site-functions" \
             "$share_dir/bash-completion/completions"
    .venv/bin/qarnotfs help --man > "$share_dir/man/man1/qarnotfs.1"
    .venv/bin/qarnotfs completion zsh > "$share_dir/zsh/site-functions/_qarnotfs"
    .venv/bin/qarnotfs completion bash > "$share_dir/bash-completion/completions/qarnotfs"
    echo "linked qarnotfs and mount.fuse.qarnotfs into $bin_dir and $sbin_dir;" \
         "unit qarnotfs@.service in $unit_dir (see README, Run at boot); manual page" \
         "and completions in $share_dir" >&2
fi
