#!/usr/bin/env bash
# tuning/sysctl.sh — kernel settings for a ringway node holding N long-lived connections.
#
#   sysctl.sh check [--connections N]            current vs recommended; exit 1 if anything differs
#   sysctl.sh apply [--connections N] [--dry-run] [--persist | --persist-file FILE]
#   sysctl.sh print [--connections N]            the sysctl.d file (to stdout)
#
# Options:
#   --connections N     client connections the node must hold (default 100000). Each proxied
#                       connection is two sockets (client side + backend side).
#   --per-conn-kb K     kernel socket-buffer budget per proxied connection, both sockets together,
#                       in KiB (default 16). Idle WebSockets queue almost nothing; raise it for
#                       chatty or bulk traffic. Sizes net.ipv4.tcp_mem. See tuning/limits.md.
#   --dry-run           apply: print what would be written, change nothing
#   --persist           apply: also write /etc/sysctl.d/90-ringway.conf (same text as `print`)
#   --persist-file F    apply: like --persist, to F
#   --root DIR          read/write DIR instead of /proc/sys (tests)
#
# Comparison: each setting is "higher is fine" (>=), "lower is fine" (<=) or exact (=), per field
# for multi-field values. `apply` and `print` never lower a ">=" setting nor raise a "<=" one:
# they write max(current, recommended) resp. min(current, recommended). Settings absent on this
# kernel (nf_conntrack not loaded, io_uring_disabled before 6.6) are reported "n/a", never fail.
#
# Exit status: 0 all ok (apply: all written), 1 something is short/differs (apply: something
# could not be written, e.g. read-only /proc/sys in an unprivileged container), 2 usage or
# internal error. CI treats 0 and 1 as "ran and reported".
#
# Needs bash 4+ and coreutils only (no procps): values are read from and written to /proc/sys.

set -euo pipefail

COMPLETED=0
# Any exit that is not the deliberate one at the end (set -e, set -u, a bug) becomes status 2,
# so callers can tell "the machine is short" (1) from "the script broke" (2).
# shellcheck disable=SC2317 # only reached through the EXIT trap
on_exit() {
    if [[ $COMPLETED != 1 ]]; then
        echo "sysctl.sh: internal error (status $1)" >&2
        exit 2
    fi
}
trap 'on_exit $?' EXIT

usage() {
    sed -n '2,27s/^# \{0,1\}//p' "$0" >&2
}

die_usage() {
    echo "sysctl.sh: $*" >&2
    usage
    COMPLETED=1
    exit 2
}

CMD=""
N=100000
PER_CONN_KB=16
DRY_RUN=0
PERSIST_FILE=""
ROOT=/proc/sys

