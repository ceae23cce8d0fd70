"""Hostile clients: a million pipelined commands, a client that never reads,
slowloris clients against the per-request deadlines, thousands of connections
from one address, a server out of file descriptors, and clients that vanish
in the middle of a message. Figures (RSS from /proc, times) are printed as
"# ..." lines in tests/logs/integration_test_hostile_clients.log.

Every test ends with hostile.still_serves(): a normal client still gets a
message delivered."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import errno
import os
import resource
import socket
import struct
import threading
import time

from harness import (Server, assert_equal, assert_in, diag, queue_id, read_file, run, skip, stuff,
                     test, wait_for)
from hostile import (HELO, SENDER, RssSampler, cpu_seconds, open_transaction, rss_kib,
                     still_serves, trickle, wait_disconnect_logged, memory_bound)


# ---- Volume on one connection ------------------------------------------------

@test("a million pipelined NOOPs on one connection: every reply, in order, in bounded memory", timeout=60)
def _():
    n = 1000000
    with Server() as srv:
        c = srv.connect(timeout=20)
        c.ehlo(HELO)
        rss = RssSampler(srv.proc.pid, interval=0.02)
        cpu0 = cpu_seconds(srv.proc.pid)
        errors = []

        def writer():
            try:
                block = b"NOOP\r\n" * 10000
                for i in range(n // 10000):
                    c.sock.sendall(block)
                c.sock.sendall(b"QUIT\r\n")
            except Exception as e:          # reported below
                errors.append(e)

        t0 = time.monotonic()
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        ok = b"250 2.0.0 Ok\r\n"
        count = 0
        tail = b""
        while True:
            data = c.sock.recv(1 << 20)
            if not data:
                break
            data = tail + data
            end = data.rfind(b"\r\n") + 2
            whole, tail = data[:end], data[end:]
            count += whole.count(ok)
            if whole.count(b"\r\n") != whole.count(ok):
                assert_equal(whole[-len(b"221 2.0.0 Bye\r\n"):], b"221 2.0.0 Bye\r\n",
                             "the only other reply")
            rss.sample()
        elapsed = time.monotonic() - t0
        t.join(10)
        assert not errors, errors
        assert_equal(count, n, "NOOP replies before the 221")
        end = rss.report("1,000,000 NOOPs")
        diag("1,000,000 NOOPs: %.2fs, %.0f commands/s, server CPU %.2fs"
             % (elapsed, n / elapsed, cpu_seconds(srv.proc.pid) - cpu0))
        memory_bound(rss.peak - rss.start < 8 * 1024, "RSS grew %d KiB" % (rss.peak - rss.start))
        srv.wait_log(r"disconnect from \[127\.0\.0\.1\]:\d+ ehlo=1 noop=1000000 quit=1 commands=1000002")
        still_serves(srv)


@test("a client that pipelines and never reads: flow control bounds the memory; disconnected at command-timeout")
def _():
    with Server(settings={"command-timeout": 3}) as srv:
        c = srv.connect(timeout=20)
        c.ehlo(HELO)
        rss = RssSampler(srv.proc.pid, interval=0.02)
        sent = [0]
        outcome = []

        def writer():
            block = b"NOOP\r\n" * 10000
            try:
                while True:
                    c.sock.sendall(block)
                    sent[0] += len(block)
            except OSError as e:
                outcome.append(e)

        t0 = time.monotonic()
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        while t.is_alive() and time.monotonic() - t0 < 15:
            rss.sample()
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert outcome, "still connected after %.1fs" % elapsed
        rss.report("never-reading client, %d bytes of NOOPs accepted by the kernel" % sent[0])
        diag("never-reading client disconnected after %.1fs (%s)" % (elapsed, outcome[0]))
        assert 2.5 <= elapsed <= 8, "disconnected after %.1fs" % elapsed
        memory_bound(rss.peak - rss.start < 4 * 1024, "RSS grew %d KiB" % (rss.peak - rss.start))
        srv.wait_log(r"timeout after 3s from \[127\.0\.0\.1\]:\d+ while reading a command")
        still_serves(srv)


@test("50 clients pipelining EHLOs (170-byte replies for 26-byte commands) and never reading: about 64 KiB of replies held each")
def _():
    n = 50
    with Server(settings={"command-timeout": 30}) as srv:
        rss = RssSampler(srv.proc.pid, interval=0)
        socks = []
        for i in range(n):
            s = socket.create_connection((srv.host, srv.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            socks.append(s)
        block = b"EHLO client.example.test\r\n" * 20000
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            for s in socks:
                try:
                    s.send(block)
                except BlockingIOError:
                    pass
            rss.sample()
            time.sleep(0.05)
        rss.report("%d clients pipelining EHLOs without reading" % n)
        per = (rss.peak - rss.start) / n
        diag("%.0f KiB held per client (replies wait in at most GM_SESSION_OUTPUT_LIMIT, 64 KiB)" % per)
        # Before the session stopped reading at 64 KiB of replies, each held
        # the replies of a whole 64 KiB read: about 1.1 MiB.
        memory_bound(per < 256, "%.0f KiB per client" % per)
        for s in socks:
            s.close()
        wait_disconnect_logged(srv, n + 1, timeout=20)
        # A client that reads late gets every reply, whole and in order.
        c = srv.connect(timeout=20)
        m = 20000
        t = threading.Thread(target=lambda: c.sock.sendall(b"EHLO client.example.test\r\n" * m
                                                              + b"QUIT\r\n"), daemon=True)
        t.start()
        time.sleep(1)
        data = b""
        while True:
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        t.join(10)
        assert data.endswith(b"250 CHUNKING\r\n221 2.0.0 Bye\r\n"), data[-200:]
        assert_equal(data.count(b"250-mx.example.test\r\n250-PIPELINING\r\n"), m, "EHLO replies")
        assert_equal(data.count(b"250 CHUNKING\r\n"), m, "whole EHLO replies")
        still_serves(srv)


# ---- Slowloris ---------------------------------------------------------------

@test("slowloris on commands: a byte a second never completes a line, 421 4.4.2 at command-timeout", timeout=30)
def _():
    with Server(settings={"command-timeout": 3}) as srv:
        c = srv.connect(timeout=20)
        c.ehlo(HELO)
        said, first, closed = trickle(c, b"NOOP and never a line end" * 4, 1.0, 15)
        diag("command trickle, command-timeout 3: 421 after %s s, closed after %s s"
             % (first and "%.1f" % first, closed and "%.1f" % closed))
        assert said.startswith(b"421 4.4.2 "), said
        assert first is not None and 2.5 <= first <= 5.5, "421 after %r s" % first
        assert closed is not None and closed <= first + 1.5
        srv.wait_log(r"timeout after 3s from \[127\.0\.0\.1\]:\d+ while reading a command")
        still_serves(srv)


@test("whole commands sent slowly are served: each restarts command-timeout (per-request deadline)", timeout=30)
def _():
    with Server(settings={"command-timeout": 3}) as srv:
        c = srv.connect(timeout=20)
        c.ehlo(HELO)
        # Each NOOP takes 2.4s to arrive, three in a row take 7.2s > 3s.
        said, first, closed = trickle(c, b"NOOP\r\n" * 3, 0.4, 7.5)
        assert closed is None, "disconnected after %.1fs: %r" % (closed, said)
        assert_equal(said, b"250 2.0.0 Ok\r\n" * 3, "replies")
        c.send_expect("QUIT", 221)
        still_serves(srv)


@test("slowloris in DATA and BDAT: a byte a second is cut off after data-timeout (min-data-rate); nothing queued", timeout=40)
def _():
    with Server(settings={"data-timeout": 3}) as srv:
        for how in ("DATA", "BDAT"):
            c = open_transaction(srv, ["slow@example.test"], timeout=20)
            if how == "DATA":
                c.send_expect("DATA", 354)
            else:
                c.send(b"BDAT 100000 LAST\r\n")
            # Whole lines, so that a per-line timeout would not catch it either.
            said, first, closed = trickle(c, b"x\r\n" * 100, 1.0, 15)
            diag("%s trickle, data-timeout 3, min-data-rate 500: 421 after %s s"
                 % (how, first and "%.1f" % first))
            assert said.startswith(b"421 4.4.2 "), (how, said)
            assert first is not None and 2.5 <= first <= 5.5, "%s: 421 after %r s" % (how, first)
        srv.wait_log(r"timeout after 3s from \[127\.0\.0\.1\]:\d+ while reading message data", count=2)
        assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
        assert not srv.maildir_files("slow"), "a trickled message was delivered"
        # A client that keeps up the rate is not hurt by the same setting.
        c = open_transaction(srv, ["fast@example.test"], timeout=20)
        c.send_expect("DATA", 354)
        body = b"Subject: big and fast\r\n\r\n" + b"y" * 100 + b"\r\n" * 30000
        t0 = time.monotonic()
        for i in range(0, len(body), 1000):
            c.send(body[i:i + 1000])
        c.send(b".\r\n")
        c.expect(250, "2.0.0 Ok: queued as")
        srv.wait_maildir("fast", 1)
        still_serves(srv)


@test("min-data-rate=0: every read restarts data-timeout, so a trickling client stays (the setting's other end)", timeout=40)
def _():
    with Server(settings={"data-timeout": 2, "min-data-rate": 0}) as srv:
        c = open_transaction(srv, ["patient@example.test"], timeout=20)
        c.send_expect("DATA", 354)
        said, first, closed = trickle(c, b"Subject: slow\r\n\r\n", 1.0, 6)
        assert said == b"" and closed is None, (said, closed)
        c.send(b"done\r\n.\r\n")
        c.expect(250, "2.0.0 Ok: queued as")
        srv.wait_maildir("patient", 1)
        still_serves(srv)


# ---- Many connections ----------------------------------------------------------

@test("3000 connections from one address: past max-connections-per-client each gets 421 4.7.0 at once", timeout=90)
def _():
    limit, total = 50, 3000
    with Server(settings={"max-connections-per-client": limit}) as srv:
        pid = srv.proc.pid
        rss0 = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
        held, refused, other = [], 0, None
        t0 = time.monotonic()
        for i in range(total):
            s = socket.create_connection((srv.host, srv.port), timeout=10)
            line = s.recv(512)
            if line.startswith(b"220 "):
                held.append(s)
                continue
            assert line.startswith(b"421 4.7.0 ") and line.endswith(b"too many connections\r\n"), line
            assert s.recv(512) == b"", "a refused connection was left open"
            s.close()
            refused += 1
            if i == total // 2 and srv.ipv6:
                # Meanwhile another client address is served.
                other = srv.connect(ipv6=True)
                other.ehlo(HELO)
                other.send_expect("QUIT", 221)
        elapsed = time.monotonic() - t0
        diag("%d connections from 127.0.0.1, max-connections-per-client %d: %d held, %d refused "
             "in %.2fs (%.0f/s); server RSS %d -> %d KiB, CPU %.2fs"
             % (total, limit, len(held), refused, elapsed, total / elapsed, rss0, rss_kib(pid),
                cpu_seconds(pid) - cpu0))
        assert_equal(len(held), limit, "connections held")
        assert_equal(refused, total - limit, "connections refused")
        srv.wait_log(r"refused connection from \[127\.0\.0\.1\]: too many connections",
                     count=total - limit)
        for s in held:
            s.sendall(b"QUIT\r\n")
        for s in held:
            s.close()
        wait_disconnect_logged(srv, limit + 1 + (1 if other else 0), timeout=20)
        still_serves(srv)


@test("2000 idle connections: resident memory per connection (design target 64 KiB)", timeout=60)
def _():
    n = 2000
    with Server(settings={"max-connections-per-client": 5000, "max-connections": 5000}) as srv:
        pid = srv.proc.pid
        rss0 = rss_kib(pid)
        socks = []
        for i in range(n):
            s = socket.create_connection((srv.host, srv.port), timeout=10)
            socks.append(s)
        for s in socks:
            assert s.recv(512).startswith(b"220 ")
        for s in socks:
            s.sendall(b"EHLO client.example.test\r\n")
        for s in socks:
            assert s.recv(4096).startswith(b"250-")
        time.sleep(0.3)
        rss1 = rss_kib(pid)
        per = (rss1 - rss0) / n
        diag("%d idle connections after EHLO: RSS %d -> %d KiB, %.1f KiB each" % (n, rss0, rss1, per))
        memory_bound(per <= 64, "%.1f KiB per idle connection" % per)
        for s in socks:
            s.close()
        wait_disconnect_logged(srv, n + 1, timeout=20)
        still_serves(srv)


@test("out of file descriptors: the server pauses accepting instead of spinning, then serves again", timeout=60)
def _():
    with Server(settings={"max-connections-per-client": 5000, "max-connections": 5000}) as srv:
        pid = srv.proc.pid
        used = len(os.listdir("/proc/%d/fd" % pid))
        room = 20
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + room, used + room))
        socks = []
        for i in range(3 * room):
            socks.append(socket.create_connection((srv.host, srv.port), timeout=10))
        time.sleep(0.5)
        cpu0 = cpu_seconds(pid)
        time.sleep(3)
        busy = cpu_seconds(pid) - cpu0
        pauses = srv.log_text().count("not accepting connections for")
        diag("fd limit %d (%d in use at start), %d clients: server CPU %.2fs over 3s, "
             "%d pause line(s) logged" % (used + room, used, len(socks), busy, pauses))
        assert busy < 0.5, "the server spins: %.2fs of CPU in 3s" % busy
        assert 1 <= pauses <= 10, "%d pause lines" % pauses
        greeted = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                greeted += s.recv(512).startswith(b"220 ")
            except socket.timeout:
                pass
        assert 0 < greeted < len(socks), "%d of %d greeted" % (greeted, len(socks))
        for s in socks:
            s.close()
        # The clients still in the backlog are accepted as descriptors free
        # up (and closed at once, since they are gone).
        wait_for(lambda: srv.log_text().count("connect from [127.0.0.1]") >= len(socks) + 1, 10,
                 what="every backlog connection accepted")
        still_serves(srv)


# ---- Clients that vanish -------------------------------------------------------

def vanish(c, reset):
    if reset:
        # SO_LINGER 0: close with a RST instead of a FIN.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


@test("a client that vanishes mid-DATA or mid-BDAT (FIN or RST) leaves nothing in spool/incoming/ and nothing delivered")
def _():
    with Server() as srv:
        cases = 0
        for how in ("DATA", "BDAT"):
            for reset in (False, True):
                c = open_transaction(srv, ["gone@example.test"])
                if how == "DATA":
                    c.send_expect("DATA", 354)
                    c.send(b"Subject: half\r\n\r\n" + b"half a message\r\n" * 5000)
                else:
                    c.send(b"BDAT 100000 LAST\r\n" + b"half a chunk\r\n" * 3000)
                time.sleep(0.2)
                vanish(c, reset)
                cases += 1
                wait_disconnect_logged(srv, 1 + cases)
        assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
        assert_equal(srv.spool_files("queue"), [], "spool/queue")
        time.sleep(0.3)
        assert not srv.maildir_files("gone"), "a partial message was delivered"
        assert ": client=[" not in srv.log_text(), "a partial message was queued"
        still_serves(srv)


RULE_PAUSE = """\
(use-modules (guillemot))
(define-server #:hostname "mx.example.test")
(local-domains "example.test" "localhost")
(deliver-local (maildir "mail/~a/Maildir"))
(rule data "slow check" (lambda (s msg) (pause 1) (next)))
"""


@test("a client that vanishes after the final dot, while the rules run: the message is complete, queued and delivered once")
def _():
    # The server cannot tell the client that it took the message; like every
    # MTA it keeps it (RFC 1047: the client may send it again, a duplicate).
    with Server(config_text=RULE_PAUSE) as srv:
        c = open_transaction(srv, ["dot@example.test"])
        c.send_expect("DATA", 354)
        c.send(stuff(b"Subject: complete\r\n\r\nall of it\r\n"))
        time.sleep(0.1)
        cpu0 = cpu_seconds(srv.proc.pid)
        vanish(c, True)
        files = srv.wait_maildir("dot", 1, timeout=10, settle=0.5)
        assert cpu_seconds(srv.proc.pid) - cpu0 < 0.5, "the server spun while the rules waited"
        assert_in(b"all of it", read_file(files[0]), "message")
        wait_disconnect_logged(srv, 2)
        assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
        still_serves(srv)


run()
