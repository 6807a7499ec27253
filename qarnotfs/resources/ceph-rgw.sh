#!/usr/bin/env bash
# ceph-rgw.sh — a throw-away, single-node Ceph RADOS Gateway (RGW) on 127.0.0.1.
#
# Qarnot storage is S3 served by Ceph RGW. moto is a mock; this script gives the test suite
# (and developers) the real server on one machine, without systemd and without network:
# one mon, one OSD (memstore by default), one radosgw (beast frontend).
#
# Usage:  scripts/ceph-rgw.sh start|stop|env|status
#         eval "$(scripts/ceph-rgw.sh env)"
#
# Environment (all optional):
#   QARNOTFS_RGW_DIR      state dir (config, keyring, daemon data, logs, pids)
#                         default /tmp/qarnotfs-rgw; wiped by `start` unless RGW_KEEP=1
#   RGW_PORT              S3 (HTTP) port of radosgw                      default 17480
#   RGW_MON_PORT          mon msgr2 port; msgr1 uses RGW_MON_PORT+1      default 17490
#   RGW_OSD_PORT_MIN/MAX  port range the OSD binds its messengers in     default 17500-17539
#   RGW_ACCESS_KEY        S3 access key of the test user                 default qarnotfs-test-access
#   RGW_SECRET_KEY        S3 secret key of the test user                 default qarnotfs-test-secret
#   RGW_STORE             memstore (RAM, default) or bluestore (sparse file in the state dir)
#   RGW_STORE_GIB         capacity of the store in GiB                   default 8
#   RGW_KEEP=1            with RGW_STORE=bluestore: reuse the existing cluster and its data
#   RGW_TCP_NODELAY=1     set tcp_nodelay on the beast frontend (default 0 = beast's default,
#                         like a stock gateway; see the comment in write_conf)
#   RGW_START_TIMEOUT     seconds to wait for each readiness step        default 60
#   QARNOTFS_PYTHON       python with boto3 for the readiness probe
#
# Exit status: 0 on success, non-zero with a message on stderr otherwise.
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

STATE_DIR="${QARNOTFS_RGW_DIR:-/tmp/qarnotfs-rgw}"
# Ports stay below 32768: the kernel hands out ephemeral client ports from 32768 up, and
# client sockets lingering in TIME_WAIT there once made the mon's bind fail (EADDRINUSE).
RGW_PORT="${RGW_PORT:-17480}"
MON_PORT="${RGW_MON_PORT:-17490}"
MON_PORT_V1=$((MON_PORT + 1))
OSD_PORT_MIN="${RGW_OSD_PORT_MIN:-17500}"
OSD_PORT_MAX="${RGW_OSD_PORT_MAX:-17539}"
ACCESS_KEY="${RGW_ACCESS_KEY:-qarnotfs-test-access}"
SECRET_KEY="${RGW_SECRET_KEY:-qarnotfs-test-secret}"
STORE="${RGW_STORE:-memstore}"
STORE_GIB="${RGW_STORE_GIB:-8}"
KEEP="${RGW_KEEP:-0}"
TCP_NODELAY="${RGW_TCP_NODELAY:-0}"
TIMEOUT="${RGW_START_TIMEOUT:-60}"
RGW_USER="qarnotfs-test"
RGW_NAME="client.rgw.qarnotfs"   # the radosgw daemon's cephx identity / config section
HOST="127.0.0.1"

CONF="$STATE_DIR/ceph.conf"
PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
SETTINGS="$STATE_DIR/settings.env"    # what `start` used; `env`/`status` read it back
# All ceph tools honour CEPH_CONF, so no command below can fall back to /etc/ceph.
export CEPH_CONF="$CONF"

# Stop order (see stop_all): radosgw before the OSD, the OSD before the mon; stopped
# together, radosgw hangs waiting for a cluster that went away.