while [[ $# -gt 0 ]]; do
    case $1 in
        check | apply | print)
            [[ -z $CMD ]] || die_usage "more than one command: $CMD and $1"
            CMD=$1 ;;
        --connections | --connections=*)
            if [[ $1 == *=* ]]; then N=${1#*=}; else [[ $# -ge 2 ]] || die_usage "--connections needs a value"; N=$2; shift; fi ;;
        --per-conn-kb | --per-conn-kb=*)
            if [[ $1 == *=* ]]; then PER_CONN_KB=${1#*=}; else [[ $# -ge 2 ]] || die_usage "--per-conn-kb needs a value"; PER_CONN_KB=$2; shift; fi ;;
        --dry-run) DRY_RUN=1 ;;
        --persist) PERSIST_FILE=/etc/sysctl.d/90-ringway.conf ;;
        --persist-file)
            [[ $# -ge 2 ]] || die_usage "--persist-file needs a value"; PERSIST_FILE=$2; shift ;;
        --root)
            [[ $# -ge 2 ]] || die_usage "--root needs a value"; ROOT=$2; shift ;;
        -h | --help) usage; COMPLETED=1; exit 0 ;;
        *) die_usage "unknown argument: $1" ;;
    esac
    shift
done

[[ -n $CMD ]] || die_usage "missing command (check | apply | print)"
if ! [[ $N =~ ^[0-9]{1,9}$ ]] || ((10#$N < 1 || 10#$N > 100000000)); then
    die_usage "--connections must be an integer in 1..100000000, got '$N'"
fi
N=$((10#$N))
if ! [[ $PER_CONN_KB =~ ^[0-9]{1,5}$ ]] || ((10#$PER_CONN_KB < 1 || 10#$PER_CONN_KB > 65536)); then
    die_usage "--per-conn-kb must be an integer in 1..65536, got '$PER_CONN_KB'"
fi
PER_CONN_KB=$((10#$PER_CONN_KB))
if [[ $CMD != apply ]] && { ((DRY_RUN)) || [[ -n $PERSIST_FILE ]]; }; then
    die_usage "--dry-run / --persist only go with apply"
fi
[[ -d $ROOT ]] || die_usage "--root $ROOT is not a directory"

# ---- sizing from N ------------------------------------------------------------------------------
PAGE=$(getconf PAGESIZE 2>/dev/null || echo 4096)
max() { if (($1 > $2)); then echo "$1"; else echo "$2"; fi; }
min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }
clamp() { min "$(max "$1" "$2")" "$3"; }
roundup() { echo $(((($1 + $2 - 1) / $2) * $2)); }

# fds per ringway process: 2 per proxied connection + listeners, the per-core splice pipe pool
# (2 fds per pipe), io_uring rings, admin, resolver sockets: 8192 covers the fixed part.
FDS=$((2 * N + 8192))
NR_OPEN=$(max 1048576 "$(roundup "$FDS" 1024)")
FILE_MAX=$(max 2097152 $((2 * FDS)))
ACCEPT_Q=$(clamp $((N / 10)) 4096 65535)
CONNTRACK=$(roundup $((2 * N * 5 / 4)) 1024)
MEM_BYTES=$((N * PER_CONN_KB * 1024))
MEM_PAGES=$(((MEM_BYTES + PAGE - 1) / PAGE))
TCP_MEM="$MEM_PAGES $((MEM_PAGES * 3 / 2)) $((MEM_PAGES * 2))"

# ---- the settings ------------------------------------------------------------------------------
# key | comparison (per field: ge = higher is fine, le = lower is fine, eq = exact) | recommended | reason
SETTINGS=(
    "fs.file-max|ge|$FILE_MAX|system-wide open files: every connection is 2 sockets, plus everything else on the node"
    "fs.nr_open|ge|$NR_OPEN|ceiling for one process's RLIMIT_NOFILE; LimitNOFILE / the runtime's nofile cannot exceed it ($FDS needed)"
    "net.core.somaxconn|ge|$ACCEPT_Q|cap on each listener's accept queue: a reconnect storm after a restart arrives at once"
    "net.ipv4.tcp_max_syn_backlog|ge|$ACCEPT_Q|half-open connections queued per listener during that storm before SYN cookies kick in"
    "net.core.netdev_max_backlog|ge|16384|packets queued per CPU between the NIC and the stack when softirq falls behind in bursts"
    "net.ipv4.ip_local_port_range|le,ge|10240 65535|ephemeral ports for backend connections (one per connection per backend address); starting at 10240 keeps listener ports 7000/8080/9900 out of it"
    "net.ipv4.tcp_tw_reuse|eq|1|reuse TIME_WAIT ports for new outgoing backend connections (safe with TCP timestamps); default 2 = loopback only"
    "net.ipv4.tcp_fin_timeout|le|15|orphaned FIN_WAIT_2 sockets of closed tunnels hold memory and ports for 60s by default"
    "net.ipv4.tcp_migrate_req|eq|1|a closing SO_REUSEPORT listener (SIGTERM, rolling update) hands its queued connections to a sibling socket instead of resetting them (Linux >= 5.14)"
    "net.netfilter.nf_conntrack_max|ge|$CONNTRACK|when conntrack is loaded (kube-proxy, a firewall) each proxied connection is two flows; a full table drops new ones"
    "net.ipv4.tcp_mem|ge|$TCP_MEM|kernel-wide TCP buffer pages (low pressure max) = $N connections x $PER_CONN_KB KiB; past max, sends and receives fail"
    "net.ipv4.tcp_rmem|le,le,ge|4096 65536 6291456|per-socket receive buffer: a small initial size for many idle sockets, autotuning up to max for busy ones"
    "net.ipv4.tcp_wmem|le,le,ge|4096 16384 4194304|per-socket send buffer: same, for data queued toward slow clients"
    "net.ipv4.tcp_keepalive_time|le|300|sockets with SO_KEEPALIVE: probe an idle peer after 5 min, before NATs (often 5-30 min) forget the flow; default 2 h"
    "net.ipv4.tcp_keepalive_intvl|le|30|seconds between keepalive probes once probing started"
    "net.ipv4.tcp_keepalive_probes|le|5|unanswered probes before a dead device connection is closed and its fds freed"
    "kernel.io_uring_disabled|eq|0|1 or 2 restrict or disable io_uring (kernel >= 6.6): ringway then runs on epoll and reports ringway_io_backend{kind=\"epoll\"}"
)

path_of() { echo "$ROOT/${1//.//}"; }

# current value, fields separated by single spaces; empty when the key does not exist
current_of() {
    local p line
    p=$(path_of "$1")
    [[ -r $p ]] || return 0
    IFS= read -r line <"$p" || true
    # shellcheck disable=SC2086 # deliberate word splitting to normalise tabs/spaces
    set -- $line
    echo "$*"
}

# compare CURRENT RECOMMENDED MODES → prints "ok" or "short" or "high"
compare() {
    local -a cur rec modes
    read -r -a cur <<<"$1"
    read -r -a rec <<<"$2"
    IFS=, read -r -a modes <<<"$3"
    local i m verdict=ok
    if ((${#cur[@]} != ${#rec[@]})); then echo short; return; fi
    for i in "${!rec[@]}"; do
        m=${modes[i]:-${modes[0]}}
        [[ ${cur[i]} =~ ^[0-9]+$ ]] || { echo short; return; }
        case $m in
            ge) ((cur[i] >= rec[i])) || verdict=short ;;
            le) ((cur[i] <= rec[i])) || { [[ $verdict == short ]] || verdict=high; } ;;
            eq) ((cur[i] == rec[i])) || verdict=short ;;
            *) echo "sysctl.sh: bad mode '$m'" >&2; return 2 ;;
        esac
    done
    echo "$verdict"
}

# the value to write: recommended, but never lowering a ge field nor raising a le field
target_of() {
    local -a cur rec modes out=()
    read -r -a cur <<<"$1"
    read -r -a rec <<<"$2"
    IFS=, read -r -a modes <<<"$3"
    local i m
    for i in "${!rec[@]}"; do
        m=${modes[i]:-${modes[0]}}
        if ((${#cur[@]} != ${#rec[@]})) || ! [[ ${cur[i]:-} =~ ^[0-9]+$ ]]; then
            out+=("${rec[i]}"); continue
        fi
        case $m in
            ge) out+=("$(max "${cur[i]}" "${rec[i]}")") ;;
            le) out+=("$(min "${cur[i]}" "${rec[i]}")") ;;
            *) out+=("${rec[i]}") ;;
        esac
    done
    echo "${out[*]}"
}

show_rec() {
    local -a rec modes
    read -r -a rec <<<"$1"
    IFS=, read -r -a modes <<<"$2"
    local i m s="" sym
    for i in "${!rec[@]}"; do
        m=${modes[i]:-${modes[0]}}
        case $m in ge) sym=">=" ;; le) sym="<=" ;; *) sym="=" ;; esac
        s+="${s:+ }$sym${rec[i]}"
    done
    echo "$s"
}

meminfo_kb() {
    local k v _
    while read -r k v _; do
        if [[ $k == MemTotal: ]]; then echo "$v"; return; fi
    done </proc/meminfo
    echo 0
}

sysctl_file() {
    local entry key mode rec reason cur
    echo "# ringway: kernel settings for $N long-lived connections ($PER_CONN_KB KiB socket buffers each)."
    echo "# Generated by tuning/sysctl.sh print --connections $N --per-conn-kb $PER_CONN_KB."
    echo "# Values never lower a higher-is-fine setting below this machine's current value."
    for entry in "${SETTINGS[@]}"; do
        IFS='|' read -r key mode rec reason <<<"$entry"
        cur=$(current_of "$key")
        echo
        echo "# $reason"
        if [[ -z $cur ]]; then
            echo "# (absent on this kernel now; uncomment once it exists, e.g. after nf_conntrack loads)"
            echo "# $key = $rec"
        else
            echo "$key = $(target_of "$cur" "$rec" "$mode")"
        fi
    done
}

do_check() {
    local entry key mode rec reason cur verdict differs=0 mem_kb need_mb nofile
    printf '%-32s %-24s %-34s %s\n' SETTING CURRENT RECOMMENDED STATUS
    for entry in "${SETTINGS[@]}"; do
        IFS='|' read -r key mode rec reason <<<"$entry"
        cur=$(current_of "$key")
        if [[ -z $cur ]]; then
            printf '%-32s %-24s %-34s %s\n' "$key" "-" "$(show_rec "$rec" "$mode")" "n/a (not on this kernel)"
            continue
        fi
        verdict=$(compare "$cur" "$rec" "$mode")
        case $verdict in
            ok) printf '%-32s %-24s %-34s %s\n' "$key" "$cur" "$(show_rec "$rec" "$mode")" ok ;;
            short | high)
                differs=1
                printf '%-32s %-24s %-34s %s\n' "$key" "$cur" "$(show_rec "$rec" "$mode")" "${verdict^^}"
                printf '    why: %s\n' "$reason" ;;
            *) return 2 ;;
        esac
    done
    mem_kb=$(meminfo_kb)
    need_mb=$((MEM_BYTES / 1048576))
    echo
    printf 'memory: %d connections x %d KiB = %d MiB of socket buffers; machine has %d MiB' \
        "$N" "$PER_CONN_KB" "$need_mb" $((mem_kb / 1024))
    if ((mem_kb > 0 && MEM_BYTES / 1024 > mem_kb / 2)); then
        echo " -> SHORT (budget is over half of RAM; add memory or nodes)"
        differs=1
    else
        echo " -> ok"
    fi
    nofile=$(ulimit -Hn)
    printf 'note: ringway needs RLIMIT_NOFILE >= %d (this shell: soft %s, hard %s); set it with\n' "$FDS" "$(ulimit -Sn)" "$nofile"
    echo '      LimitNOFILE= (systemd, sets soft and hard) or the container runtime (tuning/limits.md).'
    if ((N > 55295)); then
        echo "note: a backend address takes at most ~55k connections from one source IP with the"
        echo "      recommended port range; $N connections need at least $(((N + 55294) / 55295)) backend addresses."
    fi
    return "$differs"
}

do_apply() {
    local entry key mode rec reason cur target failed=0 p
    for entry in "${SETTINGS[@]}"; do
        IFS='|' read -r key mode rec reason <<<"$entry"
        cur=$(current_of "$key")
        if [[ -z $cur ]]; then
            echo "skip  $key: not on this kernel"
            continue
        fi
        target=$(target_of "$cur" "$rec" "$mode")
        if [[ $target == "$cur" ]]; then
            echo "ok    $key = $cur"
            continue
        fi
        if ((DRY_RUN)); then
            echo "would $key: $cur -> $target   # $reason"
            continue
        fi
        p=$(path_of "$key")
        if { printf '%s\n' "$target" >"$p"; } 2>/dev/null; then
            echo "set   $key: $cur -> $(current_of "$key")"
        else
            echo "FAIL  $key: cannot write $p (need root; in a container: privileged and, for net.*, the host network)" >&2
            failed=1
        fi
    done
    if [[ -n $PERSIST_FILE ]]; then
        if ((DRY_RUN)); then
            echo "would write $PERSIST_FILE (the output of 'print')"
        elif { mkdir -p "$(dirname "$PERSIST_FILE")" && sysctl_file >"$PERSIST_FILE"; } 2>/dev/null; then
            echo "wrote $PERSIST_FILE"
        else
            echo "FAIL  cannot write $PERSIST_FILE" >&2
            failed=1
        fi
    fi
    return "$failed"
}

status=0
case $CMD in
    check) do_check || status=$? ;;
    apply) do_apply || status=$? ;;
    print) sysctl_file ;;
esac
((status <= 2)) || status=2
COMPLETED=1
exit "$status"
