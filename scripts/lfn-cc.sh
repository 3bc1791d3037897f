#!/bin/bash
# Issue 15's matrix through `xsock wanemu`: congestion control with no rate
# given. For each RTT, bottleneck rate and random loss, one at a time, SECS
# seconds each, drop-tail buffer of 10% of the BDP:
#   xsock TCP mode --cc model (no rate given), 1 and 8 streams;
#   xsock TCP mode with the rate reserved (--pace 99% of it --cc none), 1 stream;
#   kernel Cubic and BBR (iperf3 -P 1 and -P 8).
# usage: sudo scripts/lfn-cc.sh [SECS] [OUTDIR] [RTTS] [RATES_MBIT] [LOSSES]
#        (after cargo build --release -p xsock-tools)
# ONLY="model_p1 kernel_bbr_p1 ..." runs only the runs named (default: all).
# Each run appends "rtt rate loss name goodput_mbit retransmits" to OUTDIR/summary.txt.
# TCP-mode buffers are 2.5 x the BDP each way (split over the streams): smoltcp's
# are fixed, and a loss holds the send buffer for the round trip of its repair
# (the mode warns below 2 x); the kernel runs autotune up to 128 MiB.
set -u
SECS=${1:-60}; OUT=${2:-/tmp/lfn-cc}; RTTS=${3:-"100 350"}; RATES=${4:-"500 1000"}; LOSSES=${5:-"0 0.0001 0.001"}
mkdir -p "$OUT"
HERE="$(cd "$(dirname "$0")" && pwd)"; X="$HERE/../target/release/xsock"
for RTT in $RTTS; do for MBIT in $RATES; do for LOSS in $LOSSES; do
  BDP=$((MBIT * 125000 * RTT / 1000)); BUF=$((BDP / 10)); TAG="${RTT}ms_${MBIT}mbit_loss$LOSS"
  bash "$HERE/lfn-baseline.sh" up $((RTT / 2))ms ${MBIT}mbit $BUF $LOSS > /dev/null
  wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
  xrun() { # name streams sndbuf [bw flags...]
    local name=$1 p=$2 sb=$3; shift 3
    wanted "$name" || return 0
    ip netns exec lb "$X" bw --iface eth0 --transport tcp --listen 10.9.0.2:7000 --buffer $((BDP * 5 / 2)) \
      --poll sleep > "$OUT/${TAG}_$name.srv" 2>&1 &
    sleep 1.5
    # The figures come from what was acknowledged within SECS (.csv.sender.json).
    timeout $((SECS + 90)) ip netns exec la "$X" bw --iface eth0 --transport tcp --connect 10.9.0.2:7000 \
      --seconds $SECS --streams $p --buffer $sb --poll sleep --json \
      --timeline "$OUT/${TAG}_$name.csv" "$@" > "$OUT/${TAG}_$name.json" 2> "$OUT/${TAG}_$name.err"
    ip netns pids lb | xargs -r -n1 sh -c 'grep -q "xsock" /proc/$0/cmdline 2>/dev/null && kill $0'
    sleep 2
    python3 - "$OUT/${TAG}_$name.csv.sender.json" "$RTT $MBIT $LOSS $name" >> "$OUT/summary.txt" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print(sys.argv[2], round(sum(d["acked_bytes"]) * 8 / d["seconds"] / 1e6, 1), d["retransmits"])
except Exception as e:
    print(sys.argv[2], "failed", repr(e))
PY
    tail -1 "$OUT/summary.txt"
  }
  xrun model_p1 1 $((BDP * 5 / 2)) --cc model
  xrun model_p8 8 $((BDP * 5 / 16)) --cc model
  xrun reserved_p1 1 $((BDP * 5 / 2)) --cc none --pace $((MBIT * 99 / 100))mbit
  for CC in cubic bbr; do for P in 1 8; do
    wanted "kernel_${CC}_p$P" || continue
    ip netns exec la iperf3 -c 10.9.0.2 -C $CC -t $SECS -P $P -J > "$OUT/${TAG}_kernel_${CC}_p$P.json"
    python3 - "$OUT/${TAG}_kernel_${CC}_p$P.json" "$RTT $MBIT $LOSS kernel_${CC}_p$P" >> "$OUT/summary.txt" <<'PY'
import json, sys
try:
    e = json.load(open(sys.argv[1]))["end"]
    print(sys.argv[2], round(e["sum_received"]["bits_per_second"] / 1e6, 1), e["sum_sent"].get("retransmits"))
except Exception as ex:
    print(sys.argv[2], "failed", repr(ex))
PY
    tail -1 "$OUT/summary.txt"
  done; done
  bash "$HERE/lfn-baseline.sh" down > "$OUT/${TAG}_wanemu.txt" 2>&1
done; done; done
