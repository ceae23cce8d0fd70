#!/usr/bin/env python3
"""tests/bench/bench.py — Guillemot throughput, with smtp-sink as the ceiling.

Started by tests/bench/run-bench (`make bench`). For every point (message size x
connection mode) and every repetition it:

  * starts a fresh Guillemot (new temporary state directory, new loopback port),
    runs Postfix's smtp-source against it, and measures from the start until
    smtp-source has finished ("accepted") and until the last message file is in
    the Maildir's new/ directory ("delivered"); it records the server's peak RSS
    (VmHWM), its CPU time, the queue-to-Maildir latencies its log shows, and any log line that
    is not part of a normal conversation;
  * starts a fresh smtp-sink and runs the same smtp-source command against it:
    the protocol ceiling, measured in the same run.

Then it prints a table (median and min-max of the repetitions), the ratio
Guillemot / smtp-sink, and appends every run to
tests/bench/results/bench-YYYY-MM-DD.csv. Benchmarks are never assertions: the
exit status is non-zero only when a run could not be completed (smtp-source
failed, messages missing, server died).

Knobs (environment): BENCH_MESSAGES (2000), BENCH_SESSIONS (16), BENCH_RUNS (3),
BENCH_SIZES ("10240 102400"), BENCH_MODES ("conn reuse"), BENCH_CONFIG (a
configuration file to use instead of the built-in one; listen and state-dir are
overridden with --set), BENCH_TIMEOUT (seconds per phase, 120), BENCH_POLL
(seconds between Maildir counts, 0.2), BENCH_SINK=0 to skip smtp-sink,
SMTP_SINK (path of smtp-sink).
"""

import csv
import datetime
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SENDER = "bench@example.test"
LOCALPART = "user"
RECIPIENT = LOCALPART + "@example.test"
CLIENT_NAME = "client.example.test"

# How often the Maildir is counted once smtp-source is done. The end time is the
# last rename's ctime, so this only bounds how soon the end is noticed; reading
# new/ takes the directory lock the deliveries need, so polling often slows them.
try:
    POLL = max(0.001, float(os.environ.get("BENCH_POLL") or "0.2"))
except ValueError:
    sys.exit("bench: BENCH_POLL must be a number of seconds")

MODES = {
    # name: (smtp-source options, description)
    "conn": ([], "one message per connection"),
    "reuse": (["-d"], "-d: all messages of a session on one connection"),
}

BUILTIN_CONFIG = """\
;; Written by tests/bench/bench.py: the benchmark's configuration (no policy).
(use-modules (guillemot))
(define-server
  #:hostname "bench.example.test"
  #:listen '("127.0.0.1:{port}")
  #:state-dir "{state}"
  #:max-message-size 50000000)
(local-domains "example.test")
(deliver-local (maildir "mail/~a/Maildir"))
"""


def env_int(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        sys.exit(f"bench: {name} must be a whole number, got {value!r}")
    if n < 1:
        sys.exit(f"bench: {name} must be at least 1, got {n}")
    return n


def say(text=""):
    print(text, flush=True)


class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


# ---------------------------------------------------------------------------
# Processes and /proc


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """True when something listens on 127.0.0.1:PORT (read from /proc/net/tcp,
    so that waiting does not open a connection the server would log)."""
    want = f"0100007F:{port:04X}"
    want_any = f"00000000:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] in (want, want_any) and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listening(proc, port, what, log_path=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening"
                               + tail_of(log_path))
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s"
                       + tail_of(log_path))


