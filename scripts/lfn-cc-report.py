#!/usr/bin/env python3
"""Markdown table of scripts/lfn-cc.sh's summary.txt: goodput Mbit/s (share
of the bottleneck) and retransmitted segments per run.
usage: scripts/lfn-cc-report.py OUTDIR/summary.txt"""
import sys
from collections import OrderedDict

cols = ["model_p1", "model_p8", "reserved_p1", "kernel_cubic_p1", "kernel_cubic_p8", "kernel_bbr_p1", "kernel_bbr_p8"]
rows = OrderedDict()
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 5:
        continue
    rtt, mbit, loss, name = f[:4]
    rows.setdefault((rtt, mbit, loss), {})[name] = f[4:]
print("| RTT | rate | loss | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
print("|---|---|---|" + "---:|" * len(cols))
for (rtt, mbit, loss), r in rows.items():
    cells = []
    for c in cols:
        v = r.get(c)
        if not v or v[0] == "failed":
            cells.append("—")
        else:
            cells.append(f"{float(v[0]):.0f} ({float(v[0]) / float(mbit):.0%}) r{v[1]}")
    print(f"| {rtt} ms | {mbit} Mbit/s | {float(loss) * 100:g} % | " + " | ".join(cells) + " |")
