#!/usr/bin/env bash
# Unmodified programs under libxsock_preload.so vs the same programs on
# kernel TCP, interleaved in one run (issue 13): sockperf ping-pong, iperf3
# at MTU 1500 and 9000, and an MPICH (UCX over TCP) ping-pong and
# all-to-all with one rank on each of two namespaced hosts; and (connects)
# 64 non-blocking connects at once from Python: until every connect
# returned, and until every one was connected.
#
#   cargo build --release -p xsock-tools -p xsock-preload
#   sudo perf/preload.sh [ROUNDS]      (ENGINE_POLL=adaptive|busy|sleep)
#   ONLY="mpi sockperf" sudo perf/preload.sh 5   (a subset: sockperf iperf mpi
#                                                  connects)
#   XSOCK_BIN=... PRELOAD_LIB=...   (another build's xsock and preload, e.g.
#                               an older commit's, to compare)
#   ENGINE_SPIN=1ms            (--spin of adaptive engines; default 50us)
#   ENGINE_WRAP="chrt -f 10"   (a command the engines run under)
#   KERNEL_BESIDE_ENGINES=1    (kernel rounds with the engines running; by
#                               default they are stopped, as on a host
#                               without xsock: busy engines keep the two
#                               vCPUs out of halt and speed the kernel's
#                               wake-ups up, or take its cores)
#
# Prints one line per measurement and a markdown table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
poll=${ENGINE_POLL:-adaptive}
wrap=${ENGINE_WRAP:-}
beside=${KERNEL_BESIDE_ENGINES:-0}
spin=${ENGINE_SPIN:+--spin $ENGINE_SPIN}
only=${ONLY:-sockperf iperf mpi connects}
want() { [[ " $only " == *" $1 "* ]]; }
X=${XSOCK_BIN:-$PWD/target/release/xsock}
LIB=${PRELOAD_LIB:-$PWD/target/release/libxsock_preload.so}
[ -x "$X" ] && [ -f "$LIB" ] || { echo "build first: cargo build --release -p xsock-tools -p xsock-preload" >&2; exit 1; }
A=xpa; B=xpb; IPA=10.97.0.1; IPB=10.97.0.2
work=$(mktemp -d)
engines=()
cleanup() {
    for p in "${engines[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pkill -f "sockperf server --tcp -i $IPB" 2>/dev/null || true
    ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
ip netns add $A; ip netns add $B
ip link add eth0 netns $A type veth peer name eth0 netns $B
ip -n $A addr add $IPA/24 dev eth0; ip -n $B addr add $IPB/24 dev eth0
for n in $A $B; do ip -n $n link set lo up; ip -n $n link set eth0 up; done
# UCX takes an interface only once it is fully up: wait for the link-local
# IPv6 address the kernel adds then (about 1 s after the veth comes up;
# before that MPI_Init fails with "Destination is unreachable").
for n in $A $B; do
    for _ in $(seq 50); do [ -n "$(ip -n $n -6 addr show dev eth0 scope link)" ] && break; sleep 0.1; done
done

stop_engines() {
    for p in "${engines[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${engines[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
    engines=()
}
start_engines() {
    stop_engines
    for n in $A $B; do
        ip netns exec $n $wrap "$X" engine --iface eth0 --poll "$poll" $spin > "$work/engine-$n.log" 2>&1 &
        engines+=($!)
    done
    for n in $A $B; do
        for _ in $(seq 100); do grep -q "listening on" "$work/engine-$n.log" && break; sleep 0.1; done
    done
}
pre() { if [ "$1" = xsock ]; then echo "env LD_PRELOAD=$LIB"; else echo "env XSOCK_PRELOAD=off"; fi; }

sockperf_p50() { # mode -> one-way latency p50 (half the round trip), us
    local e; e=$(pre "$1")
    ip netns exec $B $e sockperf server --tcp -i $IPB -p 11111 > /dev/null 2>&1 &
    local s=$!; sleep 0.5
    ip netns exec $A $e sockperf ping-pong --tcp -i $IPB -p 11111 -t 4 -m 64 2>&1 \
        | awk '/percentile 50.000/ {print $NF}'
    kill $s 2>/dev/null || true; wait $s 2>/dev/null || true
}
iperf_gbps() { # mode -> Gbit/s received
    local e; e=$(pre "$1")
    ip netns exec $B $e iperf3 -s -1 -p 5201 > /dev/null 2>&1 &
    local s=$!; sleep 0.5
    ip netns exec $A $e iperf3 -c $IPB -p 5201 -t 5 -J > "$work/iperf.json" 2>/dev/null || true
    wait $s 2>/dev/null || true
    python3 -c "import json,sys; print('%.2f' % (json.load(open('$work/iperf.json'))['end']['sum_received']['bits_per_second']/1e9))"
}
mpi_run() { # mode -> "rtt_us alltoall_ms"
    # Debian's MPICH/UCX sometimes never returns from MPI_Finalize (kernel
    # TCP too; see mpiexec() in tools/tests/preload.rs): the result line is
    # printed before it, so a run that printed and then hangs 20 s is
    # stopped and its result kept.
    local g=""; [ "$1" = xsock ] && g="-genv LD_PRELOAD $LIB"
    local out="$work/mpi.out"; : > "$out"
    ip netns exec $A mpiexec -launcher ssh -launcher-exec "$work/launch.sh" -hosts $IPA:1,$IPB:1 -n 2 \
        -genv UCX_TLS tcp,self -genv UCX_NET_DEVICES eth0 $g "$work/mpi_check" > "$out" 2>/dev/null &
    local m=$! t=0 printed=""
    while kill -0 $m 2>/dev/null; do
        sleep 0.1; t=$((t + 1))
        [ -z "$printed" ] && grep -q '^{' "$out" && printed=$t
        if [ -n "$printed" ] && [ $((t - printed)) -gt 200 ]; then
            echo "MPI_Finalize hung after the result ($1); ranks stopped" >&2
            pkill -KILL -f "$work/mpi_check" || true; break
        fi
        [ $t -gt 1200 ] && { echo "mpiexec ($1) ran 120 s without a result" >&2; pkill -KILL -f "$work/mpi_check" || true; break; }
    done
    wait $m 2>/dev/null || true
    grep '^{' "$out" | tail -1 \
        | python3 -c "import json,sys; v=json.loads(sys.stdin.read()); assert v['bad']==0; print(v['pingpong_rtt_us'], v['alltoall_ms'])"
}
connects_ms() { # mode -> "returned_ms connected_ms" for 64 non-blocking connects at once
    local e; e=$(pre "$1")
    ip netns exec $B $e python3 tools/tests/preload/echo.py server $IPB 7830 64 > "$work/echo.log" 2>&1 &
    local s=$!
    for _ in $(seq 50); do grep -q listening "$work/echo.log" && break; sleep 0.1; done
    ip netns exec $A $e python3 tools/tests/preload/nonblocking.py time $IPB 7830 64
    wait $s 2>/dev/null || true
}
mpicc -O2 -o "$work/mpi_check" tools/tests/preload/mpi_check.c
cat > "$work/launch.sh" <<EOS
#!/bin/sh
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in $IPA) ns=$A;; $IPB) ns=$B;; *) exit 1;; esac
exec ip netns exec \$ns sh -c "\$*"
EOS
chmod +x "$work/launch.sh"

