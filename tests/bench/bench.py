#!/usr/bin/env python3
"""tests/bench/bench.py — Guillemot side by side with Postfix, and smtp-sink
as the ceiling, in one run.

Started by tests/bench/run-bench (`make bench`). For every point (message size
x sessions x connection mode x scenario) and every repetition it starts, each
in turn and each fresh (new temporary directory, new loopback port):

  * Guillemot, with each configuration asked for (no policy, examples/policy.scm);
  * a private Postfix instance (postfix.py), configured for the same scenario;
  * smtp-sink, which accepts and discards: the protocol ceiling;

runs Postfix's smtp-source against it, and measures until the scenario is done:
"queue" (accept and queue, fsync on, nothing delivered) is done when
smtp-source has had every 250; "deliver" (local delivery) when the last message
is in the Maildir's new/. The order of the systems turns at every repetition,
so that a noisy moment on a shared machine does not always hit the same one.
Then it measures what idle connections cost (idle.py) and writes the table,
CSV and chart (report.py) to tests/bench/results/.

Benchmarks are never assertions: the exit status is non-zero only when a run
could not be completed (smtp-source failed, messages missing, a server died).
The knobs are environment variables; tests/bench/README.md lists them all.
"""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import datetime
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from common import (CLIENT_NAME, RECIPIENT, SENDER, MemorySampler, env_float, env_int, env_list,
                    Reaper, free_port, human_size, last_ctime, proc_cpu_seconds, proc_status,
                    say, stop)
import guillemot
import idle
import postfix
import report
import sink

MODES = {"conn": [], "reuse": ["-d"]}       # smtp-source options
SCENARIOS = ("queue", "deliver")
SYSTEMS = ("guillemot", "postfix", "sink")

# Defaults: (quick `make bench`, BENCH_FULL=1).
DEFAULTS = {
    "BENCH_SIZES": ("1024 10240 102400", "1024 10240 102400"),
    "BENCH_SESSIONS": ("16", "1 16 100"),
    "BENCH_CONFIGS": ("none policy", "none policy"),
    "BENCH_SCENARIOS": ("queue deliver", "queue deliver"),
    "BENCH_RUNS": ("3", "3"),
    "BENCH_MESSAGES": ("2000", "2000"),
}


class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


