#!/usr/bin/env bash
# Copy vs splice vs adaptive, per message size (docs/benchmarks.md "The tunnel strategy"):
# the same ringway binary with RINGWAY_TUNNEL forced, pingpong over raw TCP (so only the
# tunnel is measured), gateway CPU µs per message.
#
#   bash benches/compare/tunnel.sh [OUT=target/compare-tunnel] [RUNS=3] [DURATION=4s]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/compare-tunnel}
RUNS=${2:-3}
DURATION=${3:-4s}
mkdir -p "$OUT"
RW=target/release/ringway
for size in 64 1024 16384 65536; do
    for i in $(seq 1 "$RUNS"); do
        echo "== size $size run $i/$RUNS" >&2
        target/release/loadgen compare --scenario pingpong --proto tcp --conns 16 --size "$size" \
            --duration "$DURATION" \
            --gateway-cmd "RINGWAY_TUNNEL=copy $RW run --admin '' --mode tcp --listen {LISTEN} --backend {BACKENDS}" --name copy \
            --gateway-cmd "RINGWAY_TUNNEL=splice $RW run --admin '' --mode tcp --listen {LISTEN} --backend {BACKENDS}" --name splice \
            --gateway-cmd "$RW run --admin '' --mode tcp --listen {LISTEN} --backend {BACKENDS}" --name adaptive \
            --json > "$OUT/tcp-pingpong-$size.$i.json"
    done
done
python3 benches/compare/summarize.py "$OUT"
