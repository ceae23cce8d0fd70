"""The benchmark still runs: tests/bench/bench.py with tiny numbers (20
messages, 2 sessions, 1 KB, one run) against Guillemot, the private Postfix
instance and smtp-sink, in both scenarios and both configurations, plus a few
idle connections. Only that it completes and writes its CSV (and chart) is
checked: the numbers themselves are never assertions (DESIGN.md §8)."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import csv
import os
import shutil
import subprocess

from harness import TOP_SRCDIR, assert_equal, assert_in, make_tempdir, run, skip, test

BENCH = os.path.join(TOP_SRCDIR, "tests", "bench")
MESSAGES = 20


def missing():
    """Why the benchmark cannot run here, or None."""
    if not (shutil.which("smtp-source") or os.access("/usr/sbin/smtp-source", os.X_OK)):
        return "no smtp-source (Debian package postfix)"
    sys.path.insert(0, BENCH)
    try:
        import postfix
        return postfix.available()
    finally:
        sys.path.remove(BENCH)


@test("bench.py runs Guillemot, Postfix and smtp-sink and writes the CSV", timeout=60)
def _():
    why = missing()
    if why:
        skip(why)
    results = make_tempdir("guillemot-bench-smoke-")
    env = dict(os.environ, BENCH_RESULTS=results, BENCH_MESSAGES=str(MESSAGES),
               BENCH_SESSIONS="2", BENCH_SIZES="1024", BENCH_RUNS="1", BENCH_MODES="conn",
               BENCH_CONFIGS="none policy", BENCH_SCENARIOS="queue deliver",
               BENCH_SYSTEMS="guillemot postfix sink", BENCH_IDLE="50", BENCH_IDLE_POSTFIX="2",
               BENCH_FULL="0", BENCH_TIMEOUT="20")
    p = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py")], env=env,
                       capture_output=True, text=True, timeout=50)
    assert_equal(p.returncode, 0, f"exit status (stdout:\n{p.stdout}\nstderr:\n{p.stderr})")
    assert_in("x Postfix", p.stdout, "the table")
    csvs = [f for f in os.listdir(results) if f.endswith(".csv")]
    assert_equal(len(csvs), 1, f"CSV files in {os.listdir(results)}")
    with open(os.path.join(results, csvs[0])) as f:
        rows = list(csv.DictReader(f))
    done = {(r["system"], r["config"], r["scenario"]) for r in rows
            if r["scenario"] != "idle" and r["done_count"] == str(MESSAGES) and r["done_mps"]}
    for scenario in ("queue", "deliver"):
        for key in (("guillemot", "none"), ("guillemot", "policy"), ("postfix", ""),
                    ("smtp-sink", "")):
            assert (key + (scenario,)) in done, f"no complete {key} {scenario} run in {rows}"
    held = {r["system"]: r["held"] == r["connections"] for r in rows if r["scenario"] == "idle"}
    assert_equal(held, {"guillemot": True, "postfix": True}, "idle connections held")
    if shutil.which("gnuplot"):
        pngs = [f for f in os.listdir(results) if f.endswith(".png")]
        assert_equal(len(pngs), 1, f"PNG files in {os.listdir(results)}")
        with open(os.path.join(results, pngs[0]), "rb") as f:
            assert_equal(f.read(8), b"\x89PNG\r\n\x1a\n", "PNG signature")


run()
