"""tests/bench/guillemot.py — a Guillemot server for one benchmark run.

Each run gets a fresh state directory and loopback port. The configuration is
either the built-in one (no policy, below), the site policy of
examples/policy.scm with its rate limits lifted (see policy_config), or any
file given by path; listen, state-dir, the connection limits and, for the
accept-and-queue scenario, delivery=hold are set with --set.
"""

import datetime
import os
import re
import shutil
import subprocess

from common import LOCALPART, count_files, files_under, proc_status, stop, wait_listening

BUILTIN_CONFIG = """\
;; Written by tests/bench/guillemot.py: the benchmark's configuration (no policy).
(use-modules (guillemot))
(define-server
  #:hostname "bench.example.test"
  #:listen '("127.0.0.1:2525")
  #:state-dir "var"
  #:max-message-size 50000000)
(local-domains "example.test")
(deliver-local (maildir "mail/~a/Maildir"))
"""

# examples/policy.scm as it is, but for its limits rule: one client sending
# thousands of messages a minute is what a benchmark does, and what the rule
# defers past 100. The rule still runs and counts; only its ceilings change.
POLICY_LIMITS = {"max-connections-per-window": 1000000000, "max-messages-per-window": 1000000000}


def policy_config(source, dest):
    """Writes to DEST the policy of SOURCE with the limits of POLICY_LIMITS;
    raises RuntimeError if a keyword to change is not there."""
    with open(source) as f:
        text = f.read()
    for keyword, value in POLICY_LIMITS.items():
        text, n = re.subn(rf"(#:{keyword}\s+)\d+", rf"\g<1>{value}", text)
        if n != 1:
            raise RuntimeError(f"{source}: expected one #:{keyword} NUMBER, found {n}")
    with open(dest, "w") as f:
        f.write(f";; Written by tests/bench/guillemot.py from {os.path.basename(source)}: "
                "the limits rule's ceilings lifted.\n" + text)


# ---------------------------------------------------------------------------
# The log

LOG_PREFIX = re.compile(r"^(\S+) guillemot\[\d+\]: (.*)$")
QID = r"[0-9A-Fa-f]+"
NORMAL = [
    re.compile(r"^listening on "),
    re.compile(r"^started: "),
    re.compile(r"^control: reload on "),
    re.compile(r"^queue: delivery is on hold "),
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
    """Returns (latencies, unexpected lines). A latency is the time from the
    message's "client=" line (queued) to its "status=sent" line, from the log's
    own timestamps, the same clock for both ends."""
    latencies, odd, queued = [], [], {}
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
            if not (m and normal_line(message)):
                odd.append(line)
    return latencies, odd


# ---------------------------------------------------------------------------
# The server


class Guillemot:
    """Guillemot serving CONFIG on 127.0.0.1:PORT with its state under
    DIRECTORY/var, for SCENARIO ("queue" or "deliver")."""

    name = "guillemot"

    def __init__(self, binary, directory, port, scenario, config, max_connections=20000):
        self.binary = binary
        self.root = directory
        self.port = port
        self.scenario = scenario
        self.config = config
        self.state = os.path.join(directory, "var")
        self.log_path = os.path.join(directory, "server.log")
        self.max_connections = max_connections
        self.proc = None

    def argv(self):
        sets = {"listen": f"127.0.0.1:{self.port}", "state-dir": self.state,
                "max-connections": self.max_connections,
                "max-connections-per-client": self.max_connections}
        if self.scenario == "queue":
            sets["delivery"] = "hold"
        argv = [self.binary, "serve", "-c", self.config]
        for key, value in sets.items():
            argv += ["--set", f"{key}={value}"]
        return argv

    def start(self, spawn, env):
        with open(self.log_path, "wb") as log:
            self.proc = spawn(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, cwd=self.root, env=env)
        wait_listening(self.proc, self.port, "guillemot", self.log_path)

    def pids(self):
        return [self.proc.pid] if self.alive() else []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def done_dir(self):
        """Where a finished message is: spool/queue/ (queue) or the Maildir's new/."""
        if self.scenario == "queue":
            return os.path.join(self.state, "spool", "queue")
        return os.path.join(self.state, "mail", LOCALPART, "Maildir", "new")

    def done_count(self):
        return count_files(self.done_dir())

    def queue_left(self):
        """Spool files other than the finished ones: free/ holds delivered
        queue files kept for reuse, queue/ the held ones."""
        skip = ("free", "queue") if self.scenario == "queue" else ("free",)
        return files_under(os.path.join(self.state, "spool"), skip)

    def peak_rss_kb(self):
        return proc_status(self.proc.pid).get("VmHWM") if self.alive() else None

    def stop(self):
        return stop(self.proc) if self.proc is not None else None

    def analyse(self):
        """(queue-to-Maildir latencies in seconds, unexpected log lines)."""
        if not os.path.exists(self.log_path):
            return [], ["no server log"]
        return analyse_log(self.log_path)

    def keep_files(self, dest_prefix):
        shutil.copyfile(self.log_path, f"{dest_prefix}-server.log")
        return [f"{dest_prefix}-server.log"]
