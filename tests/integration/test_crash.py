"""Crashes and shutdowns: a message acknowledged with 250 survives SIGKILL and
is delivered exactly once after a restart; incoming/ leftovers are removed at
start; SIGTERM lets transactions in progress finish and exits 0."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import shutil
import signal
import socket
import subprocess
import time

from harness import (MBOX_CONFIG, Server, add_cleanup, assert_equal, assert_in, queue_id,
                     read_file, run, skip, stuff, test, wait_for)

HELO = "client.example.test"
SENDER = "sender@origin.test"


def start_transaction(srv, rcpt):
    c = srv.connect()
    c.ehlo(HELO)
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<%s>" % rcpt, 250)
    return c


def ids_in_maildir(files):
    out = []
    for f in files:
        m = re.match(r"^\d+\.([0-9A-Za-z]+)_R(\d+)\.", os.path.basename(f))
        assert m, f
        out.append(m.group(1))
    return out


def mbox_entries(path):
    try:
        data = read_file(path)
    except FileNotFoundError:
        return []
    return re.findall(rb"^Received: from .*\n\tby .* id ([0-9A-Za-z]+)", data, re.M)


@test("SIGKILL right after each 250 (Maildir): after restarts every message is there exactly once",
      timeout=60)
def _():
    srv = Server(settings={"workers": 2})
    srv.start()
    ids = []
    for i in range(6):
        c = srv.connect()
        c.ehlo(HELO)
        c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<crash@example.test>\r\nRCPT TO:<crash2@example.test>\r\n"
               b"DATA\r\n" % SENDER.encode())
        c.expect(250)
        c.expect(250)
        c.expect(250)
        c.expect(354)
        c.send(stuff(b"Subject: crash %d\r\n\r\n" % i + b"payload\r\n" * 2000))
        r = c.reply()
        code = srv.kill()                      # at once, upon reading the 250
        ids.append(queue_id(c.expect(250, reply=r)))
        assert_equal(code, -signal.SIGKILL, "exit status after SIGKILL")
        srv.start()
    assert_equal(len(set(ids)), len(ids), "distinct queue ids")
    for local in ("crash", "crash2"):
        files = srv.wait_maildir(local, len(ids), timeout=15, settle=0.5)
        assert_equal(sorted(ids_in_maildir(files)), sorted(ids), "queue ids delivered to " + local)
        for f in files:
            content = read_file(f)
            assert content.endswith(b"payload\n" * 2000), "truncated delivery in %s" % f
    srv.wait_queue_empty()
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming after recovery")
    assert_equal(srv.stop(), 0, "exit status after SIGTERM")


@test("SIGKILL while delivery is held up (mbox lock): resumed after restart, delivered once",
      timeout=60)
def _():
    srv = Server(config=MBOX_CONFIG, settings={"workers": 2})
    srv.start()
    os.makedirs(srv.path("mail"), exist_ok=True)
    lock = srv.mbox_path("held") + ".lock"
    with open(lock, "w") as f:
        f.write("%d\n" % os.getpid())          # a live process's dot-lock: delivery waits
    c = start_transaction(srv, "held@example.test")
    c.send_expect("DATA", 354)
    c.send(stuff(b"Subject: held\r\n\r\nFrom a held delivery\r\n"))
    qid = queue_id(c.expect(250))
    # The queue file is durable and the delivery is waiting for the lock.
    assert_equal(srv.spool_files("queue"), [qid], "spool/queue before the crash")
    time.sleep(0.3)
    assert not os.path.exists(srv.mbox_path("held")) or mbox_entries(srv.mbox_path("held")) == []
    # A copy of the queue file in incoming/ stands for a write that was never acknowledged.
    ghost = "0661FFFFFFFFFF"
    shutil.copy(srv.path("spool", "queue", qid), srv.path("spool", "incoming", ghost))
    assert_equal(srv.kill(), -signal.SIGKILL, "exit status after SIGKILL")
    os.unlink(lock)
    srv.start()
    assert_in("queue: resuming 1 message(s)", srv.log_since_start(), "log after restart")
    srv.wait_log(r"spool=incoming.*status=removed")
    wait_for(lambda: len(mbox_entries(srv.mbox_path("held"))) >= 1, 15, what="mbox delivery")
    srv.wait_queue_empty()
    time.sleep(0.5)
    entries = mbox_entries(srv.mbox_path("held"))
    assert_equal(entries, [qid.encode()], "queue ids in the mbox")
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming after restart")
    data = read_file(srv.mbox_path("held"))
    assert_in(b"\n>From a held delivery\n\n", data, "mbox")
    assert_equal(srv.stop(), 0, "exit status")


@test("incoming/ leftovers are removed at start, logged, and never delivered")
def _():
    srv = Server()
    srv.start()
    assert_equal(srv.stop(), 0, "exit status")
    incoming = srv.path("spool", "incoming")
    assert os.path.isdir(incoming), "spool/incoming not created"
    for name, data in (("06611111111111", b"GUILLEMOT-QUEUE 1\npartial"),
                       ("06612222222222", b""),
                       ("junk.tmp", b"\x00\x01garbage")):
        with open(os.path.join(incoming, name), "wb") as f:
            f.write(data)
    srv.start()
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming after start")
    log = srv.log_text()
    assert_equal(len(re.findall(r"spool=incoming.*status=removed", log)), 3,
                 "removal log lines in:\n" + log)
    assert_equal(srv.spool_files("queue"), [], "spool/queue")
    assert not os.path.exists(srv.path("mail")), "something was delivered"
    # And the server works.
    c = start_transaction(srv, "after@example.test")
    c.send_expect("DATA", 354)
    c.send(stuff(b"Subject: after\r\n\r\nx\r\n"))
    c.expect(250)
    srv.wait_maildir("after", 1)


@test("SIGTERM: a transaction after RCPT finishes and gets its 250, idle clients get 421 4.3.2, exit 0",
      timeout=40)
def _():
    srv = Server(settings={"shutdown-timeout": 8})
    srv.start()
    busy = start_transaction(srv, "term@example.test")
    idle = srv.connect()
    idle.ehlo(HELO)
    fresh = srv.connect()                     # greeted, nothing said yet
    srv.signal(signal.SIGTERM)
    t0 = time.monotonic()
    idle.expect(421, "4.3.2")
    fresh.expect(421, "4.3.2")
    assert time.monotonic() - t0 < 3, "idle clients not told within 3 s"
    assert idle.closed_by_server() and fresh.closed_by_server()
    # No new connections are taken.
    def refused():
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", srv.port))
            try:
                data = s.recv(100)
            except (ConnectionResetError, socket.timeout):
                data = b""
            return not data.startswith(b"220")
        except ConnectionRefusedError:
            return True
        finally:
            s.close()
    assert refused(), "a new connection was greeted during shutdown"
    time.sleep(1.5)                            # well past a tick of the server
    assert srv.running(), "server exited while a transaction was in progress"
    busy.send_expect("DATA", 354)
    busy.send(stuff(b"Subject: during shutdown\r\n\r\nmade it\r\n"))
    qid = queue_id(busy.expect(250, "2.0.0 Ok: queued as"))
    busy.send(b"QUIT\r\n")
    r = busy.reply()
    assert (r.code, r.lines[-1][:5]) in ((221, "2.0.0"), (421, "4.3.2")), r
    assert busy.closed_by_server()
    assert_equal(srv.wait_exit(10), 0, "exit status after SIGTERM")
    assert_in("stopped", srv.log_text(), "log")
    # Acknowledged, so it must be delivered: now or after the next start.
    if not srv.maildir_files("term"):
        assert_equal(srv.spool_files("queue"), [qid], "spool/queue after shutdown")
        srv.start()
    files = srv.wait_maildir("term", 1, settle=0.3)
    assert_in(qid, files[0], "file name")
    assert_in(b"\nmade it\n", read_file(files[0]), "message")
    srv.wait_queue_empty()


@test("SIGTERM with shutdown-timeout=1: an unfinished transaction gets 421 4.3.2, nothing stored")
def _():
    srv = Server(settings={"shutdown-timeout": 1})
    srv.start()
    slow = start_transaction(srv, "late@example.test")
    slow.send_expect("DATA", 354)
    slow.send(b"Subject: never finished\r\n\r\nhalf")
    srv.signal(signal.SIGTERM)
    t0 = time.monotonic()
    slow.expect(421, "4.3.2")
    assert time.monotonic() - t0 < 4, "421 came after %.1fs" % (time.monotonic() - t0)
    assert slow.closed_by_server()
    assert_equal(srv.wait_exit(10), 0, "exit status")
    assert_equal(srv.spool_files("queue"), [], "spool/queue")
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
    assert not srv.maildir_files("late")


def immutable(path, on):
    p = subprocess.run(["chattr", "+i" if on else "-i", path], capture_output=True, text=True)
    return p.returncode == 0


@test("a temporary delivery failure is deferred, survives SIGKILL, and is retried after retry-min",
      timeout=40)
def _():
    srv = Server(settings={"retry-min": 1, "retry-max": 2})
    new = os.path.join(srv.maildir("retry"), "new")
    os.makedirs(new)
    for sub in ("tmp", "cur"):
        os.makedirs(os.path.join(srv.maildir("retry"), sub))
    if not immutable(new, True):
        skip("chattr +i is not available here")
    add_cleanup(lambda: immutable(new, False))
    srv.start()
    c = start_transaction(srv, "retry@example.test")
    c.send_expect("DATA", 354)
    c.send(stuff(b"Subject: retry\r\n\r\nlater\r\n"))
    qid = queue_id(c.expect(250))
    srv.wait_log(qid + r": to=<retry@example\.test>, relay=maildir, .*status=deferred")
    srv.wait_log(qid + r": deferred: 1 recipient\(s\) pending, next attempt in 1s")
    assert_equal(srv.spool_files("queue"), [qid], "spool/queue while deferred")
    assert_equal(os.listdir(os.path.join(srv.maildir("retry"), "tmp")), [], "Maildir tmp/ after failure")
    # Crash while deferred, restart: still failing, retried with back-off.
    srv.kill()
    srv.start()
    assert_in("queue: resuming 1 message(s)", srv.log_since_start(), "log")
    srv.wait_log(qid + r": to=<retry@example\.test>, relay=maildir, .*status=deferred", count=2,
                 since_start=True)
    srv.wait_log(qid + r": deferred: 1 recipient\(s\) pending, next attempt in 2s", since_start=True)
    immutable(new, False)
    files = srv.wait_maildir("retry", 1, timeout=10, settle=0.5)
    assert_in(qid, files[0], "file name")
    srv.wait_queue_empty()
    assert_equal(len(re.findall(qid + r": to=<retry@example\.test>.*status=sent", srv.log_text())), 1,
                 "number of successful deliveries logged")


@test("SIGINT stops an idle server with status 0")
def _():
    srv = Server()
    srv.start()
    srv.signal(signal.SIGINT)
    assert_equal(srv.wait_exit(10), 0, "exit status after SIGINT")
    assert_in("shutting down", srv.log_text(), "log")


run()
