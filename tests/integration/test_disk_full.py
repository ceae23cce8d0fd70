"""A full disk: the spool answers 452 4.3.1 (451 4.3.0 for other I/O errors)
at whichever step fails, logs the cause and keeps nothing of the message; a full
mailbox defers the delivery, which is retried and made once space is back.

Faults come from tests/torture/faults.so, an LD_PRELOAD library that makes
write, fsync, rename, link, create or mkdir fail on chosen paths while a
control file exists: it needs no privilege and hits each step exactly. Where
mounting is allowed (root), a real 2 MB tmpfs shows the same on a file system
that is really full; elsewhere those tests are skipped, saying why."""

import sys
sys.dont_write_bytecode = True     # no __pycache__ in the source tree

import os
import re
import subprocess
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torture"))

from harness import (MBOX_CONFIG, Server, add_cleanup, assert_equal, assert_in,  # noqa: E402
                     check_delivered, queue_id, read_file, run, skip, stuff, test, wait_for)
from faultlib import Faults                                                       # noqa: E402

HELO = "client.example.test"
SENDER = "sender@origin.test"
NO_SPACE = "452 4.3.1 Insufficient system storage"
IO_ERROR = "451 4.3.0 Error: queue file write error"


def fault_server(config=None, settings=None):
    faults = Faults()
    srv = Server(config=config, env=faults.env(),
                 settings=dict({"retry-min": 1, "retry-max": 1}, **(settings or {})))
    return srv, faults


def body(n, size=0):
    return (b"Subject: disk full %d\r\n\r\nline one\r\n" % n) + b"x" * size + b"\r\nend %d\r\n" % n


def try_message(c, rcpt, message):
    """MAIL, RCPT, DATA and MESSAGE: the reply to the final dot."""
    c.send_expect("MAIL FROM:<%s>" % SENDER, 250)
    c.send_expect("RCPT TO:<%s>" % rcpt, 250)
    c.send_expect("DATA", 354)
    c.send(stuff(message))
    return c.reply()


def assert_spool_clean(srv):
    for d in ("incoming", "queue"):
        assert_equal(srv.spool_files(d), [], "spool/" + d)


def delivered_once(srv, local, qid, message, rcpt=None):
    files = srv.wait_maildir(local, 1, timeout=15, settle=0.3)
    check_delivered(read_file(files[0]), SENDER, rcpt or "%s@example.test" % local, HELO,
                    "127.0.0.1", qid, [rcpt or "%s@example.test" % local], message)


# ---------------------------------------------------------------------------
# The spool: each step of the write path

SPOOL_STEPS = [
    # (what, fault rules, expected reply, log text)
    ("writing the queue file", ["write /spool/incoming/", "write /spool/free/"], NO_SPACE,
     r"queue file write error: write \S+/spool/(incoming|free)/\w+: No space left on device"),
    ("creating the queue file", ["create /spool/incoming/"], NO_SPACE,
     r"queue file write error: create \S+/spool/incoming/\w+: No space left on device"),
    ("fsyncing the queue file", ["fsync /spool/incoming/", "fsync /spool/free/"], NO_SPACE,
     r"queue file write error: fsync \S+/spool/(incoming|free)/\w+: No space left on device"),
    ("renaming into queue/", ["rename /spool/queue/"], NO_SPACE,
     r"queue file write error: rename to \S+/spool/queue/\w+: No space left on device"),
    ("fsyncing queue/ (EDQUOT)", ["fsync /spool/queue EDQUOT"], NO_SPACE,
     r"queue file write error: fsync \S+/spool/queue: Disk quota exceeded"),
    ("fsyncing queue/ (EIO)", ["fsync /spool/queue EIO"], IO_ERROR,
     r"queue file write error: fsync \S+/spool/queue: Input/output error"),
]