die() { echo "ceph-rgw: error: $*" >&2; exit 1; }
log() { echo "ceph-rgw: $*" >&2; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

# Is something listening on 127.0.0.1:PORT? A plain connect is the right test: ceph and beast
# bind with SO_REUSEADDR, so only a listener (not TIME_WAIT leftovers) would stop them, and
# a server on 0.0.0.0 is caught too. Pure bash, no tool needed.
port_busy() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# PID recorded for a daemon (mon|osd|radosgw), or empty.
recorded_pid() {
    local f="$PID_DIR/$1.pid"
    if [[ -f "$f" ]]; then cat "$f"; fi
}

# Is PID alive *and* one of ours? A recorded PID can be reused by an unrelated process after
# a reboot or a crash; our daemons all carry this state dir's ceph.conf on their command line
# (passed with -c), so check for it before signalling anything.
is_ours() {
    local pid="$1"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"
}

daemon_running() { is_ours "$(recorded_pid "$1")"; }

daemon_log() {
    case "$1" in
        mon) echo "$LOG_DIR/mon.a.log" ;;
        osd) echo "$LOG_DIR/osd.0.log" ;;
        radosgw) echo "$LOG_DIR/$RGW_NAME.log" ;;
    esac
}

# Choose a python that has boto3 for the signed readiness probe.
find_python() {
    local candidates=()
    [[ -n "${QARNOTFS_PYTHON:-}" ]] && candidates+=("$QARNOTFS_PYTHON")
    candidates+=("$REPO_DIR/.venv/bin/python" "/work/venv/bin/python" python3)
    local p
    for p in "${candidates[@]}"; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import boto3' >/dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# The readiness probe. It must be a *signed* S3 request: an anonymous GET / is answered by
# RGW before the user, the pools and the OSD are usable, and by any other server that
# happens to sit on the port. ListBuckets with the test user's keys proves the whole chain
# (beast -> auth -> RADOS -> OSD). RGW insists on x-amz-content-sha256, which boto3 sends.
# Arguments: seconds to keep trying. Exit 0 once a request succeeded, 1 on timeout, 3 as
# soon as one of the PIDs in $PROBE_PIDS (if set) is gone, so that a crash is reported at
# once rather than after the timeout.
probe() {
    local deadline_s="$1" py
    if py="$(find_python)"; then
        PROBE_URL="http://$HOST:$RGW_PORT" PROBE_AK="$ACCESS_KEY" PROBE_SK="$SECRET_KEY" \
        PROBE_DEADLINE="$deadline_s" PROBE_PIDS="${PROBE_PIDS:-}" "$py" - <<'PY'
import os, sys, time
import boto3
from botocore.config import Config

cfg = Config(
    s3={"addressing_style": "path"},
    connect_timeout=2,
    read_timeout=5,
    retries={"max_attempts": 1},
)
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["PROBE_URL"],
    aws_access_key_id=os.environ["PROBE_AK"],
    aws_secret_access_key=os.environ["PROBE_SK"],
    region_name="us-east-1",
    config=cfg,
)
deadline = time.monotonic() + float(os.environ["PROBE_DEADLINE"])
pids = os.environ["PROBE_PIDS"].split()


def alive(pid: str) -> bool:
    try:  # a zombie (exited, not yet reaped) has an empty cmdline
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return bool(f.read())
    except OSError:
        return False


last = None
while True:
    if not all(alive(p) for p in pids):
        sys.exit(3)
    try:
        s3.list_buckets()
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        last = exc
    if time.monotonic() >= deadline:
        print(f"last probe error: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
PY
    elif command -v curl >/dev/null 2>&1; then
        # No boto3 anywhere: curl (>= 7.75) signs SigV4 itself; add the payload hash header
        # RGW wants (sha256 of the empty body).
        local end=$((SECONDS + ${deadline_s%.*}))
        local empty_sha=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
        while ((SECONDS <= end)); do
            if curl -fsS -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" \
                --user "$ACCESS_KEY:$SECRET_KEY" -H "x-amz-content-sha256: $empty_sha" \
                "http://$HOST:$RGW_PORT/" 2>/dev/null; then
                return 0
            fi
            sleep 0.2
        done
        return 1
    else
        die "no python with boto3 (set QARNOTFS_PYTHON) and no curl for the readiness probe"
    fi
}

# Wait until a command succeeds, while checking that DAEMON is still alive (so a crash is
# reported at once with its log, instead of after the timeout).
wait_for() {
    local what="$1" daemon="$2"
    shift 2
    local end=$((SECONDS + TIMEOUT))
    while ! "$@" >/dev/null 2>&1; do
        daemon_running "$daemon" || daemon_failed "$daemon" "exited while waiting for $what"
        ((SECONDS < end)) || daemon_failed "$daemon" "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.1
    done
}

daemon_failed() {
    local daemon="$1" why="${*:2}" logf
    logf="$(daemon_log "$daemon")"
    {
        echo "ceph-rgw: error: $daemon $why"
        echo "ceph-rgw: its log: $logf (stdout/stderr: $LOG_DIR/$daemon.out)"
        if [[ -s "$LOG_DIR/$daemon.out" ]]; then
            echo "---- last lines of $LOG_DIR/$daemon.out ----"
            tail -n 15 "$LOG_DIR/$daemon.out"
        fi
        if [[ -s "$logf" ]]; then
            echo "---- last lines of $logf ----"
            tail -n 15 "$logf"
        fi
    } >&2
    stop_all >&2 || true
    exit 1
}

# Start a daemon detached: in the foreground (-f, so it stays our child and its PID is the
# one we record; no ceph daemon daemonizes or is started by systemd here), in its own
# session (setsid: a Ctrl-C or hangup of the caller's terminal must not reach it), with all
# standard streams redirected (a caller capturing our output, e.g. $(...) or
# subprocess.run(capture_output=True), would otherwise wait for the daemon to exit).
# setsid execs in place because a background job of a non-interactive shell is not a
# process-group leader, so $! is the daemon's PID.
spawn() {
    local daemon="$1"
    shift
    # 9>&-: the daemon must not inherit the lock fd (see take_lock), or it would hold the
    # lock for its whole life.
    setsid "$@" </dev/null >>"$LOG_DIR/$daemon.out" 2>&1 9>&- &
    echo $! >"$PID_DIR/$daemon.pid"
    # Not a job of this shell any more: no "Killed" notices when `stop` ends it.
    disown $!
    sleep 0.05
    daemon_running "$daemon" || daemon_failed "$daemon" "failed to start"
}

# Stop one daemon: send SIG (default TERM), wait, then SIGKILL after a timeout. Only the
# recorded PID, and only if it still is one of ours.
stop_daemon() {
    local daemon="$1" sig="${2:-TERM}" grace="${3:-20}" pid
    pid="$(recorded_pid "$daemon")"
    if is_ours "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        local end=$((SECONDS + grace))
        while is_ours "$pid" && ((SECONDS < end)); do sleep 0.05; done
        if is_ours "$pid"; then
            log "$daemon (pid $pid) did not exit within ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while is_ours "$pid"; do sleep 0.05; done
        fi
        log "stopped $daemon (pid $pid)"
    fi
    rm -f "$PID_DIR/$daemon.pid"
}

stop_all() {
    # radosgw first (a clean shutdown, it holds RADOS watches), then the OSD, then the mon.
    stop_daemon radosgw
    if [[ "$(saved_setting STORE)" == bluestore ]]; then
        stop_daemon osd
    else
        # A memstore OSD dumps every object it holds to disk on a clean shutdown: pure waste
        # (seconds per GiB) for a cluster that the next start wipes anyway. Kill it.
        stop_daemon osd KILL
    fi
    stop_daemon mon
}

saved_setting() {
    [[ -f "$SETTINGS" ]] || return 0
    sed -n "s/^$1=//p" "$SETTINGS" | tail -n 1
}

# Reload what `start` recorded, so `env`, `status` and a kept cluster use the same ports and
# keys whatever the current environment says.
load_settings() {
    [[ -f "$SETTINGS" ]] || return 1
    RGW_PORT="$(saved_setting RGW_PORT)"
    MON_PORT="$(saved_setting MON_PORT)"
    MON_PORT_V1=$((MON_PORT + 1))
    OSD_PORT_MIN="$(saved_setting OSD_PORT_MIN)"
    OSD_PORT_MAX="$(saved_setting OSD_PORT_MAX)"
    ACCESS_KEY="$(saved_setting ACCESS_KEY)"
    SECRET_KEY="$(saved_setting SECRET_KEY)"
    STORE="$(saved_setting STORE)"
}

all_running() {
    local d
    for d in mon osd radosgw; do daemon_running "$d" || return 1; done
}

any_running() {
    local d
    for d in mon osd radosgw; do daemon_running "$d" && return 0; done
    return 1
}

print_env() {
    echo "export QARNOT_STORAGE_URL=http://$HOST:$RGW_PORT"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
}

# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------
ensure_packages() {
    local missing=0 tool
    for tool in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
        command -v "$tool" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    [[ "$(id -u)" == 0 ]] || die "Ceph is not installed and we are not root; run as root:
  apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common"
    log "installing ceph-mon ceph-osd radosgw ceph-common (about 60 MB) ..."
    local pkgs=(ceph-mon ceph-osd radosgw ceph-common)
    # apt-get update only when the package lists do not know the packages yet (a fresh
    # machine has empty lists): it is the slow, network-hungry part.
    if ! apt-cache show ceph-mon >/dev/null 2>&1; then
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${pkgs[@]}" >&2; then
        # Stale lists (404 on a superseded .deb): refresh once and retry.
        apt-get update -qq >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# Cluster creation
# ---------------------------------------------------------------------------------------------
write_conf() {
    local fsid="$1" store_conf nodelay_opt=""
    [[ "$TCP_NODELAY" == 1 ]] && nodelay_opt=" tcp_nodelay=1"
    local store_bytes=$((STORE_GIB * 1024 * 1024 * 1024))
    if [[ "$STORE" == bluestore ]]; then
        # A sparse file in the state dir: it takes disk space only for what is written, and
        # keeps the objects across restarts (RGW_KEEP=1).
        store_conf="osd objectstore = bluestore
bluestore block path = $STATE_DIR/osd/osd.0.block
bluestore block create = true
bluestore block size = $store_bytes
bluestore fsck on mount = false
# The OSD would otherwise size its caches for a 4 GiB memory budget.
osd memory target = 1073741824"
    else
        # memstore keeps objects in the OSD's RAM: fast and nothing to clean up. The device
        # size only sets what the OSD reports as capacity (and so when it counts as full).
        store_conf="osd objectstore = memstore
memstore device bytes = $store_bytes"
    fi
    cat >"$CONF" <<EOF
# Generated by scripts/ceph-rgw.sh — a throw-away single-node cluster. Do not edit.
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:$HOST:$MON_PORT,v1:$HOST:$MON_PORT_V1]
# Everything lives under the state dir, nothing in /etc/ceph, /var/lib/ceph or /var/run/ceph.
keyring = $STATE_DIR/keyring
run dir = $STATE_DIR/run
admin socket = $STATE_DIR/run/\$cluster-\$name.asok
log file = $LOG_DIR/\$name.log
crash dir = $STATE_DIR/crash
mon data = $STATE_DIR/mon/\$name
osd data = $STATE_DIR/osd/\$name
log to stderr = false
err to stderr = true

# Loopback only.
public addr = $HOST
cluster addr = $HOST
public network = $HOST/32
ms bind ipv6 = false
ms bind port min = $OSD_PORT_MIN
ms bind port max = $OSD_PORT_MAX
# A failed bind is retried 3 times 5 s apart by default; fail fast instead.
ms bind retry count = 1
ms bind retry delay = 1

auth cluster required = cephx
auth service required = cephx
auth client required = cephx

# One OSD: one replica, CRUSH failure domain "osd", a non-zero weight so PGs map to it,
# and few PGs per pool.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
osd crush initial weight = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon warn on pool no redundancy = false
# Every mon command otherwise waits about 1 s for paxos; this cuts pool creation from
# about 14 s to under 1 s.
paxos propose interval = 0.05
paxos min wait = 0.01
# A nearly full disk must not make the mon shut itself down in a test run.
mon data avail crit = 1
mon data avail warn = 2

$store_conf

[$RGW_NAME]
# tcp_nodelay: beast writes a response's headers and body separately. Without tcp_nodelay
# (beast's default, so presumably a stock production gateway too), Nagle's algorithm holds
# any body under one segment (< 64 KiB on loopback) until the client ACKs the headers, and a
# client with delayed ACKs waits ~40 ms: GET of small objects, listings, copies and error
# replies all take ~44 ms. We keep the stock behaviour by default so that tests see what
# clients of a real gateway see (the client must send quick ACKs: TCP_QUICKACK);
# RGW_TCP_NODELAY=1 removes the stall on the server side.
rgw frontends = beast endpoint=$HOST:$RGW_PORT$nodelay_opt
rgw dns name = $HOST
rgw enable usage log = false
rgw enable ops log = false
# Reclaim deleted objects after about a minute, not hours: memstore keeps them in RAM.
rgw gc obj min wait = 60
rgw gc processor period = 60
EOF
}

create_keyring() {
    local k="$STATE_DIR/keyring"
    # One keyring for every entity. `ceph-mon --mkfs` imports all of it into the auth
    # database, so the OSD and radosgw keys exist before either starts.
    ceph-authtool --create-keyring "$k" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n osd.0 --cap mon 'allow profile osd' \
        --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n "$RGW_NAME" --cap mon 'allow rw' --cap osd 'allow rwx' \
        --cap mgr 'allow rw' >/dev/null
    chmod 600 "$k"
}

# `ceph` with a bounded wait: with no mon reachable it would retry forever.
cephc() { timeout "$TIMEOUT" ceph --connect-timeout 10 "$@"; }

create_cluster() {
    local fsid osd_uuid
    fsid="$(cat /proc/sys/kernel/random/uuid)"
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
    mkdir -p "$STATE_DIR"/{run,crash,mon,osd/osd.0} "$PID_DIR" "$LOG_DIR"
    write_conf "$fsid"
    create_keyring

    # mon: monmap with one mon listening on msgr2 and msgr1 at fixed loopback ports.
    monmaptool --create --fsid "$fsid" --addv a "[v2:$HOST:$MON_PORT,v1:$HOST:$MON_PORT_V1]" \
        "$STATE_DIR/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$STATE_DIR/monmap" --keyring "$STATE_DIR/keyring" -c "$CONF" \
        >>"$LOG_DIR/mon.out" 2>&1 || daemon_failed mon "mkfs failed"
    spawn mon ceph-mon -f -i a -c "$CONF"
    wait_for "the mon to answer" mon cephc mon stat

    # OSD: register it (gets id 0; its key is already in the auth db), create its store.
    local id
    id="$(cephc osd new "$osd_uuid" 2>>"$LOG_DIR/osd.out")" || daemon_failed mon "'osd new' failed"
    [[ "$id" == 0 ]] || die "unexpected OSD id '$id'"
    ceph-osd --mkfs -i 0 --osd-uuid "$osd_uuid" -c "$CONF" >>"$LOG_DIR/osd.out" 2>&1 ||
        daemon_failed osd "mkfs failed"
    spawn osd ceph-osd -f -i 0 -c "$CONF"

    # RGW pools up front: radosgw would create them lazily on first use, which makes the
    # first writes crawl (about 25 MiB/s) while PGs are created under load. One `ceph`
    # process reads all commands from stdin (each `ceph` start costs ~0.3 s of Python).
    local pools=(.rgw.root default.rgw.control default.rgw.meta default.rgw.log
        default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)
    local cmds="" p
    for p in "${pools[@]}"; do
        cmds+="osd pool create $p 8 8"$'\n'"osd pool application enable $p rgw"$'\n'
    done
    printf '%s' "$cmds" | cephc >>"$LOG_DIR/pools.out" 2>&1 ||
        daemon_failed mon "pool creation failed (see $LOG_DIR/pools.out)"

    # (No wait for "PGs active": PG states are reported to a mgr, and there is none. The
    # OSD being up is enough; radosgw-admin below blocks until its PGs serve I/O.)
    wait_for "the OSD to be up" osd osd_up

    # The S3 user with fixed keys. radosgw-admin talks to RADOS directly, so this runs before
    # radosgw starts (and it creates the default realm/zone, not racing radosgw for it).
    timeout "$TIMEOUT" radosgw-admin -c "$CONF" user create --uid="$RGW_USER" \
        --display-name="qarnotfs test user" --access-key="$ACCESS_KEY" \
        --secret-key="$SECRET_KEY" >>"$LOG_DIR/radosgw-admin.out" 2>&1 ||
        die "radosgw-admin user create failed; see $LOG_DIR/radosgw-admin.out"
    touch "$STATE_DIR/cluster.created"
}

osd_up() { cephc osd dump 2>/dev/null | grep -q '^osd\.0 up '; }

# Restart the daemons of an existing (kept, bluestore) cluster.
restart_cluster() {
    mkdir -p "$PID_DIR" "$LOG_DIR" "$STATE_DIR/run"
    spawn mon ceph-mon -f -i a -c "$CONF"
    wait_for "the mon to answer" mon cephc mon stat
    spawn osd ceph-osd -f -i 0 -c "$CONF"
    wait_for "the OSD to be up" osd osd_up
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

# Two test sessions may call `start` (or `start` and `stop`) on the same state dir at once;
# serialise them. The lock file sits beside the state dir, which `start` wipes.
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>"$STATE_DIR.lock"
    flock -w 900 9 || die "another ceph-rgw.sh holds $STATE_DIR.lock for more than 900 s"
}

cmd_start() {
    local t0
    t0="$(now_ms)"
    case "$STORE" in memstore | bluestore) ;; *) die "RGW_STORE must be memstore or bluestore" ;; esac

    # Already running (per the recorded PIDs) and answering signed requests: nothing to do.
    if [[ -f "$SETTINGS" ]] && (load_settings && all_running && probe 5); then
        load_settings
        log "already running at http://$HOST:$RGW_PORT (state dir $STATE_DIR)"
        print_env
        return 0
    fi
    # Half-running leftovers (a crashed daemon, an interrupted start): stop what is ours.
    if [[ -f "$SETTINGS" ]] && any_running; then
        log "found a partly running cluster in $STATE_DIR; stopping it first"
        stop_all
    fi

    local reuse=0
    if [[ "$KEEP" == 1 ]]; then
        if [[ "$STORE" != bluestore ]]; then
            log "RGW_KEEP=1 only applies to RGW_STORE=bluestore; starting a fresh memstore cluster"
        elif [[ -f "$STATE_DIR/cluster.created" && "$(saved_setting STORE)" == bluestore ]]; then
            reuse=1
            # The mon's address is baked into its store: keep the recorded ports and keys.
            load_settings
            log "RGW_KEEP=1: reusing the bluestore cluster in $STATE_DIR"
        fi
    fi

    # Every port must be free before starting anything, or the readiness probe could be
    # answered by someone else's server (and a daemon would fail with a vaguer error).
    local p
    for p in "$RGW_PORT" "$MON_PORT" "$MON_PORT_V1"; do
        port_busy "$p" && die "port $HOST:$p is already in use (RGW_PORT=$RGW_PORT," \
            "RGW_MON_PORT=$MON_PORT uses $MON_PORT and $MON_PORT_V1); pick others or stop" \
            "what listens there (ss -ltnp 'sport = :$p')"
    done
    local busy=0
    for ((p = OSD_PORT_MIN; p <= OSD_PORT_MAX; p++)); do port_busy "$p" && busy=$((busy + 1)); done
    # The OSD needs 8 ports (public/cluster/heartbeat front/back, msgr2 + msgr1).
    (((OSD_PORT_MAX - OSD_PORT_MIN + 1 - busy) >= 8)) ||
        die "fewer than 8 free ports in RGW_OSD_PORT_MIN..MAX ($OSD_PORT_MIN-$OSD_PORT_MAX)"

    ensure_packages

    if ((reuse)); then
        restart_cluster
    else
        # Fresh cluster: wipe the state dir. Refuse to wipe something that is not ours.
        if [[ -e "$STATE_DIR" && ! -f "$SETTINGS" && -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ]]; then
            die "$STATE_DIR exists, is not empty and was not made by this script; remove it" \
                "or set QARNOTFS_RGW_DIR"
        fi
        rm -rf "$STATE_DIR"
        mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR"
        cat >"$SETTINGS" <<EOF
