#!/bin/bash
# The LFN matrix of issue 4 through `xsock wanemu`, in one run: for each RTT,
# xsock TCP mode (paced at 99% of the bottleneck with 1 and 8 streams, with
# and without window caps, with congestion control off (a reserved path)
# and Cubic; --pace auto; unpaced) and kernel Cubic/BBR with iperf3 -P 1
# and -P 8, SECS seconds each, one at a time. 1 Gbit/s bottleneck,
# drop-tail buffer of 10% of the BDP.
# usage: sudo scripts/lfn-matrix.sh [SECS] [OUTDIR] [RTTS]  (after cargo build --release -p xsock-tools)
# Results: OUTDIR/*.json, *.csv (goodput timelines) and *.csv.sender.json;
# summarize with scripts/lfn-report.py OUTDIR.
set -u
SECS=${1:-60}; OUT=${2:-/tmp/lfn}; RTTS=${3:-"100 350"}; mkdir -p "$OUT"
HERE="$(cd "$(dirname "$0")" && pwd)"; X="$HERE/../target/release/xsock"
PACE=990mbit
for RTT in $RTTS; do
  ONEWAY=$((RTT / 2))ms; BDP=$((125000000 * RTT / 1000)); BUF=$((BDP / 10))
  bash "$HERE/lfn-baseline.sh" up $ONEWAY 1gbit $BUF
  xrun() { # name streams pace cc sndbuf [extra...]
    local name=$1 p=$2 pace=$3 cc=$4 sb=$5; shift 5
    ip netns exec lb "$X" bw --iface eth0 --transport tcp --listen 10.9.0.2:7000 --buffer $((BDP * 3 / 2)) \
      --poll sleep > "$OUT/${RTT}_$name.srv" 2>&1 &
    sleep 1.5
    # A collapsed path may take long to drain after SECS: the figures come
    # from what was acknowledged within SECS (the .csv and .csv.sender.json).
    timeout $((SECS + 90)) ip netns exec la "$X" bw --iface eth0 --transport tcp --connect 10.9.0.2:7000 \
      --seconds $SECS --streams $p --pace $pace --cc $cc --buffer $sb --poll sleep --json \
      --timeline "$OUT/${RTT}_$name.csv" "$@" > "$OUT/${RTT}_$name.json" 2> "$OUT/${RTT}_$name.err"
    ip netns pids lb | xargs -r -n1 sh -c 'grep -q "xsock" /proc/$0/cmdline 2>/dev/null && kill $0'
    sleep 2; echo "$RTT ms $name: $(cat "$OUT/${RTT}_$name.csv.sender.json" 2>/dev/null)"
  }
  xrun paced_p1_none 1 $PACE none $((BDP * 5 / 4))
  xrun paced_p1_cubic 1 $PACE cubic $((BDP * 5 / 4))
  xrun paced_p8_none 8 $PACE none $((BDP * 5 / 32))
  xrun paced_p8_none_caps 8 $PACE none $((BDP * 5 / 32)) --window-caps
  xrun auto_p1_cubic 1 auto cubic $((BDP * 5 / 4))
  xrun unpaced_p1_cubic 1 off cubic $((BDP * 5 / 4))
  for CC in cubic bbr; do for P in 1 8; do
    ip netns exec la iperf3 -c 10.9.0.2 -C $CC -t $SECS -P $P -J > "$OUT/${RTT}_kernel_${CC}_p$P.json"
    echo "$RTT ms kernel $CC P$P: $(python3 -c "import json;e=json.load(open('$OUT/${RTT}_kernel_${CC}_p$P.json'))['end'];print(round(e['sum_received']['bits_per_second']/1e6),'Mbit/s retrans',e['sum_sent'].get('retransmits'))")"
  done; done
  bash "$HERE/lfn-baseline.sh" down > "$OUT/${RTT}_wanemu.txt" 2>&1
done
