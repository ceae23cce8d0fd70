"""hostile.py — helpers shared by the test_hostile_*.py files (not a test).

still_serves(srv) ends every hostile test: a fresh, well-behaved client sends
a message and it must arrive byte for byte. rss_kib() and cpu_seconds() read
the server's /proc entries for the figures the tests print and bound.
"""

import os
import select
import socket
import time

from harness import (SANITIZED, check_delivered, diag, queue_id, read_file, send_transaction,
                     wait_for)

HELO = "client.example.test"
SENDER = "sender@origin.test"
NORMAL = b"From: sender@origin.test\r\nSubject: still serving\r\n\r\nA normal message.\r\n"


def still_serves(srv, local="normal"):
    """A new connection from a normal client gets a message delivered intact;
    returns its queue id."""
    rcpt = "%s@example.test" % local
    c = srv.connect()
    c.ehlo(HELO)
    qid = send_transaction(c, [rcpt], NORMAL, SENDER)
    c.send_expect("QUIT", 221)
    path = wait_for(lambda: [f for f in srv.maildir_files(local) if qid in f],
                    10, what="the normal message in %s's Maildir" % local)[0]
    check_delivered(read_file(path), SENDER, rcpt, HELO, "127.0.0.1", qid, [rcpt], NORMAL)
    return qid


def open_transaction(srv, rcpts, ehlo=True, timeout=5):
    """A connection with MAIL and RCPTs accepted."""
    c = srv.connect(timeout=timeout)
    if ehlo:
        c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250, "2.1.0")
    for r in rcpts:
        c.send_expect("RCPT TO:<%s>" % r, 250, "2.1.5")
    return c


def _proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


def rss_kib(pid):
    """Resident set size of PID, in KiB (VmRSS)."""
    return _proc_status(pid, "VmRSS")


def cpu_seconds(pid):
    """User plus system CPU time PID has used, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the RSS of PID every INTERVAL seconds while sample() is called
    from a loop; peak is the largest seen."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.start = self.peak = rss_kib(pid)
        self._last = 0.0

    def sample(self):
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.peak = max(self.peak, rss_kib(self.pid))

    def report(self, what):
        end = rss_kib(self.pid)
        self.peak = max(self.peak, end)
        diag("%s: RSS %d KiB before, %d KiB peak, %d KiB after"
             % (what, self.start, self.peak, end))
        return end


def memory_bound(ok, message):
    """Assert a bound on the server's memory, except under AddressSanitizer,
    whose quarantine and shadow memory make resident sizes meaningless (the
    bound is checked by the ordinary build)."""
    if SANITIZED:
        diag("not checked under AddressSanitizer: " + message)
    else:
        assert ok, message


def trickle(c, data, interval, limit):
    """Send DATA one byte every INTERVAL seconds, reading whatever the server
    says in between, until the server closes the connection or LIMIT seconds
    pass. Returns (what the server sent, seconds from the first byte to the
    server's first reply or None, seconds to the close or None)."""
    received = b""
    t0 = time.monotonic()
    first_reply = closed = None
    sock = c.sock
    i = 0
    while time.monotonic() - t0 < limit and closed is None:
        if i < len(data):
            try:
                sock.sendall(data[i:i + 1])
            except OSError:
                pass                    # the server closed: the read below sees it
            i += 1
        deadline = time.monotonic() + interval
        while closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                closed = time.monotonic() - t0
                break
            if first_reply is None:
                first_reply = time.monotonic() - t0
            received += chunk
    return received, first_reply, closed


def wait_disconnect_logged(srv, count=1, timeout=10):
    """Wait until COUNT "disconnect from" lines are in the log."""
    srv.wait_log(r"disconnect from \[", count=count, timeout=timeout)
