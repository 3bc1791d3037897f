#!/bin/bash
# Issue 15's fairness run: one xsock TCP-mode flow (--cc model, no rate
# given) and one kernel Cubic flow (iperf3) started together through the same
# `xsock wanemu` bottleneck (drop-tail buffer of 10% of the BDP), SECS
# seconds; prints each one's goodput and share of the bottleneck. TCP-mode
# buffers are 2.5 x the BDP (see lfn-cc.sh).
# usage: sudo scripts/lfn-fair.sh [SECS] [RTT_MS] [RATE_MBIT] [OUTDIR]
#        (after cargo build --release -p xsock-tools)
set -u
SECS=${1:-60}; RTT=${2:-100}; MBIT=${3:-500}; OUT=${4:-/tmp/lfn-fair}; mkdir -p "$OUT"
HERE="$(cd "$(dirname "$0")" && pwd)"; X="$HERE/../target/release/xsock"
BDP=$((MBIT * 125000 * RTT / 1000))
bash "$HERE/lfn-baseline.sh" up $((RTT / 2))ms ${MBIT}mbit $((BDP / 10)) > /dev/null
ip netns exec lb "$X" bw --iface eth0 --transport tcp --listen 10.9.0.2:7000 --buffer $((BDP * 5 / 2)) \
  --poll sleep > "$OUT/srv.txt" 2>&1 &
sleep 1.5
ip netns exec la iperf3 -c 10.9.0.2 -C cubic -t $SECS -J > "$OUT/cubic.json" &
CUBIC=$!
timeout $((SECS + 60)) ip netns exec la "$X" bw --iface eth0 --transport tcp --connect 10.9.0.2:7000 \
  --seconds $SECS --buffer $((BDP * 5 / 2)) --poll sleep --json --timeline "$OUT/model.csv" > "$OUT/model.json" 2> "$OUT/model.err"
wait $CUBIC
ip netns pids lb | xargs -r -n1 sh -c 'grep -q "xsock" /proc/$0/cmdline 2>/dev/null && kill $0'
bash "$HERE/lfn-baseline.sh" down > "$OUT/wanemu.txt" 2>&1
python3 - "$OUT" "$MBIT" <<'PY'
import json, sys
out, mbit = sys.argv[1], float(sys.argv[2])
m = json.load(open(f"{out}/model.csv.sender.json"))
model = sum(m["acked_bytes"]) * 8 / m["seconds"] / 1e6
e = json.load(open(f"{out}/cubic.json"))["end"]
cubic = e["sum_received"]["bits_per_second"] / 1e6
print(f"xsock model {model:.1f} Mbit/s ({model / mbit:.0%}, {m['retransmits']} retransmitted), "
      f"kernel cubic {cubic:.1f} Mbit/s ({cubic / mbit:.0%}, {e['sum_sent'].get('retransmits')} retransmitted), "
      f"together {(model + cubic) / mbit:.0%} of {mbit:.0f} Mbit/s")
PY
