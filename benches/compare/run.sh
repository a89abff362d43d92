#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: `loadgen compare` for each scenario of issues 3 and 14,
# direct vs ringway (io_uring and epoll) vs HAProxy vs HAProxy with splice-auto vs nginx,
# RUNS times each, JSON per run into OUT; then issue 13's TLS section (the tls-* scenarios:
# every gateway terminates TLS with one certificate made for the run; HAProxy `bind ... ssl
# crt`, nginx `listen ... ssl`, ringway `--tls-cert/--tls-key`, skipped with the reason
# while the ringway binary has no --tls-cert). Then
# `python3 benches/compare/summarize.py OUT --goals` prints the tables (medians and spread).
#
#   bash benches/compare/run.sh [OUT=target/compare] [RUNS=3] [DURATION=5s]
#   ONLY="rate-c32 storm-5000" bash benches/compare/run.sh ...   # a subset of scenarios
#   ONLY="$(bash benches/compare/run.sh --list-tls)" bash benches/compare/run.sh ...  # TLS only
#   RW=../other/target/release/ringway bash benches/compare/run.sh ...  # another ringway build
#
# Needs: cargo build --release --workspace (ringway, loadgen, ring-relay). Installs haproxy,
# nginx and nginx's stream module with apt-get when they are missing and it can (root); peers
# that are still missing are skipped, and the JSON says so. Every gateway gets the same cores
# as the load generator: on a 2-core machine they compete, so CPU per message is the
# comparable figure, not msgs/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The TLS section's scenarios, with the plaintext runs its table sets beside them.
if [ "${1:-}" = --list-tls ]; then
    echo "tls-rate-full-c8 tls-rate-resumed-c8 tls-bulk-8x64k bulk-8x64k tls-idle-2000 idle-2000"
    exit 0
fi
OUT=${1:-target/compare}
RUNS=${2:-3}
DURATION=${3:-5s}
ONLY=${ONLY:-}
mkdir -p "$OUT"
# RW=path/to/ringway measures another build (for example a branch's) in ringway's columns.
RW=${RW:-target/release/ringway}
LG=target/release/loadgen
[ -x "$RW" ] && [ -x "$LG" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }

if ! [ -x /usr/sbin/haproxy ] || ! [ -x /usr/sbin/nginx ] \
    || ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing haproxy nginx libnginx-mod-stream" >&2
        apt-get install -y haproxy nginx libnginx-mod-stream >&2 \
            || echo "apt-get failed: missing peers will be skipped" >&2
    else
        echo "haproxy/nginx missing and not root: missing peers will be skipped" >&2
    fi
fi

# One worker per core for every gateway (ringway, haproxy nbthread, nginx worker_processes).
gateways=(
    --gateway-cmd "$RW run --admin '' --io uring --workers {WORKERS} --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-uring
    --gateway-cmd "$RW run --admin '' --io epoll --workers {WORKERS} --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-epoll
    --peer haproxy --peer haproxy-splice --peer nginx
)
# The *-t1 scenarios: every gateway on one thread (--gateway-threads 1), what one core's worker
# costs when a second one is not competing with the load generator for the same two cores.
# Every tcp-* scenario also measures the floor: the reference relay of issue 14
# (benches/relay), the least a ring-native proxy does per message, on as many threads.
RELAY=target/release/ring-relay
per_thread=(
    --gateway-threads 1
    --gateway-cmd "$RW run --admin '' --io uring --workers {WORKERS} --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-uring
    --gateway-cmd "$RW run --admin '' --io epoll --workers {WORKERS} --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-epoll
    --peer haproxy --peer nginx
)
if [ -x "$RELAY" ]; then
    relay=(--gateway-cmd "$RELAY {LISTEN} {BACKENDS} {WORKERS}" --name relay-floor)
else
    relay=()
    echo "no $RELAY (cargo build --release --workspace): the floor is not measured" >&2
fi