RGW_PORT=$RGW_PORT
MON_PORT=$MON_PORT
OSD_PORT_MIN=$OSD_PORT_MIN
OSD_PORT_MAX=$OSD_PORT_MAX
ACCESS_KEY=$ACCESS_KEY
SECRET_KEY=$SECRET_KEY
STORE=$STORE
EOF
        create_cluster
    fi

    spawn radosgw radosgw -f -c "$CONF" -n "$RGW_NAME"
    local rc=0
    PROBE_PIDS="$(recorded_pid mon) $(recorded_pid osd) $(recorded_pid radosgw)" \
        probe "$TIMEOUT" 2>"$LOG_DIR/probe.out" || rc=$?
    if ((rc != 0)); then
        local d
        for d in radosgw osd mon; do
            daemon_running "$d" || daemon_failed "$d" "exited during startup"
        done
        daemon_failed radosgw "did not answer signed S3 requests within ${TIMEOUT}s" \
            "($(tail -n 1 "$LOG_DIR/probe.out"))"
    fi

    local t1
    t1="$(now_ms)"
    log "RGW ready at http://$HOST:$RGW_PORT in $(((t1 - t0) / 1000)).$(printf '%03d' $(((t1 - t0) % 1000)))s" \
        "(store $STORE, state dir $STATE_DIR; pids mon=$(recorded_pid mon)" \
        "osd=$(recorded_pid osd) radosgw=$(recorded_pid radosgw))"
    print_env
}