def spool_step_test(what, rules, expected, log_rx):
    @test("spool full while %s: %s, the cause logged, nothing kept; accepted and delivered once "
          "space is back" % (what, expected))
    def _():
        srv, faults = fault_server()
        srv.start()
        c = srv.connect()
        c.ehlo(HELO)
        faults.set(*rules)
        refused = body(1)
        r = try_message(c, "full@example.test", refused)
        assert_equal(r.last, expected, "reply to the final dot")
        assert faults.injected(), "no fault was injected"
        srv.wait_log(log_rx)
        assert_spool_clean(srv)
        # The session goes on: the transaction was reset.
        faults.clear()
        accepted = body(2)
        r = try_message(c, "full@example.test", accepted)
        qid = queue_id(c.expect(250, reply=r))
        delivered_once(srv, "full", qid, accepted)
        srv.wait_queue_empty()
        # The refused message never turns up, not even after a restart.
        srv.restart()
        time.sleep(0.3)
        assert_equal(len(srv.maildir_files("full")), 1, "messages in full/new")
        c2 = srv.connect()
        c2.ehlo(HELO)
        c2.send_expect("QUIT", 221)


for _step in SPOOL_STEPS:
    spool_step_test(*_step)


@test("the client is told at once: 452 4.3.1 arrives while the disk stays full, and every later "
      "try gets it too")
def _():
    srv, faults = fault_server()
    srv.start()
    faults.set("write /spool/")
    c = srv.connect()
    c.ehlo(HELO)
    for n in range(3):
        r = try_message(c, "full@example.test", body(n, 20000))
        assert_equal(r.last, NO_SPACE, "reply %d" % n)
    assert_equal(len(re.findall(r"queue file write error: .*No space left on device",
                                srv.log_text())), 3, "log lines")
    assert_spool_clean(srv)
    assert not os.path.exists(srv.maildir("full")), "something was delivered"


@test("files kept for reuse in spool/free/ are given up when the disk is full: the write is "
      "tried again and the message accepted")
def _():
    srv, faults = fault_server()
    srv.start()
    c = srv.connect()
    c.ehlo(HELO)
    first = body(1, 3000)
    qid1 = queue_id(c.expect(250, reply=try_message(c, "reuse@example.test", first)))
    srv.wait_maildir("reuse", 1)
    srv.wait_queue_empty()
    kept = wait_for(lambda: srv.spool_files("free"), 5, what="a file kept in spool/free")
    # Writing over a kept file fails as on a full disk; a new file in incoming/ works.
    faults.set("write /spool/free/")
    second = body(2, 3000)
    qid2 = queue_id(c.expect(250, reply=try_message(c, "reuse@example.test", second)))
    srv.wait_log(qid2 + r": spool=free, status=emptied, files=\d+, reason=write \S+/spool/free/"
                 r"\w+: No space left on device")
    # The kept files are gone (once delivered, the second message's own file
    # may be kept there in turn).
    left = set(srv.spool_files("free")) & set(kept)
    assert_equal(sorted(left), [], "files kept before the full disk, still in spool/free")
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
    files = srv.wait_maildir("reuse", 2, settle=0.3)
    assert_in(qid2, " ".join(files), "delivered files")
    faults.clear()


QUARANTINE_CONFIG = """
(use-modules (guillemot))
(define-server #:hostname "mx.example.test" #:listen '("127.0.0.1:2525") #:state-dir "var")
(local-domains "example.test")
(deliver-local (maildir "mail/~a/Maildir"))
(rule data "keep aside" (lambda (s msg) (quarantine "held")))
"""


@test("a new quarantine directory is made durable (its parent fsynced) before the 250: a "
      "failing fsync gives 451 4.3.0 and keeps nothing")
def _():
    faults = Faults()
    srv = Server(config_text=QUARANTINE_CONFIG, env=faults.env(), ipv6=False)
    srv.start()
    c = srv.connect()
    c.ehlo(HELO)
    faults.set("fsync /spool/quarantine$ EIO")
    r = try_message(c, "q@example.test", body(1))
    assert_equal(r.last, IO_ERROR, "reply while quarantine/ cannot be synced")
    srv.wait_log(r"queue file write error: fsync \S+/spool/quarantine: Input/output error")
    assert_equal(faults.injected()[0].split()[0], "fsync", "injected")
    faults.clear()
    r = try_message(c, "q@example.test", body(2))
    qid = queue_id(c.expect(250, reply=r))
    assert_equal(sorted(os.listdir(srv.path("spool", "quarantine", "held"))), [qid],
                 "spool/quarantine/held")


