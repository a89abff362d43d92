#!/usr/bin/env bash
# Issue 14 before/after: the same `loadgen compare` scenarios, direct vs ringway before (a
# release binary of the tokio-uring backend, BEFORE=path) vs after on io_uring and epoll,
# RUNS times each, JSON per run into OUT; then summarize.py prints medians and spread.
#
#   [BEFORE=path/to/old/ringway] [PEERS="haproxy nginx"] [SCEN="rate pp64 ..."] \
#       bash benches/compare/ring.sh [OUT=target/ring] [RUNS=3] [DURATION=4s]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/ring}
RUNS=${2:-3}
DURATION=${3:-4s}
mkdir -p "$OUT"
RW=target/release/ringway
LG=target/release/loadgen
[ -x "$RW" ] && [ -x "$LG" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
gateways=()
if [ -n "${BEFORE:-}" ]; then
    gateways+=(--gateway-cmd "$BEFORE run --admin '' --io uring --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name before-uring)
fi
gateways+=(
    --gateway-cmd "$RW run --admin '' --io uring --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name uring
    --gateway-cmd "$RW run --admin '' --io epoll --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name epoll
)
for p in ${PEERS:-}; do gateways+=(--peer "$p"); done
run() { # name, mode, scenario args...
    local name=$1 mode=$2; shift 2
    local args=()
    for a in "${gateways[@]}"; do args+=("${a//MODE/$mode}"); done
    for i in $(seq 1 "$RUNS"); do
        echo "== $name run $i/$RUNS" >&2
        timeout 300 "$LG" compare "$@" "${args[@]}" --json > "$OUT/$name.$i.json" || echo "run failed" >&2
    done
}
SCEN=${SCEN:-"rate pp64 pp1k open bulk idle tcp"}
for s in $SCEN; do case $s in
    rate) run rate-c32 http --scenario rate --concurrency 32 --duration "$DURATION" ;;
    pp64) run pingpong-100x64 http --scenario pingpong --conns 100 --size 64 --duration "$DURATION" ;;
    pp1k) run pingpong-100x1k http --scenario pingpong --conns 100 --size 1024 --duration "$DURATION" ;;
    open) run pingpong-open20k-100x64 http --scenario pingpong --conns 100 --size 64 --rate 20000 --duration "$DURATION" ;;
    bulk) run bulk-8x64k http --scenario bulk --conns 8 --frame 65536 --duration "$DURATION" ;;
    idle) run idle-5000 http --scenario idle --conns 5000 --hold "$DURATION" ;;
    tcp) run tcp-pingpong-100x64 tcp --scenario pingpong --proto tcp --conns 100 --size 64 --duration "$DURATION" ;;
esac; done
python3 benches/compare/summarize.py "$OUT"
