#!/bin/bash
# The LFN matrix of issue 4 through `xsock wanemu`, in one run: for each RTT,
# xsock TCP mode (paced 1 and 8 streams, paced 8 with window caps, unpaced 1)
# and kernel Cubic/BBR with iperf3 -P 1 and -P 8, SECS seconds each, one at a
# time. 1 Gbit/s bottleneck, drop-tail buffer of 10% of the BDP.
# usage: sudo scripts/lfn-matrix.sh [SECS] [OUTDIR]   (after cargo build --release -p xsock-tools)
# Results: OUTDIR/*.json (+ *.csv goodput timelines); summarize with scripts/lfn-report.py OUTDIR.
set -u
SECS=${1:-60}; OUT=${2:-/tmp/lfn}; mkdir -p "$OUT"
HERE="$(cd "$(dirname "$0")" && pwd)"; X="$HERE/../target/release/xsock"
for RTT in 100 350; do
  ONEWAY=$((RTT / 2))ms; BDP=$((125000000 * RTT / 1000)); BUF=$((BDP / 10))
  bash "$HERE/lfn-baseline.sh" up $ONEWAY 1gbit $BUF
  xrun() { # name streams pace sndbuf [extra...]
    local name=$1 p=$2 pace=$3 sb=$4; shift 4
    ip netns exec lb "$X" bw --iface eth0 --transport tcp --listen 10.9.0.2:7000 --buffer $((BDP * 3 / 2)) > "$OUT/${RTT}_$name.srv" 2>&1 &
    sleep 1.5
    ip netns exec la "$X" bw --iface eth0 --transport tcp --connect 10.9.0.2:7000 --seconds $SECS --streams $p \
      --pace $pace --buffer $sb --json --timeline "$OUT/${RTT}_$name.csv" "$@" > "$OUT/${RTT}_$name.json" 2> "$OUT/${RTT}_$name.err"
    ip netns pids lb | xargs -r -n1 sh -c 'grep -q "xsock" /proc/$0/cmdline 2>/dev/null && kill $0'
    sleep 1; echo "$RTT ms $name: $(cat "$OUT/${RTT}_$name.json")"
  }
  xrun paced_p1 1 950mbit $((BDP * 5 / 4))
  xrun paced_p8 8 950mbit $((BDP * 5 / 32))
  xrun paced_p8_caps 8 950mbit $((BDP * 5 / 32)) --window-caps
  xrun unpaced_p1 1 off $((BDP * 5 / 4))
  for CC in cubic bbr; do for P in 1 8; do
    ip netns exec la iperf3 -c 10.9.0.2 -C $CC -t $SECS -P $P -J > "$OUT/${RTT}_kernel_${CC}_p$P.json"
    echo "$RTT ms kernel $CC P$P: $(python3 -c "import json;e=json.load(open('$OUT/${RTT}_kernel_${CC}_p$P.json'))['end'];print(round(e['sum_received']['bits_per_second']/1e6),'Mbit/s retrans',e['sum_sent'].get('retransmits'))")"
  done; done
  bash "$HERE/lfn-baseline.sh" down > "$OUT/${RTT}_wanemu.txt" 2>&1
done
