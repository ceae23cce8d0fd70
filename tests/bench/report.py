"""tests/bench/report.py — the benchmark's table, CSV and chart."""

import csv
import os
import shutil
import statistics
import subprocess

from common import human_size

CSV_FIELDS = [
    "run_id", "system", "config", "scenario", "size", "sessions", "mode", "messages", "rep",
    "source_status", "accepted_s", "accepted_mps", "done_s", "done_mps", "done_count",
    "queue_left", "peak_rss_kb", "peak_pss_kb", "peak_procs", "start_rss_kb", "server_cpu_s",
    "latency_p50_s", "latency_max_s", "log_anomalies", "server_exit", "binary_sha",
    # idle connections (scenario "idle")
    "connections", "held", "rss_warm_kb", "rss_kb", "rss_per_conn_kb", "pss_warm_kb", "pss_kb",
    "pss_per_conn_kb", "open_s", "note"]

SCENARIO_TITLE = {"queue": "accept and queue (fsync, no delivery)",
                  "deliver": "local delivery into a Maildir"}


def label(row):
    """guillemot, guillemot+policy, postfix, smtp-sink."""
    if row["system"] == "guillemot" and row.get("config") not in (None, "", "none"):
        return f"guillemot+{row['config']}"
    return row["system"]


def numbers(rows, key):
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))]


def median(values):
    return statistics.median(values) if values else None


def median_of(values, fmt="{:.1f}"):
    return fmt.format(statistics.median(values)) if values else "-"


def spread(values, fmt="{:.0f}"):
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def points(b):
    for size in b.sizes:
        for sessions in b.sessions:
            for mode in b.modes:
                for scenario in b.scenarios:
                    yield scenario, size, sessions, mode


def of_point(rows, scenario, size, sessions, mode):
    return [r for r in rows if r.get("scenario") == scenario and r.get("size") == size
            and r.get("sessions") == sessions and r.get("mode") == mode]


def table(b):
    out = [f"Guillemot / Postfix benchmark {b.run_id}: smtp-source -m {b.messages} (HELO), "
           f"{b.runs} run(s) per point, guillemot {b.binary_sha}, {os.cpu_count()} CPU(s)",
           "msg/s = messages / seconds until done (queue: the last 250; deliver: the last "
           "message in Maildir/new/),",
           "median (min-max) of the runs; x Postfix and % sink compare medians;",
           "peak RSS: Guillemot's VmHWM, Postfix's summed over its processes (shared pages "
           "counted in each); PSS: shared pages divided (median of the sampled peaks)"]
    head = (f"{'scenario':8} {'size':>6} {'sess':>4} {'mode':5} {'system':18} {'msg/s':>19} "
            f"{'accepted msg/s':>19} {'peak RSS MiB':>19} {'PSS MiB':>8} {'x Postfix':>9} {'% sink':>7}")
    out += ["", head, "-" * len(head)]
    for scenario, size, sessions, mode in points(b):
        rows = of_point(b.rows, scenario, size, sessions, mode)
        if not rows:
            continue
        labels = []
        for r in rows:
            if label(r) not in labels:
                labels.append(label(r))
        ref = {name: median(numbers([r for r in rows if label(r) == name], "done_mps"))
               for name in ("postfix", "smtp-sink")}
        first = True
        for name in labels:
            mine = [r for r in rows if label(r) == name]
            done = numbers(mine, "done_mps")
            acc = spread(numbers(mine, "accepted_mps")) if scenario == "deliver" else ""
            if name == "smtp-sink":
                acc = ""
            rss = [v / 1024 for v in numbers(mine, "peak_rss_kb")]
            pss = [v / 1024 for v in numbers(mine, "peak_pss_kb")]
            vs_pf = vs_sink = ""
            if done and name.startswith("guillemot"):
                if ref["postfix"]:
                    vs_pf = f"{median(done) / ref['postfix']:.2f}"
                if ref["smtp-sink"]:
                    vs_sink = f"{100 * median(done) / ref['smtp-sink']:.0f} %"
            lead = (f"{scenario:8} {human_size(size):>6} {sessions:>4} {mode:5}" if first
                    else " " * 26)
            first = False
            out.append(f"{lead} {name:18} {spread(done):>19} {acc:>19} "
                       f"{spread(rss, '{:.1f}'):>19} {median_of(pss):>8} {vs_pf:>9} {vs_sink:>7}")
    out += idle_lines(b.idle)
    out += notes(b)
    return [line.rstrip() for line in out]