class Bench:
    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.top_srcdir = os.path.abspath(os.environ.get("top_srcdir")
                                          or os.path.join(here, "..", ".."))
        self.guillemot = os.environ.get("GUILLEMOT") or os.path.join(self.top_srcdir, "guillemot")
        self.smtp_source = (os.environ.get("SMTP_SOURCE") or shutil.which("smtp-source")
                            or "/usr/sbin/smtp-source")
        self.smtp_sink = os.environ.get("SMTP_SINK") or ""
        if not self.smtp_sink:
            beside = os.path.join(os.path.dirname(self.smtp_source), "smtp-sink")
            self.smtp_sink = beside if os.access(beside, os.X_OK) else shutil.which("smtp-sink")
        full = os.environ.get("BENCH_FULL", "0") not in ("", "0")
        d = {k: v[1 if full else 0] for k, v in DEFAULTS.items()}
        self.full = full
        self.messages = env_int("BENCH_MESSAGES", int(d["BENCH_MESSAGES"]))
        self.runs = env_int("BENCH_RUNS", int(d["BENCH_RUNS"]))
        self.sizes = env_list("BENCH_SIZES", d["BENCH_SIZES"], convert=int)
        self.sessions = env_list("BENCH_SESSIONS", d["BENCH_SESSIONS"], convert=int)
        self.modes = env_list("BENCH_MODES", "conn", MODES)
        self.scenarios = env_list("BENCH_SCENARIOS", d["BENCH_SCENARIOS"], SCENARIOS)
        self.systems = env_list("BENCH_SYSTEMS", " ".join(SYSTEMS), SYSTEMS)
        self.configs = env_list("BENCH_CONFIGS", d["BENCH_CONFIGS"])
        self.timeout = env_int("BENCH_TIMEOUT", 120)
        self.poll = max(0.001, env_float("BENCH_POLL", 0.2))
        self.sample = max(0.01, env_float("BENCH_SAMPLE", 0.1))
        self.idle_count = env_int("BENCH_IDLE", 10000, minimum=0)
        self.idle_postfix = env_int("BENCH_IDLE_POSTFIX", 50, minimum=0)
        self.profile = os.environ.get("BENCH_PROFILE") or ""
        if self.profile:
            self.profile = os.path.abspath(self.profile)
            if not shutil.which("perf"):
                sys.exit("bench: BENCH_PROFILE needs perf (Debian package linux-perf)")
        self.results_dir = os.path.abspath(os.environ.get("BENCH_RESULTS")
                                           or os.path.join(self.top_srcdir, "tests", "bench",
                                                           "results"))
        for name, path in (("GUILLEMOT", self.guillemot), ("SMTP_SOURCE", self.smtp_source)):
            if not os.access(path, os.X_OK):
                sys.exit(f"bench: {name}={path} is not an executable (run `make bench`)")
        if "sink" in self.systems and not self.smtp_sink:
            say("bench: smtp-sink not found: it is left out")
            self.systems.remove("sink")
        why = postfix.available() if "postfix" in self.systems else None
        if why:
            say(f"bench: Postfix is left out: {why}")
            self.systems.remove("postfix")
        self.env = dict(os.environ)
        self.env.setdefault("GUILE_LOAD_PATH", os.path.join(self.top_srcdir, "scheme"))
        self.env.setdefault("GUILE_LOAD_COMPILED_PATH",
                            os.path.join(os.path.dirname(os.path.abspath(self.guillemot)),
                                         "scheme"))
        self.env.setdefault("GUILE_AUTO_COMPILE", "0")
        self.tmp = None
        self.reaper = None
        self.procs = []
        self.servers = []
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.run_id = self.started.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.stamp = self.started.strftime("%Y-%m-%d-%H%M%S")
        self.rows, self.idle, self.failures = [], [], []

    # -- set-up and clean-up ------------------------------------------------

    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="guillemot-bench.")
        self.reaper = Reaper(self.tmp)
        os.chmod(self.tmp, 0o755)    # Postfix's daemons run as postfix and nobody
        # Benchmark one binary for the whole run even if the tree is rebuilt meanwhile.
        with open(self.guillemot, "rb") as f:
            script = f.read(2) == b"#!"
        self.binary = self.guillemot
        if not script:
            self.binary = os.path.join(self.tmp, "guillemot")
            shutil.copy2(self.guillemot, self.binary)
        h = hashlib.sha256()
        with open(self.binary, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.binary_sha = h.hexdigest()[:12]
        self.config_files = {}
        for name in self.configs:
            self.config_files[name] = self.config_file(name)
        idle.raise_fd_limit(self.idle_count + 1000)

    def config_file(self, name):
        """The file of configuration NAME: none (built in), policy
        (examples/policy.scm, limits lifted) or a path."""
        if name == "none":
            path = os.path.join(self.tmp, "none.scm")
            with open(path, "w") as f:
                f.write(guillemot.BUILTIN_CONFIG)
            return path
        if name == "policy":
            path = os.path.join(self.tmp, "policy.scm")
            guillemot.policy_config(os.path.join(self.top_srcdir, "examples", "policy.scm"), path)
            return path
        if not os.path.isfile(name):
            sys.exit(f"bench: BENCH_CONFIGS: {name!r} is neither none, policy nor a file")
        return os.path.abspath(name)

    def cleanup(self):
        for server in self.servers:
            try:
                server.stop()
            except Exception as e:
                print(f"bench: stopping {server.name}: {e}", file=sys.stderr)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.servers, self.procs = [], []
        if self.reaper:
            self.reaper.close()
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, argv, **kw):
        """Starts a process in a process group of its own, which the reaper
        kills should the benchmark die without cleaning up."""
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        self.reaper.watch(p.pid)
        return p

    def reaped(self, p):
        """P has ended: forget it."""
        if p in self.procs:
            self.procs.remove(p)
        self.reaper.forget(p.pid)

    def new_server(self, system, scenario, config, run_dir, port):
        if system == "guillemot":
            s = guillemot.Guillemot(self.binary, run_dir, port, scenario, self.config_files[config],
                                    max_connections=self.idle_count + 1000)
        elif system == "postfix":
            s = postfix.Postfix(run_dir, port, scenario,
                                process_limit=max(200, max(self.sessions) + 50,
                                                  self.idle_postfix + 50))
        else:
            s = sink.Sink(self.smtp_sink, run_dir, port)
        self.servers.append(s)
        return s

    def end_server(self, server):
        status = server.stop()
        if server in self.servers:
            self.servers.remove(server)
        if server.proc is not None:
            self.reaped(server.proc)
        return status

    # -- smtp-source --------------------------------------------------------

    def run_source(self, port, size, sessions, mode, run_dir):
        """Runs smtp-source; returns (start, end, status, last stderr line)."""
        argv = ([self.smtp_source, "-s", str(sessions), "-m", str(self.messages),
                 "-l", str(size), "-f", SENDER, "-t", RECIPIENT, "-M", CLIENT_NAME]
                + MODES[mode] + [f"127.0.0.1:{port}"])
        err_path = os.path.join(run_dir, "smtp-source.err")
        with open(err_path, "wb") as err:
            t0 = time.time()
            p = self.spawn(argv, stdout=subprocess.DEVNULL, stderr=err, env=self.env)
            try:
                status = p.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                status = "timeout"
            t1 = time.time()
            self.reaped(p)
        with open(err_path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        return t0, t1, status, lines[-1] if lines else ""

    # -- one run ------------------------------------------------------------

    def run_one(self, system, scenario, config, size, sessions, mode, rep):
        run_dir = tempfile.mkdtemp(prefix=f"{system}-{scenario}-{size}-{sessions}-{rep}.",
                                   dir=self.tmp)
        os.chmod(run_dir, 0o755)
        port = free_port()
        server = self.new_server(system, scenario, config, run_dir, port)
        row = {"run_id": self.run_id, "system": server.name,
               "config": config_label(config) if system == "guillemot" else "",
               "scenario": scenario, "size": size, "sessions": sessions, "mode": mode,
               "messages": self.messages, "rep": rep,
               "binary_sha": self.binary_sha if system == "guillemot" else ""}
        try:
            server.start(self.spawn, self.env)
            row["start_rss_kb"] = sum(proc_status(p).get("VmRSS", 0) for p in server.pids())
            perf = self.start_perf(server, row) if system == "guillemot" else None
            with MemorySampler(server.pids, self.sample) as mem:
                self.measure(server, row, port, size, sessions, mode, run_dir)
                row["server_cpu_s"] = cpu_seconds(server)
                hwm = server.peak_rss_kb() if system != "postfix" else None
            if perf:
                stop(perf, sig=signal.SIGINT)
                self.reaped(perf)
            row["peak_rss_kb"] = hwm or mem.peak_rss
            row["peak_pss_kb"] = mem.peak_pss
            row["peak_procs"] = mem.peak_procs
            if not server.alive():
                row["note"] = f"{server.name} exited with status {server.proc.returncode}"
        except RuntimeError as e:
            row["note"] = str(e).splitlines()[0]
        finally:
            row["server_exit"] = self.end_server(server)
        if system != "sink":
            row["queue_left"] = server.queue_left()
        latencies, odd = server.analyse()
        if latencies:
            latencies.sort()
            row["latency_p50_s"] = round(statistics.median(latencies), 3)
            row["latency_max_s"] = round(latencies[-1], 3)
        row["log_anomalies"] = len(odd)
        row["_odd"] = odd[:20]
        self.finish_row(row)
        if odd or row.get("done_mps") is None:
            os.makedirs(self.results_dir, exist_ok=True)
            prefix = os.path.join(self.results_dir, f"bench-{self.stamp}-{os.path.basename(run_dir)}")
            row["_kept"] = server.keep_files(prefix)
        # Deleting thousands of files now would slow the next run's file creation
        # (ext4 skips recently freed inodes): the whole directory goes at the end.

    def start_perf(self, server, row):
        """With BENCH_PROFILE=DIR, records the server with perf into DIR."""
        if not self.profile:
            return None
        os.makedirs(self.profile, exist_ok=True)
        name = (f"perf-{self.stamp}-{row['config']}-{row['scenario']}-{row['size']}-"
                f"s{row['sessions']}-{row['mode']}-{row['rep']}.data")
        perf = self.spawn(["perf", "record", "-F", "999", "-g", "-o",
                           os.path.join(self.profile, name), "-p", str(server.proc.pid)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        time.sleep(0.5)    # perf attaches to every thread before the load starts
        return perf

    def measure(self, server, row, port, size, sessions, mode, run_dir):
        t0, t1, status, err = self.run_source(port, size, sessions, mode, run_dir)
        row["source_status"] = status
        row["accepted_s"] = t1 - t0
        if status != 0:
            row["note"] = f"smtp-source: {status}: {err}"
        if server.name == "smtp-sink":
            end, n = t1, self.messages
        elif row["scenario"] == "queue":
            end, n = t1, server.done_count()
        else:
            end, n = self.wait_delivered(server, t0, status)
            end = max(end, t1) if end is not None else None  # done when both are
        row["done_count"] = n
        if status == 0 and n == self.messages and end is not None:
            row["done_s"] = end - t0

    def wait_delivered(self, server, t0, status):
        """Counts the Maildir until every message is there (bounded); the end is
        the last rename into new/ (its ctime), whatever the polling interval."""
        deadline = time.monotonic() + self.timeout
        n = last_n = server.done_count()
        stable_since = time.monotonic()
        while n < self.messages and time.monotonic() < deadline and server.alive():
            if status != 0 and time.monotonic() - stable_since > 2.0:
                break  # smtp-source failed: not all messages will come
            time.sleep(self.poll)
            n = server.done_count()
            if n != last_n:
                stable_since, last_n = time.monotonic(), n
        seen = time.time()
        if n < self.messages:
            return None, n
        end = last_ctime(server.done_dir())
        return (end if t0 <= end <= seen + 0.05 else seen), n

    def finish_row(self, row):
        for key, rate in (("accepted_s", "accepted_mps"), ("done_s", "done_mps")):
            if isinstance(row.get(key), float):
                if row.get("source_status") == 0 and row[key] > 0:
                    row[rate] = round(self.messages / row[key], 1)
                row[key] = round(row[key], 3)
        self.rows.append(row)
        name = report.label(row)
        what = (f"{name:16} {row['scenario']:7} {human_size(row['size']):>6} "
                f"s{row['sessions']:<3} {row['mode']:5} run {row['rep']}")
        parts = []
        if row.get("done_mps"):
            parts.append(f"{row['done_mps']:.0f} msg/s ({row['done_s']:.2f}s)")
            if row["scenario"] == "deliver" and row["system"] != "smtp-sink":
                parts.append(f"accepted {row['accepted_mps']:.0f} msg/s")
        if row.get("note") or not row.get("done_mps"):
            # A server that died counts even when its messages were all done.
            problem = row.get("note") or f"{row.get('done_count')}/{self.messages} done"
            parts.append(f"INCOMPLETE: {problem}")
            self.failures.append(f"{what}: {problem}")
        if row.get("peak_rss_kb"):
            parts.append(f"peak RSS {row['peak_rss_kb'] / 1024:.1f} MiB")
        if row.get("queue_left"):
            parts.append(f"{row['queue_left']} file(s) left in the queue")
        if row.get("log_anomalies"):
            parts.append(f"{row['log_anomalies']} unexpected log line(s)")
        say(f"  {what}: " + ", ".join(parts))

    # -- idle connections -----------------------------------------------------

    def run_idle(self, system, count):
        run_dir = tempfile.mkdtemp(prefix=f"{system}-idle.", dir=self.tmp)
        os.chmod(run_dir, 0o755)
        port = free_port()
        config = "none" if "none" in self.config_files else self.configs[0]
        server = self.new_server(system, "queue", config, run_dir, port)
        row = {"run_id": self.run_id, "system": server.name, "scenario": "idle",
               "config": config_label(config) if system == "guillemot" else "",
               "connections": count,
               "warm": min(100, max(1, count // 5))}
        try:
            server.start(self.spawn, self.env)
            row.update(idle.hold_idle(port, server.pids, count, row["warm"]))
            if not server.alive():
                row["note"] = f"{server.name} exited with status {server.proc.returncode}"
        except (RuntimeError, OSError) as e:
            row["note"] = str(e).splitlines()[0]
        finally:
            row["server_exit"] = self.end_server(server)
        if row.get("held") != count and not row.get("note"):
            row["note"] = f"only {row.get('held', 0)} of {count} held: {row.get('errors')}"
        if row.get("note"):
            self.failures.append(f"idle {system}: {row['note']}")
        self.idle.append(row)
        for line in report.idle_lines([row])[2:]:
            say(line)

    # -- main ---------------------------------------------------------------

    def main(self):
        self.setup()
        say(f"Guillemot / Postfix benchmark {self.run_id}"
            + (" (BENCH_FULL)" if self.full else ""))
        say(f"  guillemot   {self.guillemot} (sha256 {self.binary_sha}); configs "
            + ", ".join(f"{n} ({os.path.basename(p)})" for n, p in self.config_files.items()))
        say(f"  systems     {' '.join(self.systems)}; scenarios {' '.join(self.scenarios)}")
        say(f"  smtp-source {self.smtp_source} -m {self.messages} -f {SENDER} -t {RECIPIENT} "
            f"(HELO: smtp-source has no EHLO option)")
        say(f"  {self.runs} run(s) per point; sizes {' '.join(human_size(s) for s in self.sizes)}; "
            f"sessions {' '.join(map(str, self.sessions))}; modes {' '.join(self.modes)}; "
            f"{os.cpu_count()} CPU(s)")
        if self.profile:
            say(f"  profiling Guillemot with perf into {self.profile}: its numbers are slowed")
        say()
        entries = []
        for system in self.systems:
            for config in (self.configs if system == "guillemot" else [""]):
                entries.append((system, config))
        for rep in range(1, self.runs + 1):
            for size in self.sizes:
                for sessions in self.sessions:
                    for mode in self.modes:
                        for scenario in self.scenarios:
                            turn = (rep - 1) % len(entries)
                            for system, config in entries[turn:] + entries[:turn]:
                                self.run_one(system, scenario, config, size, sessions, mode, rep)
        if self.idle_count and "guillemot" in self.systems:
            self.run_idle("guillemot", self.idle_count)
        if self.idle_postfix and "postfix" in self.systems:
            self.run_idle("postfix", self.idle_postfix)
        self.report()
        return 1 if self.failures else 0

    def report(self):
        lines = report.table(self)
        os.makedirs(self.results_dir, exist_ok=True)
        base = os.path.join(self.results_dir, f"bench-{self.stamp}")
        report.write_csv(base + ".csv", self.rows + self.idle)
        why = report.chart(self, base + ".png")
        lines += ["", f"CSV: {base}.csv", f"Chart: {base}.png" if not why else f"No chart: {why}"]
        with open(base + ".txt", "w") as f:
            f.write("\n".join(lines) + "\n")
        say()
        for line in lines:
            say(line)


def config_label(name):
    """none, policy, or a file's name without directory and .scm."""
    base = os.path.basename(name)
    return base[:-4] if base.endswith(".scm") else base


def cpu_seconds(server):
    """CPU time (user + system) of the server's processes so far: for Postfix,
    master's own, that of the children it has reaped, and that of the live ones."""
    pids = server.pids()
    if not pids:
        return ""
    total = proc_cpu_seconds(pids[0], children=True) or 0.0
    total += sum(proc_cpu_seconds(p) or 0.0 for p in pids[1:])
    return round(total, 2)


def main():
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    bench = Bench()
    try:
        return bench.main()
    except Interrupted as e:
        print(f"bench: interrupted ({e}); stopping", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