# ---------------------------------------------------------------------------
# Delivery: a full mailbox defers, the retry delivers once

@test("Maildir full: delivery deferred (logged with the cause), tmp/ left clean, retried and "
      "delivered once when space is back", timeout=40)
def _():
    srv, faults = fault_server()
    srv.start()
    faults.set("write /mail/md/Maildir/")
    c = srv.connect()
    c.ehlo(HELO)
    message = body(1, 5000)
    qid = queue_id(c.expect(250, reply=try_message(c, "md@example.test", message)))
    srv.wait_log(qid + r": to=<md@example\.test>, relay=maildir, .*status=deferred \(maildir "
                 r"\S+/tmp/\S+: No space left on device\)")
    srv.wait_log(qid + r": deferred: 1 recipient\(s\) pending", count=2)
    assert_equal(srv.spool_files("queue"), [qid], "spool/queue while the mailbox is full")
    assert_equal(os.listdir(os.path.join(srv.maildir("md"), "tmp")), [], "Maildir tmp/")
    assert_equal(srv.maildir_files("md"), [], "Maildir new/")
    faults.clear()
    delivered_once(srv, "md", qid, message)
    srv.wait_queue_empty()
    assert_equal(len(re.findall(qid + r": to=<md@example\.test>.*status=sent", srv.log_text())), 1,
                 "deliveries logged")
    assert_equal(os.listdir(os.path.join(srv.maildir("md"), "tmp")), [], "Maildir tmp/")


def mbox_entries(srv, local):
    try:
        data = read_file(srv.mbox_path(local))
    except FileNotFoundError:
        return []
    return re.findall(rb"^Received: from .*\n\tby .* id ([0-9A-Za-z]+)", data, re.M)


MBOX_STEPS = [
    ("the append", "write /mail/mb.mbox", "No space left on device"),
    ("its fsync", "fsync /mail/mb.mbox", "No space left on device"),
    ("recording its offset in the queue file", "fsync /spool/queue/ EIO", "Input/output error"),
]


def mbox_step_test(what, rule, error):
    @test("mbox full at %s: deferred, the mbox unchanged and unlocked; retried and appended once "
          "when space is back" % what, timeout=40)
    def _():
        srv, faults = fault_server(config=MBOX_CONFIG)
        srv.start()
        c = srv.connect()
        c.ehlo(HELO)
        first = queue_id(c.expect(250, reply=try_message(c, "mb@example.test", body(0))))
        wait_for(lambda: mbox_entries(srv, "mb"), 10, what="the first mbox entry")
        srv.wait_queue_empty()
        before = read_file(srv.mbox_path("mb"))
        faults.set(rule)
        message = body(1, 30000)
        qid = queue_id(c.expect(250, reply=try_message(c, "mb@example.test", message)))
        srv.wait_log(qid + r": to=<mb@example\.test>, relay=mbox, .*status=deferred \(.*%s\)"
                     % re.escape(error))
        srv.wait_log(qid + r": deferred: 1 recipient\(s\) pending", count=2)
        assert_equal(read_file(srv.mbox_path("mb")), before, "mbox while full")
        assert not os.path.exists(srv.mbox_path("mb") + ".lock"), "dot-lock left"
        assert_equal(srv.spool_files("queue"), [qid], "spool/queue")
        faults.clear()
        wait_for(lambda: len(mbox_entries(srv, "mb")) >= 2, 15, what="the second mbox entry")
        srv.wait_queue_empty()
        time.sleep(0.3)
        assert_equal(mbox_entries(srv, "mb"), [first.encode(), qid.encode()], "mbox entries")
        data = read_file(srv.mbox_path("mb"))
        assert data.startswith(before), "the first entry changed"
        assert data.endswith(b"\nend 1\n\n"), "the new entry is not whole"
        assert_in(b"Delivered-To: mb@example.test\n" + b"Received: from", data[len(before):],
                  "new entry")
        assert not os.path.exists(srv.mbox_path("mb") + ".lock"), "dot-lock left"
        assert_equal(len(re.findall(qid + r": to=<mb@example\.test>.*status=sent",
                                    srv.log_text())), 1, "deliveries logged")


