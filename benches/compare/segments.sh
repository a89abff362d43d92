#!/usr/bin/env bash
# TCP segments per connection cycle (connect, WebSocket handshake, one 64 B message, close),
# counted by the kernel (nstat's TcpOutSegs and TcpExtTCPPureAcks, all sockets of the machine:
# client, gateway and echo backend together), direct and through each gateway. On loopback
# the receiver's work for a segment runs in the sender's context, so every segment a gateway
# saves is CPU it does not spend; docs/benchmarks.md, "Handshakes: segments".
#
#   bash benches/compare/segments.sh [RINGWAY...]   # default target/release/ringway
#   C=32 SECS=3 bash benches/compare/segments.sh    # concurrency, seconds per count
#
# The counters are the whole machine's: run it on a machine with no other TCP traffic.
# Needs: cargo build --release --workspace; HAProxy and nginx are counted when installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
LG=target/release/loadgen
C=${C:-8}
SECS=${SECS:-2}
[ $# -gt 0 ] || set -- target/release/ringway
command -v nstat >/dev/null || { echo "needs nstat (iproute2)" >&2; exit 2; }
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
be=$(free_port)
"$LG" backend --listen "127.0.0.1:$be" --threads 1 >/dev/null 2>&1 & pids+=($!)

targets=("direct=$be")
for bin in "$@"; do
    for io in uring epoll; do
        p=$(free_port)
        "$bin" run --admin '' --io $io --listen "127.0.0.1:$p" --backend "127.0.0.1:$be" \
            --mode http >/dev/null 2>&1 & pids+=($!)
        targets+=("$(basename "$bin")-$io=$p")
    done
done
if command -v haproxy >/dev/null; then
    p=$(free_port)
    printf 'global\n    nbthread 2\n    maxconn 4000\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    timeout tunnel 1h\n    no option http-server-close\n    no log\nfrontend fe\n    bind 127.0.0.1:%s\n    default_backend be\nbackend be\n    server b0 127.0.0.1:%s\n' \
        "$p" "$be" > "$dir/haproxy.cfg"
    haproxy -f "$dir/haproxy.cfg" >/dev/null 2>&1 & pids+=($!)
    targets+=("haproxy=$p")
fi
if command -v nginx >/dev/null; then
    p=$(free_port)
    mkdir -p "$dir/nginx"
    printf 'worker_processes auto;\npid %s/nginx.pid;\nerror_log /dev/null;\nevents { worker_connections 4096; }\nhttp {\n  access_log off;\n  client_body_temp_path %s/nginx;\n  upstream be { server 127.0.0.1:%s; }\n  server {\n    listen 127.0.0.1:%s;\n    location / {\n      proxy_pass http://be;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection "upgrade";\n      proxy_read_timeout 1h;\n    }\n  }\n}\n' \
        "$dir" "$dir/nginx" "$be" "$p" > "$dir/nginx.conf"
    nginx -c "$dir/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 & pids+=($!)
    targets+=("nginx=$p")
fi
sleep 1

printf '%-22s %10s %12s %10s\n' target cycles "segments" "pure ACKs"
for t in "${targets[@]}"; do
    name=${t%%=*} port=${t##*=}
    nstat -n >/dev/null
    n=$("$LG" rate --target "127.0.0.1:$port" --concurrency "$C" --duration "${SECS}s" \
        --threads 1 2>&1 | grep -o 'n=[0-9]*' | tail -1 | cut -d= -f2)
    nstat -z TcpOutSegs TcpExtTCPPureAcks 2>/dev/null | awk -v n="${n:-0}" -v t="$name" '
        NR > 1 { v[$1] = $2 }
        END {
            if (n == 0) { printf "%-22s %10s\n", t, "no cycles"; exit }
            printf "%-22s %10d %12.2f %10.2f\n", t, n, v["TcpOutSegs"] / n, v["TcpExtTCPPureAcks"] / n
        }'
done