cmd_stop() {
    if [[ ! -d "$PID_DIR" ]]; then
        log "not running (no state in $STATE_DIR)"
        return 0
    fi
    if ! any_running; then
        rm -f "$PID_DIR"/*.pid
        log "not running"
        return 0
    fi
    stop_all
}

cmd_env() {
    load_settings 2>/dev/null || die "no cluster in $STATE_DIR; run: $0 start"
    all_running || die "the cluster in $STATE_DIR is not running; run: $0 start"
    port_busy "$RGW_PORT" || die "radosgw is not listening on $HOST:$RGW_PORT"
    print_env
}

cmd_status() {
    if ! load_settings 2>/dev/null; then
        echo "stopped (no cluster in $STATE_DIR)"
        return 1
    fi
    local d state=0
    for d in mon osd radosgw; do
        if daemon_running "$d"; then
            echo "$d: running (pid $(recorded_pid "$d"))"
        else
            echo "$d: not running"
            state=1
        fi
    done
    if ((state == 0)) && probe 5 2>/dev/null; then
        echo "running: http://$HOST:$RGW_PORT answers signed S3 requests (store $STORE," \
            "state dir $STATE_DIR)"
        return 0
    fi
    echo "not running (or not healthy); logs in $LOG_DIR"
    return 1
}

case "${1:-}" in
    start) take_lock && cmd_start ;;
    stop) take_lock && cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|env|status" >&2
        exit 2
        ;;
esac
