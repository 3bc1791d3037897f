#!/bin/bash
# Kernel-TCP baselines through `xsock wanemu` on a three-namespace path (A - emulator - B).
# usage: lfn-baseline.sh up ONE_WAY_DELAY RATE BUFFER_BYTES [LOSS] | run CC SECONDS [STREAMS] | down
# Run as root after `cargo build --release -p xsock-tools`. Addresses 10.9.0.1/2 live only in its namespaces.
X="$(cd "$(dirname "$0")/.." && pwd)/target/release/xsock"
case $1 in
up)
  for n in la lw lb; do ip netns add $n; done
  ip link add eth0 netns la type veth peer name wa netns lw
  ip link add eth0 netns lb type veth peer name wb netns lw
  ip -n la addr add 10.9.0.1/24 dev eth0; ip -n lb addr add 10.9.0.2/24 dev eth0
  # The hosts keep veth's default offloads (TSO, partial checksums): wanemu finishes and cuts their frames as a NIC would.
  for n in la lb; do ip -n $n link set eth0 up; ip -n $n link set lo up
    ip netns exec $n sysctl -qw net.ipv4.tcp_wmem="4096 16384 134217728" net.ipv4.tcp_rmem="4096 131072 134217728"; done
  ip -n lw link set wa up; ip -n lw link set wb up
  ip netns exec lw $X wanemu --a wa --b wb --delay $2 --rate $3 --buffer $4 --loss ${5:-0} > /tmp/wanemu.out 2> /tmp/wanemu.err &
  sleep 1; ip netns exec lb iperf3 -s -D; sleep 0.5; ip netns exec la ping -c 3 -i 0.2 10.9.0.2 | tail -1 ;;
run)
  ip netns exec la iperf3 -c 10.9.0.2 -C $2 -t $3 -P ${4:-1} -J > /tmp/iperf_$2_${4:-1}.json
  python3 - $2 ${4:-1} <<'PY'
import json,sys
d=json.load(open(f"/tmp/iperf_{sys.argv[1]}_{sys.argv[2]}.json"))
e=d['end']; print(sys.argv[1], "P",sys.argv[2], "recv Mbit/s %.1f"%(e['sum_received']['bits_per_second']/1e6), "retrans", e['sum_sent'].get('retransmits'))
PY
  ;;
down)
  # Only processes inside this script's namespaces are stopped.
  ip netns pids lw | xargs -r kill -INT; sleep 0.5; cat /tmp/wanemu.out
  ip netns pids lb | xargs -r kill; for n in la lw lb; do ip netns del $n; done ;;
esac
