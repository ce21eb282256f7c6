#!/usr/bin/env bash
# Private Pushpin instance used as a comparison peer in Herald's benchmarks.
#
#   bench/peers/pushpin.sh start|stop|status|restart
#
# Subscribe (SSE):  GET  http://127.0.0.1:${PUSHPIN_PORT}/stream/{channel}
# Publish:          POST http://127.0.0.1:${PUSHPIN_PUBLISH_PORT}/publish/
#                   {"items":[{"channel":"CH","formats":{"http-stream":{"content":"event: message\ndata: X\n\n"}}}]}
#
# Processes started (each in its own session / process group, all with PID files):
#   python3 pushpin_origin.py  GRIP origin on 127.0.0.1:${PUSHPIN_ORIGIN_PORT}   (origin.pid)
#   zurl                       outbound HTTP client used by pushpin-proxy         (zurl.pid)
#   pushpin (runner)           starts and supervises:                              (pushpin.pid)
#     condure                  holds ALL client sockets, listens on :${PUSHPIN_PORT}
#     pushpin-proxy            talks to the origin through zurl (no client sockets)
#     pushpin-handler          subscriptions + HTTP publish endpoint :${PUSHPIN_PUBLISH_PORT}
#   (the runner writes run/condure.pid, run/pushpin-proxy.pid, run/pushpin-handler.pid)
#
# Everything lives in ${PUSHPIN_RUN_DIR:-bench/peers/run/pushpin}; the system
# pushpin/zurl services and /etc/pushpin are never used.
#
# Environment knobs (all optional):
#   PUSHPIN_PORT           client HTTP port                 (default 7999)
#   PUSHPIN_PUBLISH_PORT   HTTP publish (control) port      (default 5561)
#   PUSHPIN_ORIGIN_PORT    origin port                      (default 8082)
#   PUSHPIN_MAXCONN        client_maxconn (condure --stream-maxconn) (default 20000)
#   PUSHPIN_LOG_LEVEL      0=error 1=warn 2=info(per request) 3=debug (default 1)
#   PUSHPIN_MESSAGE_RATE   handler message_rate, msgs/s     (default 1000000)
#   PUSHPIN_RUN_DIR        instance directory               (default bench/peers/run/pushpin)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PUSHPIN_PORT:-7999}"
PUBLISH_PORT="${PUSHPIN_PUBLISH_PORT:-5561}"
ORIGIN_PORT="${PUSHPIN_ORIGIN_PORT:-8082}"
MAXCONN="${PUSHPIN_MAXCONN:-20000}"
LOG_LEVEL="${PUSHPIN_LOG_LEVEL:-1}"
MESSAGE_RATE="${PUSHPIN_MESSAGE_RATE:-1000000}"
RUN_DIR="${PUSHPIN_RUN_DIR:-$HERE/run/pushpin}"
CONF_DIR="$RUN_DIR/conf"
IPC_DIR="$RUN_DIR/run"   # pushpin "rundir": ipc sockets + runner's child pid files
LOG_DIR="$RUN_DIR/log"
ORIGIN="$HERE/pushpin_origin.py"
IPC_PREFIX="hb-"

log() { echo "pushpin: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
    fi
}

ensure_installed() {
    local missing=()
    command -v pushpin >/dev/null 2>&1 || missing+=(pushpin)
    # pushpin depends on "condure | mongrel2-core"; we want condure explicitly.
    command -v condure >/dev/null 2>&1 || missing+=(condure)
    command -v zurl >/dev/null 2>&1 || missing+=(zurl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} from Debian"
        # Debian container images ship a policy-rc.d that keeps the package's
        # own pushpin/zurl services from starting; this script never uses them.
        apt_install "${missing[@]}"
    fi
    # The runner locates condure/pushpin-proxy/pushpin-handler through PATH.
    export PATH="/usr/bin:/usr/sbin:/bin:$PATH"
}

