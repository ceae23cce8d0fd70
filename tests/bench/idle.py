"""tests/bench/idle.py — what an idle connection costs, and whether many are held.

hold_idle() opens COUNT connections to a server, from loopback source
addresses 127.0.0.2, 127.0.0.3... (SPREAD connections each, so that no one
address runs out of ephemeral ports), reads every greeting, and leaves them
open. The memory of the server's processes is read after the first WARM
connections and again after all of them: the difference divided by the
connections added is the cost of one idle connection, without the start-up
allocations that the first few trigger. Then every connection gets a NOOP: a
connection is held when it answers 250.
"""

import errno
import resource
import selectors
import socket
import time

from common import proc_pss, proc_status

IP_BIND_ADDRESS_NO_PORT = 24   # linux/in.h: pick the port at connect(), per destination
SPREAD = 4000
BATCH = 500


def raise_fd_limit(needed):
    """Raises RLIMIT_NOFILE of this process (and so of the servers it starts)
    to at least NEEDED if it can; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))  # as root
        return needed
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def memory(pids):
    """(summed VmRSS, summed PSS) of PIDS in KiB."""
    return (sum(proc_status(p).get("VmRSS", 0) for p in pids),
            sum(proc_pss(p) or 0 for p in pids))


class Conn:
    __slots__ = ("sock", "buf", "state")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.state = "connecting"    # -> greeted -> held, or failed


class Idle:
    def __init__(self, port, timeout=60.0):
        self.port = port
        self.timeout = timeout
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.errors = {}

    def _fail(self, c, why):
        c.state = "failed"
        self.errors[why] = self.errors.get(why, 0) + 1
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def open(self, n):
        """Opens N more connections and waits for their greetings."""
        batch = []
        for _ in range(n):
            i = len(self.conns)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{2 + i // SPREAD}", 0))
            s.setblocking(False)
            c = Conn(s)
            self.conns.append(c)
            batch.append(c)
            err = s.connect_ex(("127.0.0.1", self.port))
            if err not in (0, errno.EINPROGRESS):
                self._fail(c, errno.errorcode.get(err, str(err)))
                continue
            self.sel.register(s, selectors.EVENT_READ, c)
            if len(batch) >= BATCH:
                self._await(batch, "greeted", b"220")
                batch = []
        self._await(batch, "greeted", b"220")

    def noop_all(self):
        """Sends NOOP on every greeted connection; those answering 250 are held."""
        live = [c for c in self.conns if c.state == "greeted"]
        for c in live:
            try:
                c.sock.send(b"NOOP\r\n")
            except OSError as e:
                self._fail(c, f"send: {e.strerror}")
        self._await([c for c in live if c.state == "greeted"], "held", b"250")

    def _await(self, batch, state, code):
        deadline = time.monotonic() + self.timeout
        waiting = {c for c in batch if c.state != "failed"}
        while waiting and time.monotonic() < deadline:
            for key, _ in self.sel.select(timeout=1.0):
                c = key.data
                try:
                    data = c.sock.recv(4096)
                except OSError as e:
                    data = None
                    why = e.strerror or str(e)
                else:
                    why = "closed by the server"
                if not data:
                    self._fail(c, why)
                    waiting.discard(c)
                    continue
                c.buf += data
                if c in waiting and b"\r\n" in c.buf:
                    line, _, c.buf = c.buf.partition(b"\r\n")
                    if line.startswith(code):
                        c.state = state
                    else:
                        self._fail(c, line[:40].decode("ascii", "replace"))
                    waiting.discard(c)
        for c in waiting:
            self._fail(c, f"no {code.decode()} within {self.timeout:.0f}s")

    def count(self, state):
        return sum(1 for c in self.conns if c.state == state)

    def close(self):
        for c in self.conns:
            if c.state != "failed":
                try:
                    self.sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
        self.sel.close()
        self.conns = []


def hold_idle(port, pids, count, warm, settle=1.0):
    """Opens COUNT idle connections to 127.0.0.1:PORT, whose server is made of
    the processes PIDS() returns. Returns a dict of figures (memory in KiB)."""
    idle = Idle(port)
    out = {"connections": count, "warm": warm}
    try:
        t0 = time.monotonic()
        idle.open(warm)
        opening = time.monotonic() - t0
        time.sleep(settle)
        out["rss_warm_kb"], out["pss_warm_kb"] = memory(pids())
        t0 = time.monotonic()
        idle.open(count - warm)
        out["open_s"] = round(opening + time.monotonic() - t0, 2)
        time.sleep(settle)
        out["procs"] = len(pids())
        out["rss_kb"], out["pss_kb"] = memory(pids())
        out["greeted"] = idle.count("greeted")
        idle.noop_all()
        out["held"] = idle.count("held")
        added = out["held"] - warm
        if added > 0:
            out["rss_per_conn_kb"] = round((out["rss_kb"] - out["rss_warm_kb"]) / added, 1)
            out["pss_per_conn_kb"] = round((out["pss_kb"] - out["pss_warm_kb"]) / added, 1)
        out["errors"] = dict(idle.errors)
    finally:
        idle.close()
    return out