def idle_lines(idle):
    out = []
    for r in idle:
        if not out:
            out += ["", "Idle connections (each greeted, then answering NOOP):"]
        if r.get("note"):
            out.append(f"  {r['system']:9} {r['connections']} connections: {r['note']}")
            continue
        per = r.get("rss_per_conn_kb")
        pss = r.get("pss_per_conn_kb")
        line = (f"  {r['system']:9} {r.get('held', 0)} of {r['connections']} held "
                f"(opened in {r.get('open_s', '?')} s); RSS {r['rss_warm_kb'] / 1024:.1f} MiB "
                f"with {r['warm']}, {r['rss_kb'] / 1024:.1f} MiB with all")
        if per is not None:
            line += f": {per:.1f} KiB RSS, {pss:.1f} KiB PSS per connection"
        if r["system"] == "guillemot" and per is not None:
            line += " (goal <= 64)"
        if r["system"] == "postfix":
            line += f"; {r.get('procs', '?')} processes"
        if r.get("errors"):
            line += "; failures: " + ", ".join(f"{n} {why}" for why, n in r["errors"].items())
        out.append(line)
    return out


def notes(b):
    out = []
    odd = [r for r in b.rows if r.get("log_anomalies")]
    if odd:
        out += ["", f"Runs with unexpected log lines: {len(odd)}; first lines:"]
        shown = []
        for r in odd:
            for line in r.get("_odd", []):
                if line not in shown and len(shown) < 8:
                    shown.append(line)
        out += [f"  {line[:150]}" for line in shown]
    kept = [p for r in b.rows for p in r.get("_kept", [])]
    if kept:
        out.append(f"Logs kept: {len(kept)} in {os.path.dirname(kept[0])}/")
    if b.failures:
        out += ["", "Incomplete runs:"] + [f"  {f}" for f in b.failures]
    return out


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in CSV_FIELDS})


def chart(b, png_path):
    """Draws the medians (bars) and min-max (whiskers) with gnuplot; returns
    None, or why there is no chart."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return "gnuplot not found (Debian package gnuplot-nox)"
    names = []
    for r in b.rows:
        if label(r) not in names:
            names.append(label(r))
    lines = []
    for scenario, size, sessions, mode in points(b):
        rows = of_point(b.rows, scenario, size, sessions, mode)
        if not rows:
            continue
        tic = f"{scenario} {human_size(size).replace(' ', '')} s{sessions}"
        if len(b.modes) > 1:
            tic += f" {mode}"
        cells = [tic]
        for name in names:
            done = numbers([r for r in rows if label(r) == name], "done_mps")
            cells += ([f"{median(done):.1f}", f"{min(done):.1f}", f"{max(done):.1f}"] if done
                      else ["NaN"] * 3)
        lines.append("\t".join(cells))
    if not lines:
        return "no completed runs"
    values = [float(v) for line in lines for v in line.split("\t")[1:] if v != "NaN"]
    low, high = max(1.0, min(values) / 1.5), max(values) * 1.3
    # Log scale: a tic at every 1, 2 and 5 times a power of ten in range.
    tics = [m * 10 ** e for e in range(7) for m in (1, 2, 5) if low <= m * 10 ** e <= high]
    ytics = ", ".join(f'"{t}" {t}' for t in tics)
    dat = png_path[:-4] + ".dat"
    with open(dat, "w") as f:
        f.write("# point\t" + "\t".join(f"{n} median\tmin\tmax" for n in names) + "\n")
        f.write("\n".join(lines) + "\n")
    plots = ", ".join(
        (f"'{dat}' using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}" + (":xtic(1)" if i == 0 else "")
         + f" title '{n}'") for i, n in enumerate(names))
    width = max(900, 200 + len(lines) * (22 * len(names) + 30))
    script = f"""
set terminal pngcairo size {width},560 noenhanced font ",10"
set output '{png_path}'
set title "Guillemot / Postfix benchmark {b.run_id}, {b.messages} messages per run\\nmessages per second: bar = median, whisker = min-max of {b.runs} run(s)"
set datafile separator "\\t"
set datafile missing "NaN"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set logscale y
set ylabel "messages per second (log scale)"
set ytics ({ytics})
set grid ytics
set xtics rotate by -30 nomirror
set key outside right top
set yrange [{low:.0f}:{high:.0f}]
plot {plots}
"""
    p = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    if p.returncode != 0 or not os.path.exists(png_path):
        return f"gnuplot failed: {p.stderr.strip()[:300]}"
    return None
