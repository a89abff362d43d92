#!/bin/sh
# The picture of a scale-out (docs/benchmarks.md, "Rebalancing after a scale-out"):
# 300 WebSockets through ringway over pod-a and pod-b; pod-c is added by a reload at 8 s and
# `rebalance = { max_per_second = 20, tolerance = 0.10 }` moves tunnels onto it.
#
#   sh benches/rebalance/run.sh BALANCE OUT.svg [TITLE] [BIN_DIR]
#   sh benches/rebalance/run.sh hash:header:X-Device docs/img/rebalance-hash.svg
#   sh benches/rebalance/run.sh least-conn docs/img/rebalance-least-conn.svg
#
# Loopback ports 18080 (listener), 19900 (admin), 19001-19003 (echo backends) must be free.
# Every process it starts is stopped at the end; the run is bounded (30 s, timeout 60 s).
set -e
BAL="$1"; OUT="$(realpath "$2")"; TITLE="${3:-$1, 300 WebSockets: pod-c joins at 8 s}"
BIN="$(realpath "${4:-target/debug}")"
DIR="$(mktemp -d)"; cd "$DIR"
PIDS=""
stop() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap stop EXIT
for p in a:19001 b:19002 c:19003; do
  "$BIN/loadgen" backend --listen "127.0.0.1:${p#*:}" --name "pod-${p%%:*}" 2>/dev/null &
  PIDS="$PIDS $!"
done
cfg() {
cat <<C
workers = 2
admin = "127.0.0.1:19900"
[log]
level = "warn"
[[listener]]
name = "web"
bind = "127.0.0.1:18080"
upstream = "chat"
[[upstream]]
name = "chat"
balance = "$BAL"
rebalance = { max_per_second = 20, tolerance = 0.10 }
backends = [$1]
C
}
A='{ name = "pod-a", address = "127.0.0.1:19001" }'
B='{ name = "pod-b", address = "127.0.0.1:19002" }'
C='{ name = "pod-c", address = "127.0.0.1:19003" }'
cfg "$A, $B" > gw.toml
cfg "$A, $B, $C" > gw3.toml
"$BIN/ringway" run --config gw.toml 2>gw.log &
PIDS="$PIDS $!"
sleep 1
timeout 60 "$BIN/loadgen" rebalance --target 127.0.0.1:18080 --conns 300 --duration 30s \
  --trigger-after 8s \
  --trigger "cp gw3.toml gw.toml && curl -s -XPOST http://127.0.0.1:19900/reload >/dev/null" \
  --plot "$OUT" --title "$TITLE"
curl -s http://127.0.0.1:19900/metrics | grep rebalance_closed_total