def tail_of(path, n=15):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = f.readlines()[-n:]
    return "\n  | " + "  | ".join(lines) if lines else ""


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def stop(proc, timeout=40.0):
    """SIGTERM, then SIGKILL if it does not go. Returns the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def count_files(directory):
    try:
        with os.scandir(directory) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def last_ctime(directory):
    """Wall-clock time of the last rename/link into DIRECTORY (max st_ctime)."""
    latest = 0.0
    with os.scandir(directory) as it:
        for entry in it:
            try:
                latest = max(latest, entry.stat(follow_symlinks=False).st_ctime)
            except FileNotFoundError:
                pass
    return latest


def files_under(directory):
    """Files left in the spool, not counting free/ (delivered queue files
    kept for reuse, removed at the next start)."""
    n = 0
    for root, _, files in os.walk(directory):
        if os.path.basename(root) != "free":
            n += len(files)
    return n


# ---------------------------------------------------------------------------
# The server's log


LOG_PREFIX = re.compile(r"^(\S+) guillemot\[\d+\]: (.*)$")
QID = r"[0-9A-Fa-f]+"
NORMAL = [
    re.compile(r"^listening on "),
    re.compile(r"^started: "),
    re.compile(r"^control: reload on "),
    re.compile(r"^connect from "),
    re.compile(rf"^{QID}: client="),
    re.compile(rf"^{QID}: to=<[^>]*>, relay=\S+, delay=[\d.]+, status=sent "),
    re.compile(rf"^{QID}: removed$"),
    re.compile(r"^shutting down: no new connections, 0 session\(s\)"),
    re.compile(r"^stopped$"),
]
DISCONNECT = re.compile(r"^disconnect from \S+ (.*)$")
DISCONNECT_KEYS = {"helo", "ehlo", "mail", "rcpt", "data", "rset", "noop", "quit", "commands"}
QUEUED = re.compile(rf"^({QID}): client=")
SENT = re.compile(rf"^({QID}): to=<[^>]*>, relay=\S+, delay=[\d.]+, status=sent ")


def normal_line(message):
    if any(p.search(message) for p in NORMAL):
        return True
    m = DISCONNECT.match(message)
    if m:
        pairs = dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)
        return set(pairs) <= DISCONNECT_KEYS and pairs.get("quit") == "1"
    return False


def kind_of(message):
    """A line with its variable parts blanked, to count similar lines."""
    text = re.sub(rf"^{QID}: ", "ID: ", message)
    text = re.sub(r"\[[0-9a-fA-F.:]+\]:\d+", "[ADDR]:PORT", text)
    text = re.sub(r"/\S+", "PATH", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text


def log_time(stamp):
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def analyse_log(path):
    """Returns (latencies, unexpected lines, counts by kind). A latency is the
    time from the message's "client=" line (queued) to its "status=sent" line,
    from the log's own timestamps, the same clock for both ends."""
    latencies, odd, kinds, queued = [], [], {}, {}
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            m = LOG_PREFIX.match(line)
            message = m.group(2) if m else line
            if m:
                q = QUEUED.match(message)
                if q:
                    queued[q.group(1)] = log_time(m.group(1))
                d = SENT.match(message)
                if d and queued.get(d.group(1)) is not None:
                    t = log_time(m.group(1))
                    if t is not None:
                        latencies.append(t - queued[d.group(1)])
            if m and normal_line(message):
                continue
            odd.append(line)
            k = kind_of(message)
            kinds[k] = kinds.get(k, 0) + 1
    return latencies, odd, kinds


# ---------------------------------------------------------------------------
# One run


