#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: `loadgen compare` for each scenario of issue 3, direct vs
# ringway (io_uring and epoll) vs HAProxy vs nginx, RUNS times each, JSON per run into OUT.
# Then `python3 benches/compare/summarize.py OUT` prints the tables (medians and spread).
#
#   bash benches/compare/run.sh [OUT=target/compare] [RUNS=3] [DURATION=5s]
#
# Needs: cargo build --release --workspace; apt-get install haproxy nginx (peers are skipped,
# and say so, when missing). Every gateway gets the same cores as the load generator: on a
# 2-core machine they compete, so CPU per message is the comparable figure, not msgs/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/compare}
RUNS=${2:-3}
DURATION=${3:-5s}
mkdir -p "$OUT"
RW=target/release/ringway
LG=target/release/loadgen
[ -x "$RW" ] && [ -x "$LG" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }

# One worker per core for every gateway (ringway, haproxy nbthread, nginx worker_processes).
gateways=(
    --gateway-cmd "$RW run --admin '' --io uring --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-uring
    --gateway-cmd "$RW run --admin '' --io epoll --listen {LISTEN} --backend {BACKENDS} --mode MODE" --name ringway-epoll
    --peer haproxy --peer nginx
)

run() { # name, mode, scenario args...
    local name=$1 mode=$2; shift 2
    local args=()
    for a in "${gateways[@]}"; do args+=("${a//MODE/$mode}"); done
    for i in $(seq 1 "$RUNS"); do
        echo "== $name run $i/$RUNS" >&2
        "$LG" compare "$@" "${args[@]}" --json > "$OUT/$name.$i.json"
    done
}

run pingpong-100x64 http --scenario pingpong --conns 100 --size 64 --duration "$DURATION"
run pingpong-1000x1k http --scenario pingpong --conns 1000 --size 1024 --duration "$DURATION"
run rate-c32 http --scenario rate --concurrency 32 --duration "$DURATION"
run idle-9000 http --scenario idle --conns 9000 --hold "$DURATION"
run bulk-8x64k http --scenario bulk --conns 8 --frame 65536 --duration "$DURATION"
run tcp-pingpong-100x64 tcp --scenario pingpong --proto tcp --conns 100 --size 64 --duration "$DURATION"
python3 benches/compare/summarize.py "$OUT"