# alive PID: process exists and is not a zombie
alive() {
    local pid="$1" state
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || echo X)"
    [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# pid_from FILE PATTERN: print PID from FILE if alive and its cmdline matches PATTERN
pid_from() {
    local file="$1" pattern="$2" pid
    [ -f "$file" ] || return 1
    pid="$(tr -dc '0-9' < "$file" 2>/dev/null || true)"
    alive "$pid" || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    echo "$pid"
}

# All processes of this instance: the PID files first, then (safety net, e.g.
# after a crash left orphans) any pushpin/condure/zurl binary whose command line
# references this instance's directory. Nothing else is ever matched.
instance_pids() {
    local f pid p exe cmd
    {
        pid_from "$RUN_DIR/pushpin.pid" "$CONF_DIR/pushpin.conf" || true
        pid_from "$RUN_DIR/zurl.pid" "$CONF_DIR/zurl.conf" || true
        pid_from "$RUN_DIR/origin.pid" "pushpin_origin.py" || true
        for f in condure pushpin-proxy pushpin-handler; do
            pid_from "$IPC_DIR/$f.pid" "$f" || true
        done
        for p in /proc/[0-9]*; do
            pid="${p#/proc/}"
            exe="$(readlink "$p/exe" 2>/dev/null || true)"
            case "${exe##*/}" in
                pushpin|condure|pushpin-proxy|pushpin-handler|zurl) ;;
                *) continue ;;
            esac
            cmd="$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null || true)"
            if [[ "$cmd" == *"$RUN_DIR/"* ]] && alive "$pid"; then
                echo "$pid"
            fi
        done
    } | sort -un
}

http_up() {
    # Any HTTP answer (even 404) means the port is served.
    curl -s -o /dev/null --max-time 1 "$1" 2>/dev/null
}

write_config() {
    mkdir -p "$CONF_DIR" "$IPC_DIR" "$LOG_DIR"
    # Route every request to the local origin.
    printf '* 127.0.0.1:%s\n' "$ORIGIN_PORT" > "$CONF_DIR/routes"

    cat > "$CONF_DIR/pushpin.conf" <<EOF
# Generated by bench/peers/pushpin.sh -- edit the script, not this file.
[global]
include={libdir}/internal.conf
rundir=$IPC_DIR
ipc_prefix=$IPC_PREFIX
port_offset=0
stats_connection_ttl=120

[runner]
# zurl is started by pushpin.sh itself (own config with larger queues), so the
# runner only starts these three. condure holds every client socket.
services=condure,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:$PORT
logdir=$LOG_DIR
log_level=$LOG_LEVEL
client_buffer_size=8192
# passed to condure as --stream-maxconn
client_maxconn=$MAXCONN
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
# Debian's internal.conf points these at the system zurl service
# (/var/run/zurl); use this instance's own zurl instead.
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
updates_check=off
organization_name=

[handler]
# Internal zmq endpoints as ipc sockets in the instance dir (no extra TCP ports).
push_in_spec=ipc://{rundir}/{ipc_prefix}push-in
push_in_sub_specs=ipc://{rundir}/{ipc_prefix}push-in-sub
push_in_sub_connect=false
# HTTP publish endpoint: POST /publish/
push_in_http_addr=127.0.0.1
push_in_http_port=$PUBLISH_PORT
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=ipc://{rundir}/{ipc_prefix}command
# Default message_rate=2500/s would throttle a publish benchmark.
message_rate=$MESSAGE_RATE
message_hwm=1000000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
EOF

    cat > "$CONF_DIR/zurl.conf" <<EOF
# Generated by bench/peers/pushpin.sh
[General]
instance_id=${IPC_PREFIX}zurl
in_spec=ipc://$IPC_DIR/${IPC_PREFIX}zurl-in
in_stream_spec=ipc://$IPC_DIR/${IPC_PREFIX}zurl-in-stream
out_spec=ipc://$IPC_DIR/${IPC_PREFIX}zurl-out
in_req_spec=
defpolicy=allow
allow=
deny=
max_open_requests=$MAXCONN
buffer_size=200000
timeout=600
in_hwm=$MAXCONN
out_hwm=$MAXCONN
EOF
}

raise_nofile() {
    local hard
    hard="$(ulimit -Hn)"
    ulimit -n "$hard" 2>/dev/null || true
}

# spawn PIDFILE LOGFILE CMD...: start CMD in its own session, detached
spawn() {
    local pidfile="$1" logfile="$2"
    shift 2
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! > "$pidfile"
}