declare -A results
add() { results[$1]="${results[$1]:-} $2"; echo "$1: $2"; }
# engines for mode $1: running for xsock, and for kernel rounds only with
# KERNEL_BESIDE_ENGINES=1.
engines_for() {
    if [ "$1" = xsock ] || [ "$beside" = 1 ]; then
        [ ${#engines[@]} -gt 0 ] || start_engines
    else
        stop_engines
    fi
}
for r in $(seq "$rounds"); do
    for m in kernel xsock; do
        engines_for $m
        if want sockperf; then add "sockperf-$m" "$(sockperf_p50 $m)"; fi
        if want iperf; then add "iperf1500-$m" "$(iperf_gbps $m)"; fi
        if want mpi; then read -r rtt a2a <<< "$(mpi_run $m)"; add "mpirtt-$m" "$rtt"; add "mpia2a-$m" "$a2a"; fi
        if want connects; then read -r ret con <<< "$(connects_ms $m)"; add "connret-$m" "$ret"; add "connall-$m" "$con"; fi
    done
done
if want iperf; then
    stop_engines
    for n in $A $B; do ip -n $n link set eth0 mtu 9000; done
    for r in $(seq "$rounds"); do
        for m in kernel xsock; do engines_for $m; add "iperf9000-$m" "$(iperf_gbps $m)"; done
    done
fi
med() { tr ' ' '\n' <<< "$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "engines: --poll $poll $spin${wrap:+ under $wrap}; kernel rounds $([ "$beside" = 1 ] && echo "beside the running engines" || echo "with the engines stopped"); $rounds rounds, interleaved; medians"
echo
echo "| measurement | kernel TCP | xsock preload | ratio |"
echo "|---|---|---|---|"
for k in sockperf:"sockperf ping-pong p50, one way (us)" iperf1500:"iperf3 MTU 1500 (Gbit/s)" iperf9000:"iperf3 MTU 9000 (Gbit/s)" mpirtt:"MPI 64 B ping-pong RTT (us)" mpia2a:"MPI all-to-all, 2 ranks, 256 KiB each way (ms)" connret:"64 non-blocking connects: all returned (ms)" connall:"64 non-blocking connects: all connected (ms)"; do
    key=${k%%:*}; label=${k#*:}
    [ -n "${results[$key-kernel]:-}" ] || continue
    kv=$(med "${results[$key-kernel]}"); xv=$(med "${results[$key-xsock]}")
    echo "| $label | $kv | $xv | $(python3 -c "print('%.2fx' % ($xv/$kv))") |"
done