for _step in MBOX_STEPS:
    mbox_step_test(*_step)


# ---------------------------------------------------------------------------
# A real full file system

def mount_tmpfs(path, size):
    """Mount a tmpfs of SIZE on PATH, or skip the test saying why."""
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path],
                       capture_output=True, text=True)
    if p.returncode != 0:
        skip("cannot mount a tmpfs (%s): the LD_PRELOAD tests above cover the same paths"
             % (p.stderr.strip() or "mount failed"))
    add_cleanup(lambda: subprocess.run(["umount", "-l", path], capture_output=True))


def fill(path, leave):
    """Fill the file system of directory PATH with a file, leaving about LEAVE bytes."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "wb") as f:
        f.write(b"\0" * max(0, free - leave))
        f.flush()
        os.fsync(f.fileno())


@test("a real full spool (2 MB tmpfs): 452 4.3.1 while full, nothing left behind; after space is "
      "freed accepted and delivered, each message once", timeout=60)
def _():
    srv = Server(settings={"retry-min": 1, "retry-max": 1})
    spool = srv.path("spool")
    mount_tmpfs(spool, "2m")
    srv.start()
    fill(spool, 300 * 1024)
    c = srv.connect()
    c.ehlo(HELO)
    small = body(1, 1000)
    qid1 = queue_id(c.expect(250, reply=try_message(c, "tiny@example.test", small)))
    big = body(2, 600 * 1024)
    r = try_message(c, "tiny@example.test", big)
    assert_equal(r.last, NO_SPACE, "reply while the spool is full")
    srv.wait_log(r"queue file write error: write \S+: No space left on device")
    assert_equal(srv.spool_files("incoming"), [], "spool/incoming")
    free_before = os.statvfs(spool).f_bavail
    assert free_before * os.statvfs(spool).f_frsize > 200 * 1024, \
        "the refused message's partial file still takes space"
    os.unlink(os.path.join(spool, "filler"))
    qid2 = queue_id(c.expect(250, reply=try_message(c, "tiny@example.test", big)))
    files = srv.wait_maildir("tiny", 2, timeout=15, settle=0.3)
    srv.wait_queue_empty()
    by_id = {re.search(r"\.(\w+)_R0\.", os.path.basename(f)).group(1): f for f in files}
    assert_equal(sorted(by_id), sorted([qid1, qid2]), "queue ids delivered")
    check_delivered(read_file(by_id[qid1]), SENDER, "tiny@example.test", HELO, "127.0.0.1", qid1,
                    ["tiny@example.test"], small)
    check_delivered(read_file(by_id[qid2]), SENDER, "tiny@example.test", HELO, "127.0.0.1", qid2,
                    ["tiny@example.test"], big)


@test("a real full mailbox file system (2 MB tmpfs): delivery deferred with the cause, retried, "
      "delivered once after space is freed; Maildir tmp/ clean", timeout=60)
def _():
    srv = Server(settings={"retry-min": 1, "retry-max": 1})
    mail = srv.path("mail")
    mount_tmpfs(mail, "2m")
    srv.start()
    os.makedirs(os.path.join(srv.maildir("tiny"), "tmp"))
    os.makedirs(os.path.join(srv.maildir("tiny"), "new"))
    os.makedirs(os.path.join(srv.maildir("tiny"), "cur"))
    fill(mail, 50 * 1024)
    c = srv.connect()
    c.ehlo(HELO)
    message = body(1, 200 * 1024)
    qid = queue_id(c.expect(250, reply=try_message(c, "tiny@example.test", message)))
    srv.wait_log(qid + r": to=<tiny@example\.test>, relay=maildir, .*status=deferred \(maildir "
                 r"\S+: No space left on device\)")
    assert_equal(srv.spool_files("queue"), [qid], "spool/queue while the mailbox is full")
    assert_equal(os.listdir(os.path.join(srv.maildir("tiny"), "tmp")), [], "Maildir tmp/")
    os.unlink(os.path.join(mail, "filler"))
    delivered_once(srv, "tiny", qid, message)
    srv.wait_queue_empty()


run()