cmd_start() {
    local pids
    if pid_from "$RUN_DIR/pushpin.pid" "$CONF_DIR/pushpin.conf" >/dev/null \
        && http_up "http://127.0.0.1:$PORT/"; then
        log "already running on 127.0.0.1:$PORT (publish :$PUBLISH_PORT)"
        return 0
    fi
    pids="$(instance_pids | tr '\n' ' ')"
    if [ -n "${pids// /}" ]; then
        log "cleaning up a partial/crashed instance: $pids"
        cmd_stop
    fi
    ensure_installed
    write_config
    rm -f "$IPC_DIR"/*.pid "$IPC_DIR/$IPC_PREFIX"* 2>/dev/null || true
    raise_nofile

    spawn "$RUN_DIR/origin.pid" "$LOG_DIR/origin.log" python3 "$ORIGIN" "$ORIGIN_PORT"
    spawn "$RUN_DIR/zurl.pid" "$LOG_DIR/zurl.out" zurl --config="$CONF_DIR/zurl.conf" \
        --logfile="$LOG_DIR/zurl.log" --loglevel="$LOG_LEVEL"
    spawn "$RUN_DIR/pushpin.pid" "$LOG_DIR/runner.log" pushpin --config "$CONF_DIR/pushpin.conf"

    for _ in $(seq 1 150); do
        if http_up "http://127.0.0.1:$ORIGIN_PORT/" && http_up "http://127.0.0.1:$PORT/" \
            && http_up "http://127.0.0.1:$PUBLISH_PORT/"; then
            log "started: client 127.0.0.1:$PORT, publish 127.0.0.1:$PUBLISH_PORT, origin 127.0.0.1:$ORIGIN_PORT, maxconn=$MAXCONN, nofile=$(ulimit -n)"
            return 0
        fi
        if ! pid_from "$RUN_DIR/pushpin.pid" "$CONF_DIR/pushpin.conf" >/dev/null; then
            break
        fi
        sleep 0.1
    done
    log "failed to start; logs in $LOG_DIR"
    tail -n 20 "$LOG_DIR/runner.log" "$LOG_DIR/origin.log" >&2 || true
    cmd_stop
    exit 1
}

cmd_stop() {
    local runner pids p
    runner="$(pid_from "$RUN_DIR/pushpin.pid" "$CONF_DIR/pushpin.conf" || true)"
    # 1) ask the runner to stop its children (condure, proxy, handler)
    if [ -n "$runner" ]; then
        kill -TERM "$runner" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$runner" || break; sleep 0.1; done
    fi
    # 2) TERM whatever of ours is left (zurl, origin, orphaned children)
    pids="$(instance_pids)"
    if [ -z "$pids" ] && [ -z "$runner" ]; then
        log "not running"
    fi
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local any=0
        for p in $pids; do alive "$p" && any=1; done
        [ "$any" -eq 0 ] && break
        sleep 0.1
    done
    # 3) KILL stragglers
    for p in $pids; do
        if alive "$p"; then
            log "killing stuck pid $p"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    rm -f "$RUN_DIR"/*.pid "$IPC_DIR"/*.pid
    pids="$(instance_pids)"
    if [ -n "$pids" ]; then
        log "WARNING: still alive: $pids"
        return 1
    fi
    [ -n "$runner" ] && log "stopped"
    return 0
}

cmd_status() {
    local ok=0 name file pat pid
    for entry in "runner:$RUN_DIR/pushpin.pid:$CONF_DIR/pushpin.conf" \
                 "condure:$IPC_DIR/condure.pid:condure" \
                 "pushpin-proxy:$IPC_DIR/pushpin-proxy.pid:pushpin-proxy" \
                 "pushpin-handler:$IPC_DIR/pushpin-handler.pid:pushpin-handler" \
                 "zurl:$RUN_DIR/zurl.pid:$CONF_DIR/zurl.conf" \
                 "origin:$RUN_DIR/origin.pid:pushpin_origin.py"; do
        IFS=: read -r name file pat <<< "$entry"
        if pid="$(pid_from "$file" "$pat")"; then
            echo "pushpin: $name running (pid $pid)"
        else
            echo "pushpin: $name not running"
            ok=1
        fi
    done
    if [ "$ok" -eq 0 ] && http_up "http://127.0.0.1:$PORT/"; then
        echo "pushpin: running, client 127.0.0.1:$PORT, publish 127.0.0.1:$PUBLISH_PORT"
        return 0
    fi
    if [ -f "$LOG_DIR/condure.log" ] && grep -q "panicked" "$LOG_DIR/condure.log"; then
        echo "pushpin: condure crashed (see $LOG_DIR/condure.log)"
    fi
    echo "pushpin: stopped or incomplete"
    return 3
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
