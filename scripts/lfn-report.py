#!/usr/bin/env python3
"""Summarize scripts/lfn-matrix.sh output: a markdown table (goodput, share of
the 1 Gbit/s bottleneck, retransmissions, per-stream spread) and one SVG per
RTT with goodput over time (1 s bins).
usage: lfn-report.py OUTDIR [SVG_PREFIX]"""
import csv, json, os, sys

out = sys.argv[1]
prefix = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "goodput")
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

def xsock_series(path):
    per = {}
    for r in csv.DictReader(open(path)):
        per.setdefault(float(r["t_s"]), 0)
        per[float(r["t_s"])] += int(r["bytes"])
    ts = sorted(per)
    pts, last = [], None
    for t in ts:
        if last is None or t - last[0] >= 0.999:
            if last is not None:
                pts.append((t, (per[t] - last[1]) * 8 / (t - last[0]) / 1e6))
            last = (t, per[t])
    return pts

def kernel_series(d):
    return [(iv["sum"]["end"], iv["sum"]["bits_per_second"] / 1e6) for iv in d["intervals"]]

def spread(values):
    v = [x for x in values if x > 0]
    return max(v) / min(v) if len(v) > 1 else None

rows, series = [], {}
for name in sorted(os.listdir(out)):
    if not name.endswith(".json"):
        continue
    rtt, label = name[:-5].split("_", 1)
    if not label.startswith("kernel_"):
        continue  # xsock rows come from their timelines, below
    try:
        d = json.load(open(os.path.join(out, name)))
    except Exception:
        rows.append((int(rtt), label, None, None, None, "failed: see .err"))
        continue
    e = d["end"]
    mbit = e["sum_received"]["bits_per_second"] / 1e6
    per = [s["receiver"]["bytes"] for s in e["streams"]]
    rows.append((int(rtt), label, mbit, e["sum_sent"].get("retransmits"), spread(per), ""))
    series.setdefault(int(rtt), {})[label] = kernel_series(d)

# xsock rows: what was acknowledged within the run (the sender's view, read
# off the wire), from the timeline and its .sender.json, whether or not the
# stream drained afterwards.
for name in sorted(os.listdir(out)):
    if not name.endswith(".csv.sender.json"):
        continue
    rtt, label = name[: -len(".csv.sender.json")].split("_", 1)
    s = json.load(open(os.path.join(out, name)))
    acked = s["acked_bytes"]
    mbit = sum(acked) * 8 / s["seconds"] / 1e6
    note = f"of {s['segments']} segments"
    try:
        d = json.load(open(os.path.join(out, name[: -len(".csv.sender.json")] + ".json")))
        note += f"; receiver counted {d['gbit_per_s'] * 1000:.0f} Mbit/s to the end of the drain"
    except Exception:
        note += "; did not drain within 90 s"
    rows.append((int(rtt), "xsock_" + label, mbit, s["retransmits"], spread(acked), note))
    tl = os.path.join(out, name[: -len(".sender.json")])
    series.setdefault(int(rtt), {})["xsock_" + label] = xsock_series(tl)

print("| RTT | sender | goodput Mbit/s | of 1 Gbit/s | retransmits | per-stream max/min | |")
print("|---|---|---|---|---|---|---|")
for rtt, label, mbit, rtx, spr, note in sorted(rows, key=lambda r: (r[0], r[1])):
    if mbit is None:
        print(f"| {rtt} ms | {label} | - | - | - | - | {note} |")
        continue
    s = f"{spr:.2f}x" if spr else "-"
    print(f"| {rtt} ms | {label} | {mbit:.0f} | {mbit / 10:.1f}% | {rtx} | {s} | {note} |")

for rtt, ss in series.items():
    W, H, L, B = 760, 360, 50, 30
    tmax = max((p[0] for s in ss.values() for p in s), default=60)
    y = lambda v: H - B - v / 1000 * (H - B - 20)
    x = lambda t: L + t / tmax * (W - L - 170)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
             f'<text x="{L}" y="14">Goodput over time, {rtt} ms RTT, 1 Gbit/s bottleneck, buffer 10% BDP (Mbit/s, 1 s bins)</text>',
             f'<line x1="{L}" y1="{y(0)}" x2="{x(tmax)}" y2="{y(0)}" stroke="black"/>',
             f'<line x1="{L}" y1="{y(0)}" x2="{L}" y2="{y(1000)}" stroke="black"/>']
    for v in (0, 250, 500, 750, 1000):
        parts.append(f'<text x="{L - 35}" y="{y(v) + 4}">{v}</text>')
    for t in range(0, int(tmax) + 1, 10):
        parts.append(f'<text x="{x(t) - 5}" y="{H - 10}">{t}s</text>')
    for i, (label, pts) in enumerate(sorted(ss.items())):
        c = COLORS[i % len(COLORS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{W - 160}" y="{30 + 14 * i}" fill="{c}">{label}</text>')
    parts.append("</svg>")
    open(f"{prefix}_{rtt}ms.svg", "w").write("\n".join(parts))