class Bench:
    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self.top_srcdir = os.path.abspath(os.environ.get("top_srcdir") or os.path.join(here, "..", ".."))
        self.guillemot = os.environ.get("GUILLEMOT") or os.path.join(self.top_srcdir, "guillemot")
        self.smtp_source = (os.environ.get("SMTP_SOURCE") or shutil.which("smtp-source")
                            or "/usr/sbin/smtp-source")
        sink = os.environ.get("SMTP_SINK")
        if not sink:
            beside = os.path.join(os.path.dirname(self.smtp_source), "smtp-sink")
            sink = beside if os.access(beside, os.X_OK) else (shutil.which("smtp-sink") or "")
        self.smtp_sink = sink if os.environ.get("BENCH_SINK", "1") != "0" else ""
        self.messages = env_int("BENCH_MESSAGES", 2000)
        self.sessions = env_int("BENCH_SESSIONS", 16)
        self.runs = env_int("BENCH_RUNS", 3)
        self.timeout = env_int("BENCH_TIMEOUT", 120)
        try:
            self.sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10240 102400").split()]
        except ValueError:
            sys.exit("bench: BENCH_SIZES must be whole numbers of bytes")
        self.modes = os.environ.get("BENCH_MODES", "conn reuse").split()
        for m in self.modes:
            if m not in MODES:
                sys.exit(f"bench: unknown mode {m!r} in BENCH_MODES (known: {' '.join(MODES)})")
        self.config = os.environ.get("BENCH_CONFIG") or ""
        if self.config:
            self.config = os.path.abspath(self.config)
            if not os.path.isfile(self.config):
                sys.exit(f"bench: BENCH_CONFIG: no such file: {self.config}")
        self.config_name = os.path.basename(self.config) if self.config else "builtin"

        for name, path in (("GUILLEMOT", self.guillemot), ("SMTP_SOURCE", self.smtp_source)):
            if not os.access(path, os.X_OK):
                sys.exit(f"bench: {name}={path} is not an executable (run `make bench`)")

        self.env = dict(os.environ)
        self.env.setdefault("GUILE_LOAD_PATH", os.path.join(self.top_srcdir, "scheme"))
        self.env.setdefault("GUILE_LOAD_COMPILED_PATH",
                            os.path.join(os.path.dirname(os.path.abspath(self.guillemot)), "scheme"))
        self.env.setdefault("GUILE_AUTO_COMPILE", "0")

        self.tmp = None
        self.procs = []
        self.results_dir = os.path.join(self.top_srcdir, "tests", "bench", "results")
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.run_id = self.started.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.rows = []
        self.failures = []

    # -- set-up and clean-up ------------------------------------------------

    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="guillemot-bench.")
        # Benchmark one binary for the whole run even if the tree is rebuilt meanwhile.
        with open(self.guillemot, "rb") as f:
            head = f.read(2)
        if head != b"#!":
            copy = os.path.join(self.tmp, "guillemot")
            shutil.copy2(self.guillemot, copy)
            self.binary = copy
        else:
            self.binary = self.guillemot
        h = hashlib.sha256()
        with open(self.binary, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.binary_sha = h.hexdigest()[:12]

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    stop(p, timeout=10)
                except Exception:
                    p.kill()
        self.procs = []
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def forget(self, p):
        if p in self.procs:
            self.procs.remove(p)

    # -- smtp-source --------------------------------------------------------

    def source_argv(self, port, size, mode):
        return ([self.smtp_source, "-s", str(self.sessions), "-m", str(self.messages),
                 "-l", str(size), "-f", SENDER, "-t", RECIPIENT, "-M", CLIENT_NAME]
                + MODES[mode][0] + [f"127.0.0.1:{port}"])

    def run_source(self, port, size, mode, run_dir):
        """Runs smtp-source; returns (status, seconds, stderr text)."""
        err_path = os.path.join(run_dir, "smtp-source.err")
        with open(err_path, "wb") as err:
            t0 = time.time()
            p = self.spawn(self.source_argv(port, size, mode), stdout=subprocess.DEVNULL,
                           stderr=err, env=self.env)
            try:
                status = p.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                status = "timeout"
            t1 = time.time()
            self.forget(p)
        with open(err_path, errors="replace") as f:
            text = f.read().strip()
        return t0, t1, status, text

    # -- one Guillemot run --------------------------------------------------

    def run_guillemot(self, size, mode, rep):
        run_dir = tempfile.mkdtemp(prefix=f"g-{size}-{mode}-{rep}.", dir=self.tmp)
        state = os.path.join(run_dir, "var")
        port = free_port()
        if self.config:
            config = self.config
            extra = ["--set", f"listen=127.0.0.1:{port}", "--set", f"state-dir={state}"]
        else:
            config = os.path.join(run_dir, "guillemot.scm")
            with open(config, "w") as f:
                f.write(BUILTIN_CONFIG.format(port=port, state=state))
            extra = []
        log_path = os.path.join(run_dir, "server.log")
        row = self.new_row("guillemot", size, mode, rep)
        with open(log_path, "wb") as log:
            server = self.spawn([self.binary, "serve", "-c", config] + extra, stdout=log,
                                stderr=subprocess.STDOUT, cwd=run_dir, env=self.env)
        try:
            wait_listening(server, port, "guillemot", log_path)
            row["start_rss_kb"] = proc_status(server.pid).get("VmRSS", "")
            new_dir = os.path.join(state, "mail", LOCALPART, "Maildir", "new")
            t0, t1, status, err = self.run_source(port, size, mode, run_dir)
            row["source_status"] = status
            row["accepted_s"] = t1 - t0
            if status != 0:
                row["source_error"] = err.splitlines()[-1] if err else ""
            # Delivered: poll the count of new/ (bounded), then take the time of
            # the last rename into it (its ctime) as the end.
            expected = self.messages
            deadline = time.monotonic() + self.timeout
            n = count_files(new_dir)
            stable_since, last_n = time.monotonic(), n
            while n < expected and time.monotonic() < deadline and server.poll() is None:
                if status != 0 and time.monotonic() - stable_since > 2.0:
                    break  # smtp-source failed: not all messages will come
                time.sleep(POLL)
                n = count_files(new_dir)
                if n != last_n:
                    stable_since, last_n = time.monotonic(), n
            seen = time.time()
            row["delivered_count"] = n
            if n >= expected and status == 0:
                end = last_ctime(new_dir)
                if not (t0 <= end <= seen + 0.05):
                    end = seen
                row["delivered_s"] = end - t0
            st = proc_status(server.pid)
            row["peak_rss_kb"] = st.get("VmHWM", "")
            row["threads"] = st.get("Threads", "")
            cpu = proc_cpu_seconds(server.pid)
            row["server_cpu_s"] = round(cpu, 2) if cpu is not None else ""
            if server.poll() is not None:
                row["note"] = f"server exited with status {server.returncode} during the run"
        finally:
            stop(server)
            self.forget(server)
        row["server_exit"] = server.returncode
        row["spool_left"] = files_under(os.path.join(state, "spool"))
        latencies, odd, kinds = analyse_log(log_path)
        if latencies:
            latencies.sort()
            row["latency_p50_s"] = round(statistics.median(latencies), 3)
            row["latency_max_s"] = round(latencies[-1], 3)
        row["log_anomalies"] = len(odd)
        row["_kinds"] = kinds
        row["_odd"] = odd[:20]
        if odd or status != 0 or row.get("delivered_s") is None:
            row["_log_copy"] = self.keep_log(log_path, row)
        self.finish_row(row)
        # Deleting thousands of files here would slow the next run's file
        # creation (ext4 skips recently freed inodes): the whole temporary
        # directory goes at the end instead.
        return row

    # -- one smtp-sink run --------------------------------------------------

    def run_sink(self, size, mode, rep):
        run_dir = tempfile.mkdtemp(prefix=f"s-{size}-{mode}-{rep}.", dir=self.tmp)
        port = free_port()
        argv = [self.smtp_sink]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [f"127.0.0.1:{port}", "256"]
        log_path = os.path.join(run_dir, "smtp-sink.log")
        row = self.new_row("smtp-sink", size, mode, rep)
        with open(log_path, "wb") as log:
            sink = self.spawn(argv, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, env=self.env)
        try:
            wait_listening(sink, port, "smtp-sink", log_path)
            t0, t1, status, err = self.run_source(port, size, mode, run_dir)
            row["source_status"] = status
            row["accepted_s"] = t1 - t0
            if status != 0:
                row["source_error"] = err.splitlines()[-1] if err else ""
            row["peak_rss_kb"] = proc_status(sink.pid).get("VmHWM", "")
        finally:
            stop(sink, timeout=5)
            self.forget(sink)
        self.finish_row(row)
        # Deleting thousands of files here would slow the next run's file
        # creation (ext4 skips recently freed inodes): the whole temporary
        # directory goes at the end instead.
        return row

    # -- rows ---------------------------------------------------------------

    def new_row(self, target, size, mode, rep):
        return {"run_id": self.run_id, "target": target,
                "config": self.config_name if target == "guillemot" else "",
                "size": size, "mode": mode, "sessions": self.sessions, "messages": self.messages,
                "rep": rep, "binary_sha": self.binary_sha if target == "guillemot" else ""}

    def finish_row(self, row):
        acc = row.get("accepted_s")
        if acc and row.get("source_status") == 0:
            row["accepted_mps"] = round(self.messages / acc, 1)
        dl = row.get("delivered_s")
        if dl:
            row["delivered_mps"] = round(self.messages / dl, 1)
        for k in ("accepted_s", "delivered_s"):
            if isinstance(row.get(k), float):
                row[k] = round(row[k], 3)
        self.rows.append(row)
        label = f"{row['target']:9} {human_size(row['size']):>6} {row['mode']:5} run {row['rep']}"
        parts = []
        if row.get("source_status") != 0:
            parts.append(f"smtp-source failed ({row['source_status']}): {row.get('source_error', '')}")
            self.failures.append(f"{label}: smtp-source {row['source_status']}: "
                                 f"{row.get('source_error', '')}")
        if row.get("accepted_mps"):
            parts.append(f"accepted {row['accepted_s']:.2f}s ({row['accepted_mps']:.0f}/s)")
        if row["target"] == "guillemot":
            if row.get("delivered_mps"):
                parts.append(f"delivered {row['delivered_s']:.2f}s ({row['delivered_mps']:.0f}/s)")
            else:
                parts.append(f"delivered only {row.get('delivered_count')}/{self.messages}")
                self.failures.append(f"{label}: {row.get('delivered_count')}/{self.messages} "
                                     "messages in the Maildir")
            if row.get("peak_rss_kb"):
                parts.append(f"peak RSS {row['peak_rss_kb'] / 1024:.1f} MiB")
            if row.get("latency_max_s") is not None:
                parts.append(f"queue latency p50 {row['latency_p50_s']}s max {row['latency_max_s']}s")
            if row.get("log_anomalies"):
                parts.append(f"{row['log_anomalies']} unexpected log line(s)")
            if row.get("spool_left"):
                parts.append(f"{row['spool_left']} file(s) left in spool/")
            if row.get("note"):
                parts.append(row["note"])
                self.failures.append(f"{label}: {row['note']}")
        say(f"  {label}: " + ", ".join(parts))

    def keep_log(self, log_path, row):
        os.makedirs(self.results_dir, exist_ok=True)
        name = (f"bench-{self.started:%Y-%m-%d-%H%M%S}-{row['size']}-{row['mode']}-"
                f"{row['rep']}-server.log")
        dest = os.path.join(self.results_dir, name)
        shutil.copyfile(log_path, dest)
        return dest

    # -- main ---------------------------------------------------------------

    def main(self):
        self.setup()
        sink_note = self.smtp_sink or "skipped (BENCH_SINK=0 or smtp-sink not found)"
        say(f"Guillemot benchmark {self.run_id}")
        say(f"  guillemot   {self.guillemot} (sha256 {self.binary_sha}), config "
            f"{self.config or 'built-in (no policy)'}")
        say(f"  smtp-source {self.smtp_source}: -s {self.sessions} -m {self.messages} "
            f"-f {SENDER} -t {RECIPIENT} (HELO: smtp-source has no EHLO option)")
        say(f"  smtp-sink   {sink_note}")
        say(f"  {self.runs} run(s) per point, sizes {' '.join(human_size(s) for s in self.sizes)}, "
            f"modes {' '.join(self.modes)}; {os.cpu_count()} CPU(s)")
        say()
        for rep in range(1, self.runs + 1):
            for size in self.sizes:
                for mode in self.modes:
                    self.run_guillemot(size, mode, rep)
                    if self.smtp_sink:
                        self.run_sink(size, mode, rep)
        self.report()
        return 1 if self.failures else 0

    def report(self):
        lines = table(self)
        say()
        for line in lines:
            say(line)
        os.makedirs(self.results_dir, exist_ok=True)
        day = f"{self.started:%Y-%m-%d}"
        csv_path = os.path.join(self.results_dir, f"bench-{day}.csv")
        write_csv(csv_path, self.rows)
        with open(os.path.join(self.results_dir, f"bench-{day}.txt"), "a") as f:
            f.write("\n".join(lines) + "\n\n")
        say()
        say(f"CSV: {csv_path}")


# ---------------------------------------------------------------------------
# Output


CSV_FIELDS = ["run_id", "target", "config", "binary_sha", "size", "mode", "sessions", "messages",
              "rep", "source_status", "accepted_s", "accepted_mps", "delivered_s", "delivered_mps",
              "delivered_count", "peak_rss_kb", "start_rss_kb", "threads", "server_cpu_s",
              "latency_p50_s", "latency_max_s", "log_anomalies", "spool_left", "server_exit", "note"]


def write_csv(path, rows):
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in CSV_FIELDS})