# TLS: no splice peer (HAProxy cannot splice what it decrypts); ringway with its quick form.
tls_gateways=(
    --gateway-cmd "$RW run --admin '' --io uring --listen {LISTEN} --backend {BACKENDS} --mode MODE --tls-cert {CERT} --tls-key {KEY}" --name ringway-uring
    --gateway-cmd "$RW run --admin '' --io epoll --listen {LISTEN} --backend {BACKENDS} --mode MODE --tls-cert {CERT} --tls-key {KEY}" --name ringway-epoll
    --peer haproxy --peer nginx
)

run() { # name, mode, scenario args...
    local name=$1 mode=$2; shift 2
    if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $name "* ]]; then return; fi
    local args=() set=("${gateways[@]}")
    if [[ $name == tls-* ]]; then set=("${tls_gateways[@]}"); fi
    if [[ $name == *-t1 ]]; then set=("${per_thread[@]}"); fi
    if [[ $name == tcp-* ]]; then set+=("${relay[@]}"); fi
    for a in "${set[@]}"; do args+=("${a//MODE/$mode}"); done
    for i in $(seq 1 "$RUNS"); do
        echo "== $name run $i/$RUNS" >&2
        "$LG" compare "$@" "${args[@]}" --json > "$OUT/$name.$i.json"
    done
}

run rate-c32 http --scenario rate --concurrency 32 --duration "$DURATION"
# 5,000 clients at once: the gateway holds 10,000 fds, loadgen (clients + echo backends) as many.
run storm-5000 http --scenario storm --conns 5000 --duration 20s --hold 1s
run pingpong-100x64 http --scenario pingpong --conns 100 --size 64 --duration "$DURATION"
run pingpong-1000x1k http --scenario pingpong --conns 1000 --size 1024 --duration "$DURATION"
run pingpong-r20k-100x64 http --scenario pingpong --conns 100 --size 64 --rate 20000 --duration "$DURATION"
run pingpong-r20k-100x1k http --scenario pingpong --conns 100 --size 1024 --rate 20000 --duration "$DURATION"
# The same at a quarter of the rate: a shared machine cannot always carry 20,000/s unsaturated.
run pingpong-r5k-100x64 http --scenario pingpong --conns 100 --size 64 --rate 5000 --duration "$DURATION"
run idle-9000 http --scenario idle --conns 9000 --hold "$DURATION"
run bulk-8x64k http --scenario bulk --conns 8 --frame 65536 --duration "$DURATION"
run tcp-pingpong-100x64 tcp --scenario pingpong --proto tcp --conns 100 --size 64 --duration "$DURATION"
# Per thread (issue 14): one thread per gateway; raw TCP beside the relay floor.
run tcp-pingpong-100x64-t1 tcp --scenario pingpong --proto tcp --conns 100 --size 64 --duration "$DURATION"
run tcp-pingpong-100x1k-t1 tcp --scenario pingpong --proto tcp --conns 100 --size 1024 --duration "$DURATION"
run pingpong-100x64-t1 http --scenario pingpong --conns 100 --size 64 --duration "$DURATION"
run pingpong-1000x1k-t1 http --scenario pingpong --conns 1000 --size 1024 --duration "$DURATION"
run pingpong-r20k-100x64-t1 http --scenario pingpong --conns 100 --size 64 --rate 20000 --duration "$DURATION"
run rate-c32-t1 http --scenario rate --concurrency 32 --duration "$DURATION"
run bulk-8x64k-t1 http --scenario bulk --conns 8 --frame 65536 --duration "$DURATION"
# Issue 13, TLS. rate: CPU per full handshake (--no-resume) and per resumed one (the first
# handshake of each client loop is full, the rest resume; the JSON counts both). bulk: CPU per
# MB over TLS. idle: RSS per idle TLS WebSocket beside the same count in plaintext (2,000:
# short runs on a shared machine).
run tls-rate-full-c8 http --scenario rate --tls --no-resume --concurrency 8 --duration "$DURATION"
run tls-rate-resumed-c8 http --scenario rate --tls --concurrency 8 --duration "$DURATION"
run tls-bulk-8x64k http --scenario bulk --tls --conns 8 --frame 65536 --duration "$DURATION"
run idle-2000 http --scenario idle --conns 2000 --hold "$DURATION"
run tls-idle-2000 http --scenario idle --tls --conns 2000 --hold "$DURATION"
python3 benches/compare/summarize.py "$OUT" --goals
