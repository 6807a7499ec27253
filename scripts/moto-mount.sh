# Sourced by the conformance checks (posix-check.sh, fsx-check.sh): a moto server on
# 127.0.0.1 with a fresh bucket, mounted with this checkout's code, all stopped on exit.
#
#   source scripts/moto-mount.sh
#   moto_mount RUN_DIR [MOUNT OPTIONS...]   # sets $mnt (RUN_DIR/mnt); the log is RUN_DIR/mount.log
#
# Needs $python (the interpreter with qarnotfs installed). Installs an EXIT trap that
# unmounts and stops moto.

mnt=""
moto_pid=""

moto_mount_cleanup() {
    if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
        "$python" -m qarnotfs unmount "$mnt" --timeout 60 >/dev/null 2>&1 \
            || fusermount3 -uz "$mnt" || true
    fi
    if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
}

moto_mount() {
    local run=$1
    shift
    mnt=$run/mnt
    mkdir -p "$mnt"
    trap moto_mount_cleanup EXIT
    local port
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$python" -m moto.server -H 127.0.0.1 -p "$port" >"$run/moto.log" 2>&1 &
    moto_pid=$!
    export QARNOT_STORAGE_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=conformance \
           AWS_SECRET_ACCESS_KEY=conformance AWS_DEFAULT_REGION=us-east-1 \
           AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
    local bucket
    bucket=check-$(date +%s)
    "$python" - "$bucket" <<'PYTHON'
import os, sys, time
import boto3
client = boto3.client("s3", endpoint_url=os.environ["QARNOT_STORAGE_URL"])
for _ in range(100):
    try:
        client.create_bucket(Bucket=sys.argv[1])
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("moto did not start")
PYTHON
    "$python" -m qarnotfs mount "$bucket" "$mnt" --staging-dir "$run/staging" \
        --log-file "$run/mount.log" "$@"
}