def human_size(n):
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} B"


def spread(values, fmt="{:.0f}"):
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(b):
    out = []
    out.append(f"Guillemot benchmark {b.run_id}: smtp-source -s {b.sessions} -m {b.messages}, "
               f"HELO, {b.runs} run(s) per point, config {b.config_name}, binary {b.binary_sha}")
    out.append("msg/s and MiB: median (min-max) of the runs; delivered = until the last "
               "message is in Maildir/new/")
    head = (f"{'size':>6}  {'mode':5}  {'target':9}  {'accepted msg/s':>20}  "
            f"{'delivered msg/s':>20}  {'peak RSS MiB':>18}  {'latency max s':>16}")
    out.append(head)
    out.append("-" * len(head))
    ratios = []
    for size in b.sizes:
        for mode in b.modes:
            g = [r for r in b.rows if r["target"] == "guillemot" and r["size"] == size
                 and r["mode"] == mode]
            s = [r for r in b.rows if r["target"] == "smtp-sink" and r["size"] == size
                 and r["mode"] == mode]
            rss = [r["peak_rss_kb"] / 1024 for r in g if isinstance(r.get("peak_rss_kb"), int)]
            out.append(f"{human_size(size):>6}  {mode:5}  {'guillemot':9}  "
                       f"{spread([r.get('accepted_mps') for r in g]):>20}  "
                       f"{spread([r.get('delivered_mps') for r in g]):>20}  "
                       f"{spread(rss, '{:.1f}'):>18}  "
                       f"{spread([r.get('latency_max_s') for r in g], '{:.2f}'):>16}")
            if s:
                out.append(f"{'':>6}  {'':5}  {'smtp-sink':9}  "
                           f"{spread([r.get('accepted_mps') for r in s]):>20}  {'':>20}  "
                           f"{'':>18}  {'':>16}")
                gd = [r["delivered_mps"] for r in g if r.get("delivered_mps")]
                ga = [r["accepted_mps"] for r in g if r.get("accepted_mps")]
                sa = [r["accepted_mps"] for r in s if r.get("accepted_mps")]
                if sa:
                    sm = statistics.median(sa)
                    ratios.append(
                        f"{human_size(size):>6}  {mode:5}  delivered/sink "
                        + (f"{100 * statistics.median(gd) / sm:5.1f} %" if gd else "    -  ")
                        + "   accepted/sink "
                        + (f"{100 * statistics.median(ga) / sm:5.1f} %" if ga else "    -  "))
    if ratios:
        out.append("")
        out.append("Guillemot / smtp-sink (medians; DESIGN.md §10 target: delivered >= 50 %):")
        out.extend(ratios)
    notes = []
    kinds = {}
    for r in b.rows:
        for k, n in r.get("_kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + n
    if kinds:
        notes.append("Unexpected server log lines (all runs), by kind:")
        for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:15]:
            notes.append(f"  {n:6}  {k}")
    left = [r for r in b.rows if r.get("spool_left")]
    if left:
        notes.append(f"Files left in spool/ after shutdown in {len(left)} run(s): "
                     + ", ".join(str(r["spool_left"]) for r in left))
    kept = [r["_log_copy"] for r in b.rows if r.get("_log_copy")]
    if kept:
        notes.append(f"Server logs kept: {len(kept)} in {os.path.dirname(kept[0])}/")
    if b.failures:
        notes.append("Incomplete runs:")
        notes.extend("  " + f for f in b.failures)
    if notes:
        out.append("")
        out.extend(notes)
    return [line.rstrip() for line in out]


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
