"""tests/bench/common.py — what every part of the benchmark uses: knobs from the
environment, loopback ports, processes and their memory read from /proc.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

SENDER = "bench@example.test"
LOCALPART = "user"
RECIPIENT = LOCALPART + "@example.test"
CLIENT_NAME = "client.example.test"


def say(text=""):
    print(text, flush=True)


def env_list(name, default, known=None, convert=str):
    """The words of $NAME (or of DEFAULT), each checked against KNOWN and
    converted by CONVERT; exits with a message on a bad word."""
    words = (os.environ.get(name) or default).split()
    out = []
    for w in words:
        if known is not None and w not in known:
            sys.exit(f"bench: unknown {w!r} in {name} (known: {' '.join(known)})")
        try:
            out.append(convert(w))
        except ValueError:
            sys.exit(f"bench: {name}: {w!r} is not valid")
    return out


def env_int(name, default, minimum=1):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        sys.exit(f"bench: {name} must be a whole number, got {value!r}")
    if n < minimum:
        sys.exit(f"bench: {name} must be at least {minimum}, got {n}")
    return n


def env_float(name, default):
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        sys.exit(f"bench: {name} must be a number, got {value!r}")


# ---------------------------------------------------------------------------
# Ports


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """True when something listens on 127.0.0.1:PORT (read from /proc/net/tcp,
    so that waiting does not open a connection the server would log)."""
    wanted = (f"0100007F:{port:04X}", f"00000000:{port:04X}")
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] in wanted and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listening(proc, port, what, log_path=None, timeout=20.0):
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


# ---------------------------------------------------------------------------
# Processes


REAPER = """
import os, shutil, signal, sys, time
groups = set()
for line in sys.stdin:
    pgid = int(line)
    if pgid > 0:
        groups.add(pgid)
    else:
        groups.discard(-pgid)
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    if groups and sig == signal.SIGTERM:
        time.sleep(2)
if len(sys.argv) > 1:
    shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class Reaper:
    """A watchdog for the processes the benchmark starts, each in a process
    group of its own: should the benchmark die without cleaning up (SIGKILL),
    the watchdog reads end-of-file on its pipe, kills the groups still
    registered and removes the directory TMP. (PR_SET_PDEATHSIG would not do:
    Postfix's master and smtp-sink change their user ids, which clears it.)"""

    def __init__(self, tmp):
        self.proc = subprocess.Popen([sys.executable, "-c", REAPER, tmp], stdin=subprocess.PIPE,
                                     start_new_session=True)

    def watch(self, pgid):
        self._send(pgid)

    def forget(self, pgid):
        self._send(-pgid)

    def _send(self, n):
        if self.proc.stdin:
            self.proc.stdin.write(f"{n}\n".encode())
            self.proc.stdin.flush()

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None
            self.proc.wait()


def stop(proc, timeout=40.0, sig=signal.SIGTERM):
    """SIG (SIGTERM), then SIGKILL if it does not go. Returns the exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def children_of(pid):
    """Pids whose parent is PID (one scan of /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(name))
    return out


def proc_status(pid):
    """VmHWM, VmRSS (KiB) and Threads of PID, as far as they can be read."""
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


def proc_pss(pid):
    """Proportional set size of PID in KiB (shared pages divided among their
    users), or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_seconds(pid, children=False):
    """User + system CPU seconds of PID; with CHILDREN, plus those of the
    children it has waited for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are 14-17.
        ticks = int(fields[11]) + int(fields[12])
        if children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class MemorySampler:
    """Samples, every INTERVAL seconds in a thread, the summed RSS and PSS of
    the processes PIDS() returns, and keeps the peaks (KiB)."""

    def __init__(self, pids, interval=0.1):
        self.pids = pids
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self):
        pids = self.pids()
        rss = sum(proc_status(p).get("VmRSS", 0) for p in pids)
        pss = sum(proc_pss(p) or 0 for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))
        return rss, pss

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


# ---------------------------------------------------------------------------
# Files


def count_files(directory):
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if not e.name.startswith("."))
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


def files_under(directory, skip=()):
    """Files below DIRECTORY, not counting those in directories named in SKIP."""
    n = 0
    for root, _, files in os.walk(directory):
        if os.path.basename(root) not in skip:
            n += len(files)
    return n


def human_size(n):
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} B"
