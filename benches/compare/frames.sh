#!/usr/bin/env bash
# WebSocket frame tracking on vs off (docs/benchmarks.md "WebSocket frame tracking"): the same
# ringway binary and config but for the upstream's `websocket_frames`, pingpong over WebSocket,
# on and off interleaved in one `loadgen compare` run per repetition (so a busy machine hits
# both alike), gateway CPU µs per message.
#
#   bash benches/compare/frames.sh [OUT=target/compare-frames] [RUNS=3] [DURATION=5s]
#   bash benches/compare/frames.sh gateway LISTEN BACKENDS true|false   # (the gateway command)
set -euo pipefail
cd "$(dirname "$0")/../.."
RW=target/release/ringway

if [ "${1:-}" = gateway ]; then
    listen=$2 backends=$3 frames=$4
    cfg=$(mktemp /tmp/ringway-frames-XXXXXX.toml)
    list=$(echo "$backends" | tr ',' '\n' | sed 's/.*/{ address = "&" }/' | paste -sd, -)
    cat > "$cfg" <<TOML
admin = ""
workers = 0
[log]
access = false
[[listener]]
name = "main"
bind = "$listen"
mode = "http"
upstream = "echo"
[[upstream]]
name = "echo"
websocket_frames = $frames
backends = [$list]
TOML
    exec "$RW" run --config "$cfg"
fi

OUT=${1:-target/compare-frames}
RUNS=${2:-3}
DURATION=${3:-5s}
mkdir -p "$OUT"
on=(--gateway-cmd "bash benches/compare/frames.sh gateway {LISTEN} {BACKENDS} true" --name frames-on)
off=(--gateway-cmd "bash benches/compare/frames.sh gateway {LISTEN} {BACKENDS} false" --name frames-off)
for i in $(seq 1 "$RUNS"); do
    for size in 64 1024; do
        echo "== size $size run $i/$RUNS" >&2
        # Alternate which goes first, so a drift in the machine's load hits both alike.
        if [ $((i % 2)) = 1 ]; then order=("${on[@]}" "${off[@]}"); else order=("${off[@]}" "${on[@]}"); fi
        target/release/loadgen compare --scenario pingpong --proto ws --conns 100 --size "$size" \
            --duration "$DURATION" "${order[@]}" \
            --json > "$OUT/ws-pingpong-$size.$i.json"
    done
done
python3 benches/compare/summarize.py "$OUT"
